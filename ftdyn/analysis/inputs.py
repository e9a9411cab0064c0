"""What to analyze: presets, resolved arguments, and the experiments opened from stores.

Everything here runs in the calling process before any Dask task: it validates the
user's choices (one clear :class:`~ftdyn.errors.FtdynError` each) and describes each
selected layer by a picklable :class:`Source` that the tasks of
:mod:`ftdyn.analysis.tasks` read from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from .. import metrics as M
from .. import views as V
from ..data import check_seed
from ..errors import FtdynError

#: debiased linear CKA distance (1 − CKA with U-centered Grams; Murphy et al. 2024): an analysis
#: metric beside the registry's, computed on the Gram side (per-filter/flat/map views only)
DEBIASED_CKA = "cka_debiased"
METRIC_NAMES = (*M.METRICS, DEBIASED_CKA)
DEFAULT_ALPHA = 0.0
TRAJECTORY_MODES = ("auto", "all", "reference")
#: checkpoint position that reads the store's random-init baseline instead of an epoch
BASELINE = -1


@dataclass(frozen=True)
class Preset:
    name: str
    metrics: tuple[str, ...]
    views: Mapping[str, str]
    map_average: str  # "images" | "class"
    description: str
    map_center: str = "columns"  # "columns" | "rows": how procrustes and cka center each map


PRESETS = {
    "default": Preset("default", ("pwsm", "procrustes", "cka"),
                      {"pwsm": "channels", "procrustes": "filter", "cka": "filter", DEBIASED_CKA: "filter"}, "images",
                      "pwsm on channels; procrustes and cka on filter (per-filter vector, NaN-aware mean)"),
    "paper-code": Preset("paper-code", ("pwsm", "procrustes", "cka"),
                         {"pwsm": "channels", "procrustes": "map", "cka": "map", DEBIASED_CKA: "map"}, "class",
                         "the published code: pwsm (alpha 0) on channels; procrustes and cka on map with "
                         "rows centered, per class then over all (class, filter) cells; Pearson agreement "
                         "across filters", map_center="rows"),
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


def default_memory() -> int:
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
    named: set[str] = set()
    for item in items:
        if "=" in item:
            metric, view = (x.strip() for x in item.split("=", 1))
            if metric not in METRIC_NAMES:
                raise FtdynError(f"--view: unknown metric '{metric}' in '{item}'; choose from {', '.join(METRIC_NAMES)}.")
            if metric not in chosen:
                raise FtdynError(f"--view: '{item}' names metric '{metric}', which is not analyzed; add --metric {metric}.")
            if metric in named:
                raise FtdynError(f"--view: metric '{metric}' is given a view twice; give one --view {metric}=VIEW.")
            named.add(metric)
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
    map_center: str = "columns"
    #: replicates are the nested image subsets of the convergence check (analysis.interpret), not
    #: bootstrap draws; set only on the internal convergence run
    nested: bool = False
    #: metrics with bootstrap replicates (None: all); CKA's need no decomposition, the cheap choice
    bootstrap_metrics: list[str] | None = None
    #: groups of images the bootstrap resamples (None: MAX_UNITS of analysis.plan, 32); fewer groups
    #: keep fewer statistics (cheaper on a CPU) for a coarser resample
    bootstrap_groups: int | None = None
    #: epochs whose replicates are not needed (internal: the convergence run skips its baseline)
    skip_replicates: tuple[int, ...] = ()

    def key(self) -> dict[str, Any]:
        key = asdict(self)
        key.pop("nested")  # internal; keeps the analysis key of a plain analysis as it was
        key.pop("skip_replicates")
        for name in ("bootstrap_metrics", "bootstrap_groups"):
            if key[name] is None:
                key.pop(name)
        return key


def resolve_args(metrics, views, alpha, reference, preset, layers, bootstrap, seed, experiment_names,
                  allow_partial, trajectory, bootstrap_metrics=None, bootstrap_groups=None) -> Args:
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
    if bootstrap is None or int(bootstrap) < 0 or int(bootstrap) == 1:
        raise FtdynError(f"--bootstrap: must be 0 (off) or a number of replicates of at least 2 (a few hundred for "
                         f"stable 95 % intervals), got {bootstrap}.")
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
    chosen_views = _resolve_views(metrics, views, p)
    if bootstrap_groups is not None and not 2 <= int(bootstrap_groups):
        raise FtdynError(f"--bootstrap-groups: at least 2 groups of images, got {bootstrap_groups}.")
    if isinstance(bootstrap_metrics, str):
        bootstrap_metrics = [bootstrap_metrics]
    if bootstrap_metrics:
        bootstrap_metrics = list(dict.fromkeys(str(m).strip().lower() for m in bootstrap_metrics))
        stray = [m for m in bootstrap_metrics if m not in metrics]
        if stray:
            raise FtdynError(f"--bootstrap-metric: '{stray[0]}' is not analyzed; choose from {', '.join(metrics)}.")
    if chosen_views.get(DEBIASED_CKA) in ("channels", "pooled"):
        raise FtdynError(f"--view: {DEBIASED_CKA} is computed from per-image Gram matrices; give it a filter, flat or "
                         f"map view (--view {DEBIASED_CKA}=filter).")
    return Args(metrics=metrics, views=chosen_views, alpha=a, reference=int(reference),
                preset=preset, layers=list(layers) if layers else None, bootstrap=int(bootstrap), seed=check_seed(seed),
                experiment_names=list(experiment_names) if experiment_names else None,
                allow_partial=bool(allow_partial), trajectory=trajectory, map_average=p.map_average,
                map_center=p.map_center, bootstrap_metrics=bootstrap_metrics or None,
                bootstrap_groups=None if bootstrap_groups is None else int(bootstrap_groups))


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
    layer: str = ""  # the module name, for messages
    epochs: tuple[int, ...] = ()  # epoch of each position of the store's checkpoint axis, for messages

    def where(self, ckpt: int, chunk: int) -> str:
        """'layer L (array V), epoch E, samples a-b': how messages name a block (never by index)."""
        rows = self.rows(chunk)
        if ckpt == BASELINE:
            return f"layer {self.layer or self.var} (array {self.var}), random-init baseline, samples {rows.start}-{rows.stop - 1}"
        epoch = self.epochs[ckpt] if ckpt < len(self.epochs) else f"#{ckpt}"
        return (f"layer {self.layer or self.var} (array {self.var}), epoch {epoch}, "
                f"samples {rows.start}-{rows.stop - 1}")

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
    probe_dir: str | None = None  # where the probe images came from (outputs must not land there)


def store_fingerprint(path: Path, ds: xr.Dataset) -> dict[str, Any]:
    from ..store import RANDOM_INIT, completeness, has_random_init

    done = completeness(path)
    payload = {
        "random_init": [ds.attrs.get(RANDOM_INIT), has_random_init(path)],
        "checkpoints": ds.attrs.get("checkpoints"),
        "probe": ds.attrs.get("probe"),
        "layers": {var: list(ds[var].shape[1:]) for _, var in _store_layers(ds)},
        "completeness": hashlib.sha256(np.packbits(done).tobytes() + str(done.shape).encode()).hexdigest(),
        "format": ds.attrs.get("ftdyn_store_format"),
    }
    return {"sha256": hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest(),
            "path": str(path)}


def _store_layers(ds):
    from ..store import store_layers

    return store_layers(ds)


def open_experiments(stores: Sequence, args: Args, device: str = "cpu") -> list[Experiment]:
    from ..store import open_store

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
            raise FtdynError(f"--reference: epoch {args.reference} {where} ({path}: complete epochs "
                             f"{', '.join(map(str, epochs))}); pass --reference with one of them, or extract the "
                             "source model as epoch 0 (ftdyn extract --source).")
        if len(epochs) < 2:
            raise FtdynError(f"{path}: only epoch {epochs[0]} is complete, nothing to compare it with; extract more "
                             "checkpoints (or finish the extraction) first.")
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
                                          int(ds[var].dtype.itemsize), device, block, module,
                                          tuple(all_epochs))))
        model, dataset = str(ds.attrs.get("model")), str(ds.attrs.get("dataset"))
        name = args.experiment_names[i] if args.experiment_names else f"{model}/{dataset}"
        exps.append(Experiment(path=path, name=name, model=model, dataset=dataset, epochs=epochs,
                               ckpt_index=ckpt_index, ref=epochs.index(args.reference),
                               labels=np.asarray(ds["label"].values, dtype=np.int64), layers=layers,
                               fingerprint=store_fingerprint(path, ds),
                               probe_dir=(ds.attrs.get("probe") or {}).get("data_dir")))
    names = [e.name for e in exps]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise FtdynError(f"analyze: several stores are labeled '{dup[0]}'; give each a distinct --name.")
    return exps


