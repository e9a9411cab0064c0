"""``ftdyn analyze``: activation stores -> distances, trajectories, agreement, reusability.

For every store (= experiment), selected layer, checkpoint and metric, the distance
between the *reference* checkpoint (epoch 0 = the source model unless
``reference=``) and the checkpoint, in the metric's *view* (:mod:`ftdyn.views`), plus
the checkpoint × checkpoint *trajectory*, bootstrap intervals, the Pearson
agreement between metrics and the reusability table. Out-of-core with Dask: the
store is streamed chunk by chunk into float64 sufficient statistics
(:mod:`ftdyn.metrics`, design.md §3); a layer is never loaded whole.

Presets (``preset=``; ``metrics=``/``views=`` override them)
    ``default``     pwsm on ``channels``; procrustes and cka on ``filter`` (one
                    distance per filter, NaN-aware mean over filters, dead filters
                    counted); a ``map`` view, if asked for, is averaged over all
                    (image, filter) values per filter, then over filters.
    ``paper-code``  the published code's choices: pwsm on ``channels``; procrustes
                    (and cka, if asked for) on ``map``, averaged per class, then
                    over classes and filters. Metrics default to pwsm + procrustes.
    ``alpha`` (PWSM) defaults to 0 in both: the paper's setting, and the only value
    besides 1 that does not depend on the activation scale in netrep's convention.

Distances (all: lower = more similar, 0 for identical activations)
    pwsm radians in [0, π/2]; procrustes 1 − ‖X̂ᵀŶ‖_* in [0, 1]; cka 1 − linear CKA.

How each view is computed ("side", chosen per layer)
    ``channels``/``pooled``: row side (C×C statistics per pair of checkpoints).
    ``filter``/``flat``: :func:`ftdyn.metrics.choose_side` on (images, columns):
    row side (per-filter h·w × h·w statistics) when images ≥ columns, else Gram
    side (per-filter n×n Gram matrices of each checkpoint). ``map``: computed
    directly per (image, filter) chunk by chunk (each matrix lies in one image).
    Row side: one pass over the store; each task reads one sample chunk of the
    reference and then of each checkpoint (every chunk is read once per pass) and
    accumulates XᵀX, YᵀY, XᵀY and column sums in float64 (torch matmul); tasks are
    tree-reduced (fan-in 4, summed in place; copied on a distributed cluster). When the statistics of all checkpoints
    do not fit a task, passes cover groups of checkpoints (the reference is re-read
    per pass) and, for per-filter views, groups of filters (each group reads only its
    channels, which decodes only their inner chunks in a sharded store, see
    :mod:`ftdyn.store`; all channels in older stores); the plan with the fewest decoded
    bytes that fits is used and recorded in
    ``attrs["plan"]``. Gram side: each checkpoint's n×n Gram (per filter) is built by
    *panels*: a task keeps a panel of sample chunks (float64) and streams the following
    chunks past it, so a (layer, checkpoint) slab is read ≈ (p+1)/2 times with p =
    number of panels (1 when the slab fits the per-task memory). Per-filter views batch
    all filters of a group in one stacked computation.
    Cost on CPU: row-side statistics take ≈ 2·cols float64 FLOPs per stored byte per
    checkpoint (cols = C for channels, h·w for filter), Gram side ≈ n FLOPs per byte;
    on a 2-core CPU (~20-30 GFLOP/s float64) that, not I/O, bounds the throughput.

Trajectory (``trajectory=``)
    ``"auto"`` (default): all checkpoint pairs where they are cheap, else only the
    reference row/column (= the distances; the rest NaN). Gram side: each checkpoint's
    Gram is built once, a pair then costs an n×n product and nuclear norm per filter
    (~20·n³; CKA alone n²) — all pairs when that extra work is at most the work of
    building the Grams (T·n²·cols per filter), i.e. for few images and wide maps.
    Row side: the pair statistic XᵀY needs both checkpoints' rows together, so all
    pairs come from one concatenated product [X₁…X_T]ᵀ[X₁…X_T] per row block — taken
    when it fits a quarter of a task's memory and costs at most twice the reference
    pairs (T ≤ 6). Map view: reference pairs only. ``"all"``: every pair for every
    view (row side O(T²) statistics, map view O(T²) direct computations).
    ``"reference"``: the reference row/column only.

Bootstrap (``bootstrap=N``, percentile 95 % interval into ci_low/ci_high)
    Resampling unit = images. Gram-side and map views resample single images
    exactly (rows/columns of the Gram matrices; per-image map distances). Row-side
    views cannot split per-image statistics cheaply, so images are dealt into
    U = min(32, n) random groups (a seeded permutation, so groups mix classes even
    though stores are class-sorted), each group's statistics are accumulated
    separately, and replicates re-sum U groups drawn with replacement (a grouped
    bootstrap; U is lowered to ≥ 8 when the statistics would not fit the memory
    limit). Replicate statistics are pooled per filter then averaged like the
    point estimate. Cost: N metric evaluations per (layer, checkpoint).

Memory (``memory_limit=``, default 50 % of RAM; ``workers=``, default CPU count)
    The limit bounds the data and statistics held by concurrently running tasks, from
    an explicit per-task estimate: raw chunks resident (2, or T for all-pairs row
    statistics) plus ~2.5 chunks of zarr decode buffers, float64 blocks (≤ 32 MB each,
    fewer when memory is tight; counted 4× for conversion copies), accumulators (twice:
    a running task and a partial sum waiting for its merge) and, for Gram panels, the
    panel and its output block. For 1, 2, 4, ... ``workers`` threads the planner sizes
    filter groups, checkpoint passes, Gram panels and bootstrap groups so one task fits
    limit / threads, and keeps the thread count with the smallest estimated time
    (decode bytes / 0.3 GB/s + float64 FLOPs / 15 GFLOP/s, per thread). Each task calls
    glibc ``malloc_trim`` when it ends so freed buffers do not stay resident; 128 MB of
    the limit are reserved for what tasks do not estimate (arenas, zarr's event loop). The
    interpreter, torch, Dask and zarr themselves (~0.6 GB RSS here) are not counted.
    With a ``distributed`` scheduler the cluster's threads run the same graph; the limit
    then sizes tasks and each worker's memory is the cluster's business.

Device (``device=``, default "auto": CUDA when present)
    Chunks are read and decoded on the CPU, copied to the device in their stored dtype,
    and everything after that (float64 conversion, statistics, merges, decompositions)
    runs there; only the metric values come back. On a CPU the float64 products bound
    the throughput (above); on a GPU they are cheap and reading the store is the bound.
    ``memory_limit`` then bounds what tasks hold in host memory (raw chunks, decode
    buffers), and 80 % of the GPU's memory bounds the float64 blocks, statistics and
    decompositions, so the plan can keep far more statistics at once (fewer passes).

Scheduling: threaded Dask by default; ``scheduler="tcp://HOST:PORT"`` submits the same
graph to ``dask.distributed.Client(address)`` (the stores must be readable from the
workers at the same paths); a ``distributed.Client`` object is accepted as well.

Outputs in ``out`` (see :mod:`ftdyn.results` for the schema and CSV columns):
``results.zarr``, ``distances.csv``, ``reusability.csv``, ``agreement.csv``,
``agreement_summary.csv``; written into a temporary folder inside ``out`` and
renamed into place at the end (results.zarr last), so an interrupted run leaves no
half-written file. The arguments and each store's fingerprint (checkpoint hashes,
probe, completeness, shapes) are hashed into the results' attrs: re-running with the
same arguments on the same stores prints "up to date" and returns the saved results.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from . import metrics as M
from . import stats as S
from . import views as V
from ._version import __version__
from .devices import resolve_device
from .errors import FtdynError
from .results import (RESULTS_FORMAT, RESULTS_STORE, open_results, save_results_store, validate_results,
                      write_tables)

F64 = torch.float64
METRIC_NAMES = tuple(M.METRICS)
DEFAULT_ALPHA = 0.0
TRAJECTORY_MODES = ("auto", "all", "reference")
MAX_UNITS = 32
MIN_UNITS = 8
SUB_BLOCK_BYTES = 32 * 2**20
FAN_IN = 4
#: caps for tests and tuning: at most this many chunks per Gram panel / filters per group (None = by memory)
MAX_PANEL_CHUNKS: int | None = None
MAX_FILTER_GROUP: int | None = None
MAX_CHECKPOINTS_PER_PASS: int | None = None
#: part of --memory-limit kept for what tasks do not estimate (thread arenas, zarr's loop, the graph)
RESERVE = 128 * 2**20
#: transient memory of one zarr chunk read, in chunks (compressed bytes, decoded buffer, output copy: measured
#: peak ≈ 2.8 chunks for one read)
READ_OVERHEAD = 2.5
#: per-thread rates used only to compare plans (decode + float64 conversion; float64 GEMM on CPU)
READ_RATE = 0.3e9
FLOP_RATE = 15e9
#: float64 rate of one GPU on these batched problems (well under an H100's ~50 TFLOP/s peak), shared by all threads
GPU_FLOP_RATE = 5e12


@dataclass(frozen=True)
class Preset:
    name: str
    metrics: tuple[str, ...]
    views: Mapping[str, str]
    map_average: str  # "images" | "class"
    description: str


PRESETS = {
    "default": Preset("default", ("pwsm", "procrustes", "cka"),
                      {"pwsm": "channels", "procrustes": "filter", "cka": "filter"}, "images",
                      "pwsm on channels; procrustes and cka on filter (per-filter vector, NaN-aware mean)"),
    "paper-code": Preset("paper-code", ("pwsm", "procrustes"),
                         {"pwsm": "channels", "procrustes": "map", "cka": "map"}, "class",
                         "the published code: pwsm (alpha 0) on channels; procrustes on map, "
                         "averaged per class, then over classes and filters"),
}


# ============================================================================ inputs
def parse_memory(value) -> int | None:
    """'1GB', '512MB', '2GiB', '1e9' or an int -> bytes (decimal units; *iB binary)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        text = str(value).strip().upper().replace(" ", "")
        units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9,
                 "TB": 1e12, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "B": 1}
        factor = 1.0
        for suffix, f in units.items():
            if text.endswith(suffix):
                text, factor = text[: -len(suffix)], f
                break
        try:
            n = float(text) * factor
        except ValueError:
            raise FtdynError(f"--memory-limit: cannot read '{value}'; write e.g. 1GB, 512MB or 2GiB.") from None
    if not math.isfinite(n) or n < 64 * 2**20:
        raise FtdynError(f"--memory-limit: {value} is too small; give at least 64MB.")
    return int(n)


def _default_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _resolve_views(metrics: Sequence[str], views, preset: Preset) -> dict[str, str]:
    chosen = {m: preset.views[m] for m in metrics}
    if views is None:
        return chosen
    if isinstance(views, str):
        views = [views]
    if isinstance(views, Mapping):
        items = [f"{k}={v}" for k, v in views.items()]
    else:
        items = list(views)
    for item in items:
        if "=" in item:
            metric, view = (x.strip() for x in item.split("=", 1))
            if metric not in METRIC_NAMES:
                raise FtdynError(f"--view: unknown metric '{metric}' in '{item}'; choose from {', '.join(METRIC_NAMES)}.")
            if metric not in chosen:
                raise FtdynError(f"--view: '{item}' names metric '{metric}', which is not analyzed; add --metric {metric}.")
            chosen[metric] = V.check_view(view)
        else:
            view = V.check_view(item.strip())
            chosen = {m: view for m in chosen}
    return chosen


@dataclass
class Args:
    metrics: list[str]
    views: dict[str, str]
    alpha: float
    reference: int
    preset: str
    layers: list[str] | None
    bootstrap: int
    seed: int
    experiment_names: list[str] | None
    allow_partial: bool
    trajectory: str
    map_average: str

    def key(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_args(metrics, views, alpha, reference, preset, layers, bootstrap, seed, experiment_names,
                  allow_partial, trajectory) -> Args:
    if preset not in PRESETS:
        raise FtdynError(f"--preset: unknown preset '{preset}'; choose from {', '.join(PRESETS)}.")
    p = PRESETS[preset]
    if metrics is None or len(metrics) == 0:
        metrics = list(p.metrics)
    elif isinstance(metrics, str):
        metrics = [metrics]
    metrics = [str(m).strip().lower() for m in metrics]
    for m in metrics:
        if m not in METRIC_NAMES:
            raise FtdynError(f"--metric: unknown metric '{m}'; choose from {', '.join(METRIC_NAMES)}.")
    metrics = list(dict.fromkeys(metrics))
    try:
        a = float(DEFAULT_ALPHA if alpha is None else alpha)
    except (TypeError, ValueError):
        raise FtdynError(f"--alpha: '{alpha}' is not a number; give a value in [0, 1].") from None
    if not 0.0 <= a <= 1.0:
        raise FtdynError(f"--alpha: {alpha} is outside [0, 1] (0 = full whitening, 1 = angular Procrustes).")
    if bootstrap is None or int(bootstrap) < 0:
        raise FtdynError(f"--bootstrap: must be 0 (off) or a number of replicates, got {bootstrap}.")
    if trajectory is True:
        trajectory = "all"
    elif trajectory is False:
        trajectory = "reference"
    if trajectory not in TRAJECTORY_MODES:
        raise FtdynError(f"--trajectory: unknown mode '{trajectory}'; choose from {', '.join(TRAJECTORY_MODES)}.")
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(experiment_names, str):
        experiment_names = [experiment_names]
    return Args(metrics=metrics, views=_resolve_views(metrics, views, p), alpha=a, reference=int(reference),
                preset=preset, layers=list(layers) if layers else None, bootstrap=int(bootstrap), seed=int(seed),
                experiment_names=list(experiment_names) if experiment_names else None,
                allow_partial=bool(allow_partial), trajectory=trajectory, map_average=p.map_average)


# =========================================================================== stores
@dataclass(frozen=True)
class Source:
    """Everything a task needs to read one layer of one store (picklable)."""

    path: str
    var: str
    spc: int
    n: int
    channels: int
    height: int
    width: int
    itemsize: int
    device: str = "cpu"  # where the statistics are computed: every tensor of a task lives there
    channel_block: int = 0  # channels per inner chunk (sharded store); 0: every read decodes all channels

    def decoded_fraction(self, group: int) -> float:
        """Part of a chunk decoded to read ``group`` consecutive channels (block-aligned groups)."""
        block = self.channel_block or self.channels
        return min(1.0, math.ceil(group / block) * block / self.channels)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.spc)

    def rows(self, chunk: int) -> slice:
        return slice(chunk * self.spc, min((chunk + 1) * self.spc, self.n))

    @property
    def image_bytes(self) -> int:
        return self.channels * self.height * self.width * self.itemsize

    @property
    def chunk_bytes(self) -> int:
        return self.spc * self.image_bytes


@dataclass
class Experiment:
    path: Path
    name: str
    model: str
    dataset: str
    epochs: list[int]  # analyzed (complete) epochs
    ckpt_index: list[int]  # their positions in the store's checkpoint axis
    ref: int  # position of the reference in ``epochs``
    labels: np.ndarray
    layers: list[tuple[str, Source]]  # (module name, source), shallow -> deep
    fingerprint: dict[str, Any]


_ARRAYS: dict[tuple[str, str], Any] = {}
_ARRAYS_LOCK = threading.Lock()


def _array(path: str, var: str):
    key = (path, var)
    arr = _ARRAYS.get(key)
    if arr is None:
        import zarr

        with _ARRAYS_LOCK:
            arr = _ARRAYS.get(key)
            if arr is None:
                arr = zarr.open_group(path, mode="r", zarr_format=3)[var]
                _ARRAYS[key] = arr
    return arr


def _read(src: Source, ckpt: int, chunk: int, channels: slice = slice(None)) -> torch.Tensor:
    """One (checkpoint, sample chunk) block as stored (float16/32), on the analysis device
    (copied in the stored dtype: the float64 conversion happens there). ``channels``: a
    filter group; in a sharded store only the inner chunks holding it are decoded."""
    block = np.asarray(_array(src.path, src.var)[ckpt, src.rows(chunk), channels])
    return torch.from_numpy(np.ascontiguousarray(block)).to(src.device)


def _fingerprint(path: Path, ds: xr.Dataset) -> dict[str, Any]:
    from .store import completeness

    done = completeness(path)
    payload = {
        "checkpoints": ds.attrs.get("checkpoints"),
        "probe": ds.attrs.get("probe"),
        "layers": {var: list(ds[var].shape[1:]) for _, var in _store_layers(ds)},
        "completeness": hashlib.sha256(np.packbits(done).tobytes() + str(done.shape).encode()).hexdigest(),
        "format": ds.attrs.get("ftdyn_store_format"),
    }
    return {"sha256": hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest(),
            "path": str(path)}


def _store_layers(ds):
    from .store import store_layers

    return store_layers(ds)


def _open_experiments(stores: Sequence, args: Args, device: str = "cpu") -> list[Experiment]:
    from .store import open_store

    if isinstance(stores, (str, os.PathLike)):
        stores = [stores]
    stores = [Path(s).expanduser().resolve() for s in stores]
    if not stores:
        raise FtdynError("analyze: give at least one activation store.")
    if args.experiment_names is not None and len(args.experiment_names) != len(stores):
        raise FtdynError(f"--name: {len(args.experiment_names)} name(s) for {len(stores)} store(s); "
                         "give one --name per store, in the same order.")
    exps = []
    for i, path in enumerate(stores):
        if not path.exists():
            raise FtdynError(f"{path}: no such store.")
        ds = open_store(path, allow_partial=args.allow_partial)
        epochs = [int(e) for e in ds["checkpoint"].values]
        all_epochs = [int(c["epoch"]) for c in ds.attrs["checkpoints"]]
        if args.reference not in epochs:
            where = "is not complete" if args.reference in all_epochs else "is not in the store"
            raise FtdynError(f"--reference: epoch {args.reference} {where} ({path}: epochs "
                             f"{', '.join(map(str, epochs))}).")
        ckpt_index = [all_epochs.index(e) for e in epochs]
        available = _store_layers(ds)
        if args.layers:
            chosen = []
            for name in args.layers:
                match = [(m, v) for m, v in available if name in (m, v)]
                if not match:
                    raise FtdynError(f"--layer: '{name}' is not a layer of {path}; it has "
                                     f"{', '.join(m for m, _ in available)}.")
                chosen.append(match[0])
            order = {m: k for k, (m, _) in enumerate(available)}
            chosen = sorted(dict.fromkeys(chosen), key=lambda mv: order[mv[0]])
        else:
            chosen = available
        n = int(ds.sizes["sample"])
        spc = int(ds.attrs["samples_per_chunk"])
        layers = []
        for module, var in chosen:
            _, _, c, h, w = ds[var].shape
            block = int((ds[var].encoding.get("chunks") or ds[var].shape)[2])
            layers.append((module, Source(str(path.resolve()), var, spc, n, int(c), int(h), int(w),
                                          int(ds[var].dtype.itemsize), device, block)))
        model, dataset = str(ds.attrs.get("model")), str(ds.attrs.get("dataset"))
        name = args.experiment_names[i] if args.experiment_names else f"{model}/{dataset}"
        exps.append(Experiment(path=path, name=name, model=model, dataset=dataset, epochs=epochs,
                               ckpt_index=ckpt_index, ref=epochs.index(args.reference),
                               labels=np.asarray(ds["label"].values, dtype=np.int64), layers=layers,
                               fingerprint=_fingerprint(path, ds)))
    names = [e.name for e in exps]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise FtdynError(f"analyze: several stores are labeled '{dup[0]}'; give each a distinct --name.")
    return exps


# ===================================================================== accumulation
def _unit_rows(units: np.ndarray | None, n_rows: int, device: str):
    """(unit, image indices of one chunk): all images (unit 0) or one group per bootstrap unit."""
    if units is None:
        yield 0, slice(0, n_rows)
        return
    for u in np.unique(units):
        yield int(u), torch.from_numpy(np.flatnonzero(units == u)).to(device)


def _blocks(n_img: int, batch: int, per_img_filter_bytes: int, sub_bytes: int):
    """(image slice, batch slice) blocks whose float64 matrices take ≤ sub_bytes.

    Per-filter views are blocked over filters first, so each product keeps every image
    of the chunk as its inner dimension (few, large GEMMs; the h·w × h·w statistics are
    touched once per chunk); whole-layer views (batch 1) are blocked over images.
    """
    per_img = per_img_filter_bytes * max(1, batch)
    if n_img * per_img <= sub_bytes or batch <= 1:
        step = max(1, int(sub_bytes // max(1, per_img)))
        for s in range(0, n_img, step):
            yield slice(s, min(s + step, n_img)), slice(0, max(1, batch))
        return
    fstep = max(1, int(sub_bytes // max(1, n_img * per_img_filter_bytes)))
    if fstep > 1 or n_img * per_img_filter_bytes <= sub_bytes:
        for f in range(0, batch, fstep):
            yield slice(0, n_img), slice(f, min(f + fstep, batch))
        return
    step = max(1, int(sub_bytes // max(1, per_img_filter_bytes)))
    for f in range(batch):
        for s in range(0, n_img, step):
            yield slice(s, min(s + step, n_img)), slice(f, f + 1)


def _mat(raw: torch.Tensor, view: str) -> torch.Tensor:
    """View matrices (batch..., rows, cols) in float64 of a raw block."""
    return V.to_matrices(view, raw, dtype=F64)


def _at_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.mT, b)


def _row_leaf(src: Source, chunks: list[int], ckpts: list[int], ref: int, view: str, fsl: slice, mode: str,
              units: np.ndarray | None, n_units: int, sub_bytes: int) -> dict:
    """Row-side statistics of a group of sample chunks (accumulated sequentially).

    Returns a dict of float64 tensors: ``n`` (U,), ``s`` (U, T, *batch, p) and, in
    ``ref`` mode or with bootstrap groups, ``xx`` (U, *batch, p, p), ``xy``/``yy``
    (U, T, *batch, p, p) (reference pairs); in ``all`` mode ``G`` (*batch, T·p, T·p).
    """
    T = len(ckpts)
    per_filter = view == "filter"
    f0 = fsl.start or 0
    batch = ((fsl.stop or src.channels) - f0) if per_filter else 1
    p = _row_cols(src, view)
    rows_per_img = src.height * src.width if view == "channels" else 1
    n_mats = T if mode == "all" else 2
    per_img_filter = rows_per_img * p * 8 * n_mats
    acc: dict[str, Any] = {}

    def add(key, index, value, bsl):
        """acc[key][index][..., bsl (batch), ...] += value."""
        if key not in acc:
            prefix = () if index is None else (n_units,) if isinstance(index, int) else (n_units, T)
            shape = ((batch,) if per_filter else ()) + tuple(value.shape[1 if per_filter else 0:])
            if key == "s" and mode == "all":  # value (T, b, p) -> acc (U, T, batch, p)
                shape = (T,) + ((batch,) if per_filter else ()) + tuple(value.shape[2 if per_filter else 1:])
            if key == "n":
                shape = ()
            acc[key] = torch.zeros(prefix + shape, dtype=F64, device=src.device)
        target = acc[key] if index is None else acc[key][index]
        if per_filter and bsl is not None:
            if key == "s" and mode == "all":
                target[:, bsl] += value
            else:
                target[bsl] += value
        else:
            target += value

    def view_of(raw, imgs, bsl):
        """float64 view of some images and filters; slices are views, so only they are copied."""
        part = raw[:, bsl] if per_filter else raw  # raw holds the group's channels only
        part = part[imgs] if isinstance(imgs, slice) else part.index_select(0, imgs)
        return V.to_matrices(view, part, dtype=F64)

    for c in chunks:
        rows = src.rows(c)
        u_of = None if units is None else units[rows]
        n_img = rows.stop - rows.start
        if mode == "all":
            raws = [_read(src, k, c, fsl) for k in ckpts]
        else:
            raws = {ref: _read(src, ckpts[ref], c, fsl)}
        others = [t for t in range(T) if t != ref]
        for u, sel in _unit_rows(u_of, n_img, src.device):
            n_sel = n_img if isinstance(sel, slice) else len(sel)
            for isl, bsl in _blocks(n_sel, batch, per_img_filter, sub_bytes):
                imgs = sel[isl] if isinstance(sel, torch.Tensor) else isl
                if mode == "all":
                    mats = [view_of(r, imgs, bsl) for r in raws]
                    Z = torch.cat(mats, dim=-1)
                    G = _at_b(Z, Z)
                    add("G", None, G, bsl)
                    if bsl.start == 0:
                        add("n", u, torch.tensor(float(Z.shape[-2]), dtype=F64, device=src.device), None)
                    sums = Z.sum(-2)  # (*b, T·p)
                    add("s", u, torch.movedim(sums.reshape(*sums.shape[:-1], T, p), -2, 0), bsl)
                    if n_units > 1:
                        r = slice(ref * p, (ref + 1) * p)
                        add("xx", u, G[..., r, r], bsl)
                        for t in range(T):
                            b = slice(t * p, (t + 1) * p)
                            add("xy", (u, t), G[..., r, b], bsl)
                            add("yy", (u, t), G[..., b, b], bsl)
                    continue
                X = view_of(raws[ref], imgs, bsl)
                add("xx", u, _at_b(X, X), bsl)
                add("s", (u, ref), X.sum(-2), bsl)
                if bsl.start == 0:
                    add("n", u, torch.tensor(float(X.shape[-2]), dtype=F64, device=src.device), None)
        if mode != "all":
            for t in others:
                raw_t = _read(src, ckpts[t], c, fsl)
                for u, sel in _unit_rows(u_of, n_img, src.device):
                    n_sel = n_img if isinstance(sel, slice) else len(sel)
                    for isl, bsl in _blocks(n_sel, batch, per_img_filter, sub_bytes):
                        imgs = sel[isl] if isinstance(sel, torch.Tensor) else isl
                        X = view_of(raws[ref], imgs, bsl)
                        Y = view_of(raw_t, imgs, bsl)
                        add("xy", (u, t), _at_b(X, Y), bsl)
                        add("yy", (u, t), _at_b(Y, Y), bsl)
                        add("s", (u, t), Y.sum(-2), bsl)
                del raw_t
        del raws
    return acc


def _merge_acc(*parts: dict) -> dict:
    """Sum of accumulator dicts (associative; the tree-reduction combine step)."""
    out = parts[0]  # summed in place: each partial result has exactly one consumer
    for part in parts[1:]:
        for key, value in part.items():
            if key in out:
                out[key] += value
            else:
                out[key] = value
    return out


def _merge_acc_copy(*parts: dict) -> dict:
    """Like :func:`_merge_acc` without touching its inputs (distributed: a task may be retried)."""
    return _merge_acc({k: v.clone() for k, v in parts[0].items()}, *parts[1:])


def _row_stats_of(acc: dict, a: int, b: int, ref: int, p: int, counts: np.ndarray | None = None) -> M.RowStats:
    """RowStats of checkpoint pair (a, b) (a = X side), totals or a bootstrap re-sum."""
    def tot(x):
        if counts is None:
            return x.sum(0)
        return torch.einsum("u,u...->...", torch.as_tensor(counts, dtype=F64, device=x.device), x)

    n = int(round(float(tot(acc["n"]))))
    s = tot(acc["s"])
    if "G" in acc and counts is None:
        G = acc["G"]
        ba, bb = slice(a * p, (a + 1) * p), slice(b * p, (b + 1) * p)
        return M.RowStats(n, s[a], s[b], G[..., ba, ba], G[..., bb, bb], G[..., ba, bb])
    # reference pairs only: (ref, t)
    if a != ref:
        raise ValueError("pair statistics without the reference need all-pairs accumulation")
    xx = tot(acc["xx"])
    if b == ref:
        return M.RowStats(n, s[ref], s[ref], xx, xx, xx)
    return M.RowStats(n, s[ref], s[b], xx, tot(acc["yy"][:, b]), tot(acc["xy"][:, b]))


def _metric_from_rows(metric: str, st: M.RowStats, alpha: float) -> np.ndarray:
    info = M.get_metric(metric)
    kw = {"alpha": alpha} if "alpha" in info.params else {}
    if st.xx.ndim == 2:
        # always pass a batch axis: ftdyn.metrics' alpha=0 fallback for singular covariances
        # fails on un-batched statistics (expand() of an empty batch shape)
        one = M.RowStats(st.n, *(a[None] for a in st[1:]))
        return np.asarray(info.from_row_stats(one, **kw), dtype=np.float64).reshape(())
    return np.asarray(info.from_row_stats(st, **kw), dtype=np.float64)


def _trajectory(reference_values: np.ndarray, ref: int, pair) -> np.ndarray:
    """Symmetric checkpoint x checkpoint matrix: the reference row/column from the
    already computed distances, every other pair from ``pair(a, b)``."""
    T = len(reference_values)
    traj = np.full((T, T) + reference_values.shape[1:], np.nan)
    for a in range(T):
        for b in range(a, T):
            v = reference_values[b] if a == ref else reference_values[a] if b == ref else pair(a, b)
            traj[a, b] = traj[b, a] = v
    return traj


def _row_finish(acc: dict, metrics: list[str], alpha: float, T: int, ref: int, p: int, mode: str,
                counts: np.ndarray | None) -> dict:
    """Metrics of every (reference, checkpoint) pair, the trajectory and bootstrap replicates."""
    out: dict[str, Any] = {"values": {}, "traj": {}, "reps": {}}
    for m in metrics:
        out["values"][m] = np.stack([_metric_from_rows(m, _row_stats_of(acc, ref, t, ref, p), alpha)
                                     for t in range(T)])
    if mode == "all":
        for m in metrics:
            out["traj"][m] = _trajectory(out["values"][m], ref, lambda a, b, m=m: _metric_from_rows(
                m, _row_stats_of(acc, a, b, ref, p), alpha))
    if counts is not None and len(counts):
        for m in metrics:
            reps = [np.stack([_metric_from_rows(m, _row_stats_of(acc, ref, t, ref, p, w), alpha)
                              for t in range(T)]) for w in counts]
            out["reps"][m] = np.stack(reps)
    return out


# ------------------------------------------------------------------------ Gram side
def _gram_panel(src: Source, ckpt: int, view: str, fsl: slice, panel: list[int], stream: list[int], after=None):
    """Rows of one checkpoint's raw Gram for the images of ``panel`` against themselves
    and every later chunk (``stream``): returns (first row, block (*batch, n_panel, n_rest)).
    ``after``: the previous filter group's result, only so that Dask builds one group's
    Gram matrices at a time (the plan budgets one group)."""
    P = torch.cat([_mat(_read(src, ckpt, c, fsl), view) for c in panel], dim=-2)
    parts = [torch.matmul(P, P.mT)]
    for c in stream:
        Q = _mat(_read(src, ckpt, c, fsl), view)
        parts.append(torch.matmul(P, Q.mT))
        del Q
    return src.rows(panel[0]).start, torch.cat(parts, dim=-1)


def _gram_assemble(n: int, *blocks) -> torch.Tensor:
    batch = blocks[0][1].shape[:-2]
    K = torch.empty(batch + (n, n), dtype=F64, device=blocks[0][1].device)
    for r0, block in blocks:
        r1 = r0 + block.shape[-2]
        K[..., r0:r1, r0:] = block
        K[..., r0:, r0:r1] = block.mT
    return K


_EIG_FUNCS = {"pwsm": lambda ex, ey, alpha: M.pwsm_from_gram_eig(ex, ey, alpha),
              "procrustes": lambda ex, ey, alpha: M.procrustes_from_gram_eig(ex, ey),
              "cka": lambda ex, ey, alpha: 1.0 - np.asarray(M.cka_from_gram_eig(ex, ey))}


def _metric_from_eigs(metric: str, ex, ey, alpha: float) -> np.ndarray:
    return np.asarray(_EIG_FUNCS[metric](ex, ey, alpha), dtype=np.float64)


def _gram_pair(metric: str, Ka, Kb, ea, eb, alpha: float) -> np.ndarray:
    """One metric of a checkpoint pair from raw Grams (cka: O(n²), no decomposition) or decompositions."""
    if metric == "cka":
        return 1.0 - np.asarray(M.cka_from_gram(M.GramStats(Ka, Kb)), dtype=np.float64)
    return _metric_from_eigs(metric, ea, eb, alpha)


def _gram_finish(metrics: list[str], alpha: float, ref: int, mode: str, boot_idx: np.ndarray | None, *Ks) -> dict:
    """Metrics of Gram-side views from every checkpoint's raw Gram matrix."""
    T = len(Ks)
    out: dict[str, Any] = {"values": {}, "traj": {}, "reps": {}}
    need_eig = any(m != "cka" for m in metrics)

    def eig(K):
        return M.gram_eig(K) if need_eig else None

    e_ref = eig(Ks[ref])
    eigs = {ref: e_ref}
    vals = {m: [None] * T for m in metrics}
    for t in range(T):
        e_t = e_ref if t == ref else eig(Ks[t])
        if mode == "all":
            eigs[t] = e_t
        for m in metrics:
            vals[m][t] = _gram_pair(m, Ks[ref], Ks[t], e_ref, e_t, alpha)
    for m in metrics:
        out["values"][m] = np.stack(vals[m])
    if mode == "all":
        for m in metrics:
            out["traj"][m] = _trajectory(out["values"][m], ref, lambda a, b, m=m: _gram_pair(
                m, Ks[a], Ks[b], eigs[a], eigs[b], alpha))
    if boot_idx is not None and len(boot_idx):
        reps = {m: np.empty((len(boot_idx), T) + out["values"][m].shape[1:]) for m in metrics}
        for b, idx in enumerate(boot_idx):
            ii = torch.from_numpy(idx).to(Ks[ref].device)

            def resample(K):
                return K.index_select(-1, ii).index_select(-2, ii)

            kb_ref = resample(Ks[ref])
            eb_ref = eig(kb_ref)
            for t in range(T):
                kb_t = kb_ref if t == ref else resample(Ks[t])
                eb_t = eb_ref if t == ref else eig(kb_t)
                for m in metrics:
                    reps[m][b, t] = _gram_pair(m, kb_ref, kb_t, eb_ref, eb_t, alpha)
        out["reps"] = reps
    return out


# ------------------------------------------------------------------------- map view
def _map_leaf(src: Source, chunks: list[int], ckpts: list[int], ref: int, metrics: list[str], alpha: float,
              fsl: slice, mode: str) -> dict:
    """Per-(image, filter) distances of the map view for a group of chunks.

    Returns {metric: (P, n_images, filters)} for the pairs of :func:`_map_pairs`."""
    T = len(ckpts)
    pairs = _map_pairs(T, ref, mode)
    out = {m: [] for m in metrics}
    for c in chunks:
        need = sorted({k for pair in pairs for k in pair})
        mats = {}
        if mode == "all":
            mats = {k: _mat(_read(src, ckpts[k], c, fsl), "map") for k in need}
        else:
            mats[ref] = _mat(_read(src, ckpts[ref], c, fsl), "map")
        rows = {m: [] for m in metrics}
        for a, b in pairs:
            if b not in mats:
                mats = {ref: mats[ref], b: _mat(_read(src, ckpts[b], c, fsl), "map")}
            X, Y = mats[a], mats[b]
            for m in metrics:
                info = M.get_metric(m)
                kw = {"alpha": alpha} if "alpha" in info.params else {}
                rows[m].append(np.asarray(info.direct(X, Y, **kw), dtype=np.float64).reshape(X.shape[:2]))
        for m in metrics:
            out[m].append(np.stack(rows[m]))
    return {m: np.concatenate(v, axis=1) for m, v in out.items()}


def _map_pairs(T: int, ref: int, mode: str) -> list[tuple[int, int]]:
    if mode == "all":
        return [(a, b) for a in range(T) for b in range(a, T)]
    return [(ref, t) for t in range(T)]


def _concat_map(*parts: dict) -> dict:
    return {m: np.concatenate([p[m] for p in parts], axis=1) for m in parts[0]}


# ========================================================================= planning
@dataclass
class Job:
    """One view of one layer of one experiment: how it is computed and its Dask outputs."""

    exp: int
    layer: int
    view: str
    metrics: list[str]
    side: str  # row | gram | map
    mode: str  # all | ref
    groups: list[slice]  # filter groups (one pass each); [slice(None)] otherwise
    batch: int  # filters per group (1 for whole-layer views)
    ckpt_groups: list = field(default_factory=lambda: [None])  # row side, reference pairs: checkpoints per pass
    sub_bytes: int = SUB_BLOCK_BYTES  # float64 row block per matrix
    read_bytes: float = 0.0  # estimated bytes decoded (re-reads included)
    flops: float = 0.0  # estimated float64 FLOPs of the statistics
    units: int = 1
    panels: int = 1
    leaves: int = 1
    task_bytes: int = 0
    outputs: list = field(default_factory=list)


def _chunk_groups(n_chunks: int, n_groups: int) -> list[list[int]]:
    n_groups = max(1, min(n_groups, n_chunks))
    bounds = np.linspace(0, n_chunks, n_groups + 1).round().astype(int)
    return [list(range(bounds[i], bounds[i + 1])) for i in range(n_groups) if bounds[i + 1] > bounds[i]]


def _plan_job(exp_i: int, layer_i: int, src: Source, view: str, metrics: list[str], T: int, ref_pos: int,
              args: Args, threads: int, total_budget: int, device_budget: int | None = None) -> Job:
    """Choose side, pair mode, filter groups, bootstrap groups and task sizes for one job.

    ``total_budget``: host memory for all concurrent tasks. ``device_budget``: GPU memory for
    them when the statistics run on a GPU (then raw chunks count against the host budget
    and float64 blocks, statistics and decompositions against the GPU's); None: one pool.
    """
    task_budget = total_budget // max(1, threads)
    stats_total = total_budget if device_budget is None else device_budget
    stats_budget = stats_total // max(1, threads)

    def fits(host: float, dev: float) -> bool:
        return host + dev <= task_budget if device_budget is None else host <= task_budget and dev <= stats_budget

    def host_part(host: float, dev: float) -> int:  # what a task holds in host memory
        return int(host + dev if device_budget is None else host)

    sub = int(max(2**20, min(SUB_BLOCK_BYTES, stats_budget // 16)))  # float64 row blocks: small when memory is
    C, H, W, n = src.channels, src.height, src.width, src.n
    hw = H * W
    f8 = 8
    widen = 1 + f8 // src.itemsize  # a raw chunk plus its float64 copy
    if view == "map":
        mode = "all" if args.trajectory == "all" else "ref"
        held = T if mode == "all" else 2  # raw chunks (host) and their float64 copies
        resident = host_part((held + READ_OVERHEAD) * src.chunk_bytes, held * (widen - 1) * src.chunk_bytes)
        slab = src.n * src.image_bytes
        return Job(exp_i, layer_i, view, metrics, "map", mode, [slice(None)], C, task_bytes=resident,
                   leaves=max(1, min(src.n_chunks, 4 * threads)), read_bytes=T * slab,
                   flops=len(_map_pairs(T, 0, mode)) * n * C * 30 * max(H, W) ** 3)
    if view in ("channels", "pooled"):
        side, per_filter, p = "row", False, C
    elif view == "flat":
        side, per_filter, p = M.choose_side(n, C * hw), False, C * hw
    else:  # filter
        side, per_filter, p = M.choose_side(n, hw), True, hw
    sizes = _filter_group_sizes(C if per_filter else 1)
    if per_filter and MAX_FILTER_GROUP:
        sizes = [g for g in sizes if g <= MAX_FILTER_GROUP] or [1]

    def groups_of(g):
        return [slice(s, min(s + g, C)) for s in range(0, C, g)] if per_filter else [slice(None)]

    if side == "gram":
        cols_per_filter = hw if per_filter else C * hw
        extra_pairs = T * (T - 1) // 2 - (T - 1)
        decomposed = any(m != "cka" for m in metrics)
        # auto: all pairs if their work (an n×n product + nuclear norm, ~20 n³ per filter, or n² for
        # cka alone) is at most the work of building the Grams (T·n²·cols per filter)
        cheap = extra_pairs * (20 * n if decomposed else 1) <= T * cols_per_filter
        host_fixed = src.chunk_bytes * (1 + READ_OVERHEAD)  # a raw chunk and zarr's decode buffers
        dev_fixed = src.chunk_bytes * (widen - 1) + 2 * sub  # its float64 copy, product blocks
        fixed = dev_fixed + (host_fixed if device_budget is None else 0)
        modes = {"all": ["all"], "reference": ["ref"]}.get(args.trajectory, ["all", "ref"] if cheap else ["ref"])
        plan = None
        for g in sizes:
            k_bytes = g * n * n * f8
            per_chunk = src.spc * (g * cols_per_filter * f8 + g * n * f8)  # float64 panel rows + their output block
            for mode in modes:
                # every checkpoint's K is a Dask result until the finishing task, which adds
                # decompositions (T of them for all pairs, 2 for reference pairs) and temporaries;
                # while the panels run, the Ks built so far (+ one being assembled) sit beside them
                held = T * k_bytes + (T if mode == "all" else 2) * 2 * k_bytes + 2 * k_bytes
                room = (stats_total - (T + 1) * k_bytes) // max(1, threads) - fixed  # per panel task
                if held <= stats_total and room >= per_chunk and host_fixed <= task_budget:
                    plan = (g, mode, per_chunk, room)
                    break
            if plan:
                break
        if plan is None:
            raise FtdynError(f"--memory-limit: layer {src.var} view {view} needs about "
                             f"{(T + 3) * n * n * f8 / 1e9:.1f} GB for the Gram matrices of {n} images (one filter) "
                             "beside its reads; raise the limit or use fewer probe images.")
        g, mode, per_chunk, room = plan
        k = int(min(src.n_chunks, max(1, room // max(1, per_chunk)), MAX_PANEL_CHUNKS or src.n_chunks))
        task = host_part(host_fixed, dev_fixed + k * per_chunk)
        panels = math.ceil(src.n_chunks / k)
        slab = src.n * src.image_bytes
        return Job(exp_i, layer_i, view, metrics, "gram", mode, groups_of(g), g, panels=panels, task_bytes=task,
                   read_bytes=T * slab * (panels + 1) / 2 * len(groups_of(g)) * (src.decoded_fraction(g) if per_filter
                                                                                  else 1.0),
                   flops=T * n * n * cols_per_filter * (C if per_filter else 1) + T * 10 * n ** 3 * (C if per_filter else 1))

    # row side
    units_wanted = min(MAX_UNITS, n) if args.bootstrap else 1
    unit_options = [units_wanted]
    while unit_options[-1] > MIN_UNITS:
        unit_options.append(max(MIN_UNITS, unit_options[-1] // 2))
    others = [t for t in range(T) if t != ref_pos]

    def estimate(g, mode, units, k):
        """(host bytes, statistics-side bytes, accumulator bytes) of one task: g filters and k
        checkpoints (+ reference) per pass."""
        block = g * p * p * f8
        m = T if mode == "all" else k + 1
        all_bytes = (m * p) ** 2 * g * f8
        ref_blocks = (2 * m - 1) * block * units if (mode == "ref" or units > 1) else 0
        acc = ref_blocks + (all_bytes if mode == "all" else 0) + units * m * g * p * f8
        resident = ((m if mode == "all" else 2) + READ_OVERHEAD) * src.chunk_bytes  # + zarr's decode buffers
        temps = 4 * sub + (all_bytes if mode == "all" else 3 * block)  # float64 views and their copies
        finish = acc + 10 * block  # the metrics: centered/symmetrized copies, decompositions, workspace
        if device_budget is None:
            return max(resident + 2 * acc + temps, finish), 0, acc
        return resident, max(2 * acc + temps, finish), acc

    def reads(g, k):  # slabs decoded: per filter group, the reference once per pass + every checkpoint once
        passes = math.ceil(max(1, len(others)) / max(1, k))
        groups = math.ceil(C / g) if per_filter else 1
        return groups * (src.decoded_fraction(g) if per_filter else 1.0) * (passes + len(others))

    candidates = []  # (reads, -units, order, g, mode, k)
    ks = sorted({max(1, math.ceil(len(others) / q)) for q in range(1, max(1, len(others)) + 1)
                 if math.ceil(len(others) / q) <= (MAX_CHECKPOINTS_PER_PASS or len(others) or 1)}, reverse=True)
    if args.trajectory == "all":  # auto: reference pairs only on the row side (all pairs cost ≈T/3 more)
        for g in sizes:
            for units in unit_options:
                candidates.append((reads(g, len(others)) - 0.5, -units, len(candidates), g, "all", len(others)))
    if args.trajectory != "all":
        for g in sizes:
            for k in ks:
                for units in unit_options:
                    candidates.append((reads(g, k), -units, len(candidates), g, "ref", k))
    best = None
    for _, neg_units, _, g, mode, k in sorted(candidates, key=lambda c: (c[1] != -unit_options[0], c[0], c[1], c[2])):
        host, dev, acc = estimate(g, mode, -neg_units, k)
        if best is None or host + dev < best[0]:
            best = (host + dev, acc)
        if fits(host, dev):
            task = host_part(host, dev)
            leaves = max(1, min(src.n_chunks, 4 * threads, int(stats_total // (4 * max(1, acc)))))
            cgroups = [None] if mode == "all" else [others[i:i + k] for i in range(0, len(others), k)] or [[]]
            slab = src.n * src.image_bytes
            rows_per_byte = (hw if view == "channels" else 1) / src.image_bytes * (C if per_filter else 1)
            pairs_flops = (T * T / 2 if mode == "all" else 2 * (T - 1) + 1) * 2 * p * p * rows_per_byte * slab
            return Job(exp_i, layer_i, view, metrics, "row", mode, groups_of(g), g, units=-neg_units, leaves=leaves,
                       task_bytes=task, ckpt_groups=cgroups, sub_bytes=sub,
                       read_bytes=reads(g, k if mode == "ref" else len(others)) * slab, flops=pairs_flops)
    gpu = "" if device_budget is None else f" (and {stats_budget / 1e9:.2f} GB of GPU memory)"
    raise FtdynError(f"--memory-limit: layer {src.var} view {view} needs about {best[0] / 1e9:.2f} GB per task "
                     f"(chunks of {src.chunk_bytes / 1e6:.0f} MB, statistics {best[1] / 1e6:.0f} MB) but "
                     f"{task_budget / 1e9:.2f} GB{gpu} are available per thread; raise --memory-limit or lower "
                     "--workers.")


def _filter_group_sizes(c: int) -> list[int]:
    sizes, g = [], c
    while g > 1:
        sizes.append(g)
        g = math.ceil(g / 2)
    sizes.append(1)
    return list(dict.fromkeys(sizes))


# ======================================================================= the graph
def _build_graph(exps: list[Experiment], args: Args, jobs: list[Job], inplace: bool = True):
    import dask

    delayed = dask.delayed
    graph_outputs = []
    for job in jobs:
        exp = exps[job.exp]
        module, src = exp.layers[job.layer]
        T, ref = len(exp.epochs), exp.ref
        tag = f"{job.exp}-{job.layer}-{job.view}"
        # bootstrap draws (seeded per job, independent of scheduling)
        job_rng = np.random.default_rng([args.seed, job.exp, job.layer, V.VIEWS.index(job.view)])
        for gi, fsl in enumerate(job.groups):
            gtag = f"{tag}-{gi}"
            if job.side == "row":
                if gi == 0:
                    units = counts = None
                    if job.units > 1:
                        perm = np.random.default_rng([args.seed, job.exp, 7]).permutation(src.n)
                        units = np.empty(src.n, dtype=np.int64)
                        units[perm] = np.arange(src.n) % job.units
                        counts = S.bootstrap_counts(job.units, args.bootstrap, job_rng)
                p = _row_cols(src, job.view)
                for ci, cg in enumerate(job.ckpt_groups):
                    # a pass over the reference and the checkpoints of group cg (all of them: cg None)
                    pos = list(range(T)) if cg is None else [ref, *cg]
                    sub, sub_ref = [exp.ckpt_index[t] for t in pos], pos.index(ref)
                    ctag = f"{gtag}-{ci}"
                    leaves = [delayed(_row_leaf, pure=True)(src, grp, sub, sub_ref, job.view, fsl, job.mode,
                                                            units, job.units, job.sub_bytes,
                                                            dask_key_name=f"stats-{ctag}-{i}")
                              for i, grp in enumerate(_chunk_groups(src.n_chunks, job.leaves))]
                    merged = _tree(leaves, _merge_acc if inplace else _merge_acc_copy, f"merge-{ctag}")
                    out = delayed(_row_finish, pure=True)(merged, job.metrics, args.alpha, len(sub), sub_ref, p,
                                                          job.mode, counts, dask_key_name=f"metrics-{ctag}")
                    job.outputs.append(out)
                    graph_outputs.append(out)
                continue
            elif job.side == "gram":
                panels = _chunk_groups(src.n_chunks, job.panels)
                previous = job.outputs[-1] if job.outputs else None
                Ks = []
                for t, k in enumerate(exp.ckpt_index):
                    blocks = []
                    for pi, panel in enumerate(panels):
                        stream = list(range(panel[-1] + 1, src.n_chunks))
                        blocks.append(delayed(_gram_panel, pure=True)(src, k, job.view, fsl, panel, stream, previous,
                                                                      dask_key_name=f"gram-{gtag}-{t}-{pi}"))
                    Ks.append(delayed(_gram_assemble, pure=True)(src.n, *blocks, dask_key_name=f"K-{gtag}-{t}"))
                boot = S.bootstrap_indices(src.n, args.bootstrap, job_rng) if args.bootstrap else None
                out = delayed(_gram_finish, pure=True)(job.metrics, args.alpha, ref, job.mode, boot, *Ks,
                                                       dask_key_name=f"metrics-{gtag}")
            else:  # map
                leaves = [delayed(_map_leaf, pure=True)(src, grp, exp.ckpt_index, ref, job.metrics, args.alpha, fsl,
                                                        job.mode, dask_key_name=f"maps-{gtag}-{i}")
                          for i, grp in enumerate(_chunk_groups(src.n_chunks, job.leaves))]
                out = _tree(leaves, _concat_map, f"concat-{gtag}", ordered=True)
            job.outputs.append(out)
            graph_outputs.append(out)
    return graph_outputs


def _row_cols(src: Source, view: str) -> int:
    return {"channels": src.channels, "pooled": src.channels, "flat": src.channels * src.height * src.width,
            "filter": src.height * src.width}[view]


def _row_count(src: Source, view: str) -> int:
    return src.n * src.height * src.width if view == "channels" else src.n


def _pwsm_degenerate(exps: list[Experiment], args: Args) -> list[str]:
    """'experiment:layer' where PWSM with alpha < 1 cannot tell checkpoints apart: with
    rows - 1 <= columns both whitened matrices span the same centered row space."""
    view = args.views.get("pwsm")
    if "pwsm" not in args.metrics or args.alpha >= 1 or view == "map":
        return []
    return [f"{exp.name}:{layer}" for exp in exps for layer, src in exp.layers
            if _row_count(src, view) - 1 <= _row_cols(src, view)]


def _tree(items: list, combine, name: str, ordered: bool = False):
    import dask

    level = 0
    while len(items) > 1:
        nxt = []
        for i in range(0, len(items), FAN_IN):
            group = items[i:i + FAN_IN]
            nxt.append(group[0] if len(group) == 1 else
                       dask.delayed(combine, pure=True)(*group, dask_key_name=f"{name}-{level}-{i}"))
        items, level = nxt, level + 1
    return items[0]


# =================================================================== computation
_LIBC = None


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    glibc raises its mmap threshold up to 32 MiB after the first large free, after which
    chunk-sized temporaries come from per-thread arenas and stay resident: without a trim
    after each task the peak RSS grows far beyond the data actually held. (Forcing mmap for
    all large allocations instead, ``mallopt(M_MMAP_THRESHOLD)``, measured 4-7× slower.)
    """
    global _LIBC
    try:
        if _LIBC is None:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        _LIBC = False


def _trimmed(func):
    """Run a task, then trim the heap (see :func:`_trim`); keeps the task's name and pickles."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            if _LIBC is not False:
                _trim()

    return wrapper


# every Dask task trims the heap when it ends
_row_leaf = _trimmed(_row_leaf)
_row_finish = _trimmed(_row_finish)
_gram_panel = _trimmed(_gram_panel)
_gram_assemble = _trimmed(_gram_assemble)
_gram_finish = _trimmed(_gram_finish)
_map_leaf = _trimmed(_map_leaf)


def _compute(outputs: list, *, threads: int, scheduler, progress: bool):
    import dask

    if scheduler is not None:
        from distributed import Client

        own = isinstance(scheduler, str)
        try:
            client = Client(scheduler, timeout="10s") if own else scheduler
        except Exception as exc:  # noqa: BLE001 - any connection failure is a user error
            raise FtdynError(f"--scheduler: cannot connect to {scheduler} ({type(exc).__name__}: {exc}).") from None
        try:
            futures = client.compute(outputs)
            if progress:
                from distributed import progress as dprogress

                dprogress(futures)
            return client.gather(futures)
        finally:
            if own:
                client.close()
    from dask.diagnostics import ProgressBar

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, threads)))
    try:
        if progress:
            with ProgressBar(out=sys.stderr):
                return dask.compute(*outputs, scheduler="threads", num_workers=threads)
        return dask.compute(*outputs, scheduler="threads", num_workers=threads)
    finally:
        torch.set_num_threads(old)


# ===================================================================== collecting
def _layer_values(values: np.ndarray, per_filter: bool) -> tuple[np.ndarray, np.ndarray]:
    """(layer value per leading index, NaN count) from values (..., filters) or (...)."""
    if not per_filter:
        return values, np.isnan(values).astype(np.int64)
    return S.nanmean(values, axis=-1), np.isnan(values).sum(-1)


def _aggregate_map(vals: np.ndarray, labels: np.ndarray, how: str, axis: int) -> np.ndarray:
    """Per-filter value from per-image map distances along ``axis`` (images)."""
    if how == "class":
        return S.class_balanced_mean(vals, labels, axis=axis)
    return S.nanmean(vals, axis=axis)


def _join_ckpt_groups(parts: list[dict], groups: list, T: int, ref: int) -> dict:
    """One row-side result over all T checkpoints from the passes of the checkpoint groups."""
    if groups == [None]:
        return parts[0]
    out: dict[str, Any] = {"values": {}, "traj": {}, "reps": {}}
    for m in parts[0]["values"]:
        first = np.asarray(parts[0]["values"][m])
        vals = np.empty((T,) + first.shape[1:])
        vals[ref] = first[0]
        for part, cg in zip(parts, groups):
            vals[cg] = np.asarray(part["values"][m])[1:]
        out["values"][m] = vals
        if parts[0]["reps"]:
            r0 = np.asarray(parts[0]["reps"][m])
            reps = np.empty((r0.shape[0], T) + r0.shape[2:])
            reps[:, ref] = r0[:, 0]
            for part, cg in zip(parts, groups):
                reps[:, cg] = np.asarray(part["reps"][m])[:, 1:]
            out["reps"][m] = reps
    return out


def _gather(parts: list[dict], key: str, metric: str, lead: tuple[int, ...], per_filter: bool) -> np.ndarray:
    """One metric's ``key`` array from the results of every filter group: shape (*lead, filters),
    groups joined along filters, for per-filter views; (*lead) otherwise (a single group)."""
    if not per_filter:
        return np.asarray(parts[0][key][metric]).reshape(lead)
    return np.concatenate([np.asarray(p[key][metric]).reshape(*lead, -1) for p in parts], axis=-1)


def _collect(exps: list[Experiment], args: Args, jobs: list[Job], results: list) -> dict:
    """Per (experiment, metric, layer) arrays in each experiment's own epoch order."""
    out: dict[tuple[int, str, int], dict] = {}
    it = iter(results)
    for job in jobs:
        exp = exps[job.exp]
        T, ref = len(exp.epochs), exp.ref
        if job.side == "row":
            parts = [_join_ckpt_groups([next(it) for _ in job.ckpt_groups], job.ckpt_groups, T, ref)
                     for _ in job.groups]
        else:
            parts = [next(it) for _ in job.groups]
        per_filter = V.is_per_filter(job.view)
        for m in job.metrics:
            rec: dict[str, Any] = {"view": job.view, "side": job.side, "mode": job.mode}
            if job.side == "map":
                vals = np.concatenate([p[m] for p in parts], axis=-1)  # (P, n, C)
                pairs = _map_pairs(T, ref, job.mode)
                per_filter_vals = _aggregate_map(vals, exp.labels, args.map_average, axis=1)  # (P, C)
                ref_rows = [pairs.index((ref, t)) if (ref, t) in pairs else pairs.index((t, ref)) for t in range(T)]
                filt = per_filter_vals[ref_rows]
                rec["n_nan_maps"] = np.isnan(vals[ref_rows]).sum(axis=(1, 2))
                traj = np.full((T, T), np.nan)
                layer_pair = S.nanmean(per_filter_vals, axis=-1)
                for i, (a, b) in enumerate(pairs):
                    traj[a, b] = traj[b, a] = layer_pair[i]
                if args.bootstrap:
                    idx = S.bootstrap_indices(len(exp.labels), args.bootstrap,
                                              np.random.default_rng([args.seed, job.exp, job.layer, 99]))
                    ref_vals = vals[ref_rows]  # (T, n, C)
                    reps = np.stack([S.nanmean(_aggregate_map(ref_vals[:, ii], exp.labels[ii], args.map_average,
                                                              axis=1), axis=-1) for ii in idx])
                    rec["ci"] = S.percentile_interval(reps, axis=0)
            else:
                values = _gather(parts, "values", m, (T,), per_filter)
                filt = values if per_filter else None
                if parts[0]["traj"]:
                    traj = _layer_values(_gather(parts, "traj", m, (T, T), per_filter), per_filter)[0]
                else:
                    traj = np.full((T, T), np.nan)
                    lv = _layer_values(values, per_filter)[0]
                    traj[ref, :] = lv
                    traj[:, ref] = lv
                if parts[0]["reps"]:
                    reps = _gather(parts, "reps", m, (len(parts[0]["reps"][m]), T), per_filter)
                    rec["ci"] = S.percentile_interval(_layer_values(reps, per_filter)[0], axis=0)
            if filt is not None:
                layer_val, n_nan = _layer_values(filt, True)
                rec["filter"] = filt
                rec["n_filters"] = filt.shape[-1]
            else:
                layer_val, n_nan = _layer_values(values, False)
                rec["n_filters"] = exp.layers[job.layer][1].channels
            rec["value"], rec["n_nan"], rec["traj"] = layer_val, n_nan, traj
            out[(job.exp, m, job.layer)] = rec
    return out


def _to_dataset(exps: list[Experiment], args: Args, recs: dict, attrs: dict) -> xr.Dataset:
    E, Mn = len(exps), len(args.metrics)
    Lmax = max(len(e.layers) for e in exps)
    epochs = sorted({ep for e in exps for ep in e.epochs})
    Ep = len(epochs)
    epos = {ep: i for i, ep in enumerate(epochs)}
    Fmax = max([r["filter"].shape[-1] for r in recs.values() if "filter" in r] + [1])
    dist = np.full((E, Mn, Lmax, Ep), np.nan)
    ci_lo, ci_hi = dist.copy(), dist.copy()
    n_nan = np.zeros((E, Mn, Lmax, Ep), dtype=np.int64)
    n_nan_maps = np.zeros((E, Mn, Lmax, Ep), dtype=np.int64)
    n_filters = np.zeros((E, Mn, Lmax), dtype=np.int64)
    filt = np.full((E, Mn, Lmax, Ep, Fmax), np.nan)
    traj = np.full((E, Mn, Lmax, Ep, Ep), np.nan)
    layer_names = np.full((E, Lmax), "", dtype=object)
    has_epoch = np.zeros((E, Ep), dtype=bool)
    for e, exp in enumerate(exps):
        cols = [epos[ep] for ep in exp.epochs]
        has_epoch[e, cols] = True
        for l, (module, _) in enumerate(exp.layers):
            layer_names[e, l] = module
            for mi, m in enumerate(args.metrics):
                r = recs[(e, m, l)]
                dist[e, mi, l, cols] = r["value"]
                n_nan[e, mi, l, cols] = r["n_nan"]
                if "n_nan_maps" in r:
                    n_nan_maps[e, mi, l, cols] = r["n_nan_maps"]
                n_filters[e, mi, l] = r["n_filters"]
                if "filter" in r:
                    filt[e, mi, l][cols, : r["filter"].shape[-1]] = r["filter"]
                traj[e, mi, l][np.ix_(cols, cols)] = r["traj"]
                if "ci" in r:
                    ci_lo[e, mi, l, cols], ci_hi[e, mi, l, cols] = r["ci"]
    # statistics (reference excluded)
    keep_all = np.array([ep != args.reference for ep in epochs])
    reu_mean = np.full((E, Mn), np.nan)
    reu_std = reu_mean.copy()
    lreu_mean = np.full((E, Mn, Lmax), np.nan)
    lreu_std = lreu_mean.copy()
    agree = np.full((E, Lmax, Mn, Mn), np.nan)
    agree_n = np.zeros((E, Lmax, Mn, Mn), dtype=np.int64)
    for e, exp in enumerate(exps):
        L = len(exp.layers)
        curves = dist[e, :, :L]
        keep = keep_all & np.isin(epochs, exp.epochs)
        a, b, c, d = S.reusability(curves, keep)
        reu_mean[e], reu_std[e], lreu_mean[e, :, :L], lreu_std[e, :, :L] = a, b, c, d
        r, cnt = S.agreement(curves, keep)
        agree[e, :L], agree_n[e, :L] = r, cnt
    views = [args.views[m] for m in args.metrics]
    alphas = [args.alpha if m == "pwsm" else np.nan for m in args.metrics]
    le = ("experiment", "metric", "layer_index", "epoch")
    ds = xr.Dataset(
        {
            "distance": (le, dist, {"description": "distance from the reference checkpoint (per-filter views: "
                                                   "NaN-aware mean over filters)"}),
            "ci_low": (le, ci_lo, {"description": "bootstrap percentile interval, lower bound (NaN without bootstrap)"}),
            "ci_high": (le, ci_hi, {"description": "bootstrap percentile interval, upper bound"}),
            "n_filters": (("experiment", "metric", "layer_index"), n_filters),
            "n_nan": (le, n_nan, {"description": "undefined values: dead filters (per-filter views), filters dead in "
                                                 "every image (map), 1 if a whole-layer value is NaN"}),
            "n_nan_maps": (le, n_nan_maps, {"description": "map view: undefined (image, filter) maps ignored by the "
                                                           "means; 0 for other views"}),
            "filter_distance": (le + ("filter",), filt),
            "trajectory": (le + ("epoch_other",), traj, {"description": "checkpoint x checkpoint distances (NaN "
                                                                        "where not computed, see attrs.plan)"}),
            "reusability_mean": (("experiment", "metric"), reu_mean),
            "reusability_std": (("experiment", "metric"), reu_std),
            "layer_reusability_mean": (("experiment", "metric", "layer_index"), lreu_mean),
            "layer_reusability_std": (("experiment", "metric", "layer_index"), lreu_std),
            "agreement_r": (("experiment", "layer_index", "metric", "metric_other"), agree),
            "agreement_n": (("experiment", "layer_index", "metric", "metric_other"), agree_n,
                            {"description": "epochs both curves have a finite value at (reference excluded)"}),
            "has_epoch": (("experiment", "epoch"), has_epoch,
                          {"description": "the experiment's store has this (complete) checkpoint"}),
        },
        coords={
            "experiment": ("experiment", np.array([e.name for e in exps], dtype=object)),
            "model": ("experiment", np.array([e.model for e in exps], dtype=object)),
            "dataset": ("experiment", np.array([e.dataset for e in exps], dtype=object)),
            "store": ("experiment", np.array([str(e.path) for e in exps], dtype=object)),
            "metric": ("metric", np.array(args.metrics, dtype=object)),
            "view": ("metric", np.array(views, dtype=object)),
            "alpha": ("metric", np.array(alphas, dtype=np.float64)),
            "layer_index": ("layer_index", np.arange(Lmax, dtype=np.int64)),
            "layer": (("experiment", "layer_index"), layer_names),
            "epoch": ("epoch", np.array(epochs, dtype=np.int64)),
            "epoch_other": ("epoch_other", np.array(epochs, dtype=np.int64)),
            "filter": ("filter", np.arange(Fmax, dtype=np.int64)),
            "metric_other": ("metric_other", np.array(args.metrics, dtype=object)),
        },
        attrs=attrs,
    )
    return ds


# ========================================================================= output
def _analysis_key(args: Args, exps: list[Experiment]) -> str:
    key = args.key()
    key["layers"] = [[module for module, _ in e.layers] for e in exps]  # resolved: names or variables alike
    payload = {"args": key, "stores": [e.fingerprint["sha256"] for e in exps],
               "format": RESULTS_FORMAT, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _existing_key(out: Path) -> str | None:
    meta = out / RESULTS_STORE / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("analysis_key")
    except (OSError, ValueError):
        return None


_PRODUCTS = ("distances.csv", "reusability.csv", "agreement.csv", "agreement_summary.csv", RESULTS_STORE)


def _write(ds: xr.Dataset, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".analyze-{uuid.uuid4().hex[:8]}.tmp"
    trash = out / f".analyze-{uuid.uuid4().hex[:8]}.old"
    tmp.mkdir()
    try:
        save_results_store(ds, tmp / RESULTS_STORE)
        write_tables(ds, tmp)
        trash.mkdir()
        for name in _PRODUCTS:  # results.zarr last: it holds the key that marks a finished run
            if (out / name).exists():
                (out / name).rename(trash / name)
            (tmp / name).rename(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)


def _device_budget(dev: torch.device) -> int | None:
    """GPU memory for the float64 blocks and statistics (80 % of the card; they are not under
    --memory-limit), or None on the CPU, where they share the host budget."""
    if dev.type != "cuda":
        return None
    return int(0.8 * torch.cuda.get_device_properties(dev).total_memory)


# ============================================================================ API
def analyze(stores, *, out, metrics: Sequence[str] | None = None, views=None, alpha: float = DEFAULT_ALPHA,
            reference: int = 0, preset: str = "default", layers: Sequence[str] | None = None, bootstrap: int = 0,
            seed: int = 0, experiment_names: Sequence[str] | None = None, allow_partial: bool = False,
            memory_limit=None, workers: int | None = None, scheduler=None, progress: bool = True,
            overwrite: bool = False, trajectory: str | bool = "auto", device: str = "auto") -> xr.Dataset:
    """Analyze activation stores into ``out`` and return the results Dataset.

    ``stores``: one path or several (one experiment each, labeled "model/dataset" or
    by ``experiment_names``). ``metrics``: names from :data:`ftdyn.metrics.METRICS`
    (default: the preset's). ``views``: one view for all metrics, or ``{metric: view}``
    / ``["metric=view", ...]``. ``alpha``: PWSM α in [0, 1]. ``reference``: the epoch
    every checkpoint is compared with. ``preset``: "default" or "paper-code" (module
    doc). ``layers``: module or variable names (default all). ``bootstrap``: number of
    replicates (0 = off). ``memory_limit``: bytes or "1GB". ``workers``: threads.
    ``scheduler``: None (threads), "tcp://host:port" or a ``distributed.Client``.
    ``trajectory``: "auto" | "all" | "reference" (module doc). ``overwrite``: replace
    results of *different* arguments already in ``out``. ``device``: where the float64
    statistics and decompositions run: "auto" (CUDA when present; CPU with a
    ``scheduler``), "cpu", "cuda", "cuda:N". Not part of the arguments that decide
    whether results are up to date (devices agree to rounding).
    """
    args = _resolve_args(metrics, views, alpha, reference, preset, layers, bootstrap, seed, experiment_names,
                         allow_partial, trajectory)
    dev = torch.device("cpu") if scheduler is not None and str(device).lower() == "auto" else \
        resolve_device(device, float64=True)
    exps = _open_experiments(stores, args, str(dev))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FtdynError(f"--out: {out} is a file; give a folder for the results.")
    key = _analysis_key(args, exps)
    old = _existing_key(out)
    if old is not None:
        if old == key:
            print(f"ftdyn analyze: {out} is up to date (same arguments and stores); nothing to do.", file=sys.stderr)
            return open_results(out)
        if not overwrite:
            raise FtdynError(f"--out: {out} holds results of other arguments or stores; pass --overwrite to "
                             "replace them, or choose another folder.")

    limit = parse_memory(memory_limit) or _default_memory()
    budget = max(32 * 2**20, limit - RESERVE)  # thread arenas, zarr's event loop, graph, results
    device_budget = _device_budget(dev)
    want = int(workers) if workers else (os.cpu_count() or 1)
    if want < 1:
        raise FtdynError(f"--workers: must be at least 1, got {workers}.")
    # plan for want, want/2, ..., 1 threads; fewer threads leave more memory per task (fewer passes over
    # the store): keep the plan with the smallest estimated time (decode + float64 FLOPs) / threads
    best, error, threads = None, None, want
    while True:
        try:
            plan_jobs = [_plan_job(e, l, src, view, [m for m in args.metrics if args.views[m] == view],
                                   len(exp.epochs), exp.ref, args, threads, budget, device_budget)
                         for e, exp in enumerate(exps) for l, (_, src) in enumerate(exp.layers)
                         for view in dict.fromkeys(args.views[m] for m in args.metrics)]
            used = max(1, min(threads, int(budget // max(1, max(j.task_bytes for j in plan_jobs)))))
            reading = sum(j.read_bytes for j in plan_jobs) / READ_RATE
            flops = sum(j.flops for j in plan_jobs)
            # CPU: every thread computes; CUDA: the threads share one GPU
            cost = (reading + flops / FLOP_RATE) / used if dev.type == "cpu" else reading / used + flops / GPU_FLOP_RATE
            if best is None or cost < best[0] * 0.95:
                best = (cost, used, plan_jobs)
        except FtdynError as exc:
            error = error or exc
        if threads == 1:
            break
        threads = max(1, threads // 2)
    if best is None:
        raise error
    _, threads, jobs = best

    degenerate = _pwsm_degenerate(exps, args)
    if degenerate:
        print(f"ftdyn analyze: warning: PWSM with alpha={args.alpha} is degenerate (0 whatever the checkpoints) "
              f"where a view has no more rows than columns: {', '.join(degenerate)}; use more probe images "
              "or --alpha 1 there.", file=sys.stderr)
    outputs = _build_graph(exps, args, jobs, inplace=scheduler is None)
    results = _compute(outputs, threads=threads, scheduler=scheduler, progress=progress)
    _trim()
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # the statistics are gone: hand the cached blocks back to the driver
    recs = _collect(exps, args, jobs, list(results))
    plan = [{"experiment": exps[j.exp].name, "layer": exps[j.exp].layers[j.layer][0], "view": j.view,
             "metrics": j.metrics, "side": j.side, "pairs": "all" if j.mode == "all" else "reference",
             "filter_groups": len(j.groups), "checkpoint_passes": len(j.ckpt_groups) if j.side == "row" else None,
             "bootstrap_units": (j.units if j.side == "row" else "images")
             if args.bootstrap else None, "gram_panels": j.panels if j.side == "gram" else None,
             "task_bytes_estimate": int(j.task_bytes)} for j in jobs]
    attrs = {
        "ftdyn_results_format": RESULTS_FORMAT,
        "ftdyn_version": __version__,
        "reference_epoch": args.reference,
        "preset": args.preset,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "alpha": args.alpha,
        "map_average": args.map_average,
        "trajectory": args.trajectory,
        "arguments": json.dumps(args.key(), sort_keys=True),
        "analysis_key": key,
        "store_fingerprints": json.dumps([e.fingerprint for e in exps]),
        "plan": json.dumps(plan),
        "pwsm_degenerate": json.dumps(degenerate),
        "threads": int(threads),
        "device": str(dev),
        "memory_limit": int(limit),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    ds = validate_results(_to_dataset(exps, args, recs, attrs), "analyze")
    _write(ds, out)
    return open_results(out)
