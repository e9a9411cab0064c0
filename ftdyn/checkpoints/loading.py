"""Reading checkpoint files safely (used by ``ftdyn extract``, training's resume and
``build_model(weights=PATH)``).

:func:`read_weights` (and :func:`load_state_dict`) reads any supported format (plain state dict,
dicts holding ``state_dict`` / ``model_state_dict`` / ``model``, ftdyn checkpoints, Lightning
``.ckpt``, ``.safetensors``) into a clean state dict, the main copy or the one ``copy="ema"`` /
a ``state_prefix`` picks. **Security**: pickles are only ever read with ``weights_only=True``;
a file that needs more is refused with the globals it would import (listed without executing
anything) unless ``trust=True`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import struct
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import WEIGHTS_COPIES, arg
from ..errors import FtdynError
from .saving import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, _short


def load_checkpoint_payload(path: str | os.PathLike) -> dict:
    """The whole dict of an ftdyn checkpoint (``weights_only=True``), e.g. for resume."""
    path = Path(path)
    payload = _torch_load(path, trust=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise FtdynError(
            f"{path}: not an ftdyn checkpoint (no 'format': '{CHECKPOINT_FORMAT}'); "
            f"remove it or re-run training with {arg('overwrite')}."
        )
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise FtdynError(
            f"{path}: ftdyn checkpoint format_version {version!r} is not supported "
            f"(this ftdyn reads {CHECKPOINT_FORMAT_VERSION}); upgrade ftdyn."
        )
    return payload


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# numpy bool/int/float scalars (an ``"epoch": np.int64(3)`` or a metric) unpickle through
# numpy's scalar constructor, np.dtype and the numeric dtype classes, which only build
# numbers. Allowed in this module's loads only, under the constructor's numpy 2 name and
# the numpy 1 name that older files carry.
_NUMPY_SCALAR = np.int64(0).__reduce__()[0]
_NUMPY_SCALAR_GLOBALS = [
    _NUMPY_SCALAR,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    np.dtype,
    *{type(np.dtype(c)) for c in "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]},
]
# safe_globals edits a process-wide set and removes its entries on exit, so overlapping
# loads (extraction prefetches in a thread) must not interleave their enter/exit.
_NUMPY_SCALARS_LOCK = threading.Lock()
# timm's CheckpointSaver and torchvision's reference scripts store their command-line ``args`` as an
# argparse.Namespace, a plain attribute holder (timm's own loader allows it for weights-only loads).
# Lightning's ModelCheckpoint stores nothing beyond tensors and plain containers.
_SAFE_GLOBALS = [*_NUMPY_SCALAR_GLOBALS, argparse.Namespace]


def _unreadable(path: Path, exc: BaseException | str) -> FtdynError:
    if isinstance(exc, str):
        why = exc
    else:
        text = " ".join(str(exc).split()).split(". ")[0]  # torch's first sentence says what broke
        why = f"{type(exc).__name__}: {_short(Exception(text))}" if text else type(exc).__name__
    return FtdynError(f"{path}: not a readable checkpoint ({why}); re-download or re-create it.")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FtdynError(f"{path}: no such checkpoint file; check the path.")
    if not path.is_file():
        raise FtdynError(f"{path}: is not a file; pass a checkpoint file.")
    if path.stat().st_size == 0:
        raise _unreadable(path, "empty file")


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by sniffing the header (u64 little-endian length, then '{')."""
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8


def _safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file, reading only its header."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > min(path.stat().st_size - 8, 100 * 1024 * 1024):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _unreadable(path, f"safetensors header: {_short(exc)}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "safetensors header is not a JSON object")
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (TypeError, KeyError, IndexError, ValueError):
        raise _unreadable(path, "safetensors header lacks valid data_offsets") from None
    if 8 + n + end != path.stat().st_size:
        raise _unreadable(
            path,
            f"safetensors data is {path.stat().st_size - 8 - n} bytes, header says {end}; "
            "truncated or padded",
        )
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    """Globals a pickle would import, listed without executing anything."""
    names: list[str] = []
    # legacy (non-zip) files are not supported by that helper
    with contextlib.suppress(Exception):
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        names += re.findall(r"Unsupported global: ([\w.]+)", str(exc))
    allowed = {
        g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS
    }
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _check_zip_crcs(path: Path) -> None:
    """Refuse a zip-format torch file whose members fail their CRC-32.

    ``torch.load`` does not check CRCs, so flipped bytes in tensor data would load as
    silently wrong weights. Costs one sequential read (about 10 ms for a 47 MB resnet18 file).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # testzip only reads: any failure means a damaged file
        raise _unreadable(path, exc) from None
    if bad is not None:
        raise _unreadable(path, f"damaged data: CRC check failed for {bad}")


def _torch_load(path: Path, *, trust: bool, mmap: bool = False) -> Any:
    """``torch.load`` on CPU; ``weights_only=True`` unless ``trust``. One-line errors."""
    _check_file(path)
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_crcs(path)
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise FtdynError(
                f"{path}: could not be loaded even with {arg('trust_checkpoint')} "
                f"({type(exc).__name__}: {_short(exc)})."
            ) from None
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic.startswith(b"PK\x03\x04") and not magic.startswith(b"\x80"):
        raise _unreadable(path, "unknown format: not a PyTorch zip, pickle or safetensors file")
    try:
        # mmap materialises only what is touched (discovery needs just the epoch); zip format only
        with (
            warnings.catch_warnings(),
            _NUMPY_SCALARS_LOCK,
            torch.serialization.safe_globals(_SAFE_GLOBALS),
        ):
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise _unreadable(path, exc) from None
        names = _unsafe_globals(path, exc)
        if names:
            needs = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise FtdynError(
                f"{path}: refusing to unpickle; it needs {needs}. If you trust this file, pass"
                f" {arg('trust_checkpoint')}."
            ) from None
        detail = re.search(
            r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)", str(exc), re.S
        )
        why = f" ({_short(Exception(detail.group(1)), 100)})" if detail else ""
        raise FtdynError(
            f"{path}: refusing to unpickle; the weights-only loader rejects it{why}. "
            f"If you trust this file, pass {arg('trust_checkpoint')}."
        ) from None
    except Exception as exc:  # weights_only loading executes nothing: any error is a bad file
        raise _unreadable(path, exc) from None


def _strip_wrappers(key: str) -> str:
    """Remove leading ``module.`` / ``_orig_mod.`` (repeatedly, in any order)."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


# Top-level keys under which training tools store a second, averaged copy of the model: timm's
# CheckpointSaver ``state_dict_ema``, torchvision's reference scripts ``model_ema`` (an
# AveragedModel:
# ``module.`` keys and an ``n_averaged`` counter), and names other scripts use.
EMA_KEYS = (
    "state_dict_ema",
    "model_ema",
    "ema_state_dict",
    "model_ema_state_dict",
    "ema",
    "ema_model",
)
# Key prefixes of an EMA copy kept inside the main state dict (a LightningModule's ``self.ema``).
EMA_PREFIXES = (
    "ema.module.",
    "model_ema.module.",
    "ema_model.module.",
    "ema_model.",
    "model_ema.",
    "ema.",
)


@dataclass(frozen=True)
class Weights:
    """One file's weights: the clean ``state`` dict, its stored ``epoch`` (or None), ``key``: the
    top-level entry they came from (``""`` for a plain state dict or safetensors file), and
    ``prefix``: the key prefix still to select inside them (an EMA copy in the main state dict, or
    the ``--state-prefix``), or None to let :func:`~ftdyn.checkpoints.matching.match_keys` find the
    model's keys."""

    state: dict[str, torch.Tensor]
    epoch: int | None
    key: str = ""
    prefix: str | None = None


def _find_state_dict(obj: Any, path: Path, depth: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, the top-level key it was under or "")``."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), ""
    if isinstance(obj, dict) and depth < 4:
        tensors = {
            k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        if tensors and len(tensors) == len(obj):
            return tensors, ""
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return _find_state_dict(obj[key], path, depth + 1)[0], key
        if tensors and len(tensors) >= 0.5 * len(obj):  # a state dict with a few extra entries
            return tensors, ""
        keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
        raise FtdynError(
            f"{path}: no state dict found (keys: {keys}); expected tensors or a "
            f"'{_NESTED_KEYS[0]}' / '{_NESTED_KEYS[1]}' / '{_NESTED_KEYS[2]}' entry."
        )
    raise FtdynError(f"{path}: holds a {type(obj).__name__}, not a state dict or model.")


def _top_level_copy(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get(key), (dict, nn.Module))


def _select(
    obj: Any, path: Path, copy: str, state_prefix: str | None
) -> tuple[dict, str, str | None]:
    """``(raw state dict, its top-level key, prefix left to select)`` for ``--weights-copy`` /
    ``--state-prefix``: a ``state_prefix`` naming a top-level entry (``state_dict_ema``) picks it.
    """
    if copy not in WEIGHTS_COPIES:
        raise FtdynError(
            f"{arg('weights_copy')}: '{copy}' is not one of {', '.join(WEIGHTS_COPIES)}."
        )
    key = state_prefix.rstrip(".") if state_prefix else None
    if key and _top_level_copy(obj, key):
        return _find_state_dict(obj[key], path, 1)[0], key, None
    if copy == "ema" and state_prefix is None:
        for key in EMA_KEYS:
            if _top_level_copy(obj, key):
                return _find_state_dict(obj[key], path, 1)[0], key, None
        raw, key = _find_state_dict(obj, path)
        clean = [_strip_wrappers(k) for k in raw]
        prefix = next((p for p in EMA_PREFIXES if any(k.startswith(p) for k in clean)), None)
        if prefix is None:
            tops = (
                ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
            )
            raise FtdynError(
                f"{arg('weights_copy')} ema: {path} holds no EMA copy (no top-level"
                f" {' / '.join(EMA_KEYS[:3])} entry, no {' / '.join(EMA_PREFIXES[:2])} keys; it"
                f" holds {tops}); drop {arg('weights_copy')} or name the copy with"
                f" {arg('state_prefix')}."
            )
        return raw, key, prefix
    raw, key = _find_state_dict(obj, path)
    return raw, key, state_prefix


def _stored_epoch(obj: Any) -> int | None:
    """The ``"epoch"`` entry as an int: ints, whole-number floats (``3.0``), numpy scalars,
    one-element tensors and digit strings; anything else (``2.5``, a bool) counts as absent."""
    if not isinstance(obj, dict):
        return None
    epoch = obj.get("epoch")
    if (isinstance(epoch, torch.Tensor) and epoch.numel() == 1) or isinstance(epoch, np.generic):
        epoch = epoch.item()
    elif isinstance(epoch, str) and epoch.strip().isdigit():
        epoch = int(epoch)
    if isinstance(epoch, bool):
        return None
    if isinstance(epoch, int):
        return epoch
    if isinstance(epoch, float) and epoch.is_integer():
        return int(epoch)
    return None


def read_weights(
    path: str | os.PathLike,
    *,
    trust: bool = False,
    copy: str = "main",
    state_prefix: str | None = None,
) -> Weights:
    """Read any supported checkpoint file into :class:`Weights`.

    Formats: a plain state dict; a dict holding it under ``state_dict`` /
    ``model_state_dict`` / ``model`` (nested up to a few levels; the value may be a
    pickled ``nn.Module``, which only loads with ``trust``); ftdyn checkpoints;
    Lightning ``.ckpt`` (its attribute prefix, e.g. ``model.``, is resolved later by
    :func:`~ftdyn.checkpoints.matching.match_keys` against the model's keys); ``.safetensors``
    (epoch from the ``epoch`` metadata entry). ``copy="ema"`` reads the EMA copy (:data:`EMA_KEYS`
    top-level entries, else :data:`EMA_PREFIXES` keys) and refuses a file without one;
    a ``state_prefix`` that names a top-level entry (``state_dict_ema``, ``model_ema``)
    reads that entry. Leading ``module.`` and ``_orig_mod.`` are stripped from every
    key; non-tensor entries are dropped; tensors are on CPU.

    Pickles load with ``weights_only=True`` (plus numpy scalars and ``argparse.Namespace``);
    one that needs other globals raises an FtdynError naming them and
    ``--trust-checkpoint`` unless ``trust=True``.
    """
    path = Path(path)
    _check_file(path)
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = _safetensors_metadata(path)
        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable(path, exc) from None
        epoch = _stored_epoch(meta)
    else:
        obj = _torch_load(path, trust=trust)
        epoch = _stored_epoch(obj)
    raw, key, prefix = _select(obj, path, copy, state_prefix)
    state: dict[str, torch.Tensor] = {}
    for name, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        clean = _strip_wrappers(name)
        if clean in state:
            raise FtdynError(
                f"{path}: key '{clean}' appears twice after removing module./_orig_mod. prefixes."
            )
        state[clean] = value
    if not state:
        raise FtdynError(f"{path}: holds no tensors; it is not a model checkpoint.")
    return Weights(state, epoch, key, prefix)


def load_state_dict(
    path: str | os.PathLike, *, trust: bool = False
) -> tuple[dict[str, torch.Tensor], int | None]:
    """``(state_dict, stored_epoch_or_None)`` of the main copy in a file (see
    :func:`read_weights`)."""
    weights = read_weights(path, trust=trust)
    return weights.state, weights.epoch


def _written_by_ftdyn(path: Path, trust: bool) -> bool:
    """Whether ``path`` is an ftdyn checkpoint (its epoch 0 is the source model before any
    update)."""
    if _is_safetensors(path):
        return False
    obj = _torch_load(path, trust=trust, mmap=True)
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def read_stored_epoch(path: str | os.PathLike, *, trust: bool = False) -> int | None:
    """The epoch stored inside a checkpoint file, or None (safetensors: header only)."""
    path = Path(path)
    _check_file(path)
    if _is_safetensors(path):
        return _stored_epoch(_safetensors_metadata(path))
    return _stored_epoch(_torch_load(path, trust=trust, mmap=True))
