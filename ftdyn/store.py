"""THE activation-store schema: create, open, validate, fill by region, completeness.

An activation store is a Zarr v3 group written through xarray. Layout (format 1)::

    dims        checkpoint, sample, class, image_y, image_x, rgb, chunk,
                and per layer variable V: V_channel, V_y, V_x
    coords      checkpoint (int epoch), sample (int id), label (sample, int),
                image_path (sample, str), class (class, str: class names)
    data_vars   images   (sample, image_y, image_x, rgb) uint8   probe images after
                         resize/crop, before normalization
                V        (checkpoint, sample, V_channel, V_y, V_x) float16|float32
                         ReLU activations of one layer; attrs: layer, layer_index,
                         receptive_field {size, jump, start} (y, x) in input pixels
                complete (checkpoint, chunk) uint8   1 once region (checkpoint,
                         sample chunk) is written for every layer
    attrs       ftdyn_store_format, ftdyn_version, architecture, model, dataset,
                num_classes, input_size, normalization, dtype, samples_per_chunk,
                layers (module names, shallow -> deep), layer_variables
                {module: variable}, receptive_fields {module: {...}},
                checkpoints [{epoch, file, sha256}], probe {...}, manifest (the
                training manifest when the series came from ``ftdyn train``)
    optional    the random-init baseline (``ftdyn extract --random-init-baseline``), NOT an
                epoch: per layer ``random_init__V`` (random_init, sample, V_channel, V_y, V_x)
                with random_init of size 1, ``random_init_complete`` (random_init, chunk)
                uint8, and attrs ``random_init_baseline`` {seed, architecture, init}; a
                randomly initialized model of the same architecture (seeded) on the same
                probe images, the ceiling of relative distances (see :func:`add_random_init`)

Activations are chunked (1 checkpoint, ``samples_per_chunk`` samples, all
channels, whole maps). A region is one (checkpoint, sample-chunk) pair; a writer
fills all layers of a region, then sets its ``complete`` mark. A chunk that was
never written reads back as NaN, so completeness is never inferred from data.
The store is created under a temporary name and renamed when its metadata and
images are in place: a crash during creation leaves no half-made store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ._version import __version__
from .config import CODECS, arg
from .config import STORE_DTYPES as DTYPES
from .errors import FtdynError
from .outputs import LOCK_FILE

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


def _validate_spec(spec: StoreSpec) -> None:
    n = len(spec.labels)
    if spec.dtype not in DTYPES:
        raise FtdynError(
            f"{arg('dtype')}: '{spec.dtype}' is not supported; choose from {', '.join(DTYPES)}."
        )
    if (
        spec.images.dtype != np.uint8
        or spec.images.ndim != 4
        or spec.images.shape[0] != n
        or spec.images.shape[-1] != 3
    ):
        raise ValueError(
            f"images must be uint8 (n, H, W, 3) with n={n}, got {spec.images.dtype}"
            f" {spec.images.shape}"
        )
    if len(spec.image_paths) != n or n == 0:
        raise ValueError("one image path and label per sample, at least one sample")
    if not spec.layers or not spec.checkpoints:
        raise ValueError("a store needs at least one layer and one checkpoint")
    epochs = [c["epoch"] for c in spec.checkpoints]
    if epochs != sorted(set(epochs)):
        raise ValueError(f"checkpoint epochs must be unique and increasing, got {epochs}")
    vars_ = [l.var for l in spec.layers]
    if len(set(vars_)) != len(vars_) or {IMAGES, COMPLETE} & set(vars_):
        raise FtdynError(
            f"{arg('layers')}: layer names {', '.join(l.name for l in spec.layers)} collide as"
            " store variables."
        )


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


def _activation_variables(
    spec: StoreSpec, spc: int, compressors: list
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Lazily zero activation arrays, one per layer, plus the chunk-completion flags."""
    import dask.array as da

    n = len(spec.labels)
    n_ckpt = len(spec.checkpoints)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for index, layer in enumerate(spec.layers):
        shape = (n_ckpt, n, layer.channels, layer.height, layer.width)
        region = (1, spc, layer.channels, layer.height, layer.width)
        data_vars[layer.var] = xr.Variable(
            layer_dims(layer.var),
            da.zeros(shape, chunks=region, dtype=spec.dtype),
            attrs={
                "layer": layer.name,
                "layer_index": index,
                "receptive_field": json.loads(json.dumps(layer.receptive_field)),
            },
        )
        encoding[layer.var] = _activation_encoding(
            region, np.dtype(spec.dtype).itemsize, compressors
        )
    data_vars[COMPLETE] = xr.Variable(
        ("checkpoint", "chunk"),
        da.zeros((n_ckpt, math.ceil(n / spc)), chunks=(1, 1), dtype="uint8"),
        attrs={"description": "1 once (checkpoint, sample chunk) is written for all layers"},
    )
    encoding[COMPLETE] = {"chunks": (1, 1), "compressors": [zarr.codecs.Crc32cCodec()]}
    return data_vars, encoding


def _store_dataset(spec: StoreSpec, spc: int) -> tuple[xr.Dataset, dict[str, Any]]:
    """The whole store as a lazy dataset, with the zarr encoding of every variable."""
    compressors = _compressors(spec.codec)
    data_vars, encoding = _activation_variables(spec, spc, compressors)
    data_vars[IMAGES] = xr.Variable(
        ("sample", "image_y", "image_x", "rgb"),
        spec.images,
        attrs={"description": "probe images, RGB, after resize/crop, before normalization"},
    )
    encoding[IMAGES] = {
        "chunks": (spc, *spec.images.shape[1:]),
        "compressors": [*compressors, zarr.codecs.Crc32cCodec()],
    }
    # a flipped byte fails its CRC on open
    for coord in _COORDS:
        encoding[coord] = {"compressors": [zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()]}

    ds = xr.Dataset(
        data_vars,
        coords={
            "checkpoint": (
                "checkpoint",
                np.array([c["epoch"] for c in spec.checkpoints], dtype=np.int64),
                {"description": "epoch of the checkpoint (0 = source model)"},
            ),
            "sample": ("sample", np.arange(len(spec.labels), dtype=np.int64)),
            "label": ("sample", np.asarray(spec.labels, dtype=np.int64)),
            "image_path": ("sample", np.array(spec.image_paths, dtype=object)),
            "class": ("class", np.array(spec.class_names, dtype=object)),
        },
        attrs=_attrs(spec, spc),
    )
    return ds, encoding


def create_store(path: str | Path, spec: StoreSpec) -> Path:
    """Pre-allocate a store at ``path`` (must not exist): metadata, coords and images.

    Activation arrays are allocated but empty; fill them with :class:`StoreWriter`.
    """
    path = Path(path)
    if path.exists():
        raise FtdynError(f"{path}: already exists; open it to resume, or remove it.")
    _validate_spec(spec)
    ds, encoding = _store_dataset(spec, spec.chunk_samples())
    # written under a temporary name and renamed, so a crash never leaves a half-made store
    tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.to_zarr(
            tmp, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding
        )
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


_COORDS = ("checkpoint", "sample", "label", "image_path", "class")


def _damaged(path: Path, what: str) -> FtdynError:
    return FtdynError(f"{path}: damaged ftdyn store, {what}; re-extract it into a new --out.")


def _array(path: Path, group: zarr.Group, name: str):
    """``group[name]`` with its metadata parsed: an unreadable one (bad fill value, codec or
    shape) is a one-line error naming the array."""
    try:
        array = group[name]
        array.shape, array.dtype, array.chunks, array.shards  # noqa: B018 - parse all of it now
        return array
    except Exception as exc:  # zarr raises many types for damaged metadata
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise _damaged(
            path, f"array '{name}' has unreadable metadata ({type(exc).__name__}: {detail})"
        ) from None


def _small(path: Path, array, name: str) -> np.ndarray:
    """The values of a small array (coordinates), decoded and CRC-checked."""
    with decoding(path, f"array '{name}'"):
        return np.asarray(array[...])


def _checkpoint_arrays(
    path: Path,
    group: zarr.Group,
    attrs: dict[str, Any],
    repair: bool,
    ignore_extension: bool = False,
) -> int:
    """The root attribute ``checkpoints`` (strictly increasing epochs) against the
    ``checkpoint`` coordinate and the checkpoint axis of every array. Arrays longer than the
    attribute are a store caught while ``extract`` added checkpoints: a writer shrinks them
    back (its extension is redone), a reader gets one line, a writer planning its run
    (``ignore_extension``) reads the store as it was before. Returns the arrays' length."""
    try:
        epochs = [int(c["epoch"]) for c in attrs["checkpoints"]]
    except (TypeError, KeyError, ValueError):
        raise _damaged(
            path, "root attribute 'checkpoints' is not a list of {epoch, file, sha256}"
        ) from None
    if not epochs or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise _damaged(
            path, f"root attribute 'checkpoints' lists epochs {epochs}, not strictly increasing"
        )
    names = [*attrs["layer_variables"].values(), COMPLETE, "checkpoint"]
    lengths = {name: _array(path, group, name).shape[0] for name in names}
    longer = {name: k for name, k in lengths.items() if k > len(epochs)}
    if longer and repair:
        for name in longer:
            array = group[name]
            array.resize((len(epochs), *array.shape[1:]))
        lengths.update(dict.fromkeys(longer, len(epochs)))
    elif longer and not ignore_extension:
        raise FtdynError(
            f"{path}: caught while `ftdyn extract` was adding checkpoints (array"
            f" '{next(iter(longer))}' has {max(longer.values())} checkpoints, the root attribute"
            f" lists {len(epochs)}); run the same `ftdyn extract` again to finish, then re-run this"
            " command."
        )
    shorter = [name for name, k in lengths.items() if k < len(epochs)]
    if shorter:
        raise _damaged(
            path,
            f"array '{shorter[0]}' has {lengths[shorter[0]]} checkpoints, the root attribute "
            f"'checkpoints' lists {len(epochs)}",
        )
    coord = [int(e) for e in _small(path, group["checkpoint"], "checkpoint")][: len(epochs)]
    if coord != epochs:
        raise _damaged(
            path,
            f"coordinate 'checkpoint' is {coord} but the root attribute 'checkpoints' lists epochs "
            f"{epochs}",
        )
    return lengths[COMPLETE]


def _sample_arrays(
    path: Path, group: zarr.Group, attrs: dict[str, Any], n_checkpoints: int
) -> tuple[int, int]:
    """Sample-axis lengths, image layout, labels within the classes and the completeness
    marks' shape (``n_checkpoints`` rows; checked before anything reads them); returns
    (samples, samples per chunk)."""
    n = _array(path, group, "sample").shape[0]
    spc = attrs["samples_per_chunk"]
    if not isinstance(spc, int) or isinstance(spc, bool) or spc < 1:
        raise _damaged(
            path, f"root attribute 'samples_per_chunk' is {spc!r}, not a positive integer"
        )
    for name in ("label", "image_path"):
        if _array(path, group, name).shape != (n,):
            raise _damaged(
                path,
                f"array '{name}' has shape {group[name].shape}, expected ({n},) (one per sample)",
            )
    images = _array(path, group, IMAGES)
    if (
        images.dtype != np.uint8
        or len(images.shape) != 4
        or images.shape[0] != n
        or images.shape[3] != 3
    ):
        raise _damaged(
            path,
            f"array '{IMAGES}' is {images.dtype} {images.shape}, expected uint8 ({n}, H, W, 3)",
        )
    complete = _array(path, group, COMPLETE)
    expected = (n_checkpoints, math.ceil(n / spc))
    if complete.shape != expected or complete.dtype != np.uint8 or complete.chunks != (1, 1):
        raise _damaged(
            path,
            f"array '{COMPLETE}' is {complete.dtype} {complete.shape} in chunks {complete.chunks}, "
            f"expected uint8 {expected} in chunks (1, 1)",
        )
    n_classes = _array(path, group, "class").shape[0]
    labels = _small(path, group["label"], "label")
    if labels.dtype.kind not in "iu" or (
        labels.size and (labels.min() < 0 or labels.max() >= n_classes)
    ):
        raise _damaged(
            path, f"array 'label' holds {labels.dtype} values outside the {n_classes} classes"
        )
    _small(path, group["image_path"], "image_path")
    _small(path, group["class"], "class")
    return n, spc


def _layer_arrays(path: Path, group: zarr.Group, attrs: dict[str, Any], n: int, spc: int) -> None:
    """Each layer's type, dimensions, sample axis and region layout (one region = one
    checkpoint, ``samples_per_chunk`` samples, all channels, the whole map), and the same of its
    random-init baseline where the store has one."""
    if attrs["dtype"] not in DTYPES:
        raise _damaged(
            path, f"root attribute 'dtype' is {attrs['dtype']!r}, not one of {', '.join(DTYPES)}"
        )
    if list(attrs["layer_variables"]) != list(attrs["layers"]):
        raise _damaged(path, "root attributes 'layers' and 'layer_variables' name different layers")
    for layer, var in attrs["layer_variables"].items():
        array = _activation_array(path, group, var, layer, attrs["dtype"], layer_dims(var), n, spc)
        baseline = baseline_var(var)
        if (path / baseline / "zarr.json").is_file():
            dims = (RANDOM_INIT_DIM, *layer_dims(var)[1:])
            stored = _activation_array(path, group, baseline, layer, attrs["dtype"], dims, n, spc)
            if stored.shape != (1, *array.shape[1:]):
                raise _damaged(
                    path,
                    f"array '{baseline}' (random-init baseline of layer {layer}) has shape"
                    f" {stored.shape}, expected {(1, *array.shape[1:])}",
                )


def _activation_array(
    path: Path, group: zarr.Group, var: str, layer: str, dtype: str, dims: tuple, n: int, spc: int
):
    """One activation array's type, dimensions, sample axis and region layout, checked."""
    array = _array(path, group, var)
    if str(array.dtype) != dtype:
        raise _damaged(
            path, f"array '{var}' (layer {layer}) is {array.dtype}, the store records {dtype}"
        )
    found = tuple(array.metadata.dimension_names or ())
    if len(array.shape) != 5 or found != dims:
        raise _damaged(
            path, f"array '{var}' (layer {layer}) has dimensions {found}, expected {dims}"
        )
    if array.shape[1] != n:
        raise _damaged(
            path, f"array '{var}' (layer {layer}) has {array.shape[1]} samples, the store has {n}"
        )
    region = (1, min(spc, n), *array.shape[2:])
    outer = array.shards or array.chunks
    if (
        tuple(outer) != region
        or array.shape[2] % array.chunks[2]
        or tuple(array.chunks[3:]) != region[3:]
    ):
        raise _damaged(
            path,
            f"array '{var}' (layer {layer}) has shape {array.shape} stored in regions {outer}, "
            f"expected regions {region} (a changed map size or channel count)",
        )
    return array


def validate_layout(
    path: str | Path, group: zarr.Group, *, repair: bool = False, ignore_extension: bool = False
) -> None:
    """Check a store against itself before anything large is read or allocated: the root
    attributes against the arrays' metadata, coordinates and checksummed small arrays. Every
    inconsistency is one FtdynError naming the array and what differs. ``repair`` (writers
    only) undoes a checkpoint extension that was cut short; ``ignore_extension`` (a writer
    planning its run, reading only) leaves it for the writer to undo."""
    path = Path(path)
    attrs = dict(group.attrs)
    if not isinstance(attrs["layer_variables"], dict) or not isinstance(attrs["layers"], list):
        raise _damaged(
            path, "root attributes 'layers'/'layer_variables' are not a list and a mapping"
        )
    n_checkpoints = _checkpoint_arrays(path, group, attrs, repair, ignore_extension)
    n, spc = _sample_arrays(path, group, attrs, n_checkpoints)
    _layer_arrays(path, group, attrs, n, spc)


@contextlib.contextmanager
def metadata_lock(path: Path, *, exclusive: bool):
    """Readers (shared) and a writer changing array shapes (exclusive) take turns on the store's
    metadata, so a reader never sees a checkpoint extension half done. The lock is a ``flock`` on
    the ``complete`` array's folder (always there; the store root is locked for whole extract
    runs); where it cannot be taken (no such folder, no flock) the store is read unlocked."""
    try:
        import fcntl

        fd = os.open(path / COMPLETE, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _open_group(path: Path, mode: str = "r", *, ignore_extension: bool = False) -> zarr.Group:
    if not (path / "zarr.json").is_file():
        raise FtdynError(
            f"{path}: not an ftdyn activation store (no zarr.json); create one with `ftdyn"
            " extract`."
        )
    try:
        group = zarr.open_group(path, mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises many types for unreadable metadata
        raise FtdynError(
            f"{path}: not a readable Zarr v3 store ({type(exc).__name__}: {exc})."
        ) from None
    attrs = dict(group.attrs)
    _validate_attrs(path, attrs)
    missing = [
        var
        for var in (*attrs["layer_variables"].values(), IMAGES, COMPLETE, *_COORDS)
        if not (path / var / "zarr.json").is_file()
    ]  # (membership would parse, and fail on, its metadata)
    if missing:
        raise FtdynError(
            f"{path}: damaged ftdyn store, array(s) {', '.join(missing)} missing; re-extract it "
            "into a new --out."
        )
    validate_layout(path, group, repair=mode != "r", ignore_extension=ignore_extension)
    return group


def _validate_attrs(path: Path, attrs: dict[str, Any]) -> None:
    if "ftdyn_store_format" not in attrs:
        raise FtdynError(
            f"{path}: a Zarr store, but not an ftdyn activation store (no ftdyn attributes)."
        )
    if attrs["ftdyn_store_format"] != STORE_FORMAT:
        raise FtdynError(
            f"{path}: written in ftdyn store format {attrs['ftdyn_store_format']} by ftdyn"
            f" {attrs.get('ftdyn_version', '?')}; this ftdyn {__version__} reads format"
            f" {STORE_FORMAT}. Re-extract it with this version."
        )
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise FtdynError(f"{path}: damaged ftdyn store, attributes missing: {', '.join(missing)}.")


def _regions_on_disk(path: Path, attrs: dict[str, Any], marked: np.ndarray) -> np.ndarray:
    """``marked`` (checkpoint, chunk) without the regions whose chunk file is gone for some layer
    (deleted or lost after extraction): each region of a layer is one file,
    ``<variable>/c/<checkpoint>/<chunk>/0/0/0`` (a shard when the layer is split into channel
    blocks).
    """
    present = marked.copy()
    for k, c in np.argwhere(marked):
        present[k, c] = all(
            chunk_on_disk(path, var, k, c) for var in attrs["layer_variables"].values()
        )
    return present


#: (unsigned view, exponent bits) of the stored float types: all exponent bits set = inf or NaN
_EXPONENT = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
}


def all_finite(block: np.ndarray) -> bool:
    """No NaN/inf in ``block``: one pass over the exponent bits (float16: 26 MB in 11 ms here,
    7 % of decoding that chunk; np.isfinite takes twice as long). Used by extraction before
    a region is written and by analysis on every block it reads."""
    if block.dtype in _EXPONENT and block.flags.c_contiguous:
        view, bits = _EXPONENT[block.dtype]
        return block.size == 0 or int((block.view(view) & bits).max()) != bits
    return bool(np.isfinite(block).all())


def chunk_on_disk(path: str | Path, var: str, checkpoint_index: int, chunk: int) -> bool:
    """Whether the file of one region of a layer array exists (a missing one reads as NaN)."""
    return (
        Path(path) / var / "c" / str(int(checkpoint_index)) / str(int(chunk)) / "0" / "0" / "0"
    ).is_file()


def _finished_regions(path: Path, group: zarr.Group) -> np.ndarray:
    """The (checkpoint, chunk) regions marked complete, after checking that their files are all
    on disk (a one-line error naming the checkpoints otherwise)."""
    with decoding(path, f"array '{COMPLETE}'"):
        marked = np.asarray(group[COMPLETE][...]).astype(bool)
    lost = marked & ~_regions_on_disk(path, dict(group.attrs), marked)
    if lost.any():
        epochs = [int(c["epoch"]) for c in group.attrs["checkpoints"]]
        which = sorted({epochs[k] for k, _ in np.argwhere(lost)})
        raise FtdynError(
            f"{path}: damaged store, chunk files of {int(lost.sum())} finished region(s) are"
            f" missing (checkpoints {', '.join(map(str, which))}); run the same `ftdyn extract`"
            " again to rewrite them."
        )
    return marked


def _raised_in_codecs(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(("zarr", "numcodecs")):
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def decoding(path: str | Path, what: str = "a chunk"):
    """Reads inside this block that fail in Zarr's codecs (a truncated chunk file, or one whose
    CRC-32C no longer matches) raise a one-line FtdynError; other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, FtdynError) or not _raised_in_codecs(exc):
            raise
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise FtdynError(
            f"{path}: {what} cannot be decoded ({type(exc).__name__}: {detail}); the store is "
            "damaged: re-extract it into a new --out."
        ) from None


def planned_regions(path: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    """(root attributes, regions done as :meth:`StoreWriter.done` counts them) of the store at
    ``path``, read only, for planning a run that will write it: a checkpoint extension cut
    short reads as the store before it (the writer undoes it when it opens the store)."""
    path = Path(path)
    with metadata_lock(path, exclusive=False):
        group = _open_group(path, ignore_extension=True)
        attrs = dict(group.attrs)
        marked = np.asarray(group[COMPLETE][: len(attrs["checkpoints"])]).astype(bool)
    return attrs, _regions_on_disk(path, attrs, marked)


def completeness(path: str | Path) -> np.ndarray:
    """Boolean (checkpoint, chunk) array: which regions are fully written."""
    with metadata_lock(Path(path), exclusive=False):
        return np.asarray(_open_group(Path(path))[COMPLETE][...]).astype(bool)


@contextlib.contextmanager
def _lock_file_ignored():
    """Zarr warns about every file of a group folder that is not part of the hierarchy; the
    lock file extract leaves in its store (outputs.folder_lock) is expected there, so that
    warning (and only that one) is not shown to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=f"Object at {re.escape(LOCK_FILE)} is not recognized"
        )
        yield


def open_dataset(path: str | Path) -> xr.Dataset:
    """The store as a lazy xarray Dataset exactly as written (no checks: :func:`open_store`)."""
    with _lock_file_ignored():
        return xr.open_zarr(
            path, zarr_format=3, consolidated=False, chunks={}, mask_and_scale=False
        )


def open_store(path: str | Path, *, allow_partial: bool = False) -> xr.Dataset:
    """Open and validate a store as a Dask-backed xarray Dataset (nothing is loaded).

    An incomplete store raises unless ``allow_partial``; then only the checkpoints
    whose every region is complete are kept.
    """
    path = Path(path)
    with metadata_lock(path, exclusive=False):  # a checkpoint extension in progress finishes first
        group = _open_group(path)
        done = _finished_regions(path, group)
        ds = open_dataset(path)
    for layer, var in ds.attrs["layer_variables"].items():
        if var not in ds or ds[var].dims != layer_dims(var):
            raise FtdynError(
                f"{path}: damaged ftdyn store, variable '{var}' of layer {layer} missing or"
                " misshapen."
            )
    for var in (IMAGES, COMPLETE):
        if var not in ds:
            raise FtdynError(f"{path}: damaged ftdyn store, variable '{var}' missing.")
    full = done.all(axis=1)
    if not full.all():
        missing = [int(e) for e in ds["checkpoint"].values[~full]]
        if not allow_partial:
            raise FtdynError(
                f"{path}: incomplete; checkpoints {', '.join(map(str, missing))} are not fully"
                f" extracted. Run `ftdyn extract` again to finish, or pass {arg('allow_partial')}"
                " to use the complete ones."
            )
        if not full.any():
            raise FtdynError(
                f"{path}: no checkpoint is fully extracted yet; run `ftdyn extract` to fill it."
            )
        ds = ds.isel(checkpoint=np.flatnonzero(full))
    return ds


def store_layers(ds: xr.Dataset) -> list[tuple[str, str]]:
    """(module name, variable) pairs, shallow to deep."""
    return [(layer, ds.attrs["layer_variables"][layer]) for layer in ds.attrs["layers"]]


class StoreWriter:
    """Fills regions of an existing store. Safe to share between threads that
    write different regions (each region is its own set of chunks)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with metadata_lock(self.path, exclusive=True):  # it may undo an extension cut short
            self.group = _open_group(self.path, mode="r+")
        # zarr writes a chunk to '<key>.<random>.partial' and renames it; a run killed in between
        # leaves that file behind, referenced by nothing (writers hold the store's lock, so no
        # other run is writing one now)
        for leftover in self.path.rglob("*.partial"):
            leftover.unlink(missing_ok=True)
        self.attrs = dict(self.group.attrs)
        self.samples_per_chunk = int(self.attrs["samples_per_chunk"])
        self.n_samples = int(self.group["sample"].shape[0])
        # write_empty_chunks: skip zarr's per-chunk "all fill value?" scan (slow on float16)
        self.arrays = {
            layer: self.group[var].with_config({"write_empty_chunks": True})
            for layer, var in self.attrs["layer_variables"].items()
        }
        self.complete = self.group[COMPLETE]

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_samples / self.samples_per_chunk)

    def chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.samples_per_chunk
        return slice(start, min(start + self.samples_per_chunk, self.n_samples))

    def done(self) -> np.ndarray:
        """Regions written, marked complete, and still on disk (a lost file is written again)."""
        return _regions_on_disk(self.path, self.attrs, np.asarray(self.complete[...]).astype(bool))

    def write_region(
        self, checkpoint_index: int, chunk: int, activations: dict[str, np.ndarray]
    ) -> None:
        """Write every layer of one region, then mark it complete (marks come last)."""
        if set(activations) != set(self.arrays):
            raise ValueError(
                f"region needs exactly the layers {sorted(self.arrays)}, got {sorted(activations)}"
            )
        rows = self.chunk_slice(chunk)
        for layer, values in activations.items():
            target = self.arrays[layer]
            expected = (rows.stop - rows.start, *target.shape[2:])
            if tuple(values.shape) != expected:
                raise ValueError(f"layer {layer}: region shape {tuple(values.shape)} != {expected}")
            # a chunk-shaped value (leading checkpoint axis kept) is encoded as is; an integer
            # index makes zarr copy it into a fill-value buffer first
            target[checkpoint_index : checkpoint_index + 1, rows] = np.asarray(
                values, dtype=target.dtype
            )[None]
        self.complete[checkpoint_index, chunk] = 1

    def append_checkpoints(self, checkpoints: list[dict[str, Any]]) -> None:
        """Grow the checkpoint dimension for new, later epochs (their regions start incomplete)."""
        known = self.attrs["checkpoints"]
        last = known[-1]["epoch"]
        if any(c["epoch"] <= last for c in checkpoints):
            raise FtdynError(
                f"{self.path}: new checkpoints must come after epoch {last}; "
                "an earlier epoch cannot be inserted, extract into a new store."
            )
        n_old, n_new = len(known), len(known) + len(checkpoints)
        # readers see the store before or after, never between
        with metadata_lock(self.path, exclusive=True):
            for array in [*self.arrays.values(), self.complete]:
                array.resize((n_new, *array.shape[1:]))
            coord = self.group["checkpoint"]
            coord.resize((n_new,))
            coord[n_old:] = np.array([c["epoch"] for c in checkpoints], dtype=np.int64)
            self.complete[n_old:] = 0  # resize keeps no stale chunks, but be explicit
            self.attrs["checkpoints"] = known + [dict(c) for c in checkpoints]
            self.group.attrs["checkpoints"] = self.attrs["checkpoints"]


def has_random_init(path: str | Path) -> bool:
    """Whether the store holds a complete random-init baseline (every chunk written)."""
    group = _open_group(Path(path))
    attrs = dict(group.attrs)
    if RANDOM_INIT not in attrs or RANDOM_INIT_COMPLETE not in group:
        return False
    if any(baseline_var(v) not in group for v in attrs["layer_variables"].values()):
        return False
    return bool(np.asarray(group[RANDOM_INIT_COMPLETE][...]).astype(bool).all())


def store_fingerprint(path: str | Path, ds: xr.Dataset) -> dict[str, Any]:
    """``{"sha256", "path"}``: a hash of what an analysis reads from the store at ``path`` (opened
    as ``ds``): checkpoints and their hashes, probe, random-init baseline, layer shapes,
    completeness and format. Equal hashes: the same activations, wherever the store lies."""
    done = completeness(path)
    payload = {
        "random_init": [ds.attrs.get(RANDOM_INIT), has_random_init(path)],
        "checkpoints": ds.attrs.get("checkpoints"),
        "probe": ds.attrs.get("probe"),
        "layers": {var: list(ds[var].shape[1:]) for _, var in store_layers(ds)},
        "completeness": (
            hashlib.sha256(np.packbits(done).tobytes() + str(done.shape).encode()).hexdigest()
        ),
        "format": ds.attrs.get("ftdyn_store_format"),
    }
    return {
        "sha256": (
            hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        ),
        "path": str(path),
    }


def add_random_init(path: str | Path, *, seed: int, architecture: str, init: str) -> np.ndarray:
    """Allocate the random-init baseline arrays of an existing store (module doc), once; returns
    its (chunk,) completeness marks so an interrupted run writes only what is missing. A
    baseline recorded with another seed is an error (it would mix two random networks)."""
    import dask.array as da

    path = Path(path)
    group = _open_group(path, mode="r+")
    attrs = dict(group.attrs)
    record = {"seed": int(seed), "architecture": architecture, "init": init}
    if RANDOM_INIT in attrs:
        old = attrs[RANDOM_INIT]
        if int(old.get("seed", -1)) != int(seed):
            raise FtdynError(
                f"{arg('random_init_seed')}: {path} already holds a random-init baseline with seed "
                f"{old.get('seed')}; pass that seed, or extract into a new {arg('out')}."
            )
        return np.asarray(group[RANDOM_INIT_COMPLETE][...]).astype(bool)[0]
    spc = int(attrs["samples_per_chunk"])
    n = int(group["sample"].shape[0])
    n_chunks = math.ceil(n / spc)
    data_vars, encoding = {}, {}
    for layer, var in attrs["layer_variables"].items():
        arr = group[var]
        _, _, c, h, w = arr.shape
        region = (1, spc, c, h, w)
        dims = (RANDOM_INIT_DIM, *layer_dims(var)[1:])
        data_vars[baseline_var(var)] = xr.Variable(
            dims,
            da.zeros((1, n, c, h, w), chunks=region, dtype=arr.dtype),
            attrs={"layer": layer, "random_init_of": var},
        )
        # laid out as the checkpoints' arrays: a filter group's task decodes only its channels
        encoding[baseline_var(var)] = _activation_encoding(
            region, arr.dtype.itemsize, _compressors(attrs.get("codec", "zstd"))
        )
    data_vars[RANDOM_INIT_COMPLETE] = xr.Variable(
        (RANDOM_INIT_DIM, "chunk"), da.zeros((1, n_chunks), chunks=(1, 1), dtype="uint8")
    )
    encoding[RANDOM_INIT_COMPLETE] = {"chunks": (1, 1)}
    # xarray's append mode rewrites the group's attributes with the Dataset's: pass them unchanged
    with _lock_file_ignored():
        xr.Dataset(data_vars, attrs=attrs).to_zarr(
            path, mode="a", compute=False, zarr_format=3, consolidated=False, encoding=encoding
        )
    zarr.open_group(path, mode="r+", zarr_format=3).attrs[RANDOM_INIT] = (
        record  # last: marks it allocated
    )
    return np.zeros(n_chunks, dtype=bool)


def write_random_init(path: str | Path, chunk: int, activations: dict[str, np.ndarray]) -> None:
    """Write one sample chunk of every layer's baseline, then mark it complete."""
    group = zarr.open_group(Path(path), mode="r+", zarr_format=3)
    attrs = dict(group.attrs)
    spc, n = int(attrs["samples_per_chunk"]), int(group["sample"].shape[0])
    rows = slice(chunk * spc, min((chunk + 1) * spc, n))
    for layer, var in attrs["layer_variables"].items():
        target = group[baseline_var(var)]
        target[0:1, rows] = np.asarray(activations[layer], dtype=target.dtype)[None]
    group[RANDOM_INIT_COMPLETE][0, chunk] = 1


def dir_size(path: str | Path) -> int:
    """Bytes of all files under ``path`` (a store's size on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def info(path: str | Path) -> dict[str, Any]:
    """What ``ftdyn info`` prints: layers, shapes, checkpoints, size on disk, completeness."""
    path = Path(path)
    with metadata_lock(path, exclusive=False):
        group = _open_group(path)
        attrs = dict(group.attrs)
        done = _finished_regions(path, group)
    return {
        "path": str(path),
        "architecture": attrs["architecture"],
        "model": attrs["model"],
        "dataset": attrs["dataset"],
        "samples": int(group["sample"].shape[0]),
        "classes": [str(c) for c in group["class"][...]],
        "dtype": attrs["dtype"],
        # channel_block: channels per inner chunk, what a per-filter read decodes at least
        "layers": [
            {
                "layer": layer,
                "variable": var,
                "shape": list(group[var].shape[2:]),
                "channel_block": int(group[var].chunks[2]),
            }
            for layer, var in attrs["layer_variables"].items()
        ],
        "checkpoints": [
            {
                **c,
                "complete": bool(done[i].all()),
                "regions_done": int(done[i].sum()),
                "regions": int(done.shape[1]),
            }
            for i, c in enumerate(attrs["checkpoints"])
        ],
        "complete": bool(done.all()),
        "random_init_baseline": (
            {**attrs[RANDOM_INIT], "complete": has_random_init(path)}
            if RANDOM_INIT in attrs
            else None
        ),
        "bytes_on_disk": dir_size(path),
    }
