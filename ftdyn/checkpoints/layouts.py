"""Finding and ordering the checkpoints of a series: an ftdyn series from its manifest, or the
files of a third-party folder (Lightning, timm, torchvision's reference scripts, Hugging Face
Trainer, accelerate, plain files), with the series' source model as epoch 0.

:func:`discover_series` returns the ordered :class:`CheckpointEntry` list of a folder;
:func:`load_source_weights` loads its source entry (a file or a zoo weights name) into a model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..config import arg
from ..errors import FtdynError, FtdynWarning
from ..folders import ignored_message, regular_file
from ..models import (
    WEIGHTS_SUFFIXES,
    canonical_arch,
    check_weights_name,
    looks_like_file,
    zoo_state_dict,
)
from .loading import _check_file, _written_by_ftdyn, read_stored_epoch, read_weights
from .matching import load_state_into_model
from .saving import MANIFEST_NAME, read_manifest, sha256_file

log = logging.getLogger(__name__)

#: Suffixes recognised (in any case) as checkpoint files in a third-party folder.
CHECKPOINT_SUFFIXES = WEIGHTS_SUFFIXES


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a series.

    ``path`` is the file; it is ``None`` for a torchvision weights name used as the
    source (``weights_name``, e.g. ``"IMAGENET1K_V1"``), which has no file and no
    ``sha256`` (``None``). Load either kind with :func:`load_source_weights`.
    ``subfolder`` names the folder holding the file in a Hugging Face Trainer layout
    (``checkpoint-500``), where every file has the same name.
    """

    epoch: int
    path: Path | None
    sha256: str | None
    weights_name: str | None = None
    subfolder: str | None = None

    @property
    def label(self) -> str:
        """File name (``checkpoint-500/pytorch_model.bin`` in a subfolder), or
        ``torchvision:<weights name>``."""
        if self.path is None:
            return f"torchvision:{self.weights_name}"
        return f"{self.subfolder}/{self.path.name}" if self.subfolder else self.path.name


def load_source_weights(
    model: nn.Module,
    entry: CheckpointEntry,
    *,
    arch: str,
    trust: bool = False,
    adapt_head: bool = True,
    state_prefix: str | None = None,
) -> int | None:
    """Load a source entry (a file, or a zoo weights name) into ``model``: the main copy, or the one
    ``state_prefix`` names (see :func:`~ftdyn.checkpoints.matching.load_into_model`; a plain source
    file ignores a prefix none of its keys has, so it loads next to prefixed series files)."""
    if entry.path is not None:
        weights = read_weights(entry.path, trust=trust, state_prefix=state_prefix)
        load_state_into_model(
            model,
            weights.state,
            source=str(entry.path),
            adapt_head=adapt_head,
            arch=arch,
            state_prefix=weights.prefix,
            optional_prefix=True,
        )
        return weights.epoch
    state = zoo_state_dict(arch, entry.weights_name)
    load_state_into_model(
        model,
        state,
        source=arg("source", entry.weights_name),
        adapt_head=adapt_head,
        arch=arch,
        state_prefix=state_prefix,
        optional_prefix=True,
    )
    return entry.epoch


def checkpoint_stem(name: str) -> str | None:
    """``name`` without its checkpoint suffix (any case; ``.pth.tar`` is one), or None if it
    has none."""
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


# Metric values in names are not epochs: decimals (acc0.91, loss-0.5421, v1.2.3) and
# exponents with a sign (lr1e-4).
_NOT_EPOCH = re.compile(r"\d+(?:\.\d+)+(?:e[-+]?\d+)?|\d+e[-+]\d+", re.IGNORECASE)
# 'epoch', 'ep' or 'e' starting a word (so not the 'e' of 'resnet50'), then at most one
# separator and the number; tried in this order, the first marker found wins.
_EPOCH_MARKERS = tuple(
    re.compile(rf"(?<![a-z]){marker}[=_-]?(\d+)", re.IGNORECASE) for marker in ("epoch", "ep", "e")
)


def _read_name(name: str) -> tuple[int | None, tuple[int, ...], str]:
    """``(number after an epoch marker or None, the integers otherwise, the name with them
    as '#')``."""
    text = _NOT_EPOCH.sub(" ", name)
    for marker in _EPOCH_MARKERS:
        match = marker.search(text)
        if match:
            return int(match.group(1)), (), ""
    return None, tuple(int(n) for n in re.findall(r"\d+", text)), re.sub(r"\d+", "#", text)


def _numbers_in_names(folder: Path, names: dict[Path, str]) -> dict[Path, int | None]:
    """Each file's number from its name (``names``: file -> name without suffix).

    The number after an epoch marker (``epoch_3``, ``ep3``, ``e3``, ``epoch=3-step=99``),
    else the last integer, ignoring decimals. Unmarked names of the same pattern whose
    integers differ in more than one place (``m_12_loss_035``, ``m_13_loss_030``) leave
    the epoch a guess and raise an FtdynError.
    """
    parsed = {p: _read_name(name) for p, name in names.items()}
    patterns: dict[str, list[Path]] = {}
    for p, (marked, numbers, pattern) in parsed.items():
        if marked is None and numbers:
            patterns.setdefault(pattern, []).append(p)
    for paths in patterns.values():
        varying = sum(
            len(set(column)) > 1 for column in zip(*(parsed[p][1] for p in paths), strict=False)
        )
        if varying > 1:
            raise FtdynError(
                f"{folder}: cannot tell which number in the file names is the epoch: "
                f"{_listing(sorted(paths), folder)}; rename the files, e.g. epoch_3.pt."
            )
    return {
        p: marked if marked is not None else (numbers[-1] if numbers else None)
        for p, (marked, numbers, _) in parsed.items()
    }


def _listing(paths, folder: Path, limit: int = 6) -> str:
    names = [p.relative_to(folder).as_posix() for p in paths]
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def _transformers_config(folder: Path) -> str | None:
    """What ``folder/config.json`` says when it describes a Hugging Face ``transformers`` model
    (``"architectures"`` and / or ``"model_type"``, as ``save_pretrained`` writes them), else
    None. transformers' TimmWrapper models are timm models (their files hold timm's keys) and
    timm's own hub ``config.json`` (``"architecture"``) is no transformers config: both None."""
    path = folder / _HF_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    names = config.get("architectures")
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    model_type = config.get("model_type")
    model_type = model_type if isinstance(model_type, str) and model_type else None
    if model_type == "timm_wrapper" or any(n.startswith("TimmWrapper") for n in names):
        return None
    said = [f"architectures {', '.join(names)}"] if names else []
    said += [f"model_type {model_type}"] if model_type else []
    return "; ".join(said) or None


def check_not_transformers(folder: Path, where: str) -> None:
    """One-line FtdynError when ``folder`` holds a Hugging Face ``transformers`` model, which
    ftdyn cannot load (its modules are not torchvision's or timm's); ``where`` starts the line."""
    said = _transformers_config(folder)
    if said is not None:
        raise FtdynError(
            f"{where}: a Hugging Face transformers model ({_HF_CONFIG}: {said}), which ftdyn does"
            " not load (it replays torchvision and timm models); export its weights to a"
            f" torchvision or timm state dict and pass that model's {arg('arch')}, or fine-tune a"
            " timm model through transformers' TimmWrapperForImageClassification, whose files load"
            f" with {arg('arch')} timm/NAME."
        )


def _resolve_source(source: str | os.PathLike, arch: str | None) -> CheckpointEntry:
    text = str(source)
    path = Path(text)
    if looks_like_file(text):
        _check_file(path)
        check_not_transformers(path.parent, f"{arg('source')} {path}")
        return CheckpointEntry(0, path, sha256_file(path))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text):
        raise FtdynError(
            f"{arg('source')}: '{text}' is neither a checkpoint file nor a zoo weights name "
            "(e.g. IMAGENET1K_V1)."
        )
    if arch is not None:
        check_weights_name(canonical_arch(arch), text, "source")
    return CheckpointEntry(0, None, None, weights_name=text)


def _series_from_manifest(folder: Path, manifest: dict, verify: bool) -> list[CheckpointEntry]:
    entries = []
    for item in sorted(manifest["epochs"], key=lambda e: e["epoch"]):
        path = folder / item["file"]
        if not path.is_file():
            raise FtdynError(
                f"{path}: listed in {folder / MANIFEST_NAME} but missing; "
                f"re-run training ({arg('resume')}) or remove it from the manifest."
            )
        if verify and sha256_file(path) != item["sha256"]:
            raise FtdynError(
                f"{path}: changed since training (SHA-256 differs from {MANIFEST_NAME}); "
                "re-run training or remove it from the manifest."
            )
        entries.append(CheckpointEntry(int(item["epoch"]), path, item["sha256"]))
    if not entries:
        raise FtdynError(f"{folder / MANIFEST_NAME}: lists no checkpoints; re-run training.")
    return entries


# Lightning's save_last copy or link of the newest checkpoint ('last-v1.ckpt' when re-run).
# Only .ckpt: Lightning writes nothing else, and another 'last' file may be a real epoch.
_LIGHTNING_LAST = re.compile(r"last(-v\d+)?\.ckpt", re.IGNORECASE)
# Hugging Face Trainer checkpoint folders: the weights under these names, beside training state.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# A transformers model's configuration beside its weights (save_pretrained, Trainer checkpoints).
_HF_CONFIG = "config.json"
# The Trainer's state beside each checkpoint's weights: "epoch" (a float) and "global_step".
_TRAINER_STATE = "trainer_state.json"
_TRAINING_STATE = re.compile(r"optimizer|scheduler|scaler|training_args|rng_state.*", re.IGNORECASE)


def checkpoint_files(folder: Path, ignored: list[tuple[Path, str]] | None = None) -> list[Path]:
    """The checkpoint files directly in ``folder`` (hidden files and other suffixes ignored). An
    entry named like one that is no regular file (a link to a device, a FIFO, a broken link or a
    link loop) is never opened and goes to ``ignored`` as (path, why)."""
    ignored = [] if ignored is None else ignored
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and checkpoint_stem(p.name) is not None
        and regular_file(p, ignored)
    )


# Copies training tools write beside the epoch files, skipped when another file holds the same
# epoch:
# timm's CheckpointSaver 'last' / 'model_best' (hard links to, or copies of, an epoch file) and
# 'milestone-N' (N = epochs completed), torchvision's reference scripts' 'checkpoint.pth' (the
# newest
# epoch, saved twice), Lightning-style 'last-v1'.
_TOOL_COPIES = re.compile(r"(last|model_best)(-v\d+)?|checkpoint|milestone-\d+", re.IGNORECASE)
# timm's mid-epoch 'recovery-E-B' states and the 'tmp' / 'recovery_tmp' file being written: no
# epoch's weights.
_PARTIAL_STATES = re.compile(r"recovery-\d+-\d+|(recovery_)?tmp", re.IGNORECASE)


def _is_tool_copy(path: Path) -> bool:
    return bool(_TOOL_COPIES.fullmatch(checkpoint_stem(path.name) or path.name))


def _skip_copies(folder: Path, files: list[Path]) -> tuple[list[Path], list[str]]:
    """``files`` without Lightning's ``last.ckpt``, links (symbolic or hard) to another file of the
    series (the one with an epoch-like name is kept) and timm's partial states (while other files
    remain); returns ``(kept, what was skipped and why)``."""
    targets = {p.resolve() for p in files if not p.is_symlink()}
    kept, skipped = [], []
    for p in files:
        if _LIGHTNING_LAST.fullmatch(p.name):
            skipped.append(f"{p.name} (Lightning's copy of the newest checkpoint)")
        elif p.is_symlink() and p.resolve() in targets:
            skipped.append(f"{p.name} (a link to {p.resolve().name})")
        else:
            kept.append(p)
    inodes: dict[tuple[int, int], list[Path]] = {}
    for p in kept:
        inodes.setdefault((p.stat().st_dev, p.stat().st_ino), []).append(p)
    for group in inodes.values():  # hard links: one file under several names
        ranked = sorted(group, key=lambda p: (_is_tool_copy(p), p.name))
        skipped += [f"{p.name} (the same file as {ranked[0].name})" for p in ranked[1:]]
        kept = [p for p in kept if p not in ranked[1:]]
    partial = [p for p in kept if _PARTIAL_STATES.fullmatch(checkpoint_stem(p.name) or "")]
    if partial and len(partial) < len(kept):
        skipped += [f"{p.name} (timm's mid-epoch or unfinished state)" for p in partial]
        kept = [p for p in kept if p not in partial]
    return kept, skipped


def _skip_epoch_copies(stored: dict[Path, int | None]) -> tuple[dict[Path, int | None], list[str]]:
    """Without the tool copies (:data:`_TOOL_COPIES`) of an epoch that another file stores too
    (an epoch file, else the first of the copies is kept)."""
    by_epoch: dict[int, list[Path]] = {}
    for p, e in stored.items():
        if e is not None:
            by_epoch.setdefault(e, []).append(p)
    dropped, skipped = set(), []
    for epoch, paths in by_epoch.items():
        copies = sorted((p for p in paths if _is_tool_copy(p)), key=lambda p: p.name)
        if len(paths) < 2 or not copies:
            continue
        extra = copies if len(copies) < len(paths) else copies[1:]
        keep = next(
            p for p in sorted(paths, key=lambda p: (_is_tool_copy(p), p.name)) if p not in extra
        )
        dropped.update(extra)
        skipped += [f"{p.name} (a copy of epoch {epoch}, {keep.name})" for p in extra]
    return {p: e for p, e in stored.items() if p not in dropped}, skipped


def _subfolder_weights(folder: Path, ignored: list[tuple[Path, str]]) -> list[Path]:
    """One weights file per subfolder (Hugging Face Trainer: ``checkpoint-500/pytorch_model.bin``).

    A subfolder holding ``model.safetensors`` or ``pytorch_model.bin`` gives that file
    (the first when both); otherwise its single checkpoint file that is not training
    state (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``, ...). Subfolders
    without one are skipped; several candidates raise an FtdynError.
    """
    found = []
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        preferred = [sub / name for name in _HF_WEIGHTS if (sub / name).is_file()]
        weights = preferred[:1] or [
            p
            for p in checkpoint_files(sub, ignored)
            if not _TRAINING_STATE.fullmatch(checkpoint_stem(p.name))
        ]
        if len(weights) > 1:
            raise FtdynError(
                f"{sub}: holds several weights files ({_listing(weights, folder)}); keep one per "
                "checkpoint folder, or name it pytorch_model.bin or model.safetensors."
            )
        found += weights
    return found


def _trainer_state_epoch(sub: Path) -> float | None:
    """The ``"epoch"`` of ``sub/trainer_state.json`` (a Hugging Face Trainer checkpoint folder),
    or None when there is no such file, it is unreadable or holds no number there."""
    try:
        epoch = json.loads((sub / _TRAINER_STATE).read_text(encoding="utf-8")).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
        return None
    return float(epoch)


def _trainer_epochs(folder: Path, stored: dict[Path, int | None]) -> dict[Path, int | None]:
    """``stored`` with each Trainer checkpoint's epoch from its ``trainer_state.json``.

    The Trainer names its folders by global step (``checkpoint-500``) even with
    ``save_strategy="epoch"``; its ``trainer_state.json`` holds the epoch (``1.0``). When every
    file of the series is in such a folder and every epoch there is a distinct whole number,
    those epochs number the series (with a note). When some are fractional (saved mid-epoch,
    ``save_strategy="steps"``), missing or repeated, the step numbers in the folder names are
    kept, with a warning; without any epoch there, the folder names number the series as before.
    """
    subs = {p: p.parent for p in stored if p.parent != folder}
    if not subs or len(subs) < len(stored):
        return stored
    epochs = {p: _trainer_state_epoch(sub) for p, sub in subs.items()}
    if all(e is None for e in epochs.values()):
        return stored
    whole = {p: int(e) for p, e in epochs.items() if e is not None and e.is_integer() and e >= 0}
    order = sorted(stored, key=lambda p: (epochs[p] is None, epochs[p] or 0.0, p.parent.name))
    if len(whole) == len(stored) and len(set(whole.values())) == len(whole):
        shown = ", ".join(f"{p.parent.name}: epoch {whole[p]}" for p in order[:3])
        log.info(
            f"{folder}: numbering the Hugging Face Trainer checkpoints by the epoch in their"
            f" {_TRAINER_STATE} ({shown}{', ...' if len(order) > 3 else ''})."
        )
        return whole
    fractional = [p for p in order if epochs[p] is not None and p not in whole]
    missing = [p for p in order if epochs[p] is None]
    if fractional:
        why = (
            f"the epochs in their {_TRAINER_STATE} are not whole numbers"
            f" ({', '.join(f'{p.parent.name}: {epochs[p]:g}' for p in fractional[:3])}"
            f"{', ...' if len(fractional) > 3 else ''}; saved mid-epoch, e.g. with"
            ' save_strategy="steps")'
        )
    elif missing:
        why = f"{_listing(missing, folder)} have no epoch in {_TRAINER_STATE}"
    else:
        why = f"several hold the same epoch in their {_TRAINER_STATE}"
    warnings.warn(
        f"{folder}: the Hugging Face Trainer checkpoints are numbered by the global step in their"
        f" folder names, not by epoch: {why}; the store's epochs are these step numbers.",
        FtdynWarning,
        stacklevel=3,
    )
    return stored


def _epoch_numbers(
    folder: Path, stored: dict[Path, int | None], names: dict[Path, str]
) -> dict[Path, int]:
    """Each file's epoch number: the stored epochs when every file has one, else the numbers in the
    names (which stored epochs must agree with); unorderable, duplicate or negative numbers raise.
    """
    files = list(stored)
    if all(e is not None for e in stored.values()):
        numbers, how = stored, "stored epoch"
    else:
        named = _numbers_in_names(folder, {p: names[p] for p in files})
        nameless = [p for p, n in named.items() if n is None]
        if nameless:
            raise FtdynError(
                f"{folder}: cannot order the checkpoints: {_listing(nameless, folder)} store no"
                " epoch and have no number in the file name; rename them (e.g. epoch_3.pt)."
            )
        disagree = [p for p in files if stored[p] is not None and stored[p] != named[p]]
        if disagree:
            raise FtdynError(
                f"{folder}: ambiguous order: some files store an epoch and others do not, and"
                f" {_listing(disagree, folder)} store an epoch different from the number in the"
                " name; rename them to match their epochs."
            )
        numbers, how = named, "number in the file name"
    by_number: dict[int, list[Path]] = {}
    for p, n in numbers.items():
        by_number.setdefault(n, []).append(p)
    dupes = [p for ps in by_number.values() if len(ps) > 1 for p in ps]
    if dupes:
        raise FtdynError(
            f"{folder}: ambiguous order: {_listing(dupes, folder)} have the same {how}; "
            "remove or rename the duplicates."
        )
    if any(n < 0 for n in numbers.values()):
        raise FtdynError(
            f"{folder}: negative epoch in"
            f" {_listing([p for p, n in numbers.items() if n < 0], folder)}."
        )
    return numbers


def _zero_based_shift(
    folder: Path, numbers: dict[Path, int], *, has_source: bool, trust: bool
) -> int:
    """1 when the files count from 0 (0-based counters save *after* the first epoch, so no file is
    the
    untouched source), else 0. An ftdyn checkpoint's epoch 0 is the source and stays. Without a
    source the shift is noted: the series then has no epoch 0."""
    first = next((p for p, n in numbers.items() if n == 0), None)
    if first is None or (not has_source and _written_by_ftdyn(first, trust)):
        return 0
    if not has_source:
        log.info(
            f"{folder}: epochs count from 0 here ({first.name} holds the weights after the first"
            f" epoch); they are numbered 1-{max(numbers.values()) + 1} and the series has no source"
            f" model (epoch 0): pass {arg('source')} (a file or weights name) for one, or choose"
            " another epoch with analyze --reference."
        )
    return 1


def discover_series(
    folder: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    trust: bool = False,
    arch: str | None = None,
    verify: bool = True,
) -> list[CheckpointEntry]:
    """The checkpoints of ``folder`` in epoch order (a list of :class:`CheckpointEntry`).

    **ftdyn series** (``folder/manifest.json`` exists): the manifest's entries; each
    file must exist and (``verify``) match its SHA-256. Epoch 0 is the source model
    written by training, so ``source`` is refused.

    **Third-party folder**: every ``.pt/.pth/.pth.tar/.bin/.ckpt/.safetensors`` file
    (suffix in any case; hidden files and other suffixes are ignored). Copies the
    training tools write are skipped with one logged note (:func:`_skip_copies`,
    :func:`_skip_epoch_copies`): Lightning's ``last.ckpt``, links (symbolic or hard) to
    another file, timm's ``last`` / ``model_best`` / ``milestone-N`` and torchvision's
    ``checkpoint.pth`` when another file stores the same epoch, timm's ``recovery-*``. A folder
    without such files but with subfolders each holding one weights
    file (Hugging Face Trainer: ``checkpoint-500/pytorch_model.bin`` or
    ``model.safetensors``, beside optimizer state) uses those, named by their folder; the epoch in
    each one's ``trainer_state.json`` numbers them when all are distinct whole numbers
    (:func:`_trainer_epochs`; else the folders' step numbers, with a warning when some epoch
    there is fractional, missing or repeated). Ordering rule:

    1. if *every* file stores an epoch (``"epoch"`` in the dict, or the safetensors
       metadata), those numbers are used;
    2. otherwise each file's number comes from its name (see
       :func:`_numbers_in_names`: the number after ``epoch``/``ep``/``e``, else the
       last integer, decimals ignored); files that do store an epoch must agree with it.

    Duplicate numbers, files without a number, names with several varying numbers or
    disagreeing stored/name numbers raise an FtdynError listing the files.

    **Source / epoch 0**: ``source`` (a checkpoint file, or a torchvision weights
    name such as ``IMAGENET1K_V1`` given as an entry with ``path=None`` and
    ``weights_name`` set) becomes epoch 0. A source file that is also in the folder
    (same path or same bytes) is taken out of the files. If a remaining file has
    number 0 too (0-based counters such as Lightning's ``epoch=0`` after the first
    epoch), all files are shifted by +1 so they follow the source. Without ``source``
    such a 0-based series is shifted too, with a note: a trained file is never epoch 0,
    the untouched source (the series then has no epoch 0). ``arch`` (optional)
    validates a weights name early.
    """
    folder = _checked_folder(Path(folder))
    manifest = read_manifest(folder)
    if manifest is not None:
        if source is not None:
            raise FtdynError(
                f"{arg('source')}: {folder} is an ftdyn series whose epoch 0 already is the source"
                f" model; drop {arg('source')}."
            )
        return _series_from_manifest(folder, manifest, verify)
    check_not_transformers(folder, str(folder))
    ignored: list[tuple[Path, str]] = []
    files, names, skipped = _weight_files(folder, ignored)
    for sub in sorted({p.parent for p in files} - {folder}):
        check_not_transformers(sub, str(sub))
    note = ignored_message(ignored)
    if note:  # an epoch left out changes every number after it: a warning, not a note
        warnings.warn(f"{folder}: {note}", FtdynWarning, stacklevel=2)
    src = _resolve_source(source, arch) if source is not None else None
    if src is not None and src.path is not None:
        files = _without_source(folder, files, src)
    stored, copies = _skip_epoch_copies({p: read_stored_epoch(p, trust=trust) for p in files})
    stored = _trainer_epochs(folder, stored)
    if skipped + copies:
        log.info(f"{folder}: skipping {', '.join(skipped + copies)}.")
    entries = _ordered_entries(folder, stored, names, has_source=src is not None, trust=trust)
    return ([src] if src is not None else []) + entries


def _checked_folder(folder: Path) -> Path:
    """``folder`` if it is a directory, else an FtdynError saying what to pass instead."""
    if folder.is_file():
        raise FtdynError(
            f"{folder}: is a file, not a checkpoint folder; pass the folder holding the series "
            f"(e.g. {folder.parent})."
        )
    if not folder.is_dir():
        raise FtdynError(f"{folder}: no such checkpoint folder; check the path.")
    return folder


def _weight_files(
    folder: Path, ignored: list[tuple[Path, str]]
) -> tuple[list[Path], dict[Path, str], list[str]]:
    """The third-party folder's weights files, each one's name for numbering (file stem, or the
    Hugging Face subfolder's name) and the tool copies skipped; an FtdynError when there are none.
    Entries that are no regular file go to ``ignored`` (:func:`checkpoint_files`).
    """
    if re.fullmatch(r"checkpoint-\d+", folder.name) and any(
        (folder / w).is_file() for w in _HF_WEIGHTS
    ):
        raise FtdynError(
            f"{folder}: is one Hugging Face Trainer checkpoint; pass the folder holding all of them"
            f" ({folder.parent})."
        )
    files, skipped = _skip_copies(folder, checkpoint_files(folder, ignored))
    names = {p: checkpoint_stem(p.name) for p in files}
    if not files:
        files = _subfolder_weights(folder, ignored)
        names = {p: p.parent.name for p in files}
    if not files:
        subfolders = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        inside = (
            f"; none of its {len(subfolders)} subfolders holds one either (expected e.g. "
            "checkpoint-500/pytorch_model.bin or checkpoint-500/model.safetensors)"
            if subfolders
            else ""
        )
        project = (
            f"; it looks like an accelerate project folder: pass {folder / 'checkpoints'}"
            if (folder / "checkpoints").is_dir()
            else ""
        )
        raise FtdynError(
            f"{folder}: no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}){inside}{project}."
        )
    return files, names, skipped


def _without_source(folder: Path, files: list[Path], src: CheckpointEntry) -> list[Path]:
    """``files`` less the source checkpoint (same path or same bytes); an FtdynError if nothing
    is left."""
    same = [
        p
        for p in files
        if p.resolve() == src.path.resolve()
        or (p.stat().st_size == src.path.stat().st_size and sha256_file(p) == src.sha256)
    ]
    files = [p for p in files if p not in same]
    if not files:
        raise FtdynError(
            f"{folder}: holds only the source checkpoint; add the fine-tuned checkpoints."
        )
    return files


def _ordered_entries(
    folder: Path,
    stored: dict[Path, int | None],
    names: dict[Path, str],
    *,
    has_source: bool,
    trust: bool,
) -> list[CheckpointEntry]:
    """One entry per file in epoch order, numbered by :func:`_epoch_numbers` and shifted by
    :func:`_zero_based_shift`; a file in a subfolder records that subfolder."""
    numbers = _epoch_numbers(folder, stored, names)
    shift = _zero_based_shift(folder, numbers, has_source=has_source, trust=trust)
    return [
        CheckpointEntry(
            n + shift, p, sha256_file(p), subfolder=p.parent.name if p.parent != folder else None
        )
        for n, p in sorted((n, p) for p, n in numbers.items())
    ]
