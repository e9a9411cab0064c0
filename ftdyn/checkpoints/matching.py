"""Loading a state dict into a model: its keys matched to the model's (arbitrary attribute
prefixes such as Lightning's ``model.``, the choice between several copies), the classifier head
adapted, and every mismatch explained.

:func:`load_into_model` loads strictly, resolving the prefixes against the model's own keys
(:func:`match_keys`); ``copy="ema"`` / a ``state_prefix`` pick an EMA or other copy
(:func:`~ftdyn.checkpoints.loading.read_weights`). This layer imports the model zoo
(:mod:`ftdyn.models`) for architecture names, heads and zoo weights; the zoo imports nothing
from it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import arg
from ..errors import FtdynError
from ..models import (
    build_random,
    fits_head,
    head_name,
    is_timm,
    num_classes_of,
    replace_head,
    zoo_twin,
)
from .loading import _strip_wrappers, read_weights
from .saving import _short

log = logging.getLogger(__name__)

_AVERAGED_COUNTER = "n_averaged"  # torch.optim.swa_utils.AveragedModel's buffer: not a model weight


def _candidate_prefixes(keys) -> list[str]:
    found = set()
    for key in keys:
        parts = key.split(".")
        for i in range(1, min(4, len(parts))):
            found.add(".".join(parts[:i]) + ".")
    return sorted(found, key=lambda p: (p.count("."), len(p), p))


def _under_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix``, keyed without it (and without wrappers)."""
    return {
        _strip_wrappers(k[len(prefix) :]): v for k, v in state_dict.items() if k.startswith(prefix)
    }


def _fits(keys: set[str], target: set[str]) -> bool:
    """``keys`` name all of ``target``, missing at most BatchNorm counters (the load
    restores those)."""
    return keys <= target and all(k.endswith("num_batches_tracked") for k in target - keys)


def match_keys(
    state_dict: dict[str, torch.Tensor],
    model: nn.Module,
    *,
    state_prefix: str | None = None,
    source: str = "checkpoint",
    arch: str | None = None,
    optional_prefix: bool = False,
) -> tuple[dict[str, torch.Tensor], str]:
    """Map ``state_dict`` onto ``model``'s key names; returns ``(mapped, stripped_prefix)``.

    ``state_prefix`` (e.g. ``"model."``, ``"ema.module."``; a missing final dot is
    added), when given, picks the copy to load; a prefix no key starts with is an
    FtdynError, never ignored, except with ``optional_prefix`` (a plain ``--source``
    file next to prefixed series files) when the keys already name the model's.
    Without it, keys are used as they are when they already name exactly the model's
    parameters and buffers; else the leading prefix (up to three dotted components,
    e.g. Lightning's ``model.`` or ``net.backbone.``) whose removal makes the keys that
    start with it name the whole model is stripped, and keys outside it (e.g. a loss
    module's buffers) are dropped. Several such prefixes selecting different keys (a
    model and its EMA or teacher copy) raise an FtdynError naming them, since picking
    one would be a guess. Without a complete copy the prefix with the largest overlap
    is used, so the strict load reports the rest. An AveragedModel's ``n_averaged``
    counter is dropped. ``source`` and ``arch`` name the file and the model in errors.
    """
    target = set(model.state_dict().keys())
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if k in target or not (k == _AVERAGED_COUNTER or k.endswith("." + _AVERAGED_COUNTER))
    }
    if state_prefix is not None:
        prefix = (
            state_prefix if not state_prefix or state_prefix.endswith(".") else state_prefix + "."
        )
        mapped = _under_prefix(state_dict, prefix)
        if not mapped and optional_prefix and _fits(set(state_dict), target):
            return dict(state_dict), ""
        if not mapped:
            tops = sorted({k.split(".")[0] + "." for k in state_dict if "." in k})
            raise FtdynError(
                f"{source}: no key starts with {arg('state_prefix')} '{state_prefix}' (its keys"
                f" start with {', '.join(repr(t) for t in tops[:6])}); pass one of those or drop"
                f" {arg('state_prefix')}."
            )
        return mapped, prefix
    if _fits(set(state_dict), target):
        return dict(state_dict), ""
    best, best_prefix, best_overlap = dict(state_dict), "", len(target & set(state_dict))
    copies: dict[
        frozenset[str], str
    ] = {}  # the file keys a complete copy uses -> its longest prefix
    for prefix in _candidate_prefixes(state_dict):
        sub = _under_prefix(state_dict, prefix)
        if _fits(set(sub), target):
            copies[frozenset(k for k in state_dict if k.startswith(prefix))] = prefix
        overlap = len(target & set(sub))
        if overlap > best_overlap:
            best, best_prefix, best_overlap = sub, prefix, overlap
    if len(copies) > 1:
        names = ", ".join(f"'{p}'" for p in sorted(copies.values()))
        raise FtdynError(
            f"{source}: holds several complete copies of {arch or type(model).__name__} under"
            f" {names} (e.g. the model and its EMA or teacher); choose one with"
            f" {arg('state_prefix')} PREFIX (or {arg('weights_copy')} ema)."
        )
    if copies:
        prefix = next(iter(copies.values()))
        return _under_prefix(state_dict, prefix), prefix
    return best, best_prefix


def infer_num_classes(
    state_dict: dict[str, torch.Tensor], model: nn.Module, *, state_prefix: str | None = None
) -> int:
    """Class count of a checkpoint: rows of its classifier head weight (``models.head_name``)."""
    head = head_name(model)
    mapped, _ = match_keys(state_dict, model, state_prefix=state_prefix)
    weight = mapped.get(f"{head}.weight")
    if weight is None or not fits_head(model, weight):
        raise FtdynError(
            f"checkpoint has no classifier head '{head}.weight' matching {type(model).__name__}; "
            f"check {arg('arch')}."
        )
    return int(weight.shape[0])


def _summary(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"


def load_into_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    trust: bool = False,
    adapt_head: bool = False,
    arch: str | None = None,
    state_prefix: str | None = None,
    copy: str = "main",
) -> int | None:
    """Load a checkpoint file strictly into ``model``; returns the epoch stored in it.

    ``copy`` / ``state_prefix`` pick the copy of the model to read
    (:func:`~ftdyn.checkpoints.loading.read_weights`, :func:`match_keys`, e.g. ``"ema"`` or
    ``"ema.module."``). With ``adapt_head=True`` a classifier head whose class count differs from
    the checkpoint's is replaced first (``models.replace_head``), and a file without any head (a
    backbone saved headless, EVA-02's masked-image-modelling weights) keeps the model's own head,
    with a note. Missing ``num_batches_tracked``
    buffers (old BatchNorm checkpoints) are kept from the model. Any other mismatch raises one
    FtdynError naming the file, the architecture (``arch`` or the model's class name) and a
    summary of missing / unexpected keys and shape mismatches.
    """
    path = Path(path)
    weights = read_weights(path, trust=trust, copy=copy, state_prefix=state_prefix)
    load_state_into_model(
        model,
        weights.state,
        source=str(path),
        adapt_head=adapt_head,
        arch=arch,
        state_prefix=weights.prefix,
    )
    return weights.epoch


def _adapt_head(
    model: nn.Module, mapped: dict[str, torch.Tensor], source: str | None
) -> dict[str, torch.Tensor]:
    """Resize the model's head to the file's class count when only that count differs; a file
    with no head at all gets the model's own (the hooked layers never use it), with a note
    naming ``source`` (None: no note). Returns the state dict to load."""
    head = head_name(model)
    weight = mapped.get(f"{head}.weight")
    if weight is not None and fits_head(model, weight) and weight.shape[0] != num_classes_of(model):
        replace_head(model, int(weight.shape[0]))
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    if missing and all(k.startswith(f"{head}.") for k in missing) and weight is None:
        if source is not None:
            log.info(
                f"{source}: the file holds no classifier head ('{head}'); the model keeps its"
                " own, which the captured layers do not use."
            )
        return {**mapped, **{k: own[k] for k in missing}}
    return mapped


@functools.lru_cache(maxsize=2)
def _twin_model(arch: str) -> nn.Module | None:
    """``arch`` built once per process (random init, seed 0, no download) to try files on; None
    when it cannot be built."""
    try:
        return build_random(arch).eval()
    except Exception:  # an optional model that does not build here: no hint, not an error
        return None


_TWIN_LOCK = threading.Lock()  # the cached twins are tried one file at a time


def _twin_accepts(twin: str, given: _Given, num_classes: int | None) -> bool:
    """Whether the other zoo's ``twin`` loads the state dict strictly after the prefix and head
    handling :func:`load_state_into_model` applies (without head adaptation, the twin gets the
    model's class count ``num_classes``). The cached model is reused as it is: the head is set
    from the file or ``num_classes`` each time, and the weights loaded do not matter."""
    with _TWIN_LOCK:
        model = _twin_model(twin)
        if model is None:
            return False
        try:
            mapped, prefix = match_keys(
                given.state,
                model,
                state_prefix=given.state_prefix,
                arch=twin,
                optional_prefix=given.optional_prefix,
            )
            if given.adapt_head:
                mapped = _adapt_head(model, mapped, None)
            elif num_classes is not None:
                replace_head(model, num_classes)
            mapped = _check_fits(model, mapped, source="", name=twin, prefix=prefix)
            model.load_state_dict(mapped, strict=True)
        except (FtdynError, RuntimeError):
            return False
        return True


def _class_count(model: nn.Module) -> int | None:
    try:
        return num_classes_of(model)
    except FtdynError:
        return None


@dataclass(frozen=True)
class _Given:
    """What :func:`load_state_into_model` was given, to try the other zoo's model the same way
    when the file does not fit."""

    state: dict[str, torch.Tensor]
    state_prefix: str | None
    adapt_head: bool
    optional_prefix: bool


def _mismatch_hint(
    model: nn.Module,
    arch: str | None,
    mapped: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
    given: _Given | None,
) -> str:
    """What to try when the state dict does not fit: the class count when only the head differs,
    the other zoo's model of the same name when it accepts the file, else the arch."""
    try:
        head = head_name(model)
        if (
            shapes
            and all(s.startswith(f"{head}.") for s in shapes)
            and not missing
            and not unexpected
        ):
            return (
                f"only the classifier head differs (file: {mapped[f'{head}.weight'].shape[0]}"
                f" classes, model: {own[f'{head}.weight'].shape[0]}); build the model with the"
                " file's class count"
            )
    except FtdynError:
        pass
    twin = zoo_twin(arch) if arch and given is not None and (missing or unexpected) else None
    if twin and _twin_accepts(twin, given, _class_count(model)):
        theirs, ours = ("timm", f"torchvision's {arch}") if is_timm(twin) else ("torchvision", arch)
        return f"{theirs} weights: they load with {arg('arch', twin)}, not {ours}"
    if not (missing or unexpected):
        return f"check {arg('arch')} or the file"
    shared = len(set(mapped) & set(own))
    return (
        f"the file names {shared} of the model's {len(own)} keys; check {arg('arch')} or the file"
    )


def _check_fits(
    model: nn.Module,
    mapped: dict[str, torch.Tensor],
    *,
    source: str,
    name: str,
    prefix: str,
    arch: str | None = None,
    given: _Given | None = None,
) -> dict[str, torch.Tensor]:
    """``mapped`` completed with untracked batch-norm counters; raises if keys or shapes differ
    (``given``: what was loaded, to try the other zoo's model in the hint)."""
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    if missing and all(k.endswith("num_batches_tracked") for k in missing):
        mapped = {**mapped, **{k: own[k] for k in missing}}
        missing = []
    unexpected = [k for k in mapped if k not in own]
    shapes = [
        f"{k}: file {list(mapped[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in mapped and mapped[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_summary(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_summary(shapes, 2)}")
        hint = _mismatch_hint(model, arch, mapped, own, missing, unexpected, shapes, given)
        via = f" (after stripping prefix '{prefix}')" if prefix else ""
        raise FtdynError(f"{source}: does not fit {name}{via}: {'; '.join(parts)}; {hint}.")
    return mapped


def load_state_into_model(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    adapt_head: bool = False,
    arch: str | None = None,
    state_prefix: str | None = None,
    optional_prefix: bool = False,
    notes: bool = True,
) -> str:
    """:func:`load_into_model` for an in-memory state dict; ``source`` names it in errors (and
    in the note on a file without a head, unless ``notes`` is False: a file loaded again).
    Returns the key prefix that was stripped (``""`` for none)."""
    name = arch or type(model).__name__
    mapped, prefix = match_keys(
        state,
        model,
        state_prefix=state_prefix,
        source=source,
        arch=name,
        optional_prefix=optional_prefix,
    )
    if adapt_head:
        mapped = _adapt_head(model, mapped, source if notes else None)
    mapped = _check_fits(
        model,
        mapped,
        source=source,
        name=name,
        prefix=prefix,
        arch=arch,
        given=_Given(state, state_prefix, adapt_head, optional_prefix),
    )
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:  # pragma: no cover - caught above in practice
        raise FtdynError(
            f"{source}: does not fit {name} ({_short(exc)}); check {arg('arch')} or the file."
        ) from None
    return prefix
