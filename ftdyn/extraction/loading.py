"""Checkpoints into model weights: the series read from its folder, each file's weights read
(a file holding NaN/inf refused), loaded into the model, and the whole series checked to load
before a store is created or extended."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import (
    check_not_transformers,
    checkpoint_files,
    discover_series,
    load_source_weights,
    load_state_into_model,
    read_manifest,
    read_weights,
)
from ..config import arg
from ..errors import FtdynError
from ..models import canonical_arch, head_name, num_classes_of

log = logging.getLogger(__name__)


def _entry_record(entry, copy: dict[str, str] | None = None) -> dict[str, Any]:
    """The store's record of a checkpoint; ``copy``: which weights of the file were read
    (:func:`_apply_state`)."""
    return {"epoch": int(entry.epoch), "file": entry.label, "sha256": entry.sha256, **(copy or {})}


def _resolve_series(series: Path, arch: str | None, source, trust: bool):
    manifest = read_manifest(series) if series.is_dir() else None
    if manifest is None:
        if series.is_dir():  # before asking for --arch: no architecture would load it
            check_not_transformers(series, str(series))
        if series.is_dir() and arch is None and checkpoint_files(series):
            raise FtdynError(
                f"{arg('arch')}: {series} is not an ftdyn series (no manifest.json); name the"
                f" architecture of its checkpoints with {arg('arch')} (e.g. {arg('arch')}"
                " resnet50)."
            )
        if arch is not None:
            arch = canonical_arch(arch)
        entries = discover_series(series, source=source, trust=trust, arch=arch)
        if arch is None:  # pragma: no cover - discover_series raised for an empty folder
            raise FtdynError(f"{arg('arch')}: {series} has no manifest.json; pass {arg('arch')}.")
        return arch, None, entries
    series_arch = canonical_arch(manifest["architecture"])
    if arch is not None and canonical_arch(arch) != series_arch:
        raise FtdynError(
            f"{arg('arch', arch)}: the series {series} was trained as {series_arch}"
            f" (manifest.json); drop {arg('arch')}."
        )
    entries = discover_series(series, source=source, trust=trust)
    return series_arch, manifest, entries


@dataclass(frozen=True)
class _Loading:
    """How checkpoints become model weights: the architecture (named in errors), whether
    full pickles are trusted, whether a head of another class count is adapted (third-party
    series), and which copy of the model a file holding several is read from."""

    arch: str
    trust: bool
    adapt_head: bool
    state_prefix: str | None = None
    weights_copy: str = "main"  # --weights-copy: the model's own weights or its EMA copy
    has_source: bool = (
        False  # epoch 0 is a --source (read as its main copy, a --state-prefix optional)
    )


def _is_source(entry, loading: _Loading) -> bool:
    return loading.has_source and int(entry.epoch) == 0


def _load_state(entry, loading: _Loading):
    """:class:`~ftdyn.checkpoints.Weights` of a file entry (None for a zoo weights name, loaded
    later);
    a file holding NaN/inf weights is refused here, before anything is extracted from it."""
    if entry.path is None:
        return None
    copy = "main" if _is_source(entry, loading) else loading.weights_copy
    weights = read_weights(
        entry.path, trust=loading.trust, copy=copy, state_prefix=loading.state_prefix
    )
    _check_finite_weights(weights.state, entry.path)
    return weights


def _check_finite_weights(state, path) -> None:
    """One line naming the file and the first tensor with NaN/inf values (a diverged run)."""
    for name, tensor in (state or {}).items():
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()
        ):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FtdynError(
                f"{path}: tensor '{name}' holds {bad} NaN/inf value(s) of {tensor.numel()} (a"
                " diverged checkpoint); its activations would be meaningless: leave this file out"
                " of the series (or end the series before it)."
            )


def _apply_state(
    model, entry, weights, loading: _Loading, *, notes: bool = False
) -> dict[str, str]:
    """Load an entry into ``model``; returns which copy it gave: ``{"weights": top-level key or
    "file",
    "key_prefix": the prefix stripped from its keys}`` (recorded in the store). ``notes``: say
    what loading adapted (the first load of a file, in :func:`_check_loadable`)."""
    if weights is None:
        load_source_weights(
            model,
            entry,
            arch=loading.arch,
            trust=loading.trust,
            adapt_head=loading.adapt_head,
            state_prefix=loading.state_prefix,
        )
        return {"weights": "zoo", "key_prefix": ""}
    prefix = load_state_into_model(
        model,
        weights.state,
        source=str(entry.path),
        adapt_head=loading.adapt_head,
        arch=loading.arch,
        state_prefix=weights.prefix,
        optional_prefix=_is_source(entry, loading),
        notes=notes,
    )
    return {"weights": weights.key or "file", "key_prefix": prefix}


def _check_loadable(
    model, entries, positions, cache: dict, loading: _Loading
) -> dict[int, dict[str, str]]:
    """Load the checkpoints at ``positions`` into a scratch copy of ``model`` before the store
    is created or extended, so that a file that does not fit (another architecture, missing
    keys, no weights at all) stops the run before anything is written, not half-way.
    Costs one more read of each file; states already in ``cache`` are reused. Returns which
    copy each gave (:func:`_apply_state`) and notes a classifier head whose class count changes
    inside the series, and a source whose head has a class count none of the series' has."""
    scratch = copy.deepcopy(model)
    copies, classes, source = {}, {}, None
    for pos in positions:
        state = cache[pos] if pos in cache else _load_state(entries[pos], loading)
        copies[pos] = _apply_state(scratch, entries[pos], state, loading, notes=True)
        if _is_source(entries[pos], loading):
            # a source file without a head (its own note) has no class count to compare
            head = f"{copies[pos]['key_prefix']}{head_name(scratch)}.weight"
            source = num_classes_of(scratch) if state is None or head in state.state else None
        else:
            classes[int(entries[pos].epoch)] = num_classes_of(scratch)
    if loading.adapt_head and len(set(classes.values())) > 1:
        shown = ", ".join(f"epoch {e}: {n}" for e, n in sorted(classes.items()))
        log.info(
            f"the classifier head changes its class count inside the series ({shown} classes); "
            "each checkpoint is loaded with its own head (heads are not captured)."
        )
    if loading.adapt_head and source is not None and classes and source not in classes.values():
        series = ", ".join(str(n) for n in sorted(set(classes.values())))
        log.info(
            f"the source's classifier head has another class count than the series' (source:"
            f" {source}, series: {series} classes); each checkpoint is loaded with its own head"
            " (heads are not captured)."
        )
    return copies
