"""Task results -> per (experiment, metric, layer) records -> the labeled results Dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .. import summary as S
from .. import views as V
from .inputs import Args, Experiment
from .plan import Job, shared_boot_indices
from .tasks import map_pairs


def _layer_values(values: np.ndarray, per_filter: bool) -> tuple[np.ndarray, np.ndarray]:
    """(layer value per leading index, NaN count) from values (..., filters) or (...)."""
    if not per_filter:
        return values, np.isnan(values).astype(np.int64)
    return S.nanmean(values, axis=-1), np.isnan(values).sum(-1)


def _aggregate_map(vals: np.ndarray, labels: np.ndarray, how: str):
    """Per-filter and layer values from per-(image, filter) map distances ``vals`` (P, n, C).

    ``images``: NaN-aware mean over images per filter, then over filters. ``class`` (the
    published code's order): per class, the NaN-aware mean over its images of each filter
    -> cells (P, classes, C); per filter the NaN-aware mean over classes, and the layer
    value the NaN-aware mean over *all* (class, filter) cells (which differs from the mean
    of the per-filter values when some cells are NaN). Returns (per_filter, layer, cells)."""
    if how == "class":
        cells = np.stack([S.nanmean(vals[:, labels == c], axis=1) for c in np.unique(labels)], axis=1)
        return S.nanmean(cells, axis=1), S.nanmean(cells.reshape(*cells.shape[:-2], -1), axis=-1), cells
    per_filter = S.nanmean(vals, axis=1)
    return per_filter, S.nanmean(per_filter, axis=-1), None


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
        if m in parts[0]["reps"]:
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


def collect(exps: list[Experiment], args: Args, jobs: list[Job], results: list) -> dict:
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
                pairs = map_pairs(T, ref, job.mode)
                per_filter_vals, layer_pair, cells = _aggregate_map(vals, exp.labels, args.map_average)
                ref_rows = [pairs.index((ref, t)) if (ref, t) in pairs else pairs.index((t, ref)) for t in range(T)]
                filt = per_filter_vals[ref_rows]
                rec["layer_value"] = layer_pair[ref_rows]
                if cells is not None:
                    rec["cells"] = cells[ref_rows]  # (T, classes, C): the published agreement's input
                rec["n_nan_maps"] = np.isnan(vals[ref_rows]).sum(axis=(1, 2))
                traj = np.full((T, T), np.nan)
                for i, (a, b) in enumerate(pairs):
                    traj[a, b] = traj[b, a] = layer_pair[i]
                if args.bootstrap and (args.bootstrap_metrics is None or m in args.bootstrap_metrics):
                    idx = shared_boot_indices(len(exp.labels), args, job.exp)
                    ref_vals = vals[ref_rows]  # (T, n, C)
                    reps = np.stack([_aggregate_map(ref_vals[:, ii], exp.labels[ii], args.map_average)[1]
                                     for ii in idx])
                    rec["ci"] = S.percentile_interval(reps, axis=0)
                    rec["reps"] = reps  # (N, T) layer values, paired across layers (interpret)
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
                if m in parts[0]["reps"]:
                    reps = _gather(parts, "reps", m, (len(parts[0]["reps"][m]), T), per_filter)
                    rec["reps"] = _layer_values(reps, per_filter)[0]  # (N, T), paired across layers
                    rec["ci"] = S.percentile_interval(rec["reps"], axis=0)
            if filt is not None:
                layer_val, n_nan = _layer_values(filt, True)
                layer_val = rec.pop("layer_value", layer_val)
                rec["filter"] = filt
                rec["n_filters"] = filt.shape[-1]
            else:
                layer_val, n_nan = _layer_values(values, False)
                rec["n_filters"] = exp.layers[job.layer][1].channels
            rec["value"], rec["n_nan"], rec["traj"] = layer_val, n_nan, traj
            out[(job.exp, m, job.layer)] = rec
    return out


def to_dataset(exps: list[Experiment], args: Args, recs: dict, attrs: dict) -> xr.Dataset:
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
    paper = _paper_code_agreement(exps, args, recs, epochs, Lmax)
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
    return ds.assign(paper) if paper else ds


def _paper_code_agreement(exps: list[Experiment], args: Args, recs: dict, epochs: list[int], Lmax: int) -> dict:
    """The published code's agreement (with ``--preset paper-code``, CKA and Procrustes on the
    map view): per (epoch, layer, class), Pearson r across filters between the two metrics'
    per-class filter values, summarized per experiment by a plain mean and std over layers,
    epochs (reference excluded) and classes — one NaN makes the summary NaN, as it did there."""
    if args.map_average != "class" or any(m not in args.metrics or args.views[m] != "map"
                                          for m in ("procrustes", "cka")):
        return {}
    K = max(len(np.unique(e.labels)) for e in exps)
    E, Ep = len(exps), len(epochs)
    r = np.full((E, Lmax, Ep, K), np.nan)
    mean, std = np.full(E, np.nan), np.full(E, np.nan)
    for e, exp in enumerate(exps):
        cols = [epochs.index(ep) for ep in exp.epochs]
        k = len(np.unique(exp.labels))
        for l in range(len(exp.layers)):
            r[e, l][np.ix_(cols, range(k))] = S.pearson_plain(recs[(e, "cka", l)]["cells"],
                                                              recs[(e, "procrustes", l)]["cells"], axis=-1)
        r[e, :, epochs.index(args.reference)] = np.nan  # self-comparison: rounding noise, not a correlation
        kept = r[e, :len(exp.layers)][:, [c for c, ep in zip(cols, exp.epochs) if ep != args.reference], :k]
        mean[e], std[e] = (float(kept.mean()), float(kept.std())) if kept.size else (np.nan, np.nan)
    dims = ("experiment", "layer_index", "epoch", "class_index")
    return {
        "agreement_paper_code": (dims, r, {"description": "published code: Pearson r between CKA and Procrustes "
                                           "across filters, per (epoch, layer, class; class_index = k-th label "
                                           "present); NaN if any filter value is NaN or a vector is constant, and at the "
                                           "reference epoch"}),
        "agreement_paper_code_mean": ("experiment", mean, {"description": "plain mean of agreement_paper_code over "
                                                           "layers, epochs (reference excluded) and classes"}),
        "agreement_paper_code_std": ("experiment", std, {"description": "plain population std, same cells"}),
    }


