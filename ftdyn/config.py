"""Typed, frozen configurations: the one place where each command's defaults and valid values live.

Each command gets one frozen dataclass. A field carries its default, its type (``Literal[...]``
for modes) and its help text (``metadata["help"]``, shown by ``ftdyn COMMAND --help`` and
:func:`describe`); ``__post_init__`` checks and normalizes every value, so the Python API and
the command line refuse the same inputs with the same one-line :class:`FtdynError`. The CLI
reads its option defaults and help from here (:func:`default`, :func:`help_text`), and a test
asserts that every CLI default equals the config default.

:class:`TrainConfig` and :class:`ExtractConfig` exist so far; the other commands follow the same pattern.

This module imports nothing heavy (no torch), so the CLI can use it at import time.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import FtdynError

#: Seeds must fit numpy's legacy seeding (``np.random.seed``), the narrowest RNG ftdyn seeds.
SEED_LIMIT = 2**32

Optimizer = Literal["adam", "adamw", "sgd"]
#: Optimizers by name. The paper fine-tunes with Adam (lr 1e-4, batch size 196).
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


def check_seed(seed, flag: str = "--seed") -> int:
    """``seed`` as an int in ``[0, 2**32)``, or a one-line :class:`FtdynError` naming ``flag``.

    Checked once up front: torch, numpy and python RNGs each fail differently (and
    deep inside a run) on seeds they cannot take.
    """
    try:
        value = operator.index(seed)  # ints and numpy integers, not 1.5 or "3"
    except TypeError:
        raise FtdynError(f"{flag}: {seed!r} is not a whole number; give one from 0 to {SEED_LIMIT - 1}.") from None
    if not 0 <= value < SEED_LIMIT:
        raise FtdynError(f"{flag}: {value} is out of range; give a whole number from 0 to {SEED_LIMIT - 1}.")
    return value


def _option(default: Any, help: str, *, flag: str | None = None, identity: bool = False) -> Any:
    """A config field: ``default``, its ``help`` text, its CLI ``flag`` (default: ``--field-name``)
    and whether it is part of the run's ``identity`` (a resumed run must repeat it)."""
    return field(default=default, metadata={"help": help, "flag": flag, "identity": identity})


def flag_of(config_type: type, name: str) -> str:
    """The command-line flag of field ``name`` (``num_workers`` -> ``--workers``)."""
    meta = _field(config_type, name).metadata
    return meta.get("flag") or "--" + name.replace("_", "-")


def default(config_type: type, name: str) -> Any:
    """The default value of field ``name`` of ``config_type``."""
    return _field(config_type, name).default


def help_text(config_type: type, name: str) -> str:
    """The help text of field ``name`` of ``config_type`` (the CLI option's help)."""
    return _field(config_type, name).metadata["help"]


def describe(config_type: type) -> str:
    """One line per field: name, default and help (for docstrings and ``help()``)."""
    lines = []
    for f in dataclasses.fields(config_type):
        shown = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
        lines.append(f"{f.name} ({shown}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _field(config_type: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(config_type):
        if f.name == name:
            return f
    raise KeyError(f"{config_type.__name__} has no field {name!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``ftdyn train`` / :func:`ftdyn.train` takes besides the data and output folders.

    Paper defaults: Adam, batch size 196, lr 1e-4, input 224, every layer trainable.
    Fields marked ``identity`` define the run: ``--resume`` requires the same values as the
    manifest records (``epochs`` may grow). Build with keyword arguments; values are checked
    and normalized on construction (``TrainConfig(arch="resnet18", lr="1e-3").lr == 0.001``).
    """

    arch: str = field(metadata={"help": "Architecture (any torchvision classification model, or timm/NAME), "
                                        "e.g. vgg19, resnet50, densenet121.", "flag": None, "identity": True})
    weights: str = _option("none", "Source weights: a torchvision weights name (IMAGENET1K_V1, DEFAULT), a local "
                                   "weights file, or none (random init).", identity=True)
    init: str | os.PathLike | None = _option(None, "Start from this checkpoint file instead (e.g. a model pre-trained elsewhere or by "
                              "`ftdyn train`); its head is replaced.")
    epochs: int = _option(10, "Number of fine-tuning epochs T (paper: 10-15).")
    optimizer: Optimizer = _option("adam", "adam (paper), adamw or sgd (momentum 0.9).", identity=True)
    lr: float = _option(1e-4, "Learning rate (paper: 1e-4; 1e-3 for Fruits).", identity=True)
    batch_size: int = _option(196, "Batch size (paper: 196).", identity=True)
    crop_scale: float = _option(0.08, "Smallest area fraction of the random resized crop (0.08 = the ImageNet "
                                      "recipe; larger keeps small objects).", identity=True)
    input_size: int = _option(224, "Input size in pixels (paper: 224).", identity=True)
    seed: int = _option(0, "Random seed: head init, data order, augmentation, split.", identity=True)
    val_split: float | None = _option(None, "Hold out this fraction of each class for validation when DATA_DIR "
                                            "has no train/ and val/ folders (e.g. 0.2).", identity=True)
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps.")
    num_workers: int = _option(0, "Data-loading worker processes (results do not depend on it; use 4-8 on a GPU "
                                  "machine).", flag="--workers")
    resume: bool = _option(False, "Continue the run in --out from its last complete epoch (same arguments; "
                                  "--epochs may be larger).")
    overwrite: bool = _option(False, "Delete the run in --out (only epoch_*.pt and manifest.json) and start over.")
    trust_checkpoint: bool = _option(False, "Allow unpickling arbitrary objects from --init/--weights files (only "
                                            "for files you trust).")
    state_prefix: str | None = _option(None, "Key prefix of the model copy to load from --init/--weights files "
                                             "holding several (e.g. ema.module.).")
    progress: bool = _option(True, "Progress bars and per-epoch lines on stderr.", flag="--no-progress")

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        if self.resume and self.overwrite:
            raise FtdynError("--resume and --overwrite exclude each other; pick one.")
        if int(self.epochs) < 0:
            raise FtdynError(f"--epochs: must be 0 or more (got {self.epochs}).")
        if int(self.batch_size) < 1:
            raise FtdynError(f"--batch-size: must be at least 1 (got {self.batch_size}).")
        if not (float(self.lr) > 0 and math.isfinite(float(self.lr))):
            raise FtdynError(f"--lr: must be a positive number (got {self.lr}).")
        if not 0 < float(self.crop_scale) <= 1:
            raise FtdynError(f"--crop-scale: {self.crop_scale} is not in (0, 1]; 0.08 is the ImageNet recipe.")
        if int(self.input_size) < 8:
            raise FtdynError(f"--input-size: must be at least 8 pixels (got {self.input_size}).")
        if int(self.num_workers) < 0:
            raise FtdynError(f"--workers: must be 0 or more (got {self.num_workers}).")
        seed = check_seed(self.seed)
        optimizer = str(self.optimizer).strip().lower()
        if optimizer not in OPTIMIZERS:
            raise FtdynError(f"--optimizer: '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}.")
        weights = "none" if self.weights is None else str(self.weights)
        if self.init is not None and weights.lower() != "none":
            raise FtdynError("--init and --weights exclude each other: --init loads every weight from the "
                             "checkpoint; drop --weights.")
        normalized = {"epochs": int(self.epochs), "batch_size": int(self.batch_size), "lr": float(self.lr),
                      "crop_scale": float(self.crop_scale),
                      "input_size": int(self.input_size), "num_workers": int(self.num_workers), "seed": seed,
                      "optimizer": optimizer, "weights": weights,
                      "val_split": None if self.val_split is None else float(self.val_split)}
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (a resumed run must repeat them), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("identity")}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)


StoreDtype = Literal["float16", "float32"]
#: Types an activation store holds its values in (one per store).
STORE_DTYPES: tuple[str, ...] = get_args(StoreDtype)
Codec = Literal["zstd", "lz4"]
#: Compression codecs of an activation store (Blosc): zstd is smaller, lz4 faster.
CODECS: tuple[str, ...] = get_args(Codec)
WeightsCopy = Literal["main", "ema"]
#: Which copy of the model a checkpoint file gives: the model's own weights, or its EMA copy.
WEIGHTS_COPIES: tuple[str, ...] = get_args(WeightsCopy)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``ftdyn extract`` / :func:`ftdyn.extract` takes besides the series, probe and store folders.

    Fields marked ``identity`` define the store: resuming or extending an existing store
    requires the values it records (a field left ``None`` takes the series' or model's
    default, and ``samples_per_chunk`` left ``None`` takes the store's). ``weights_copy`` is
    checked when the first checkpoint file is read (after the notes about the series).
    """

    arch: str | None = _option(None, "Architecture of third-party checkpoints, e.g. resnet50 or timm/convnext_atto "
                                     "(an ftdyn series names it in manifest.json).", identity=True)
    source: str | os.PathLike | None = _option(None, "Epoch 0 of a third-party series: a checkpoint file or a "
                                                     "torchvision weights name (IMAGENET1K_V1).")
    layers: tuple[str, ...] | None = _option(None, "Module to capture (repeat the option; default: the paper's "
                                                   "layers, see `ftdyn layers ARCH`).", flag="--layer", identity=True)
    per_class: int | None = _option(None, "At most N probe images per class (default: all).", identity=True)
    max_samples: int | None = _option(None, "At most N probe images in all, balanced over classes.", identity=True)
    probe_seed: int = _option(0, "Seed of the probe-image selection.", flag="--seed", identity=True)
    input_size: int | None = _option(None, "Input size in pixels (default: the series' size, else 224).",
                                     identity=True)
    batch_size: int = _option(64, "Images per forward pass.")
    dtype: StoreDtype = _option("float16", "Stored activation type: float16 or float32.", identity=True)
    codec: Codec = _option("zstd", "Compression: zstd (smaller) or lz4 (faster).")
    samples_per_chunk: int | None = _option(None, "Samples per store chunk (default: ~32 MB chunks of the largest "
                                                  "layer).", flag="--chunk-samples", identity=True)
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda or cuda:N.")
    trust_checkpoint: bool = _option(False, "Allow unpickling arbitrary objects from checkpoint files (only for "
                                            "files you trust).")
    state_prefix: str | None = _option(None, "Key prefix (ema.module.) or top-level entry (state_dict_ema, "
                                             "model_ema) of the model copy to load from files holding several.")
    weights_copy: WeightsCopy = _option("main", "main (the model's weights) or ema (its EMA copy: timm's "
                                                "state_dict_ema, torchvision's model_ema, ema.module. keys).")
    normalize: str | None = _option(None, "MEAN,STD (or three means, three stds) the model expects (default: the "
                                          "timm model's pretrained config, else ImageNet's).", identity=True)
    model_name: str | None = _option(None, "Model name shown in reports (default: the architecture).")
    dataset_name: str | None = _option(None, "Dataset name shown in reports (default: from the series or the "
                                             "--data folder).")
    writers: int | None = _option(None, "Threads compressing and writing regions (default: one per CPU core but "
                                        "one, 2 to 16).")
    progress: bool = _option(True, "Progress bars on stderr.", flag="--no-progress")
    random_init_baseline: bool = _option(False, "Also extract a seeded randomly initialized model of the same "
                                                "architecture on the same images (not an epoch): the ceiling of "
                                                "`analyze`'s relative_distance.")
    random_init_seed: int = _option(0, "Seed of the random-init baseline.")

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        if self.dtype not in STORE_DTYPES:
            raise FtdynError(f"--dtype: '{self.dtype}' is not supported; choose {' or '.join(STORE_DTYPES)}.")
        if self.codec not in CODECS:
            raise FtdynError(f"--codec: unknown codec '{self.codec}'; choose from {', '.join(CODECS)}.")
        for name in ("batch_size", "writers", "samples_per_chunk"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise FtdynError(f"{flag_of(ExtractConfig, name)}: must be at least 1 (got {value}).")
        if self.input_size is not None and int(self.input_size) < 8:
            raise FtdynError(f"--input-size: {self.input_size} is too small (at least 8 pixels).")
        normalized = {"probe_seed": check_seed(self.probe_seed),
                      "random_init_seed": check_seed(self.random_init_seed, flag_of(ExtractConfig, "random_init_seed")),
                      "batch_size": int(self.batch_size),
                      "layers": (self.layers,) if isinstance(self.layers, str) else tuple(self.layers or ()) or None}
        for name in ("writers", "samples_per_chunk", "input_size"):
            value = getattr(self, name)
            normalized[name] = None if value is None else int(value)
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def identity(self) -> dict[str, Any]:
        """The fields that define the store (a resumed or extended store must repeat them), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("identity")}

    def replace(self, **changes: Any) -> ExtractConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)
