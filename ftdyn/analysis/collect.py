"""Task results -> per (experiment, metric, layer) records -> the labeled results Dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import xarray as xr

from ..config import AnalyzeConfig
from ..summary import agreement, nanmean, pearson_plain, percentile_interval, reusability
from ..views import is_per_filter
from .inputs import Experiment
from .maps import map_pairs
from .plan import Job, nested_subsets, nested_units, shared_boot_indices
from .task_results import MetricsResult


def _layer_values(values: np.ndarray, per_filter: bool) -> tuple[np.ndarray, np.ndarray]:
    """(layer value per leading index, NaN count) from values (..., filters) or (...)."""
    if not per_filter:
        return values, np.isnan(values).astype(np.int64)
    return nanmean(values, axis=-1), np.isnan(values).sum(-1)


def _aggregate_map(vals: np.ndarray, labels: np.ndarray, how: str):
    """Per-filter and layer values from per-(image, filter) map distances ``vals`` (P, n, C).

    ``images``: NaN-aware mean over images per filter, then over filters. ``class`` (the
    published code's order): per class, the NaN-aware mean over its images of each filter
    -> cells (P, classes, C); per filter the NaN-aware mean over classes, and the layer
    value the NaN-aware mean over *all* (class, filter) cells (which differs from the mean
    of the per-filter values when some cells are NaN). Returns (per_filter, layer, cells)."""
    if how == "class":
        cells = np.stack([nanmean(vals[:, labels == c], axis=1) for c in np.unique(labels)], axis=1)
        return (
            nanmean(cells, axis=1),
            nanmean(cells.reshape(*cells.shape[:-2], -1), axis=-1),
            cells,
        )
    per_filter = nanmean(vals, axis=1)
    return per_filter, nanmean(per_filter, axis=-1), None


def _join_ckpt_groups(parts: list[MetricsResult], groups: list, T: int, ref: int) -> MetricsResult:
    """One row-side result over all T checkpoints from the passes of the checkpoint groups."""
    if groups == [None]:
        return parts[0]
    # the convergence check's subsets come from the one pass holding the last epoch
    nested = next((part.nested for part in parts if part.nested), {})
    values, replicates, heldout = {}, {}, {}

    def joined(arrays: list[np.ndarray]) -> np.ndarray:  # (T, ...) from each pass's (1 + k, ...)
        out = np.empty((T, *np.shape(arrays[0])[1:]))
        out[ref] = np.asarray(arrays[0])[0]
        for array, cg in zip(arrays, groups, strict=True):
            out[cg] = np.asarray(array)[1:]
        return out

    for m in parts[0].values:
        values[m] = joined([part.values[m] for part in parts])
        if m in parts[0].heldout:
            heldout[m] = joined([part.heldout[m] for part in parts])
        if m in parts[0].replicates:
            r0 = np.asarray(parts[0].replicates[m])
            reps = np.empty((r0.shape[0], T, *r0.shape[2:]))
            reps[:, ref] = r0[:, 0]
            for part, cg in zip(parts, groups, strict=True):
                reps[:, cg] = np.asarray(part.replicates[m])[:, 1:]
            replicates[m] = reps
    return MetricsResult(values=values, replicates=replicates, nested=nested, heldout=heldout)


def _gather(arrays: list[np.ndarray], lead: tuple[int, ...], per_filter: bool) -> np.ndarray:
    """One metric's array from the results of every filter group: shape (*lead, filters),
    groups joined along filters, for per-filter views; (*lead) otherwise (a single group)."""
    if not per_filter:
        return np.asarray(arrays[0]).reshape(lead)
    return np.concatenate([np.asarray(a).reshape(*lead, -1) for a in arrays], axis=-1)


def _job_parts(job: Job, it, T: int, ref: int) -> list:
    """The next results of ``it`` that belong to ``job``, one per filter group."""
    if job.side == "row":
        return [
            _join_ckpt_groups([next(it) for _ in job.ckpt_groups], job.ckpt_groups, T, ref)
            for _ in job.groups
        ]
    return [next(it) for _ in job.groups]


def _map_bootstrap(ref_vals: np.ndarray, exp: Experiment, args: AnalyzeConfig):
    """CI and replicates (N, T) of the layer value, resampling the shared sample indices."""
    idx = shared_boot_indices(len(exp.labels), args, exp.draws)
    reps = np.stack(
        [_aggregate_map(ref_vals[:, ii], exp.labels[ii], args.map_average)[1] for ii in idx]
    )
    return percentile_interval(reps, axis=0), reps  # reps: paired across layers (interpret)


@dataclass
class Record:
    """One (experiment, metric, layer)'s results in the experiment's own epoch order (T
    epochs, plus the random-init baseline after them until :meth:`split_baseline`)."""

    value: np.ndarray  #: (T,) layer distance from the reference
    n_nan: np.ndarray  #: (T,) undefined filters (per-filter views) or 1 if ``value`` is NaN
    traj: np.ndarray  #: (T, T) checkpoint x checkpoint layer distances, NaN where not computed
    n_filters: int
    filter: np.ndarray | None = None  #: (T, filters) per-filter distances (per-filter views)
    n_nan_maps: np.ndarray | None = None  #: (T,) undefined (image, filter) maps (map view)
    cells: np.ndarray | None = None  #: (T, classes, filters) per-class values (map, class mean)
    ci: tuple[np.ndarray, np.ndarray] | None = None  #: bootstrap interval of ``value``
    reps: np.ndarray | None = None  #: (replicates, T) bootstrap values, paired across layers
    nested: np.ndarray | None = None  #: (subsets,) last epoch on the convergence subsets
    heldout: np.ndarray | None = None  #: (T,) held-out layer distance (beyond the limit)

    #: the epoch axes of the array fields ("traj" has two; "ci" is a pair of (T,) arrays)
    _EPOCH_AXES: ClassVar[dict[str, tuple[int, ...]]] = {
        "value": (0,),
        "n_nan": (0,),
        "n_nan_maps": (0,),
        "filter": (0,),
        "cells": (0,),
        "reps": (1,),
        "traj": (0, 1),
        "heldout": (0,),
    }

    def split_baseline(self, T: int) -> float:
        """Remove the random-init baseline, the position after the T epochs; returns its
        distance from the reference (the ceiling)."""
        ceiling = float(self.value[T])
        for name, axes in self._EPOCH_AXES.items():
            array = getattr(self, name)
            for axis in axes if array is not None else ():
                array = np.take(array, np.arange(T), axis=axis)
            setattr(self, name, array)
        if self.ci is not None:
            self.ci = (self.ci[0][:T], self.ci[1][:T])
        return ceiling

    def make_undefined(self) -> None:
        """Blank a record whose values carry no information (NaN, counted in ``n_nan``), so
        that a degenerate 0 never reads as "unchanged" or enters reusability and agreement."""
        for name in ("value", "traj", "filter", "cells", "reps", "heldout"):
            array = getattr(self, name)
            if array is not None:
                setattr(self, name, np.full(array.shape, np.nan))
        if self.ci is not None:
            self.ci = (np.full(self.ci[0].shape, np.nan), np.full(self.ci[1].shape, np.nan))
        self.n_nan = np.full(self.n_nan.shape, self.n_filters if self.filter is not None else 1)


def _bootstrapped(args: AnalyzeConfig, m: str) -> bool:
    return bool(args.bootstrap) and (args.bootstrap_metrics is None or m in args.bootstrap_metrics)


def _map_record(exp: Experiment, args: AnalyzeConfig, job: Job, m: str, parts: list) -> Record:
    """The record of a map metric from its per-(image, filter) distances."""
    T, ref = len(exp.epochs), exp.ref
    vals = np.concatenate([p.distances[m] for p in parts], axis=-1)  # (P, n, C)
    pairs = map_pairs(T, ref, job.mode)
    per_filter_vals, layer_pair, cells = _aggregate_map(vals, exp.labels, args.map_average)
    ref_rows = [
        pairs.index((ref, t)) if (ref, t) in pairs else pairs.index((t, ref)) for t in range(T)
    ]
    filt = per_filter_vals[ref_rows]
    traj = np.full((T, T), np.nan)
    for i, (a, b) in enumerate(pairs):
        traj[a, b] = traj[b, a] = layer_pair[i]
    rec = Record(
        value=layer_pair[ref_rows],
        n_nan=_layer_values(filt, True)[1],
        traj=traj,
        n_filters=filt.shape[-1],
        filter=filt,
        n_nan_maps=np.isnan(vals[ref_rows]).sum(axis=(1, 2)),
        # (T, classes, C): the published agreement's input
        cells=None if cells is None else cells[ref_rows],
    )
    if _bootstrapped(args, m):
        rec.ci, rec.reps = _map_bootstrap(vals[ref_rows], exp, args)
    if exp.last is not None:
        last = vals[ref_rows[exp.last]]  # (n, C)
        n = len(exp.labels)
        rec.nested = np.array(
            [
                _aggregate_map(last[None, idx], exp.labels[idx], args.map_average)[1][0]
                for idx in nested_subsets(n, nested_units(args, n), args.seed, exp.draws)
            ]
        )
    return rec


def _values_record(parts: list[MetricsResult], m: str, exp: Experiment, job: Job) -> Record:
    """The record of a row-side or Gram-side metric from the results of its filter groups."""
    T, ref = len(exp.epochs), exp.ref
    per_filter = is_per_filter(job.view)
    values = _gather([p.values[m] for p in parts], (T,), per_filter)
    if parts[0].trajectory:
        traj = _layer_values(
            _gather([p.trajectory[m] for p in parts], (T, T), per_filter), per_filter
        )[0]
    else:
        traj = np.full((T, T), np.nan)
        lv = _layer_values(values, per_filter)[0]
        traj[ref, :] = lv
        traj[:, ref] = lv
    value, n_nan = _layer_values(values, per_filter)
    rec = Record(
        value=value,
        n_nan=n_nan,
        traj=traj,
        n_filters=values.shape[-1] if per_filter else exp.layers[job.layer][1].channels,
        filter=values if per_filter else None,
    )
    if m in parts[0].replicates:
        lead = (len(parts[0].replicates[m]), T)
        reps = _gather([p.replicates[m] for p in parts], lead, per_filter)
        rec.reps = _layer_values(reps, per_filter)[0]  # (N, T), paired across layers
        rec.ci = percentile_interval(rec.reps, axis=0)
    if m in parts[0].nested:
        rec.nested = _nested_values(parts, m, per_filter)
    if m in parts[0].heldout:
        rec.heldout = _layer_values(
            _gather([p.heldout[m] for p in parts], (T,), per_filter), per_filter
        )[0]
    return rec


def _nested_values(parts: list[MetricsResult], m: str, per_filter: bool) -> np.ndarray:
    """(subsets,) layer values of the convergence check's nested subsets."""
    subsets = len(parts[0].nested[m])
    nested = _gather([p.nested[m] for p in parts], (subsets,), per_filter)
    return _layer_values(nested, per_filter)[0]


def collect_nested(exps: list[Experiment], jobs: list[Job], results: list) -> dict:
    """{(experiment, metric, layer): (subsets,) layer values} from the results of the
    convergence check's own run (reference and last epoch, ``point=False``)."""
    out = {}
    it = iter(results)
    for job in jobs:
        exp = exps[job.exp]
        parts = _job_parts(job, it, len(exp.epochs), exp.ref)
        for m in job.convergence:
            out[(job.exp, m, job.layer)] = _nested_values(parts, m, is_per_filter(job.view))
    return out


def collect_pooled(exps: list[Experiment], jobs: list[Job], results: list) -> dict:
    """{(experiment, layer): (positions, images, channels)} float64 pooled features gathered by
    the row-side ``jobs`` marked ``pooled`` while reading
    (:func:`~ftdyn.analysis.rows.row_leaf`), from their results in plan order."""
    out = {}
    it = iter(results)
    for job in jobs:
        exp = exps[job.exp]
        passes = job.passes(len(exp.epochs), exp.ref)
        parts = [next(it) for _ in range(len(job.groups) * len(passes))]
        if not job.pooled:
            continue
        src = exp.layers[job.layer][1]
        feats = np.full((len(exp.epochs), src.n, src.channels), np.nan)
        for k, part in enumerate(parts):  # filter group by filter group, each pass by pass
            fsl, pos = job.groups[k // len(passes)], passes[k % len(passes)]
            for (t, chunk), means in part.pooled.items():
                feats[pos[t], src.rows(chunk), fsl] = means
        out[(job.exp, job.layer)] = feats
    return out


#: the records of :func:`collect`, by (experiment index, metric, layer index)
Records = dict[tuple[int, str, int], Record]


def collect(exps: list[Experiment], args: AnalyzeConfig, jobs: list[Job], results: list) -> Records:
    """One :class:`Record` per (experiment, metric, layer) from the task results in plan order."""
    out: Records = {}
    lent = {}  # subsets computed by the job of another metric of the same view
    it = iter(results)
    for job in jobs:
        exp = exps[job.exp]
        T, ref = len(exp.epochs), exp.ref
        parts = _job_parts(job, it, T, ref)
        per_filter = is_per_filter(job.view)
        for m in set(job.convergence) - set(job.metrics):
            lent[(job.exp, m, job.layer)] = _nested_values(parts, m, per_filter)
        for m in job.metrics:
            out[(job.exp, m, job.layer)] = (
                _map_record(exp, args, job, m, parts)
                if job.side == "map"
                else _values_record(parts, m, exp, job)
            )
    for key, nested in lent.items():
        out[key].nested = nested
    return out


def _place(
    arrays: dict[str, np.ndarray], index: tuple[int, int, int], cols: list[int], rec: Record
) -> None:
    """Put one (experiment, metric, layer) record into the result arrays at ``index``,
    its epochs at positions ``cols`` of the common epoch axis."""
    e, mi, l = index
    arrays["distance"][e, mi, l, cols] = rec.value
    arrays["n_nan"][e, mi, l, cols] = rec.n_nan
    if rec.n_nan_maps is not None:
        arrays["n_nan_maps"][e, mi, l, cols] = rec.n_nan_maps
    arrays["n_filters"][e, mi, l] = rec.n_filters
    if rec.filter is not None:
        arrays["filter_distance"][e, mi, l][cols, : rec.filter.shape[-1]] = rec.filter
    arrays["trajectory"][e, mi, l][np.ix_(cols, cols)] = rec.traj
    if rec.ci is not None:
        arrays["ci_low"][e, mi, l, cols], arrays["ci_high"][e, mi, l, cols] = rec.ci
    if rec.heldout is not None:
        arrays["heldout_distance"][e, mi, l, cols] = rec.heldout


def _record_arrays(
    exps: list[Experiment], args: AnalyzeConfig, recs: Records, epochs: list[int]
) -> dict[str, np.ndarray]:
    """The records as arrays over (experiment, metric, layer_index, epoch[, filter | epoch_other]),
    NaN (0 for counts) where an experiment has no such layer or epoch; plus ``layer`` names and
    ``has_epoch``."""
    E, Mn, Lmax, Ep = len(exps), len(args.metrics), max(len(e.layers) for e in exps), len(epochs)
    Fmax = max([r.filter.shape[-1] for r in recs.values() if r.filter is not None] + [1])
    shape = (E, Mn, Lmax, Ep)
    arrays = {
        "distance": np.full(shape, np.nan),
        "ci_low": np.full(shape, np.nan),
        "ci_high": np.full(shape, np.nan),
        "heldout_distance": np.full(shape, np.nan),
        "n_nan": np.zeros(shape, dtype=np.int64),
        "n_nan_maps": np.zeros(shape, dtype=np.int64),
        "n_filters": np.zeros((E, Mn, Lmax), dtype=np.int64),
        "filter_distance": np.full((*shape, Fmax), np.nan),
        "trajectory": np.full((*shape, Ep), np.nan),
        "layer": np.full((E, Lmax), "", dtype=object),
        "has_epoch": np.zeros((E, Ep), dtype=bool),
    }
    epos = {ep: i for i, ep in enumerate(epochs)}
    for e, exp in enumerate(exps):
        cols = [epos[ep] for ep in exp.epochs]
        arrays["has_epoch"][e, cols] = True
        for l, (module, _) in enumerate(exp.layers):
            arrays["layer"][e, l] = module
            for mi, m in enumerate(args.metrics):
                _place(arrays, (e, mi, l), cols, recs[(e, m, l)])
    return arrays


def _summaries(
    exps: list[Experiment], args: AnalyzeConfig, dist: np.ndarray, epochs: list[int]
) -> dict[str, np.ndarray]:
    """Reusability (mean ± std over epochs, per experiment and per layer) and the Pearson
    agreement between metrics, the reference epoch excluded."""
    E, Mn, Lmax = dist.shape[:3]
    out = {
        "reusability_mean": np.full((E, Mn), np.nan),
        "reusability_std": np.full((E, Mn), np.nan),
        "layer_reusability_mean": np.full((E, Mn, Lmax), np.nan),
        "layer_reusability_std": np.full((E, Mn, Lmax), np.nan),
        "agreement_r": np.full((E, Lmax, Mn, Mn), np.nan),
        "agreement_n": np.zeros((E, Lmax, Mn, Mn), dtype=np.int64),
    }
    keep_all = np.array([ep != args.reference for ep in epochs])
    for e, exp in enumerate(exps):
        L = len(exp.layers)
        curves = dist[e, :, :L]
        keep = keep_all & np.isin(epochs, exp.epochs)
        a, b, c, d = reusability(curves, keep)
        out["reusability_mean"][e], out["reusability_std"][e] = a, b
        out["layer_reusability_mean"][e, :, :L], out["layer_reusability_std"][e, :, :L] = c, d
        out["agreement_r"][e, :L], out["agreement_n"][e, :L] = agreement(curves, keep)
    return out


_LE = ("experiment", "metric", "layer_index", "epoch")
#: (dims, description or None) of each data variable, in the order of the Dataset
_VARIABLES = {
    "distance": (
        _LE,
        "distance from the reference checkpoint (per-filter views: NaN-aware mean over filters)",
    ),
    "ci_low": (_LE, "bootstrap percentile interval, lower bound (NaN without bootstrap)"),
    "ci_high": (_LE, "bootstrap percentile interval, upper bound"),
    "heldout_distance": (
        _LE,
        (
            "where the value is beyond its estimator's column/row limit (unreliable): the"
            " held-out distance, biased away from 0 as the plug-in value is toward it, so the"
            " two bracket the population distance; NaN elsewhere"
        ),
    ),
    "n_filters": (("experiment", "metric", "layer_index"), None),
    "n_nan": (
        _LE,
        (
            "undefined values: dead filters (per-filter views), filters dead in every image (map),"
            " 1 if a whole-layer value is NaN"
        ),
    ),
    "n_nan_maps": (
        _LE,
        "map view: undefined (image, filter) maps ignored by the means; 0 for other views",
    ),
    "filter_distance": ((*_LE, "filter"), None),
    "trajectory": (
        (*_LE, "epoch_other"),
        "checkpoint x checkpoint distances (NaN where not computed, see attrs.plan)",
    ),
    "reusability_mean": (("experiment", "metric"), None),
    "reusability_std": (("experiment", "metric"), None),
    "layer_reusability_mean": (("experiment", "metric", "layer_index"), None),
    "layer_reusability_std": (("experiment", "metric", "layer_index"), None),
    "agreement_r": (("experiment", "layer_index", "metric", "metric_other"), None),
    "agreement_n": (
        ("experiment", "layer_index", "metric", "metric_other"),
        "epochs both curves have a finite value at (reference excluded)",
    ),
    "has_epoch": (("experiment", "epoch"), "the experiment's store has this (complete) checkpoint"),
}


def _coords(
    exps: list[Experiment],
    args: AnalyzeConfig,
    epochs: list[int],
    layer_names: np.ndarray,
    n_filter_columns: int,
) -> dict[str, tuple]:
    strings = lambda values: np.array(list(values), dtype=object)
    return {
        "experiment": ("experiment", strings(e.name for e in exps)),
        "model": ("experiment", strings(e.model for e in exps)),
        "dataset": ("experiment", strings(e.dataset for e in exps)),
        "store": ("experiment", strings(str(e.path) for e in exps)),
        "metric": ("metric", strings(args.metrics)),
        "view": ("metric", strings(args.views[m] for m in args.metrics)),
        "alpha": (
            "metric",
            np.array(
                [args.alpha if m == "pwsm" else np.nan for m in args.metrics], dtype=np.float64
            ),
        ),
        "layer_index": ("layer_index", np.arange(layer_names.shape[1], dtype=np.int64)),
        "layer": (("experiment", "layer_index"), layer_names),
        "epoch": ("epoch", np.array(epochs, dtype=np.int64)),
        "epoch_other": ("epoch_other", np.array(epochs, dtype=np.int64)),
        "filter": ("filter", np.arange(n_filter_columns, dtype=np.int64)),
        "metric_other": ("metric_other", strings(args.metrics)),
    }


def to_dataset(
    exps: list[Experiment], args: AnalyzeConfig, recs: Records, attrs: dict
) -> xr.Dataset:
    """The labeled results Dataset (:mod:`ftdyn.results`) from the records of :func:`collect`."""
    epochs = sorted({ep for e in exps for ep in e.epochs})
    arrays = _record_arrays(exps, args, recs, epochs)
    arrays.update(_summaries(exps, args, arrays["distance"], epochs))
    layer_names = arrays.pop("layer")
    data = {
        name: (
            (dims, arrays[name]) if about is None else (dims, arrays[name], {"description": about})
        )
        for name, (dims, about) in _VARIABLES.items()
    }
    coords = _coords(exps, args, epochs, layer_names, arrays["filter_distance"].shape[-1])
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    paper = _paper_code_agreement(exps, args, recs, epochs, layer_names.shape[1])
    return ds.assign(paper) if paper else ds


def _paper_code_agreement(
    exps: list[Experiment], args: AnalyzeConfig, recs: Records, epochs: list[int], Lmax: int
) -> dict:
    """The published code's agreement (with ``--preset paper-code``, CKA and Procrustes on the
    map view): per (epoch, layer, class), Pearson r across filters between the two metrics'
    per-class filter values, summarized per experiment by a plain mean and std over layers,
    epochs (reference excluded) and classes — one NaN makes the summary NaN, as it did there."""
    if args.map_average != "class" or any(
        m not in args.metrics or args.views[m] != "map" for m in ("procrustes", "cka")
    ):
        return {}
    K = max(len(np.unique(e.labels)) for e in exps)
    E, Ep = len(exps), len(epochs)
    r = np.full((E, Lmax, Ep, K), np.nan)
    mean, std = np.full(E, np.nan), np.full(E, np.nan)
    for e, exp in enumerate(exps):
        cols = [epochs.index(ep) for ep in exp.epochs]
        k = len(np.unique(exp.labels))
        for l in range(len(exp.layers)):
            r[e, l][np.ix_(cols, range(k))] = pearson_plain(
                recs[(e, "cka", l)].cells, recs[(e, "procrustes", l)].cells, axis=-1
            )
        # self-comparison: rounding noise, not a correlation
        r[e, :, epochs.index(args.reference)] = np.nan
        kept = r[e, : len(exp.layers)][
            :, [c for c, ep in zip(cols, exp.epochs, strict=True) if ep != args.reference], :k
        ]
        mean[e], std[e] = (float(kept.mean()), float(kept.std())) if kept.size else (np.nan, np.nan)
    dims = ("experiment", "layer_index", "epoch", "class_index")
    return {
        "agreement_paper_code": (
            dims,
            r,
            {
                "description": (
                    "published code: Pearson r between CKA and Procrustes "
                    "across filters, per (epoch, layer, class; class_index = k-th label "
                    "present); NaN if any filter value is NaN or a vector is constant, and at the "
                    "reference epoch"
                )
            },
        ),
        "agreement_paper_code_mean": (
            "experiment",
            mean,
            {
                "description": (
                    "plain mean of agreement_paper_code over "
                    "layers, epochs (reference excluded) and classes"
                )
            },
        ),
        "agreement_paper_code_std": (
            "experiment",
            std,
            {"description": "plain population std, same cells"},
        ),
    }
