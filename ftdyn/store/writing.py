"""Writing an activation store: :func:`create_store` pre-allocates it (under a temporary name,
renamed once its metadata and images are in place), :class:`StoreWriter` fills it region by region
and appends checkpoints, and :func:`add_random_init` / :func:`write_random_init` add the
random-init baseline.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..config import STORE_DTYPES as DTYPES
from ..config import arg
from ..errors import FtdynError
from ..outputs import disk_errors, file_lock
from .schema import (
    _COORDS,
    COMPLETE,
    IMAGES,
    RANDOM_INIT,
    RANDOM_INIT_COMPLETE,
    RANDOM_INIT_DIM,
    StoreSpec,
    _activation_encoding,
    _attrs,
    _compressors,
    baseline_var,
    layer_dims,
)
from .validate import _lock_file_ignored, _open_group, _regions_on_disk, metadata_lock


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
                **({} if layer.tokens is None else {"tokens": layer.tokens}),
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
    """Pre-allocate a store at ``path`` (must not exist, or be an empty folder): metadata, coords
    and images.

    Activation arrays are allocated but empty; fill them with :class:`StoreWriter`. The store is
    written under a temporary name and renamed, holding the creation lock of ``path``: a second
    run creating the same store meanwhile is refused naming the first, and the temporaries of
    creations that were killed are removed. A full disk is one line naming ``path``.
    """
    path = Path(path)
    _validate_spec(spec)
    ds, encoding = _store_dataset(spec, spec.chunk_samples())
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path), _creation_lock(path):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty folder made for the store: the store takes its place
        if path.exists():
            raise FtdynError(
                f"{arg('out', path)}: already exists (another run may have created it since this"
                " one started); re-run the same command to resume it, or remove it."
            )
        _remove_creation_leftovers(path)
        tmp = path.with_name(f"{_creating_prefix(path)}{uuid.uuid4().hex[:8]}")
        try:
            ds.to_zarr(
                tmp, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding
            )
            tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


def _creating_prefix(path: Path) -> str:
    """Name prefix of the temporary folders that store ``path`` is created in."""
    return f".{path.name}.creating-"


def _creation_lock(path: Path):
    """The lock of creating store ``path`` (a file beside it): one run at a time creates it."""
    return file_lock(
        path.with_name(f".{path.name}.creating.lock"), arg("out"), path, "is creating this store"
    )


def _remove_creation_leftovers(path: Path) -> None:
    """Remove the temporary folders of creations of ``path`` cut short by a kill (an interrupted
    one removes its own). Only under the creation lock: then no live run is writing one."""
    for leftover in path.parent.glob(f"{glob.escape(_creating_prefix(path))}*"):
        shutil.rmtree(leftover, ignore_errors=True)


class StoreWriter:
    """Fills regions of an existing store. Safe to share between threads that
    write different regions (each region is its own set of chunks), and between processes
    that write different regions' activations (:meth:`check_region_chunks`): a cluster's
    workers open it with ``tidy=False`` and leave the completeness marks to the process that
    holds the store's lock (``write_region(..., mark=False)``, then :meth:`mark_complete`)."""

    def __init__(self, path: str | Path, *, tidy: bool = True):
        self.path = Path(path)
        if not tidy:
            # a worker of a cluster extraction: the driver opened the store (repaired, tidied) and
            # holds its lock; another worker's chunk may be in flight, its '.partial' file kept
            self._open(_open_group(self.path, mode="r+", repair=False))
            return
        with metadata_lock(self.path, exclusive=True):  # it may undo an extension cut short
            group = _open_group(self.path, mode="r+")
        # zarr writes a chunk to '<key>.<random>.partial' and renames it; a run killed in between
        # leaves that file behind, referenced by nothing (writers hold the store's lock, so no
        # other run is writing one now)
        for leftover in self.path.rglob("*.partial"):
            leftover.unlink(missing_ok=True)
        # a creation of this store killed before its rename left its temporary folder beside it;
        # one that is still running (it will fail to rename) holds the lock: its folder stays
        if any(self.path.parent.glob(f"{glob.escape(_creating_prefix(self.path))}*")):
            with contextlib.suppress(FtdynError), _creation_lock(self.path):
                _remove_creation_leftovers(self.path)
        self._open(group)

    def _open(self, group: zarr.Group) -> None:
        self.group = group
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

    def check_region_chunks(self) -> None:
        """That each region is its own chunk (its own shard, when the layer is split into channel
        blocks) of every activation array, and its own chunk of the completeness marks: then
        writers in different processes that write different regions never write the same file.
        A store whose layout says otherwise is refused, naming the array."""
        spc = self.samples_per_chunk
        for var in self.attrs["layer_variables"].values():
            array = self.group[var]
            grid = tuple(array.shards or array.chunks)[:2]
            if grid != (1, spc):
                raise FtdynError(
                    f"{arg('out', self.path)}: array {var} is stored in blocks of {grid[0]}"
                    f" checkpoint(s) x {grid[1]} samples, not one region ((1, {spc})) each; several"
                    " processes cannot write it safely: extract it without a cluster."
                )
        if tuple(self.complete.chunks) != (1, 1):
            raise FtdynError(
                f"{arg('out', self.path)}: its completeness marks are not one chunk per region;"
                " extract it without a cluster."
            )

    def write_region(
        self,
        checkpoint_index: int,
        chunk: int,
        activations: dict[str, np.ndarray],
        *,
        mark: bool = True,
    ) -> None:
        """Write every layer of one region, then mark it complete (marks come last; ``mark``
        False: the caller marks it later, :meth:`mark_complete`)."""
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
        if mark:
            self.mark_complete(checkpoint_index, [chunk])

    def mark_complete(self, checkpoint_index: int, chunks) -> None:
        """Mark regions complete whose activations are all written (by this process or by a
        cluster's worker that has reported them finished)."""
        for chunk in chunks:
            self.complete[checkpoint_index, int(chunk)] = 1

    def update_attrs(self, changes: dict[str, Any]) -> None:
        """Change root attributes in ONE metadata write: a run killed meanwhile leaves all of
        them old or all new, never a new checkpoint list beside a stale training manifest."""
        if changes:
            self.group.update_attributes(changes)
            self.attrs.update(changes)

    def append_checkpoints(
        self, checkpoints: list[dict[str, Any]], changes: dict[str, Any] | None = None
    ) -> None:
        """Grow the checkpoint dimension for new, later epochs (their regions start incomplete).
        ``changes``: other root attributes (a ``checkpoints`` list that replaces the known
        records, the training ``manifest``), written in the same update as the grown list."""
        changes = dict(changes or {})
        known = changes.get("checkpoints", self.attrs["checkpoints"])
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
            self.update_attrs({**changes, "checkpoints": known + [dict(c) for c in checkpoints]})


def add_random_init(path: str | Path, *, seed: int, architecture: str, init: str) -> np.ndarray:
    """Allocate the random-init baseline arrays of an existing store (:mod:`~ftdyn.store.schema`),
    once; returns its (chunk,) completeness marks so an interrupted run writes only what is
    missing. A baseline recorded with another seed is an error (it would mix two random
    networks)."""
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
