"""THE activation-store schema: the one definition of the layout that the store's writing
(:mod:`~ftdyn.store.writing`) and opening (:mod:`~ftdyn.store.validate`) follow.

An activation store is a Zarr v3 group written through xarray. Layout (format 1)::

    dims        checkpoint, sample, class, image_y, image_x, rgb, chunk,
                and per layer variable V: V_channel, V_y, V_x
    coords      checkpoint (int epoch), sample (int id), label (sample, int),
                image_path (sample, str), class (class, str: class names)
    data_vars   images   (sample, image_y, image_x, rgb) uint8   probe images after
                         resize/crop, before normalization
                V        (checkpoint, sample, V_channel, V_y, V_x) float16|float32
                         ReLU activations of one layer; attrs: layer, layer_index,
                         receptive_field {size, jump, start} (y, x) in input pixels,
                         and for a token model's layer tokens {grid, prefix_tokens}
                complete (checkpoint, chunk) uint8   1 once region (checkpoint,
                         sample chunk) is written for every layer
    attrs       ftdyn_store_format, ftdyn_version, architecture, model, dataset,
                num_classes, input_size, normalization, dtype, samples_per_chunk,
                layers (module names, shallow -> deep; MODULE:KIND is the prefix token
                of that kind of a token model's module), layer_variables
                {module: variable}, receptive_fields {module: {...}},
                checkpoints [{epoch, file, sha256}], probe {...}, manifest (the
                training manifest when the series came from ``ftdyn train``)
    optional    ``token_layers`` {module: {grid, prefix_tokens}} when some layers are a token
                model's (ViT, Swin, ...): the patch tokens' grid (= V_y, V_x; token i is cell
                (i // V_x, i % V_x)) and the kinds of the prefix tokens dropped from the map
                (class, register, distillation), in their order; a MODULE:KIND layer's map is
                that one prefix token, grid [1, 1], recorded as ``prefix_token`` KIND
    optional    the random-init baseline (``ftdyn extract --random-init-baseline``), NOT an
                epoch: per layer ``random_init__V`` (random_init, sample, V_channel, V_y, V_x)
                with random_init of size 1, ``random_init_complete`` (random_init, chunk)
                uint8, and attrs ``random_init_baseline`` {seed, architecture, init}; a
                randomly initialized model of the same architecture (seeded) on the same
                probe images, the ceiling of relative distances (see
                :func:`~ftdyn.store.writing.add_random_init`)

Activations are chunked (1 checkpoint, ``samples_per_chunk`` samples, all
channels, whole maps). A region is one (checkpoint, sample-chunk) pair; a writer
fills all layers of a region, then sets its ``complete`` mark. A chunk that was
never written reads back as NaN, so completeness is never inferred from data.
The store is created under a temporary name and renamed when its metadata and
images are in place: a crash during creation leaves no half-made store.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr

from .._version import __version__
from ..config import CODECS, arg
from ..errors import FtdynError

STORE_FORMAT = 1
COMPLETE = "complete"
IMAGES = "images"
REQUIRED_ATTRS = (
    "ftdyn_store_format",
    "ftdyn_version",
    "architecture",
    "model",
    "dataset",
    "layers",
    "layer_variables",
    "receptive_fields",
    "checkpoints",
    "samples_per_chunk",
    "dtype",
    "input_size",
    "normalization",
    "probe",
)
# 8-64 MB per chunk: large enough for fast reads, small enough for a Dask task
_TARGET_CHUNK_BYTES = 32 * 2**20
#: a (checkpoint, sample chunk) region is one Zarr shard of inner chunks of about 1/16 of the
#: channels (each ≥ 1 MB), so per-filter analyses that take a group of channels decode only
#: those; the region is still written whole (one shard), so extraction is unchanged
_CHANNEL_BLOCKS = 16
_MIN_INNER_CHUNK_BYTES = 2**20


#: the random-init baseline (module doc): attr key, dimension, completeness marks, variable prefix
RANDOM_INIT = "random_init_baseline"
RANDOM_INIT_DIM = "random_init"
RANDOM_INIT_COMPLETE = "random_init_complete"
_RANDOM_INIT_PREFIX = "random_init__"


#: the root attribute recording the token layers (module doc); absent when there are none
TOKEN_LAYERS = "token_layers"


def baseline_var(var: str) -> str:
    """Store variable of a layer's random-init baseline activations."""
    return _RANDOM_INIT_PREFIX + var


def layer_var(layer: str) -> str:
    """Variable name of a layer: the module name with non-alphanumerics as '_'."""
    return re.sub(r"[^0-9A-Za-z]+", "_", layer).strip("_") or "input"


def layer_dims(var: str) -> tuple[str, str, str, str, str]:
    """Dims of a layer variable; per-layer names because sizes differ between layers."""
    return ("checkpoint", "sample", f"{var}_channel", f"{var}_y", f"{var}_x")


@dataclass(frozen=True)
class LayerSpec:
    name: str
    channels: int
    height: int
    width: int
    receptive_field: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None  # a token model's layer: {grid, prefix_tokens}

    @property
    def var(self) -> str:
        return layer_var(self.name)


@dataclass
class StoreSpec:
    """Everything needed to pre-allocate a store; the activations come later, by region."""

    architecture: str
    layers: list[LayerSpec]
    checkpoints: list[dict[str, Any]]  # [{epoch, file, sha256}] in epoch order
    images: np.ndarray  # (n, H, W, 3) uint8
    labels: np.ndarray  # (n,) int
    class_names: list[str]
    image_paths: list[str]
    input_size: int
    normalization: dict[str, list[float]]
    probe: dict[str, Any]
    model: str | None = None
    dataset: str | None = None
    num_classes: int | None = None
    dtype: str = "float16"
    codec: str = "zstd"
    samples_per_chunk: int | None = None
    manifest: dict[str, Any] | None = None
    extra_attrs: dict[str, Any] = field(default_factory=dict)

    def chunk_samples(self) -> int:
        """Samples per chunk: the largest layer's chunk near 32 MB unless set."""
        n = len(self.labels)
        if self.samples_per_chunk:
            return max(1, min(self.samples_per_chunk, n))
        itemsize = np.dtype(self.dtype).itemsize
        per_sample = max(l.channels * l.height * l.width for l in self.layers) * itemsize
        return max(1, min(n, _TARGET_CHUNK_BYTES // per_sample))


def channel_block(channels: int, samples: int, height: int, width: int, itemsize: int) -> int:
    """Channels per inner chunk of a layer's shards (``channels``: no inner split): the
    smallest divisor of ``channels`` (Zarr needs inner chunks to tile the shard) that is at
    least 1/16 of them and gives inner chunks of at least 1 MB."""
    per_channel = max(1, samples * height * width * itemsize)
    want = max(
        math.ceil(channels / _CHANNEL_BLOCKS), math.ceil(_MIN_INNER_CHUNK_BYTES / per_channel)
    )
    return next(b for b in range(min(channels, want), channels + 1) if channels % b == 0)


def _compressors(codec: str) -> list:
    if codec not in CODECS:
        raise FtdynError(
            f"{arg('codec')}: unknown codec '{codec}'; choose from {', '.join(CODECS)}."
        )
    # zstd clevel 1: on ResNet50 float16 ReLU maps 2.5x faster than clevel 3 (235 vs 94 MB/s per
    # core) for a 4% larger store (ratio 1.64 vs 1.70); compression bounds extraction on a GPU
    return [
        zarr.codecs.BloscCodec(cname=codec, clevel=1 if codec == "zstd" else 5, shuffle="shuffle")
    ]


def _attrs(spec: StoreSpec, samples_per_chunk: int) -> dict[str, Any]:
    attrs = {
        "ftdyn_store_format": STORE_FORMAT,
        "ftdyn_version": __version__,
        "architecture": spec.architecture,
        "model": spec.model or spec.architecture,
        "dataset": spec.dataset or "probe",
        "num_classes": spec.num_classes,
        "input_size": spec.input_size,
        "normalization": spec.normalization,
        "dtype": spec.dtype,
        "codec": spec.codec,
        "samples_per_chunk": samples_per_chunk,
        "layers": [l.name for l in spec.layers],
        "layer_variables": {l.name: l.var for l in spec.layers},
        "receptive_fields": {l.name: l.receptive_field for l in spec.layers},
        "checkpoints": [dict(c) for c in spec.checkpoints],
        "probe": spec.probe,
        "manifest": spec.manifest,
        **spec.extra_attrs,
    }
    token_layers = {l.name: l.tokens for l in spec.layers if l.tokens is not None}
    if token_layers:
        attrs[TOKEN_LAYERS] = token_layers
    return json.loads(json.dumps(attrs))  # fail early on anything not JSON-able


def _activation_encoding(region: tuple[int, ...], itemsize: int, compressors: list) -> dict:
    """Zarr encoding of an activation array written in ``region``s (1 checkpoint, sample chunk,
    channels, height, width): one shard per region of inner chunks of :func:`channel_block`
    channels (one plain chunk where that is all of them), a CRC-32C per chunk so that an altered
    chunk file fails to decode instead of reading as other numbers."""
    _, spc, channels, height, width = region
    encoding = {"chunks": region, "compressors": [*compressors, zarr.codecs.Crc32cCodec()]}
    block = channel_block(channels, spc, height, width, itemsize)
    if block < channels:
        encoding.update(chunks=(1, spc, block, height, width), shards=region)
    return encoding


_COORDS = ("checkpoint", "sample", "label", "image_path", "class")


def checksummed_arrays(attrs: dict[str, Any]) -> list[str]:
    """The store's integrity contract: the arrays that must carry a CRC-32C per chunk (every
    layer and its random-init baseline, the images, the completeness marks, the coordinates),
    so that an altered chunk file fails to decode instead of reading as other numbers. An array
    stored without it (its metadata edited) is a damaged store, refused on open
    (:func:`~ftdyn.store.validate.validate_layout`): its values cannot be verified."""
    layers = list(attrs["layer_variables"].values())
    baselines = [baseline_var(var) for var in layers] if RANDOM_INIT in attrs else []
    return [*layers, *baselines, IMAGES, COMPLETE, *_COORDS]


def check_token_layers(attrs: dict[str, Any], map_sizes: dict[str, tuple[int, int]]) -> str | None:
    """What is wrong with the root attribute :data:`TOKEN_LAYERS` of a store whose layers' maps
    are ``map_sizes`` {module: (y, x)}, or None when it is absent or right."""
    recorded = attrs.get(TOKEN_LAYERS)
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        return f"root attribute '{TOKEN_LAYERS}' is not a mapping"
    for layer, tokens in recorded.items():
        if layer not in map_sizes:
            return f"root attribute '{TOKEN_LAYERS}' names '{layer}', not a layer of the store"
        grid = tokens.get("grid") if isinstance(tokens, dict) else None
        prefix = tokens.get("prefix_tokens") if isinstance(tokens, dict) else None
        if not isinstance(grid, list) or tuple(grid) != tuple(map_sizes[layer]):
            return (
                f"root attribute '{TOKEN_LAYERS}' gives layer {layer} the grid {grid}, its map is"
                f" {list(map_sizes[layer])}"
            )
        if not isinstance(prefix, list) or not all(isinstance(k, str) for k in prefix):
            return f"root attribute '{TOKEN_LAYERS}' lists no prefix-token kinds for layer {layer}"
        kept = tokens.get("prefix_token")
        if kept is not None and kept not in prefix:
            return (
                f"root attribute '{TOKEN_LAYERS}' gives layer {layer} the prefix token '{kept}',"
                f" not one of its prefix tokens {prefix}"
            )
    return None


def store_layers(ds: xr.Dataset) -> list[tuple[str, str]]:
    """(module name, variable) pairs, shallow to deep."""
    return [(layer, ds.attrs["layer_variables"][layer]) for layer in ds.attrs["layers"]]
