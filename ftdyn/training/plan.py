"""The plan of a run (:func:`make_plan`): the options validated, the output folder (new, resume
or restart) and the data read, before anything is trained or written."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .. import checkpoints as ckpt
from .. import data, models
from ..config import TrainConfig, arg
from ..devices import resolve_device
from ..errors import FtdynError, FtdynWarning
from ..folders import ignored_message
from ..outputs import check_output_folder
from .resume import _inspect_out, _verify_resume


def _check_two_classes(
    train_data: data.ImageFolderData, val_data: data.ImageFolderData, data_dir, val_split
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
    train_data: data.ImageFolderData
    val_data: data.ImageFolderData
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


def _read_data(data_dir, config: TrainConfig) -> tuple[data.ImageFolderData, data.ImageFolderData]:
    """The training and validation splits; prints what was skipped, rescaled or ignored."""
    train_data, val_data = data.resolve_splits(data_dir, config.val_split, config.seed)
    skipped = list(train_data.skipped) + list(val_data.skipped)
    rescaled = list(train_data.rescaled) + list(val_data.rescaled)
    ignored = list(dict.fromkeys([*train_data.ignored, *val_data.ignored]))
    for note in (
        data.skipped_message(skipped),
        data.rescaled_message(rescaled),
        ignored_message(ignored),
    ):
        if note:
            warnings.warn(note, FtdynWarning, stacklevel=2)
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
