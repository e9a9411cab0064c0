"""Find, order, verify and safely load checkpoint series (README, "Walk-through on your
own data" and "Checkpoints from elsewhere").

Writing side (used by training):

* :func:`save_checkpoint` writes ``{"format": "ftdyn-checkpoint", "format_version": 1,
  "epoch": E, "state_dict": {...}, **extra}`` atomically (temporary file in the same
  folder, flush + fsync, ``os.replace``) and returns its SHA-256. Everything in it
  loads with ``torch.load(weights_only=True)``; :func:`to_weights_only` converts numpy
  arrays / tuples / numpy scalars in ``extra`` (e.g. RNG states) to loadable types.
* :func:`write_manifest` / :func:`read_manifest`: the series manifest
  (``manifest.json``), validated against :data:`MANIFEST_REQUIRED_KEYS`.

Loading side (used by ``ftdyn extract`` and ``build_model(weights=PATH)``):

* :func:`read_weights` (and :func:`load_state_dict`) reads any supported format (plain state dict,
  dicts holding
  ``state_dict`` / ``model_state_dict`` / ``model``, ftdyn checkpoints, Lightning
  ``.ckpt``, ``.safetensors``) into a clean state dict. **Security**: pickles are only
  ever read with ``weights_only=True``; a file that needs more is refused with the
  globals it would import (listed without executing anything) unless ``trust=True``
  (``--trust-checkpoint``).
* :func:`load_into_model` loads strictly, resolving arbitrary attribute prefixes
  (Lightning ``model.``/``net.``) against the model's own keys, and explains mismatches;
  ``copy="ema"`` / a ``state_prefix`` pick an EMA or other copy (:func:`read_weights`).

This layer imports the model zoo (:mod:`ftdyn.models`) for architecture names, heads and
zoo weights; the zoo imports nothing from it.
* :func:`discover_series` returns the ordered :class:`CheckpointEntry` list of a
  folder (from its manifest, or from third-party files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
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

from .config import WEIGHTS_COPIES, arg
from .errors import FtdynError
from .models import (
    WEIGHTS_SUFFIXES,
    canonical_arch,
    check_weights_name,
    fits_head,
    head_name,
    looks_like_file,
    num_classes_of,
    replace_head,
    timm_twin,
    zoo_state_dict,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHECKPOINT_FORMAT = "ftdyn-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
SERIES_FORMAT = "ftdyn-series"
SERIES_FORMAT_VERSION = 1
#: File names of an ftdyn series: ``epoch_003.pt``.
CHECKPOINT_PATTERN = "epoch_{epoch:03d}.pt"
CHECKPOINT_REGEX = re.compile(r"^epoch_(\d{3,})\.pt$")
#: Suffixes recognised (in any case) as checkpoint files in a third-party folder.
CHECKPOINT_SUFFIXES = WEIGHTS_SUFFIXES

#: Keys every manifest must hold; other keys (dataset, hyper-parameters, seed, init,
#: per-epoch metrics, ...) are written by training and passed through unchanged.
MANIFEST_REQUIRED_KEYS = (
    "format",
    "format_version",
    "architecture",
    "num_classes",
    "classes",
    "input_size",
    "normalization",
    "epochs",
    "ftdyn_version",
    "torch_version",
)


def checkpoint_filename(epoch: int) -> str:
    """``epoch_003.pt`` for ``epoch=3`` (zero padded to 3 digits)."""
    if int(epoch) < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return CHECKPOINT_PATTERN.format(epoch=int(epoch))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def to_weights_only(obj: Any) -> Any:
    """Convert ``obj`` to types ``torch.load(weights_only=True)`` accepts.

    Tensors are detached and moved to CPU, numpy arrays become (nested) lists, numpy
    scalars Python scalars, tuples lists, dtypes/devices strings; dicts, lists, str,
    int, float, bool, bytes and None pass through. Anything else raises ``TypeError``.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_weights_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_weights_only(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, torch.dtype) or isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in an ftdyn checkpoint (weights_only)")


def rng_states() -> dict:
    """The python, numpy and torch (CPU + CUDA) RNG states, weights_only-loadable."""
    import random

    np_state = np.random.get_state()
    states = {
        "python": to_weights_only(random.getstate()),
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned (after a weights_only load)."""
    import random

    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state(
            (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        )
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(fh)`` on a temp file next to ``path``, fsync, then ``os.replace``.

    The file gets the permissions of any new file (``0o666`` less the umask, default
    ACLs), not mkstemp's private ``0o600``, so a series can be shared. A write that
    fails for lack of space or permission leaves no temp file and raises a one-line
    :class:`FtdynError` naming ``path``.
    """
    path = Path(path)
    # os.open applies the umask itself: reading it (os.umask) would briefly change it for every
    # thread.
    # 64 random bits make a clash with a leftover temp file negligible, so O_EXCL needs no retry
    # loop.
    tmp = path.parent / f".{path.name}.{os.urandom(8).hex()}.tmp"
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        created = True
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if created:
            tmp.unlink(missing_ok=True)
        # torch's zip writer reports a failed write of the file object as a RuntimeError from C++
        torch_writer = isinstance(exc, RuntimeError) and (
            "inline_container" in str(exc) or "PytorchStreamWriter" in str(exc)
        )
        if isinstance(exc, OSError) or torch_writer:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise FtdynError(
                f"cannot write {path}: {reason}; free space or make the folder writable, then"
                " re-run (a stopped `ftdyn train` continues with --resume)."
            ) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(
    path: str | os.PathLike, state_dict: dict, *, epoch: int, extra: dict | None = None
) -> str:
    """Atomically write an ftdyn checkpoint and return its hex SHA-256.

    Content: ``{"format": "ftdyn-checkpoint", "format_version": 1, "epoch": epoch,
    "state_dict": {k: cpu tensor}, **extra}``. ``extra`` (optimizer state, RNG states,
    metrics, ...) is passed through :func:`to_weights_only`, so the file always loads
    with ``weights_only=True``. A failure mid-write leaves nothing at ``path``.
    """
    extra = dict(extra or {})
    clash = {"format", "format_version", "epoch", "state_dict"} & extra.keys()
    if clash:
        raise ValueError(f"extra may not override {sorted(clash)}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        **to_weights_only(extra),
    }
    path = Path(path)
    _atomic_write(path, lambda fh: torch.save(payload, fh))
    return sha256_file(path)


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


# -------------------------------------------------------------------------- manifest


def validate_manifest(manifest: Any, where: str | os.PathLike = MANIFEST_NAME) -> dict:
    """Check required keys and basic types; raise a one-line FtdynError naming ``where``."""
    if not isinstance(manifest, dict):
        raise FtdynError(
            f"{where}: a manifest must be a JSON object; re-run training or remove the file."
        )
    missing = [k for k in MANIFEST_REQUIRED_KEYS if k not in manifest]
    if missing:
        raise FtdynError(
            f"{where}: manifest lacks required key(s) {', '.join(missing)}; "
            "re-run training or fix the file."
        )
    if manifest["format"] != SERIES_FORMAT:
        raise FtdynError(
            f"{where}: 'format' is {manifest['format']!r}, expected '{SERIES_FORMAT}'."
        )
    if manifest["format_version"] != SERIES_FORMAT_VERSION:
        raise FtdynError(
            f"{where}: manifest format_version {manifest['format_version']!r} is not supported "
            f"(this ftdyn reads {SERIES_FORMAT_VERSION}); upgrade ftdyn."
        )
    norm = manifest["normalization"]
    if not (
        isinstance(norm, dict)
        and isinstance(norm.get("mean"), list)
        and isinstance(norm.get("std"), list)
    ):
        raise FtdynError(f'{where}: \'normalization\' must be {{"mean": [...], "std": [...]}}.')
    if not isinstance(manifest["classes"], list):
        raise FtdynError(f"{where}: 'classes' must be a list of class names.")
    epochs = manifest["epochs"]
    if not isinstance(epochs, list):
        raise FtdynError(
            f'{where}: \'epochs\' must be a list of {{"epoch", "file", "sha256"}} entries.'
        )
    seen = set()
    for i, entry in enumerate(epochs):
        if not (isinstance(entry, dict) and all(k in entry for k in ("epoch", "file", "sha256"))):
            raise FtdynError(f"{where}: epochs[{i}] must hold 'epoch', 'file' and 'sha256'.")
        if not isinstance(entry["epoch"], int) or entry["epoch"] in seen:
            raise FtdynError(
                f"{where}: epochs[{i}] has an invalid or duplicate epoch {entry['epoch']!r}."
            )
        seen.add(entry["epoch"])
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    """Validate and atomically write ``folder/manifest.json`` (indent 2); returns its path."""
    path = Path(folder) / MANIFEST_NAME
    validate_manifest(manifest, path)
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return path


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The validated manifest of ``folder``, or ``None`` when there is none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FtdynError(
            f"{path}: unreadable manifest ({_short(exc)}); re-run training or remove the file."
        ) from None
    return validate_manifest(manifest, path)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- loading

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
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files are not supported by that helper
        pass
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
_AVERAGED_COUNTER = "n_averaged"  # torch.optim.swa_utils.AveragedModel's buffer: not a model weight


@dataclass(frozen=True)
class Weights:
    """One file's weights: the clean ``state`` dict, its stored ``epoch`` (or None), ``key``: the
    top-level entry they came from (``""`` for a plain state dict or safetensors file), and
    ``prefix``: the key prefix still to select inside them (an EMA copy in the main state dict, or
    the ``--state-prefix``), or None to let :func:`match_keys` find the model's keys."""

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
    if isinstance(epoch, torch.Tensor) and epoch.numel() == 1:
        epoch = epoch.item()
    elif isinstance(epoch, np.generic):
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
    :func:`match_keys` against the model's keys); ``.safetensors`` (epoch from the
    ``epoch`` metadata entry). ``copy="ema"`` reads the EMA copy (:data:`EMA_KEYS`
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

    ``copy`` / ``state_prefix`` pick the copy of the model to read (:func:`read_weights`,
    :func:`match_keys`, e.g. ``"ema"`` or ``"ema.module."``). With ``adapt_head=True`` a classifier
    head whose class count differs from the checkpoint's is replaced first
    (``models.replace_head``). Missing ``num_batches_tracked`` buffers (old BatchNorm
    checkpoints) are kept from the model. Any other mismatch raises one FtdynError
    naming the file, the architecture (``arch`` or the model's class name) and a
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


def _adapt_head(model: nn.Module, mapped: dict[str, torch.Tensor]) -> None:
    """Resize the model's head to the file's class count when only that count differs."""
    weight = mapped.get(f"{head_name(model)}.weight")
    if weight is not None and fits_head(model, weight) and weight.shape[0] != num_classes_of(model):
        replace_head(model, int(weight.shape[0]))


def _mismatch_hint(
    model: nn.Module,
    arch: str | None,
    mapped: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
) -> str:
    """What to try when the state dict does not fit: the arch, timm's twin, or the class count."""
    twin = timm_twin(arch) if arch and (missing or unexpected) else None
    hint = (
        f"check {arg('arch')} or the file (timm weights? they fit {twin}, not torchvision's {arch})"
        if twin
        else f"check {arg('arch')} or the file"
    )
    try:
        head = head_name(model)
        if (
            shapes
            and all(s.startswith(f"{head}.") for s in shapes)
            and not missing
            and not unexpected
        ):
            hint = (
                f"only the classifier head differs (file: {mapped[f'{head}.weight'].shape[0]}"
                f" classes, model: {own[f'{head}.weight'].shape[0]}); build the model with the"
                " file's class count"
            )
    except FtdynError:
        pass
    return hint


def _check_fits(
    model: nn.Module,
    mapped: dict[str, torch.Tensor],
    *,
    source: str,
    name: str,
    arch: str | None,
    prefix: str,
) -> dict[str, torch.Tensor]:
    """``mapped`` completed with untracked batch-norm counters; raises if keys or shapes differ."""
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
        hint = _mismatch_hint(model, arch, mapped, own, missing, unexpected, shapes)
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
) -> str:
    """:func:`load_into_model` for an in-memory state dict; ``source`` names it in errors.
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
        _adapt_head(model, mapped)
    mapped = _check_fits(model, mapped, source=source, name=name, arch=arch, prefix=prefix)
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:  # pragma: no cover - caught above in practice
        raise FtdynError(
            f"{source}: does not fit {name} ({_short(exc)}); check {arg('arch')} or the file."
        ) from None
    return prefix


def load_source_weights(
    model: nn.Module,
    entry: "CheckpointEntry",
    *,
    arch: str,
    trust: bool = False,
    adapt_head: bool = True,
    state_prefix: str | None = None,
) -> int | None:
    """Load a source entry (a file, or a zoo weights name) into ``model``: the main copy, or the one
    ``state_prefix`` names (see :func:`load_into_model`; a plain source file ignores a prefix none
    of
    its keys has, so it loads next to prefixed series files)."""
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


# ---------------------------------------------------------------------- series discovery


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
        varying = sum(len(set(column)) > 1 for column in zip(*(parsed[p][1] for p in paths)))
        if varying > 1:
            raise FtdynError(
                f"{folder}: cannot tell which number in the file names is the epoch: "
                f"{_listing(sorted(paths), folder)}; rename the files, e.g. epoch_3.pt."
            )
    return {
        p: marked if marked is not None else (numbers[-1] if numbers else None)
        for p, (marked, numbers, _) in parsed.items()
    }


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


def _listing(paths, folder: Path, limit: int = 6) -> str:
    names = [p.relative_to(folder).as_posix() for p in paths]
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def _resolve_source(source: str | os.PathLike, arch: str | None) -> CheckpointEntry:
    text = str(source)
    path = Path(text)
    if looks_like_file(text):
        _check_file(path)
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
_TRAINING_STATE = re.compile(r"optimizer|scheduler|scaler|training_args|rng_state.*", re.IGNORECASE)


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint files directly in ``folder`` (hidden files and other suffixes ignored)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and checkpoint_stem(p.name) is not None
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


def _subfolder_weights(folder: Path) -> list[Path]:
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
            for p in checkpoint_files(sub)
            if not _TRAINING_STATE.fullmatch(checkpoint_stem(p.name))
        ]
        if len(weights) > 1:
            raise FtdynError(
                f"{sub}: holds several weights files ({_listing(weights, folder)}); keep one per "
                "checkpoint folder, or name it pytorch_model.bin or model.safetensors."
            )
        found += weights
    return found


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
    ``model.safetensors``, beside optimizer state) uses those, named by their folder.
    Ordering rule:

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
    files, names, skipped = _weight_files(folder)
    src = _resolve_source(source, arch) if source is not None else None
    if src is not None and src.path is not None:
        files = _without_source(folder, files, src)
    stored, copies = _skip_epoch_copies({p: read_stored_epoch(p, trust=trust) for p in files})
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


def _weight_files(folder: Path) -> tuple[list[Path], dict[Path, str], list[str]]:
    """The third-party folder's weights files, each one's name for numbering (file stem, or the
    Hugging Face subfolder's name) and the tool copies skipped; an FtdynError when there are none.
    """
    if re.fullmatch(r"checkpoint-\d+", folder.name) and any(
        (folder / w).is_file() for w in _HF_WEIGHTS
    ):
        raise FtdynError(
            f"{folder}: is one Hugging Face Trainer checkpoint; pass the folder holding all of them"
            f" ({folder.parent})."
        )
    files, skipped = _skip_copies(folder, checkpoint_files(folder))
    names = {p: checkpoint_stem(p.name) for p in files}
    if not files:
        files = _subfolder_weights(folder)
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
