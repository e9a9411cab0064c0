"""``ftdyn extract``'s options: :class:`ExtractConfig`, and the dtypes, codecs and model copies
an activation store may hold."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..errors import FtdynError
from .base import _option, arg, check_seed

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
    """Everything ``ftdyn extract`` / :func:`ftdyn.extract` takes besides the series, probe and
    store folders.

    Fields marked ``identity`` define the store: resuming or extending an existing store
    requires the values it records (a field left ``None`` takes the series' or model's
    default, and ``samples_per_chunk`` left ``None`` takes the store's). ``weights_copy`` is
    checked when the first checkpoint file is read (after the notes about the series).
    """

    arch: str | None = _option(
        None,
        "Architecture of third-party checkpoints, e.g. resnet50 or timm/convnext_atto "
        "(an ftdyn series names it in manifest.json).",
        identity=True,
    )
    source: str | os.PathLike | None = _option(
        None,
        "Epoch 0 of a third-party series: a checkpoint file or a "
        "torchvision weights name (IMAGENET1K_V1).",
    )
    layers: tuple[str, ...] | None = _option(
        None,
        "Module to capture (repeat the option; default: the paper's "
        "layers, see `ftdyn layers ARCH`); MODULE:class keeps a token model's class token.",
        flag="--layer",
        identity=True,
    )
    per_class: int | None = _option(
        None, "At most N probe images per class (default: all).", identity=True
    )
    max_samples: int | None = _option(
        None, "At most N probe images in all, balanced over classes.", identity=True
    )
    probe_seed: int = _option(0, "Seed of the probe-image selection.", flag="--seed", identity=True)
    input_size: int | None = _option(
        None, "Input size in pixels (default: the series' size, else 224).", identity=True
    )
    batch_size: int = _option(64, "Images per forward pass.")
    dtype: StoreDtype = _option(
        "float16", "Stored activation type: float16 or float32.", identity=True
    )
    codec: Codec = _option("zstd", "Compression: zstd (smaller) or lz4 (faster).")
    samples_per_chunk: int | None = _option(
        None,
        "Samples per store chunk (default: ~32 MB chunks of the largest layer).",
        flag="--chunk-samples",
        identity=True,
    )
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda or cuda:N.")
    trust_checkpoint: bool = _option(
        False,
        "Allow unpickling arbitrary objects from checkpoint files (only for files you trust).",
    )
    state_prefix: str | None = _option(
        None,
        "Key prefix (ema.module.) or top-level entry (state_dict_ema, "
        "model_ema) of the model copy to load from files holding several.",
    )
    weights_copy: WeightsCopy = _option(
        "main",
        "main (the model's weights) or ema (its EMA copy: timm's "
        "state_dict_ema, torchvision's model_ema, ema.module. keys).",
    )
    normalize: str | None = _option(
        None,
        "MEAN,STD (or three means, three stds) the model expects (default: the "
        "timm model's pretrained config, else ImageNet's).",
        identity=True,
    )
    model_name: str | None = _option(
        None, "Model name shown in reports (default: the architecture)."
    )
    dataset_name: str | None = _option(
        None, "Dataset name shown in reports (default: from the series or the --data folder)."
    )
    writers: int | None = _option(
        None,
        "Threads compressing and writing regions (default: one per CPU core but one, 2 to 16).",
    )
    scheduler: Any = _option(
        None,
        "Replay the checkpoints on an existing Dask cluster: tcp://HOST:PORT (or, from Python, a"
        " distributed.Client); its workers read the series and write --out at the same paths.",
    )
    progress: bool = _option(True, "Progress bars on stderr.", flag="--no-progress")
    random_init_baseline: bool = _option(
        False,
        "Also extract a seeded randomly initialized model of the same "
        "architecture on the same images (not an epoch): the ceiling of "
        "`analyze`'s relative_distance.",
    )
    random_init_seed: int = _option(0, "Seed of the random-init baseline.")

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        if self.dtype not in STORE_DTYPES:
            raise FtdynError(
                f"{arg('dtype')}: '{self.dtype}' is not supported; choose"
                f" {' or '.join(STORE_DTYPES)}."
            )
        if self.codec not in CODECS:
            raise FtdynError(
                f"{arg('codec')}: unknown codec '{self.codec}'; choose from {', '.join(CODECS)}."
            )
        for name in ("batch_size", "writers", "samples_per_chunk"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise FtdynError(f"{arg(name)}: must be at least 1 (got {value}).")
        if self.input_size is not None and int(self.input_size) < 8:
            raise FtdynError(
                f"{arg('input_size')}: {self.input_size} is too small (at least 8 pixels)."
            )
        normalized = {
            "probe_seed": check_seed(self.probe_seed, "probe_seed"),
            "random_init_seed": check_seed(self.random_init_seed, "random_init_seed"),
            "batch_size": int(self.batch_size),
            "layers": (
                (self.layers,) if isinstance(self.layers, str) else tuple(self.layers or ()) or None
            ),
        }
        for name in ("writers", "samples_per_chunk", "input_size"):
            value = getattr(self, name)
            normalized[name] = None if value is None else int(value)
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def identity(self) -> dict[str, Any]:
        """The fields that define the store (a resumed or extended store must repeat them),
        by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("identity")
        }

    def replace(self, **changes: Any) -> ExtractConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)
