"""An existing run folder: what it holds (ftdyn's files, temporaries left by a crash), the checks
a resumed run must pass against its manifest, and the checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import checkpoints as ckpt
from ..config import TrainConfig, arg
from ..errors import FtdynError


def _is_ftdyn_file(name: str) -> bool:
    """Files written by ftdyn train: manifest, epoch checkpoints and their temp files."""
    if name == ckpt.MANIFEST_NAME or ckpt.CHECKPOINT_REGEX.match(name):
        return True
    if name.startswith(".") and name.endswith(".tmp"):
        inner = name[1:].split(".tmp")[0]
        return inner.startswith(ckpt.MANIFEST_NAME) or inner.startswith("epoch_")
    return False


def _inspect_out(out: Path) -> tuple[list[Path], list[Path]]:
    """(ftdyn's own files, other non-hidden entries) in ``out``; refuses a file path."""
    if out.exists() and not out.is_dir():
        raise FtdynError(
            f"{arg('out')}: '{out}' is a file; give a folder for the checkpoint series."
        )
    if not out.exists():
        return [], []
    own, other = [], []
    for p in sorted(out.iterdir()):
        if p.is_file() and not p.name.startswith(".") and _is_ftdyn_file(p.name):
            own.append(p)
        elif not p.name.startswith("."):
            other.append(p)
    return own, other


def _remove_temporaries(out: Path) -> None:
    """Remove the temporaries of a save that was killed (three times the model's size each;
    never part of a finished run). Only with the folder's lock held: a running save owns its own."""
    for p in out.iterdir() if out.is_dir() else ():
        if p.is_file() and p.name.startswith(".") and _is_ftdyn_file(p.name):
            p.unlink(missing_ok=True)


def _check_same(flag: str, recorded, given) -> None:
    if recorded != given:
        fix = f"drop {flag}" if recorded is None else f"pass {flag} {recorded}"
        raise FtdynError(
            f"{flag}: {given} does not match the run being resumed ({recorded}); "
            f"{fix}, or start a new run with {arg('overwrite')} or another {arg('out')}."
        )


#: Where the manifest records each identity field of :class:`TrainConfig` (keys, outermost first).
_MANIFEST_IDENTITY = {
    "arch": ("architecture",),
    "weights": ("init", "weights"),
    "optimizer": ("hyperparameters", "optimizer"),
    "lr": ("hyperparameters", "lr"),
    "batch_size": ("hyperparameters", "batch_size"),
    "crop_scale": ("hyperparameters", "crop_scale"),
    "input_size": ("input_size",),
    "seed": ("seed",),
    "val_split": ("dataset", "val_split"),
}


#: Values of fields that older manifests do not record: the value those runs used (not today's
#: default).
_UNRECORDED = {"crop_scale": 0.08}


_MISSING = object()


def recorded_identity(manifest: dict) -> dict[str, Any]:
    """The identity fields of the run ``manifest`` describes, named like
    :meth:`TrainConfig.identity`."""
    recorded = {}
    for name, keys in _MANIFEST_IDENTITY.items():
        value: Any = manifest
        for key in keys:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        recorded[name] = _UNRECORDED.get(name) if value is _MISSING else value
    return recorded


def _verify_resume(
    manifest: dict,
    config: TrainConfig,
    *,
    data_path: str,
    weights_sha: str | None,
    init_sha: str | None,
) -> None:
    """Refuse to resume ``manifest``'s run with a config whose identity differs (one line naming
    the flag)."""
    recorded, given = recorded_identity(manifest), config.identity()
    init = manifest.get("init", {})
    for name, value in given.items():
        if name == "weights" and (
            weights_sha is not None or init.get("weights_sha256") is not None
        ):
            # a weights file: same content, wherever it lies
            if init.get("weights_sha256") != weights_sha:
                raise FtdynError(
                    f"{arg('weights')}: the source weights differ from the run being resumed "
                    f"({init.get('weights')}); pass the same {arg('weights')}."
                )
        else:
            _check_same(arg(name), recorded[name], value)
        # --init: by content too
        if name == "weights" and init.get("checkpoint_sha256") != init_sha:
            raise FtdynError(
                f"{arg('init')}: the initial checkpoint differs from the run being resumed "
                f"({init.get('checkpoint') or 'none'}); pass the same {arg('init')} file."
            )
    recorded_path = manifest.get("dataset", {}).get("path")
    if recorded_path != data_path:
        raise FtdynError(
            f"DATA_DIR: '{data_path}' is not the dataset of the run being resumed "
            f"('{recorded_path}'); pass that folder."
        )
    done = max(e["epoch"] for e in manifest["epochs"])
    if config.epochs < done:
        raise FtdynError(
            f"{arg('epochs', config.epochs)}: the run being resumed already has {done} epochs; "
            f"pass {arg('epochs', done)} or more."
        )


def _resume_point(out: Path, entries: list[dict]) -> tuple[dict, dict, str | None]:
    """Where to resume: the newest checkpoint before the first unusable one (missing, or changed
    since it was written) that holds optimizer and RNG state, its payload, and why the entries
    after it are redone (None: nothing is). A damaged checkpoint (full disk, copying, cleaning
    up) then costs the epochs from it on, not the run; training is deterministic, so they come
    out the same. Only the resume point's payload is loaded."""
    intact, problem = [], None
    for entry in entries:
        path = out / entry["file"]
        if not path.is_file():
            problem = f"{entry['file']} is missing"
        elif ckpt.sha256_file(path) != entry["sha256"]:
            problem = (
                f"{entry['file']} changed since it was written (SHA-256 differs from"
                f" {ckpt.MANIFEST_NAME})"
            )
        if problem:
            break
        intact.append(entry)
    for entry in reversed(intact):
        payload = ckpt.load_checkpoint_payload(out / entry["file"])
        if "optimizer" in payload and "rng" in payload:
            return entry, payload, problem
        problem = f"{entry['file']} holds no optimizer/RNG state"
    raise FtdynError(
        f"{arg('resume')}: no checkpoint listed in {ckpt.MANIFEST_NAME} of '{out}' can be resumed"
        f" from ({problem}); start over with {arg('overwrite')}."
    )
