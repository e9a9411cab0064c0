"""Fine-tuning loop → a checkpoint series (``epoch_000.pt`` … ``epoch_T.pt``) + manifest.

:func:`train` fine-tunes every layer of a torchvision CNN with a new classifier head
on an ImageFolder dataset and saves one checkpoint per epoch. ``epoch_000.pt`` is
the source model with its new head *before any update*. After every checkpoint the
manifest (``manifest.json``) is rewritten, so an interrupted run always has a valid
manifest of its complete epochs and ``resume=True`` continues it.

Reproducibility: the shuffling of epoch ``e`` depends only on ``(seed, e)``, the
augmentation of sample ``i`` only on ``(seed, e, i)``, and the global torch RNG
(dropout) is re-seeded from ``(seed, e)`` at the start of each epoch. Each checkpoint
also stores the optimizer state and the RNG states. So on CPU, a run that is killed
and resumed ends with bit-identical weights to an uninterrupted run with the same
seed (same machine and thread count); on GPU, cuDNN kernels may differ slightly.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import nn

from . import checkpoints as ckpt
from . import data as D
from . import models
from ._signature import takes_options
from ._version import __version__
from .config import OPTIMIZERS, TrainConfig, arg, describe
from .devices import fastest_memory_format, resolve_device
from .errors import FtdynError, FtdynWarning
from .outputs import check_output_folder, folder_lock
from .progress import progress_bar, stage

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainPlan", "execute", "make_plan", "train"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- output folder


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


# --------------------------------------------------------------------------- model


def _new_head(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a freshly initialised head with ``num_classes`` outputs."""
    if models.num_classes_of(model) == num_classes:
        model.get_submodule(
            models.head_name(model)
        ).reset_parameters()  # same RNG use as constructing a new head
    else:
        models.replace_head(model, num_classes)


def _build_source(
    arch: str,
    weights: str,
    init: Path | None,
    num_classes: int,
    seed: int,
    trust: bool,
    state_prefix: str | None,
) -> nn.Module:
    torch.manual_seed(seed)
    weights_file = _weights_file(weights)
    # loaded here so that --trust-checkpoint applies and errors name the flag
    if weights_file is not None:
        model = models.build_model(arch, weights="none")
        try:
            ckpt.load_into_model(
                model,
                weights_file,
                trust=trust,
                adapt_head=True,
                arch=arch,
                state_prefix=state_prefix,
            )
        except FtdynError as exc:
            raise FtdynError(f"{arg('weights')} {exc}") from None
    else:
        model = models.build_model(arch, weights=weights)
    if init is not None:
        try:
            ckpt.load_into_model(
                model, init, trust=trust, adapt_head=True, arch=arch, state_prefix=state_prefix
            )
        except FtdynError as exc:
            raise FtdynError(f"{arg('init')} {exc}") from None
    _new_head(model, num_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _check_two_classes(
    train_data: D.ImageFolderData, val_data: D.ImageFolderData, data_dir, val_split
) -> None:
    """Refuse splits with images of fewer than 2 classes (each split has at least one): one
    class trains to loss 0 and accuracy 1 without learning anything, and validates nothing."""
    for split, part in (("training", train_data), ("validation", val_data)):
        present = sorted({part.classes[label] for label in part.labels})
        if len(present) >= 2:
            continue
        hint = (
            f"; with {arg('val_split')} only classes of 2 or more images give validation images"
            if split == "validation" and val_split is not None
            else ""
        )
        raise FtdynError(
            f"DATA_DIR: the {split} images of '{data_dir}' hold only class '{present[0]}';"
            " fine-tuning a classifier needs at least 2 classes (one subfolder of images per"
            f" class){hint}."
        )


def _weights_file(weights: str) -> Path | None:
    """``weights`` as a local file, or None for ``none`` / a torchvision weights name."""
    if weights.lower() == "none":
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if ckpt.checkpoint_stem(path.name) is not None or "/" in weights or os.sep in weights:
        raise FtdynError(
            f"{arg('weights')}: '{weights}' does not exist; give a weights file, a torchvision"
            " weights name (e.g. IMAGENET1K_V1) or none."
        )
    return None


def _make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


# ------------------------------------------------------------------------ epochs


def _run_epoch(model, loader, *, device, mean, std, optimizer=None, progress=None, task=None):
    """One pass; trains when ``optimizer`` is given. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    model.train(training)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct, loss_sum = 0, 0, 0.0
    with torch.set_grad_enabled(training):
        for images, labels in D.iter_batches(loader):
            x = D.normalize(images.to(device, non_blocking=True), mean, std)
            y = labels.to(device, non_blocking=True)
            try:
                logits = model(x)
            except ValueError as exc:  # BatchNorm on a single value per channel
                if "more than 1 value per channel" in str(exc):
                    raise FtdynError(
                        f"{arg('batch_size')}: a batch of {x.shape[0]} image(s) is too small for "
                        f"BatchNorm at this {arg('input_size')}; use a larger batch or input size."
                    ) from None
                raise
            loss = loss_fn(logits, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                (loss / x.shape[0]).backward()
                optimizer.step()
            loss_sum += float(loss.detach())
            correct += int((logits.detach().argmax(1) == y).sum())
            total += int(y.shape[0])
            if progress is not None:
                progress.advance(task)
    if not math.isfinite(loss_sum):
        raise FtdynError(
            f"{arg('lr')}: the {'training' if training else 'validation'} loss became {loss_sum} "
            "(diverged); use a smaller learning rate."
        )
    return loss_sum / max(total, 1), correct / max(total, 1)


def _state_for_resume(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"optimizer": optimizer.state_dict(), "rng": ckpt.rng_states()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


# ------------------------------------------------------------------------ resume


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


# ------------------------------------------------------------------------- train


def make_config(config: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """``config`` with ``options`` applied, or a new :class:`TrainConfig` from ``options``."""
    return (
        TrainConfig(**options)
        if config is None
        else config.replace(**options)
        if options
        else config
    )


@dataclass(frozen=True)
class TrainPlan:
    """What :func:`execute` will do, decided before any model is built or file written.

    ``mode`` is ``"new"`` (a fresh run; ``delete`` lists the files of the run it replaces),
    ``"resume"`` (continue ``resumed``, the manifest read from ``out``) or ``"restart"`` (a
    ``--resume`` of a run stopped before epoch 0 was saved: its files are deleted, then new).
    """

    config: TrainConfig  # validated; ``arch`` canonical
    data_dir: Path
    out: Path
    device: torch.device
    train_data: D.ImageFolderData
    val_data: D.ImageFolderData
    init_path: Path | None
    weights_sha: str | None
    init_sha: str | None
    mode: Literal["new", "resume", "restart"]
    delete: tuple[Path, ...] = ()
    resumed: dict | None = None

    @property
    def data_path(self) -> str:
        return str(self.data_dir.expanduser().resolve())

    @property
    def classes(self) -> list[str]:
        return list(self.train_data.classes)

    @property
    def drop_last(self) -> bool:
        """Drop a last training batch of one image (BatchNorm cannot train on it)."""
        n, b = len(self.train_data), self.config.batch_size
        return n % b == 1 and n > b


@takes_options(TrainConfig)
def train(
    data_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    **options: Any,
) -> Path:
    """Fine-tune ``arch`` on ``data_dir`` and write a checkpoint series to ``out``.

    The options are the fields of :class:`~ftdyn.config.TrainConfig` (listed below), given
    as keyword arguments (``train(d, arch="resnet18", out=o, epochs=3)``) or as ``config=``
    (keyword arguments then override its fields). They mirror ``ftdyn train`` (paper
    defaults: Adam, batch size 196, lr 1e-4, every layer trainable). ``weights``: a
    torchvision weights name (``IMAGENET1K_V1``), a weights file, or ``"none"``; ``init``:
    any checkpoint file to start from instead (its head is adapted, then replaced).
    ``resume``: continue the run in ``out`` from its last complete epoch (the identity
    fields must match the manifest; ``epochs`` may be larger to extend it). ``overwrite``:
    delete ftdyn's files in ``out`` (``epoch_*.pt``, ``manifest.json``) and start over.

    Same as ``execute(make_plan(data_dir, out=out, ...))``.
    Side effect: re-seeds the global torch RNG (from ``seed``, then per epoch).
    Returns the output folder. Raises :class:`FtdynError` for bad input.
    """
    check_output_folder(out, inputs=[data_dir])  # before the lock creates the folder
    with folder_lock(out):  # from reading the folder to the last save (a concurrent run is refused)
        return execute(make_plan(data_dir, out=out, config=config, **options))


# -------------------------------------------------------------- validate and plan


def _validate(config: TrainConfig) -> tuple[TrainConfig, Path | None, Path | None]:
    """Checks that need the model zoo or the file system: (config with the canonical arch,
    the ``init`` file, the ``weights`` file)."""
    config = config.replace(arch=models.canonical_arch(config.arch))
    init_path = None
    if config.init is not None:
        init_path = Path(config.init).expanduser()
        if not init_path.is_file():
            raise FtdynError(f"{arg('init')}: '{init_path}' is not a file; give a checkpoint file.")
    return config, init_path, _weights_file(config.weights)


def _plan_output(out: Path, config: TrainConfig) -> tuple[str, tuple[Path, ...], dict | None]:
    """(mode, files to delete, manifest to resume) for the folder ``out``."""
    own, other = _inspect_out(out)
    if own:
        if config.resume:
            manifest = ckpt.read_manifest(out)
            if manifest is None or not manifest["epochs"]:  # stopped before epoch 0 was saved
                return "restart", tuple(own), None
            return "resume", (), manifest
        if not config.overwrite:
            what = (
                ckpt.MANIFEST_NAME
                if (out / ckpt.MANIFEST_NAME).exists()
                else f"{len(own)} checkpoint file(s)"
            )
            raise FtdynError(
                f"{arg('out')}: '{out}' already holds an ftdyn run ({what}); pass {arg('resume')}"
                f" to continue it, {arg('overwrite')} to replace it, or choose another folder."
            )
        return "new", tuple(own), None
    if other:
        raise FtdynError(
            f"{arg('out')}: '{out}' is not empty and holds no ftdyn run ({other[0].name}, ...); "
            "choose an empty or new folder."
        )
    return "new", (), None


def _read_data(data_dir, config: TrainConfig) -> tuple[D.ImageFolderData, D.ImageFolderData]:
    """The training and validation splits; prints what was skipped, rescaled or ignored."""
    train_data, val_data = D.resolve_splits(data_dir, config.val_split, config.seed)
    skipped = list(train_data.skipped) + list(val_data.skipped)
    rescaled = list(train_data.rescaled) + list(val_data.rescaled)
    ignored = list(dict.fromkeys([*train_data.ignored, *val_data.ignored]))
    for note in (
        D.skipped_message(skipped),
        D.rescaled_message(rescaled),
        D.ignored_message(ignored),
    ):
        if note:
            warnings.warn(note, FtdynWarning)
    _check_two_classes(train_data, val_data, data_dir, config.val_split)
    return train_data, val_data


def _verify_resume_data(plan: TrainPlan) -> None:
    """Refuse to resume on data whose classes or split sizes changed since the run started."""
    manifest, data_path = plan.resumed, plan.data_path
    if manifest["classes"] != plan.classes:
        raise FtdynError(
            f"DATA_DIR: the classes of '{data_path}' changed since the run started; "
            f"resume with the same data or start over with {arg('overwrite')}."
        )
    ds = manifest.get("dataset", {})
    n_train, n_val = len(plan.train_data), len(plan.val_data)
    if (ds.get("train_size"), ds.get("val_size")) != (n_train, n_val):
        raise FtdynError(
            f"DATA_DIR: '{data_path}' now has {n_train} train / {n_val} val images, "
            f"the run started with {ds.get('train_size')} / {ds.get('val_size')}; resume with the "
            f"same data or start over with {arg('overwrite')}."
        )


def make_plan(
    data_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    **options: Any,
) -> TrainPlan:
    """Validate the arguments of :func:`train`, read the output folder and the dataset, and
    return what :func:`execute` will do. Builds no model and writes nothing."""
    config, init_path, weights_file = _validate(make_config(config, **options))
    device = resolve_device(config.device)
    out = Path(out).expanduser()
    # inside the data folder it would become a class folder
    check_output_folder(out, inputs=[data_dir])
    mode, delete, resumed = _plan_output(out, config)
    train_data, val_data = _read_data(data_dir, config)
    result = TrainPlan(
        config=config,
        data_dir=Path(data_dir),
        out=out,
        device=device,
        train_data=train_data,
        val_data=val_data,
        init_path=init_path,
        weights_sha=ckpt.sha256_file(weights_file) if weights_file is not None else None,
        init_sha=ckpt.sha256_file(init_path) if init_path is not None else None,
        mode=mode,
        delete=delete,
        resumed=resumed,
    )
    if resumed is not None:
        _verify_resume(
            resumed,
            config,
            data_path=result.data_path,
            weights_sha=result.weights_sha,
            init_sha=result.init_sha,
        )
        _verify_resume_data(result)
    return result


# ------------------------------------------------------------------------ execute


@dataclass
class _Run:
    """The state :func:`execute` builds from a plan and the epoch loop updates."""

    plan: TrainPlan
    model: nn.Module
    optimizer: torch.optim.Optimizer
    mean: list[float]
    std: list[float]
    train_set: D.ImageDataset
    val_set: D.ImageDataset
    manifest: dict = field(default_factory=dict)
    start: int = 1

    @property
    def pin(self) -> bool:
        return self.plan.device.type == "cuda"

    def val_loader(self):
        c = self.plan.config
        return D.make_loader(
            self.val_set,
            batch_size=c.batch_size,
            shuffle=False,
            seed=c.seed,
            num_workers=c.num_workers,
            pin_memory=self.pin,
        )

    def train_loader(self, epoch: int):
        c = self.plan.config
        return D.make_loader(
            self.train_set,
            batch_size=c.batch_size,
            shuffle=True,
            seed=c.seed,
            epoch=epoch,
            num_workers=c.num_workers,
            drop_last=self.plan.drop_last,
            pin_memory=self.pin,
        )


def _prepare(plan: TrainPlan) -> _Run:
    """The source model on its device, its optimizer and the two datasets."""
    c = plan.config
    model = _build_source(
        c.arch,
        c.weights,
        plan.init_path,
        len(plan.classes),
        c.seed,
        c.trust_checkpoint,
        c.state_prefix,
    )
    # a one-line --input-size error for sizes the model cannot take
    models.blank_forward(model, c.input_size)
    model.to(plan.device, memory_format=fastest_memory_format(model, plan.device))
    opt = _make_optimizer(c.optimizer, model.parameters(), c.lr)
    # ImageNet's, or a timm model's pretrained config
    norm = models.default_normalization(model, c.arch)
    train_set = D.ImageDataset(
        plan.train_data, D.train_transform(c.input_size, c.crop_scale), seed=c.seed
    )
    val_set = D.ImageDataset(plan.val_data, D.eval_transform(c.input_size))
    return _Run(plan, model, opt, norm["mean"], norm["std"], train_set, val_set)


def _start_resumed(run: _Run) -> None:
    """Load the resume point into the model, optimizer and RNGs; drop what comes after it."""
    plan, out = run.plan, run.plan.out
    manifest = run.manifest = plan.resumed
    entries = sorted(manifest["epochs"], key=lambda e: e["epoch"])
    last, payload, problem = _resume_point(out, entries)
    run.model.load_state_dict(payload["state_dict"])
    run.optimizer.load_state_dict(payload["optimizer"])
    ckpt.set_rng_states(payload["rng"])
    start = run.start = int(last["epoch"]) + 1
    manifest["epochs"] = [e for e in entries if e["epoch"] < start]
    manifest["hyperparameters"]["epochs"] = plan.config.epochs
    if problem:  # the manifest must not list the files removed below
        manifest["complete"] = False
        ckpt.write_manifest(out, manifest)
        end = entries[-1]["epoch"]
        redo = f"epoch {start}" if start == end else f"epochs {start}-{end}"
        log.info(f"{arg('resume')}: {problem}; redoing {redo} from {last['file']}")
    for p in out.iterdir():  # checkpoints of an epoch that never reached the manifest
        m = ckpt.CHECKPOINT_REGEX.match(p.name)
        if m and int(m.group(1)) >= start:
            p.unlink()
    if plan.config.progress:
        stage(f"resuming '{out}' after epoch {start - 1} of {plan.config.epochs}")


def _start_new(run: _Run) -> None:
    """Delete the run being replaced, say what kind of source model this is, create the manifest."""
    plan, c = run.plan, run.plan.config
    for p in plan.delete:
        p.unlink(missing_ok=True)
    if plan.mode == "restart":
        log.info(
            f"{arg('resume')}: no epoch of '{plan.out}' was finished (stopped while saving epoch"
            " 0); starting the run over"
        )
    elif c.resume and c.progress:
        stage(f"nothing to resume in '{plan.out}'; starting a new run")
    if plan.init_path is None and c.weights.lower() == "none":  # nothing pre-trained anywhere
        log.info(
            f"{arg('weights')} none and no {arg('init')}, so epoch 0 (the source model) is randomly"
            f" initialized, not pre-trained; pass {arg('weights')} IMAGENET1K_V1 (or a weights"
            f" file) or {arg('init')} CKPT to fine-tune a pre-trained model."
        )
    plan.out.mkdir(parents=True, exist_ok=True)
    run.manifest, run.start = _new_manifest(run), 1


def _new_manifest(run: _Run) -> dict[str, Any]:
    plan, c = run.plan, run.plan.config
    train_data, val_data = plan.train_data, plan.val_data
    skipped = list(train_data.skipped) + list(val_data.skipped)
    rescaled = list(train_data.rescaled) + list(val_data.rescaled)
    return {
        "format": ckpt.SERIES_FORMAT,
        "format_version": ckpt.SERIES_FORMAT_VERSION,
        "architecture": c.arch,
        "num_classes": len(plan.classes),
        "classes": plan.classes,
        "input_size": c.input_size,
        "normalization": {"mean": run.mean, "std": run.std},
        "dataset": {
            "path": plan.data_path,
            "train_size": len(train_data),
            "val_size": len(val_data),
            "val_split": c.val_split,
            "class_counts": {"train": train_data.class_counts(), "val": val_data.class_counts()},
            "skipped_unreadable": len(skipped),
            "skipped_first": str(skipped[0]) if skipped else None,
            "min_max_rescaled": len(rescaled),
        },
        "hyperparameters": {
            "optimizer": c.optimizer,
            "lr": c.lr,
            "batch_size": c.batch_size,
            "epochs": c.epochs,
            "crop_scale": c.crop_scale,
            "trainable": "all",
            "head": "new",
            "augmentation": repr(run.train_set.transform),
            "eval_transform": repr(run.val_set.transform),
        },
        "seed": c.seed,
        "init": {
            "weights": c.weights,
            "weights_sha256": plan.weights_sha,
            "checkpoint": str(plan.init_path.resolve()) if plan.init_path is not None else None,
            "checkpoint_sha256": plan.init_sha,
        },
        "epochs": [],
        "complete": False,
        "ftdyn_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": _torchvision_version(),
        "device": str(plan.device),
        "created": _now(),
    }


def _save(run: _Run, epoch: int, metrics: dict[str, Any], seconds: float) -> None:
    """Write epoch ``epoch``'s checkpoint, then the manifest listing it."""
    c, out, manifest = run.plan.config, run.plan.out, run.manifest
    meta = {
        "architecture": c.arch,
        "classes": run.plan.classes,
        "num_classes": len(run.plan.classes),
        "input_size": c.input_size,
        "normalization": {"mean": run.mean, "std": run.std},
        "seed": c.seed,
    }
    name = ckpt.checkpoint_filename(epoch)
    sha = ckpt.save_checkpoint(
        out / name,
        run.model.state_dict(),
        epoch=epoch,
        extra={**meta, "metrics": metrics, **_state_for_resume(run.optimizer)},
    )
    manifest["epochs"] = [e for e in manifest["epochs"] if e["epoch"] != epoch]
    manifest["epochs"].append(
        {"epoch": epoch, "file": name, "sha256": sha, **metrics, "seconds": round(seconds, 3)}
    )
    manifest["complete"] = epoch >= c.epochs
    manifest["updated"] = _now()
    ckpt.write_manifest(out, manifest)


def _source_epoch(run: _Run, bar, live: bool) -> None:
    """Epoch 0: validate the source model with its new head and save it."""
    c, t0 = run.plan.config, time.perf_counter()
    loader = run.val_loader()
    task = bar.add_task(f"epoch 0/{c.epochs} (source)", total=len(loader))
    val_loss, val_acc = _run_epoch(
        run.model,
        loader,
        device=run.plan.device,
        mean=run.mean,
        std=run.std,
        progress=bar if live else None,
        task=task,
    )
    metrics = {"train_loss": None, "train_acc": None, "val_loss": val_loss, "val_acc": val_acc}
    _save(run, 0, metrics, time.perf_counter() - t0)
    if c.progress:
        stage(
            f"epoch 0/{c.epochs}: source model with new head: val loss {_fmt(val_loss)} "
            f"acc {_fmt(val_acc)}"
        )


def _fine_tune_epoch(run: _Run, epoch: int, bar, live: bool) -> None:
    """One epoch of fine-tuning, its validation, its checkpoint."""
    c, t0 = run.plan.config, time.perf_counter()
    # dropout etc.: depends on (seed, epoch) only
    torch.manual_seed(D.derive_seed(c.seed, epoch, 0xD209))
    loader, vloader = run.train_loader(epoch), run.val_loader()
    task = bar.add_task(f"epoch {epoch}/{c.epochs}", total=len(loader) + len(vloader))
    shared = dict(
        device=run.plan.device,
        mean=run.mean,
        std=run.std,
        progress=bar if live else None,
        task=task,
    )
    train_loss, train_acc = _run_epoch(run.model, loader, optimizer=run.optimizer, **shared)
    val_loss, val_acc = _run_epoch(run.model, vloader, **shared)
    metrics = {
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
    }
    _save(run, epoch, metrics, time.perf_counter() - t0)
    if c.progress:
        stage(
            f"epoch {epoch}/{c.epochs}: train loss {_fmt(train_loss)} acc {_fmt(train_acc)} | "
            f"val loss {_fmt(val_loss)} acc {_fmt(val_acc)} ({time.perf_counter() - t0:.1f} s)"
        )


def execute(plan: TrainPlan) -> Path:
    """Carry out ``plan`` (from :func:`make_plan`): build the model, start or resume, train, save.
    The output folder is locked throughout, so a second train into it is refused naming this
    run's PID; a folder changed since the plan was made is refused too."""
    with folder_lock(plan.out):
        if _plan_output(plan.out, plan.config) != (plan.mode, plan.delete, plan.resumed):
            raise FtdynError(
                f"{arg('out')}: '{plan.out}' changed since this run was planned (another ftdyn"
                " train finished there?); run the command again."
            )
        _remove_temporaries(plan.out)
        return _execute_locked(plan)


def _execute_locked(plan: TrainPlan) -> Path:
    run = _prepare(plan)
    if plan.mode == "resume":
        _start_resumed(run)
    else:
        _start_new(run)
    c = plan.config
    bar = progress_bar(c.progress)
    live = not bar.disable
    with bar:
        if run.start == 1 and not run.manifest["epochs"]:
            _source_epoch(run, bar, live)
        for epoch in range(run.start, c.epochs + 1):
            _fine_tune_epoch(run, epoch, bar, live)
    if plan.mode == "resume" and run.start > c.epochs:
        if not run.manifest.get("complete"):
            run.manifest["complete"] = True
            ckpt.write_manifest(plan.out, run.manifest)
        if c.progress:
            stage(f"'{plan.out}' is already complete ({c.epochs} epochs); nothing to do")
    if c.epochs == 0:  # a source checkpoint for --init elsewhere: fine, but nothing to analyze here
        log.info(
            f"{arg('epochs')} 0 saved only epoch 0 (the source model with its new head); `ftdyn "
            "analyze` needs at least one fine-tuned epoch to compare it with."
        )
    return plan.out


def _torchvision_version() -> str:
    return torchvision.__version__


train.__doc__ += "\n    Options (:class:`~ftdyn.config.TrainConfig`):\n\n" + "\n".join(
    f"    * {line}" for line in describe(TrainConfig).splitlines()
)
