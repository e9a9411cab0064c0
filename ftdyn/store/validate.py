"""Opening an activation store and checking it against itself: the root attributes against the
arrays' metadata, coordinates and checksummed small arrays, which regions are complete and still
on disk, one-line errors for chunks that fail to decode, and the lock that keeps readers from
seeing a checkpoint extension half done. Also what ``ftdyn info`` reports and the fingerprint an
analysis records of what it read.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from .._version import __version__
from ..config import STORE_DTYPES as DTYPES
from ..config import arg
from ..errors import FtdynError
from ..outputs import LOCK_FILE
from .schema import (
    _COORDS,
    COMPLETE,
    IMAGES,
    RANDOM_INIT,
    RANDOM_INIT_COMPLETE,
    RANDOM_INIT_DIM,
    REQUIRED_ATTRS,
    STORE_FORMAT,
    baseline_var,
    check_token_layers,
    checksummed_arrays,
    layer_dims,
    store_layers,
)


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
    if not epochs or any(b <= a for a, b in itertools.pairwise(epochs)):
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
    map_sizes = {}
    for layer, var in attrs["layer_variables"].items():
        array = _activation_array(path, group, var, layer, attrs["dtype"], layer_dims(var), n, spc)
        map_sizes[layer] = tuple(array.shape[3:])
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
    problem = check_token_layers(attrs, map_sizes)
    if problem:
        raise _damaged(path, problem)


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
    _checksums(path, group, attrs)


def _checksums(path: Path, group: zarr.Group, attrs: dict[str, Any]) -> None:
    """Every array of the integrity contract (:func:`~ftdyn.store.schema.checksummed_arrays`)
    carries its CRC-32C: on the chunks themselves, or inside the shards of a sharded layer."""
    for name in checksummed_arrays(attrs):
        if not (path / name / "zarr.json").is_file():
            continue  # a required array that is missing is named by _open_group
        codecs = list(_array(path, group, name).metadata.codecs)
        for codec in list(codecs):
            codecs += getattr(codec, "codecs", ())  # a sharding codec: the codecs of its chunks
        if not any(isinstance(codec, zarr.codecs.Crc32cCodec) for codec in codecs):
            raise _damaged(
                path,
                f"array '{name}' carries no CRC-32C checksum, so its values cannot be verified"
                " (a changed chunk would read as other numbers)",
            )


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


def _open_group(
    path: Path, mode: str = "r", *, ignore_extension: bool = False, repair: bool | None = None
) -> zarr.Group:
    """The store's group, its metadata checked; a writer (``mode`` "r+") repairs an extension
    cut short unless ``repair`` is False."""
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
    repair = mode != "r" if repair is None else repair
    validate_layout(path, group, repair=repair, ignore_extension=ignore_extension)
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


def read_images(ds: xr.Dataset, positions) -> np.ndarray:
    """The probe images at sample ``positions`` of an opened store, decoded; a chunk of them that
    fails to decode is one line naming the ``images`` array (not the layer a figure is drawing,
    whose own reads are wrapped in :func:`decoding` naming it)."""
    with decoding(ds.encoding.get("source", "store"), f"array '{IMAGES}'"):
        return np.asarray(ds[IMAGES].isel(sample=positions).values)


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
