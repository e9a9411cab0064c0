"""Writing a checkpoint series (used by training): the ftdyn checkpoint format and file names,
atomic saving, the RNG states a resumed run restores, and the series manifest.

* :func:`save_checkpoint` writes ``{"format": "ftdyn-checkpoint", "format_version": 1,
  "epoch": E, "state_dict": {...}, **extra}`` atomically (temporary file in the same
  folder, flush + fsync, ``os.replace``) and returns its SHA-256. Everything in it
  loads with ``torch.load(weights_only=True)``; :func:`to_weights_only` converts numpy
  arrays / tuples / numpy scalars in ``extra`` (e.g. RNG states) to loadable types.
* :func:`write_manifest` / :func:`read_manifest`: the series manifest
  (``manifest.json``), validated against :data:`MANIFEST_REQUIRED_KEYS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FtdynError

MANIFEST_NAME = "manifest.json"
CHECKPOINT_FORMAT = "ftdyn-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
SERIES_FORMAT = "ftdyn-series"
SERIES_FORMAT_VERSION = 1
#: File names of an ftdyn series: ``epoch_003.pt``.
CHECKPOINT_PATTERN = "epoch_{epoch:03d}.pt"
CHECKPOINT_REGEX = re.compile(r"^epoch_(\d{3,})\.pt$")


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
    if isinstance(obj, (torch.dtype, torch.device)):
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
        # ("enforce fail at inline_container.cc"), the file object's OSError (a full disk) as its
        # context: that error is the reason, torch's internals are not
        torch_writer = isinstance(exc, RuntimeError) and (
            "inline_container" in str(exc) or "PytorchStreamWriter" in str(exc)
        )
        if isinstance(exc, OSError) or torch_writer:
            cause = exc if isinstance(exc, OSError) else exc.__context__
            reason = (
                " ".join(str(cause).split()) or type(cause).__name__
                if isinstance(cause, OSError)
                else "the file could not be written (a full disk, a quota or a failing drive)"
            )
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
