"""Carrying out a plan (:func:`execute`, and :func:`train` = ``execute(make_plan(...))``): the
model built from its source, epoch 0 saved before any update, then the fine-tuning epochs, each
checkpoint saved and the manifest rewritten after it."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from .. import checkpoints as ckpt
from .. import data, models
from .._signature import takes_options
from .._version import __version__
from ..config import TrainConfig, arg, describe
from ..devices import fastest_memory_format
from ..errors import FtdynError
from ..outputs import check_output_folder, folder_lock
from ..progress import progress_bar, stage
from .plan import TrainPlan, _plan_output, _weights_file, make_plan
from .resume import _remove_temporaries, _resume_point

log = logging.getLogger(__name__)


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


def _make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _run_epoch(model, loader, *, device, mean, std, optimizer=None, progress=None, task=None):
    """One pass; trains when ``optimizer`` is given. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    model.train(training)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct, loss_sum = 0, 0, 0.0
    with torch.set_grad_enabled(training):
        for images, labels in data.iter_batches(loader):
            x = data.normalize(images.to(device, non_blocking=True), mean, std)
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
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


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


@dataclass
class _Run:
    """The state :func:`execute` builds from a plan and the epoch loop updates."""

    plan: TrainPlan
    model: nn.Module
    optimizer: torch.optim.Optimizer
    mean: list[float]
    std: list[float]
    train_set: data.ImageDataset
    val_set: data.ImageDataset
    manifest: dict = field(default_factory=dict)
    start: int = 1

    @property
    def pin(self) -> bool:
        return self.plan.device.type == "cuda"

    def val_loader(self):
        c = self.plan.config
        return data.make_loader(
            self.val_set,
            batch_size=c.batch_size,
            shuffle=False,
            seed=c.seed,
            num_workers=c.num_workers,
            pin_memory=self.pin,
        )

    def train_loader(self, epoch: int):
        c = self.plan.config
        return data.make_loader(
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
    train_set = data.ImageDataset(
        plan.train_data, data.train_transform(c.input_size, c.crop_scale), seed=c.seed
    )
    val_set = data.ImageDataset(plan.val_data, data.eval_transform(c.input_size))
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
    torch.manual_seed(data.derive_seed(c.seed, epoch, 0xD209))
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
