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
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoints as ckpt
from . import data as D
from . import models
from ._version import __version__
from .devices import fastest_memory_format, resolve_device
from .errors import FtdynError

#: Optimizers by name. The paper fine-tunes with Adam (lr 1e-4, batch size 196).
OPTIMIZERS = ("adam", "adamw", "sgd")
PAPER_DEFAULTS = {"optimizer": "adam", "lr": 1e-4, "batch_size": 196}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
        raise FtdynError(f"--out: '{out}' is a file; give a folder for the checkpoint series.")
    if not out.exists():
        return [], []
    own, other = [], []
    for p in sorted(out.iterdir()):
        if p.is_file() and _is_ftdyn_file(p.name):
            own.append(p)
        elif not p.name.startswith("."):
            other.append(p)
    return own, other


# --------------------------------------------------------------------------- model


def _new_head(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a freshly initialised head with ``num_classes`` outputs."""
    if models.num_classes_of(model) == num_classes:
        model.get_submodule(models.head_name(model)).reset_parameters()  # same RNG use as constructing a new head
    else:
        models.replace_head(model, num_classes)


def _build_source(arch: str, weights: str, init: Path | None, num_classes: int, seed: int,
                  trust: bool, state_prefix: str | None) -> nn.Module:
    torch.manual_seed(seed)
    weights_file = _weights_file(weights)
    if weights_file is not None:  # loaded here so that --trust-checkpoint applies and errors name the flag
        model = models.build_model(arch, weights="none")
        try:
            ckpt.load_into_model(model, weights_file, trust=trust, adapt_head=True, arch=arch,
                                 state_prefix=state_prefix)
        except FtdynError as exc:
            raise FtdynError(f"--weights {exc}") from None
    else:
        model = models.build_model(arch, weights=weights)
    if init is not None:
        try:
            ckpt.load_into_model(model, init, trust=trust, adapt_head=True, arch=arch, state_prefix=state_prefix)
        except FtdynError as exc:
            raise FtdynError(f"--init {exc}") from None
    _new_head(model, num_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _check_two_classes(train_data: D.ImageFolderData, val_data: D.ImageFolderData, data_dir, val_split) -> None:
    """Refuse splits with images of fewer than 2 classes (each split has at least one): one
    class trains to loss 0 and accuracy 1 without learning anything, and validates nothing."""
    for split, part in (("training", train_data), ("validation", val_data)):
        present = sorted({part.classes[label] for label in part.labels})
        if len(present) >= 2:
            continue
        hint = ("; with --val-split only classes of 2 or more images give validation images"
                if split == "validation" and val_split is not None else "")
        raise FtdynError(f"DATA_DIR: the {split} images of '{data_dir}' hold only class '{present[0]}'; fine-tuning "
                         f"a classifier needs at least 2 classes (one subfolder of images per class){hint}.")


def _weights_file(weights: str) -> Path | None:
    """``weights`` as a local file, or None for ``none`` / a torchvision weights name."""
    if weights.lower() == "none":
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if ckpt.checkpoint_stem(path.name) is not None or "/" in weights or os.sep in weights:
        raise FtdynError(f"--weights: '{weights}' does not exist; give a weights file, a torchvision weights "
                         "name (e.g. IMAGENET1K_V1) or none.")
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
                    raise FtdynError(f"--batch-size: a batch of {x.shape[0]} image(s) is too small for "
                                     "BatchNorm at this --input-size; use a larger batch or input size.") from None
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
        raise FtdynError(f"--lr: the {'training' if training else 'validation'} loss became {loss_sum} "
                         "(diverged); use a smaller learning rate.")
    return loss_sum / max(total, 1), correct / max(total, 1)


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    live = enabled and console.is_terminal
    bar = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, disable=not live)
    return bar, live


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
        raise FtdynError(f"{flag}: {given} does not match the run being resumed ({recorded}); "
                         f"{fix}, or start a new run with --overwrite or another --out.")


def _verify_resume(manifest: dict, *, data_path: str, arch: str, weights: str, weights_sha: str | None,
                   init_sha: str | None,
                   batch_size: int, lr: float, optimizer: str, val_split, input_size: int, seed: int,
                   epochs: int, crop_scale: float) -> None:
    hp = manifest.get("hyperparameters", {})
    init = manifest.get("init", {})
    _check_same("--arch", manifest["architecture"], arch)
    if weights_sha is not None or init.get("weights_sha256") is not None:
        if init.get("weights_sha256") != weights_sha:
            raise FtdynError(f"--weights: the source weights differ from the run being resumed "
                             f"({init.get('weights')}); pass the same --weights.")
    else:
        _check_same("--weights", init.get("weights"), weights)
    if init.get("checkpoint_sha256") != init_sha:
        raise FtdynError(f"--init: the initial checkpoint differs from the run being resumed "
                         f"({init.get('checkpoint') or 'none'}); pass the same --init file.")
    _check_same("--optimizer", hp.get("optimizer"), optimizer)
    _check_same("--lr", hp.get("lr"), lr)
    _check_same("--batch-size", hp.get("batch_size"), batch_size)
    _check_same("--crop-scale", hp.get("crop_scale", 0.08), crop_scale)
    _check_same("--input-size", manifest["input_size"], input_size)
    _check_same("--seed", manifest.get("seed"), seed)
    _check_same("--val-split", manifest.get("dataset", {}).get("val_split"), val_split)
    recorded_path = manifest.get("dataset", {}).get("path")
    if recorded_path != data_path:
        raise FtdynError(f"DATA_DIR: '{data_path}' is not the dataset of the run being resumed "
                         f"('{recorded_path}'); pass that folder.")
    done = max(e["epoch"] for e in manifest["epochs"])
    if epochs < done:
        raise FtdynError(f"--epochs {epochs}: the run being resumed already has {done} epochs; "
                         f"pass --epochs {done} or more.")


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
            problem = f"{entry['file']} changed since it was written (SHA-256 differs from {ckpt.MANIFEST_NAME})"
        if problem:
            break
        intact.append(entry)
    for entry in reversed(intact):
        payload = ckpt.load_checkpoint_payload(out / entry["file"])
        if "optimizer" in payload and "rng" in payload:
            return entry, payload, problem
        problem = f"{entry['file']} holds no optimizer/RNG state"
    raise FtdynError(f"--resume: no checkpoint listed in {ckpt.MANIFEST_NAME} of '{out}' can be resumed from "
                     f"({problem}); start over with --overwrite.")


# ------------------------------------------------------------------------- train


def train(data_dir: str | os.PathLike, *, arch: str, out: str | os.PathLike, weights: str = "none",
          init: str | os.PathLike | None = None, epochs: int = 10, batch_size: int = 196, lr: float = 1e-4,
          optimizer: str = "adam", val_split: float | None = None, input_size: int = 224, seed: int = 0,
          device: str = "auto", num_workers: int = 0, resume: bool = False, overwrite: bool = False,
          trust_checkpoint: bool = False, progress: bool = True, crop_scale: float = 0.08,
          state_prefix: str | None = None) -> Path:
    """Fine-tune ``arch`` on ``data_dir`` and write a checkpoint series to ``out``.

    Parameters mirror ``ftdyn train`` (paper defaults: Adam, batch size 196, lr 1e-4,
    every layer trainable). ``weights``: a torchvision weights name (``IMAGENET1K_V1``),
    a weights file, or ``"none"``; ``init``: any checkpoint file to start from instead
    (its head is adapted, then replaced). ``val_split``: hold out this fraction of each
    class when ``data_dir`` has no ``train/``+``val/`` subfolders. ``resume``: continue
    the run in ``out`` from its last complete epoch (arguments must match the
    manifest; ``epochs`` may be larger to extend it). ``overwrite``: delete ftdyn's
    files in ``out`` (``epoch_*.pt``, ``manifest.json``) and start over. ``state_prefix``:
    the copy to load from ``weights``/``init`` files holding several (e.g. ``"ema.module."``).

    Side effect: re-seeds the global torch RNG (from ``seed``, then per epoch).
    Returns the output folder. Raises :class:`FtdynError` for bad input.
    """
    # -- arguments -----------------------------------------------------------------
    if resume and overwrite:
        raise FtdynError("--resume and --overwrite exclude each other; pick one.")
    if int(epochs) < 0:
        raise FtdynError(f"--epochs: must be 0 or more (got {epochs}).")
    if int(batch_size) < 1:
        raise FtdynError(f"--batch-size: must be at least 1 (got {batch_size}).")
    if not (float(lr) > 0 and math.isfinite(float(lr))):
        raise FtdynError(f"--lr: must be a positive number (got {lr}).")
    if int(input_size) < 8:
        raise FtdynError(f"--input-size: must be at least 8 pixels (got {input_size}).")
    if int(num_workers) < 0:
        raise FtdynError(f"--workers: must be 0 or more (got {num_workers}).")
    seed = D.check_seed(seed)
    opt_name = str(optimizer).strip().lower()
    if opt_name not in OPTIMIZERS:
        raise FtdynError(f"--optimizer: '{optimizer}' is not one of {', '.join(OPTIMIZERS)}.")
    epochs, batch_size, lr, input_size = int(epochs), int(batch_size), float(lr), int(input_size)
    val_split = None if val_split is None else float(val_split)
    weights = "none" if weights is None else str(weights)
    arch = models.canonical_arch(arch)
    init_path = None
    if init is not None:
        init_path = Path(init).expanduser()
        if weights.lower() != "none":
            raise FtdynError("--init and --weights exclude each other: --init loads every weight from the "
                             "checkpoint; drop --weights.")
        if not init_path.is_file():
            raise FtdynError(f"--init: '{init_path}' is not a file; give a checkpoint file.")
    weights_file = _weights_file(weights)
    dev = resolve_device(device)

    # -- output folder (read-only checks first) -------------------------------------
    out = Path(out).expanduser()
    own, other = _inspect_out(out)
    manifest_old = None
    if own:
        if resume:
            manifest_old = ckpt.read_manifest(out)
            if manifest_old is None or not manifest_old["epochs"]:
                raise FtdynError(f"--resume: '{out}' has checkpoint files but no complete epoch in "
                                 f"{ckpt.MANIFEST_NAME}; start over with --overwrite.")
        elif not overwrite:
            what = ckpt.MANIFEST_NAME if (out / ckpt.MANIFEST_NAME).exists() else f"{len(own)} checkpoint file(s)"
            raise FtdynError(f"--out: '{out}' already holds an ftdyn run ({what}); pass --resume to continue it, "
                             "--overwrite to replace it, or choose another folder.")
    elif other:
        raise FtdynError(f"--out: '{out}' is not empty and holds no ftdyn run ({other[0].name}, ...); "
                         "choose an empty or new folder.")

    # -- data ----------------------------------------------------------------------
    train_data, val_data = D.resolve_splits(data_dir, val_split, seed)
    skipped = list(train_data.skipped) + list(val_data.skipped)
    rescaled = list(train_data.rescaled) + list(val_data.rescaled)
    for note in (D.skipped_message(skipped), D.rescaled_message(rescaled)):
        if note:
            _say(f"ftdyn: warning: {note}")
    _check_two_classes(train_data, val_data, data_dir, val_split)
    data_path = str(Path(data_dir).expanduser().resolve())
    classes = list(train_data.classes)
    num_classes = len(classes)
    init_sha = ckpt.sha256_file(init_path) if init_path is not None else None
    weights_sha = ckpt.sha256_file(weights_file) if weights_file is not None else None

    if manifest_old is not None:
        _verify_resume(manifest_old, data_path=data_path, arch=arch, weights=weights, weights_sha=weights_sha,
                       init_sha=init_sha,
                       batch_size=batch_size, lr=lr, optimizer=opt_name, val_split=val_split,
                       input_size=input_size, seed=seed, epochs=epochs, crop_scale=crop_scale)
        if manifest_old["classes"] != classes:
            raise FtdynError(f"DATA_DIR: the classes of '{data_path}' changed since the run started; "
                             "resume with the same data or start over with --overwrite.")
        ds = manifest_old.get("dataset", {})
        if (ds.get("train_size"), ds.get("val_size")) != (len(train_data), len(val_data)):
            raise FtdynError(f"DATA_DIR: '{data_path}' now has {len(train_data)} train / {len(val_data)} val images, "
                             f"the run started with {ds.get('train_size')} / {ds.get('val_size')}; resume with the "
                             "same data or start over with --overwrite.")

    # -- model ---------------------------------------------------------------------
    model = _build_source(arch, weights, init_path, num_classes, seed, trust_checkpoint, state_prefix)
    models.blank_forward(model, input_size)  # a one-line --input-size error for sizes the model cannot take
    model.to(dev, memory_format=fastest_memory_format(model, dev))
    opt = _make_optimizer(opt_name, model.parameters(), lr)
    norm = models.default_normalization(model, arch)  # ImageNet's, or a timm model's pretrained config
    mean, std = norm["mean"], norm["std"]

    train_set = D.ImageDataset(train_data, D.train_transform(input_size, crop_scale), seed=seed)
    val_set = D.ImageDataset(val_data, D.eval_transform(input_size))
    pin = dev.type == "cuda"
    drop_last = len(train_data) % batch_size == 1 and len(train_data) > batch_size

    def val_loader():
        return D.make_loader(val_set, batch_size=batch_size, shuffle=False, seed=seed, num_workers=num_workers,
                             pin_memory=pin)

    # -- start or resume -------------------------------------------------------------
    if manifest_old is not None:
        manifest = manifest_old
        entries = sorted(manifest["epochs"], key=lambda e: e["epoch"])
        last, payload, problem = _resume_point(out, entries)
        model.load_state_dict(payload["state_dict"])
        opt.load_state_dict(payload["optimizer"])
        ckpt.set_rng_states(payload["rng"])
        start = int(last["epoch"]) + 1
        manifest["epochs"] = [e for e in entries if e["epoch"] < start]
        manifest["hyperparameters"]["epochs"] = epochs
        if problem:  # the manifest must not list the files removed below
            manifest["complete"] = False
            ckpt.write_manifest(out, manifest)
            end = entries[-1]["epoch"]
            redo = f"epoch {start}" if start == end else f"epochs {start}-{end}"
            _say(f"ftdyn: note: --resume: {problem}; redoing {redo} from {last['file']}")
        for p in out.iterdir():  # checkpoints of an epoch that never reached the manifest
            m = ckpt.CHECKPOINT_REGEX.match(p.name)
            if m and int(m.group(1)) >= start:
                p.unlink()
        if progress:
            _say(f"ftdyn: resuming '{out}' after epoch {start - 1} of {epochs}")
    else:
        if overwrite:
            for p in own:
                p.unlink(missing_ok=True)
        elif resume and progress:
            _say(f"ftdyn: nothing to resume in '{out}'; starting a new run")
        if init_path is None and weights.lower() == "none":  # nothing pre-trained anywhere
            _say("ftdyn train: note: --weights none and no --init, so epoch 0 (the source model) is randomly "
                 "initialized, not pre-trained; pass --weights IMAGENET1K_V1 (or a weights file) or --init CKPT "
                 "to fine-tune a pre-trained model.")
        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": ckpt.SERIES_FORMAT,
            "format_version": ckpt.SERIES_FORMAT_VERSION,
            "architecture": arch,
            "num_classes": num_classes,
            "classes": classes,
            "input_size": input_size,
            "normalization": {"mean": mean, "std": std},
            "dataset": {
                "path": data_path,
                "train_size": len(train_data),
                "val_size": len(val_data),
                "val_split": val_split,
                "class_counts": {"train": train_data.class_counts(), "val": val_data.class_counts()},
                "skipped_unreadable": len(skipped),
                "skipped_first": str(skipped[0]) if skipped else None,
                "min_max_rescaled": len(rescaled),
            },
            "hyperparameters": {"optimizer": opt_name, "lr": lr, "batch_size": batch_size, "epochs": epochs,
                                "crop_scale": crop_scale, "trainable": "all", "head": "new", "augmentation": repr(train_set.transform),
                                "eval_transform": repr(val_set.transform)},
            "seed": seed,
            "init": {"weights": weights, "weights_sha256": weights_sha,
                     "checkpoint": str(init_path.resolve()) if init_path is not None else None,
                     "checkpoint_sha256": init_sha},
            "epochs": [],
            "complete": False,
            "ftdyn_version": __version__,
            "torch_version": torch.__version__,
            "torchvision_version": _torchvision_version(),
            "device": str(dev),
            "created": _now(),
        }
        start = 1

    bar, live = _progress_bar(progress)
    meta = {"architecture": arch, "classes": classes, "num_classes": num_classes, "input_size": input_size,
            "normalization": {"mean": mean, "std": std}, "seed": seed}

    def save(epoch: int, metrics: dict[str, Any], seconds: float) -> None:
        name = ckpt.checkpoint_filename(epoch)
        sha = ckpt.save_checkpoint(out / name, model.state_dict(), epoch=epoch,
                                   extra={**meta, "metrics": metrics, **_state_for_resume(opt)})
        manifest["epochs"] = [e for e in manifest["epochs"] if e["epoch"] != epoch]
        manifest["epochs"].append({"epoch": epoch, "file": name, "sha256": sha, **metrics,
                                   "seconds": round(seconds, 3)})
        manifest["complete"] = epoch >= epochs
        manifest["updated"] = _now()
        ckpt.write_manifest(out, manifest)

    with bar:
        if start == 1 and not manifest["epochs"]:
            t0 = time.perf_counter()
            loader = val_loader()
            task = bar.add_task(f"epoch 0/{epochs} (source)", total=len(loader))
            val_loss, val_acc = _run_epoch(model, loader, device=dev, mean=mean, std=std,
                                           progress=bar if live else None, task=task)
            metrics = {"train_loss": None, "train_acc": None, "val_loss": val_loss, "val_acc": val_acc}
            save(0, metrics, time.perf_counter() - t0)
            if progress:
                _line(bar, live, f"epoch 0/{epochs}: source model with new head: val loss {_fmt(val_loss)} "
                                 f"acc {_fmt(val_acc)}")
        for epoch in range(start, epochs + 1):
            t0 = time.perf_counter()
            torch.manual_seed(D.derive_seed(seed, epoch, 0xD209))  # dropout etc.: depends on (seed, epoch) only
            loader = D.make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed, epoch=epoch,
                                   num_workers=num_workers, drop_last=drop_last, pin_memory=pin)
            vloader = val_loader()
            task = bar.add_task(f"epoch {epoch}/{epochs}", total=len(loader) + len(vloader))
            train_loss, train_acc = _run_epoch(model, loader, device=dev, mean=mean, std=std, optimizer=opt,
                                               progress=bar if live else None, task=task)
            val_loss, val_acc = _run_epoch(model, vloader, device=dev, mean=mean, std=std,
                                           progress=bar if live else None, task=task)
            metrics = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
            save(epoch, metrics, time.perf_counter() - t0)
            if progress:
                _line(bar, live, f"epoch {epoch}/{epochs}: train loss {_fmt(train_loss)} acc {_fmt(train_acc)} | "
                                 f"val loss {_fmt(val_loss)} acc {_fmt(val_acc)} ({time.perf_counter() - t0:.1f} s)")
    if manifest_old is not None and start > epochs:
        if not manifest.get("complete"):
            manifest["complete"] = True
            ckpt.write_manifest(out, manifest)
        if progress:
            _say(f"ftdyn: '{out}' is already complete ({epochs} epochs); nothing to do")
    return out


def _line(bar, live: bool, text: str) -> None:
    if live:
        bar.console.print(text, highlight=False, markup=False)
    else:
        _say(text)


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__
