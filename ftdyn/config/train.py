"""``ftdyn train``'s options: :class:`TrainConfig` and the optimizers by name."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..errors import FtdynError
from .base import _option, arg, check_seed

Optimizer = Literal["adam", "adamw", "sgd"]


#: Optimizers by name. The paper fine-tunes with Adam (lr 1e-4, batch size 196).
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)

#: The most epochs one run may train: every epoch writes a checkpoint (about 100 MB for a
#: ResNet-50), so a typo such as an extra digit would otherwise fill the disk.
MAX_TRAIN_EPOCHS = 10_000


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``ftdyn train`` / :func:`ftdyn.train` takes besides the data and output folders.

    Paper defaults: Adam, batch size 196, lr 1e-4, input 224, every layer trainable.
    Fields marked ``identity`` define the run: ``--resume`` requires the same values as the
    manifest records (``epochs`` may grow). Build with keyword arguments; values are checked
    and normalized on construction (``TrainConfig(arch="resnet18", lr="1e-3").lr == 0.001``).
    """

    arch: str = field(
        metadata={
            "help": (
                "Architecture (any torchvision classification model, or timm/NAME), "
                "e.g. vgg19, resnet50, densenet121."
            ),
            "flag": None,
            "identity": True,
        }
    )
    weights: str = _option(
        "none",
        "Source weights: a torchvision weights name (IMAGENET1K_V1, DEFAULT), a local "
        "weights file, or none (random init).",
        identity=True,
    )
    init: str | os.PathLike | None = _option(
        None,
        "Start from this checkpoint file instead (e.g. a model pre-trained elsewhere or by "
        "`ftdyn train`); its head is replaced.",
    )
    epochs: int = _option(
        10, f"Number of fine-tuning epochs T (paper: 10-15; at most {MAX_TRAIN_EPOCHS})."
    )
    optimizer: Optimizer = _option(
        "adam", "adam (paper), adamw or sgd (momentum 0.9).", identity=True
    )
    lr: float = _option(1e-4, "Learning rate (paper: 1e-4; 1e-3 for Fruits).", identity=True)
    batch_size: int = _option(196, "Batch size (paper: 196).", identity=True)
    crop_scale: float = _option(
        0.08,
        "Smallest area fraction of the random resized crop (0.08 = the ImageNet "
        "recipe; larger keeps small objects).",
        identity=True,
    )
    input_size: int = _option(224, "Input size in pixels (paper: 224).", identity=True)
    seed: int = _option(
        0, "Random seed: head init, data order, augmentation, split.", identity=True
    )
    val_split: float | None = _option(
        None,
        "Hold out this fraction of each class for validation when DATA_DIR "
        "has no train/ and val/ folders (e.g. 0.2).",
        identity=True,
    )
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps.")
    num_workers: int = _option(
        0,
        "Data-loading worker processes (results do not depend on it; use 4-8 on a GPU machine).",
        flag="--workers",
    )
    resume: bool = _option(
        False,
        "Continue the run in --out from its last complete epoch (same arguments; "
        "--epochs may be larger).",
    )
    overwrite: bool = _option(
        False, "Delete the run in --out (only epoch_*.pt and manifest.json) and start over."
    )
    trust_checkpoint: bool = _option(
        False,
        "Allow unpickling arbitrary objects from --init/--weights files (only "
        "for files you trust).",
    )
    state_prefix: str | None = _option(
        None,
        "Key prefix of the model copy to load from --init/--weights files "
        "holding several (e.g. ema.module.).",
    )
    progress: bool = _option(
        True, "Progress bars and per-epoch lines on stderr.", flag="--no-progress"
    )

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        if self.resume and self.overwrite:
            raise FtdynError(
                f"{arg('resume')} and {arg('overwrite')} exclude each other; pick one."
            )
        if not 0 <= int(self.epochs) <= MAX_TRAIN_EPOCHS:
            raise FtdynError(
                f"{arg('epochs')}: must be between 0 and {MAX_TRAIN_EPOCHS} (got {self.epochs});"
                " each epoch writes a checkpoint."
            )
        if int(self.batch_size) < 1:
            raise FtdynError(f"{arg('batch_size')}: must be at least 1 (got {self.batch_size}).")
        if not (float(self.lr) > 0 and math.isfinite(float(self.lr))):
            raise FtdynError(f"{arg('lr')}: must be a positive number (got {self.lr}).")
        if not 0 < float(self.crop_scale) <= 1:
            raise FtdynError(
                f"{arg('crop_scale')}: {self.crop_scale} is not in (0, 1]; 0.08 is the ImageNet"
                " recipe."
            )
        if int(self.input_size) < 8:
            raise FtdynError(
                f"{arg('input_size')}: must be at least 8 pixels (got {self.input_size})."
            )
        if int(self.num_workers) < 0:
            raise FtdynError(f"{arg('num_workers')}: must be 0 or more (got {self.num_workers}).")
        seed = check_seed(self.seed)
        optimizer = str(self.optimizer).strip().lower()
        if optimizer not in OPTIMIZERS:
            raise FtdynError(
                f"{arg('optimizer')}: '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}."
            )
        weights = "none" if self.weights is None else str(self.weights)
        if self.init is not None and weights.lower() != "none":
            raise FtdynError(
                f"{arg('init')} and {arg('weights')} exclude each other: {arg('init')} loads every"
                f" weight from the checkpoint; drop {arg('weights')}."
            )
        normalized = {
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "lr": float(self.lr),
            "crop_scale": float(self.crop_scale),
            "input_size": int(self.input_size),
            "num_workers": int(self.num_workers),
            "seed": seed,
            "optimizer": optimizer,
            "weights": weights,
            "val_split": None if self.val_split is None else float(self.val_split),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (a resumed run must repeat them), by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("identity")
        }

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)
