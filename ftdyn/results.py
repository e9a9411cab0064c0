"""THE results schema: what ``ftdyn analyze`` writes and every later stage reads.

``results/results.zarr`` (Zarr v3, open with :func:`open_results`) holds one
xarray Dataset, format 1::

    dims      experiment, metric, layer_index, epoch, epoch_other, filter,
              metric_other
    coords    experiment (str)                 label, default "model/dataset"
              model, dataset, store (experiment, str)
              metric (str), view (metric, str), alpha (metric, float; NaN unless PWSM)
              layer_index (int, 0 = shallowest)
              layer (experiment, layer_index, str; "" where an experiment has fewer layers)
              epoch, epoch_other (int, union over experiments)
              filter (int), metric_other (str, same values as metric)
    data_vars
      distance       (experiment, metric, layer_index, epoch)  float64
                     distance from the reference checkpoint; per-filter views: the
                     NaN-aware mean over filters; NaN where not computed
      ci_low, ci_high (experiment, metric, layer_index, epoch) bootstrap interval
                     over images (NaN without --bootstrap)
      n_filters      (experiment, metric, layer_index)  int   filters in the layer
      n_nan          (experiment, metric, layer_index, epoch) int  undefined values
                     (dead filters in per-filter views; 1 if a whole-layer value is NaN)
      filter_distance (experiment, metric, layer_index, epoch, filter) float64
                     the per-filter vector S_l (per-filter views; NaN otherwise/padding)
      trajectory     (experiment, metric, layer_index, epoch, epoch_other) float64
                     checkpoint x checkpoint distances
      reusability_mean, reusability_std (experiment, metric)
                     mean +- std over epochs (reference excluded) of the
                     layer-averaged distance (the paper's Table 2)
      layer_reusability_mean, layer_reusability_std (experiment, metric, layer_index)
      agreement_r    (experiment, layer_index, metric, metric_other) Pearson r
                     between two metrics across epochs (reference excluded)
    optional (``--preset paper-code`` with procrustes and cka on the map view)
      agreement_paper_code (experiment, layer_index, epoch, class_index) the published
                     code's Pearson r between CKA and Procrustes across filters per
                     (epoch, layer, class); NaN at the reference epoch
      agreement_paper_code_mean, agreement_paper_code_std (experiment) its plain
                     mean/std over layers, epochs and classes (any NaN -> NaN)
    interpretation (:mod:`ftdyn.analysis.interpret`; absent in older results)
      ceiling (experiment, metric, layer_index), relative_distance (… , epoch),
      relative_reusability_mean/std (experiment, metric), delta_ci_low/high (… , epoch),
      layer_order_p (experiment, metric, layer_index, layer_index_other),
      convergence (experiment, metric, layer_index, fraction), converged, images_needed
      (experiment, metric, layer_index), probe_accuracy (experiment, layer_index, epoch),
      probe_accuracy_random_init (experiment, layer_index), probe_chance (experiment)
    reliability (absent in older or a plugin's results: every value then reads as reliable)
      column_ratio (experiment, metric, layer_index) float64: columns per row of the metric's view
      unreliable (experiment, metric, layer_index) bool: the value cannot be trusted at that shape
      (degenerate, or above the estimator's column/row limit); figures draw it hollow and grey,
      the report's statements skip it, the CSV tables mark it (``unreliable``, ``reason``)
      heldout_distance (experiment, metric, layer_index, epoch) float64: above the limit, the
      held-out (cross-validated) Procrustes/PWSM, biased away from 0 as the plug-in value is
      toward it: [distance, heldout_distance] brackets the population distance; NaN elsewhere
      (:mod:`ftdyn.metrics.heldout`); the CSV column ``heldout``
    runs compared (:mod:`ftdyn.analysis.compare`; absent in older results)
      run_distance, run_ci_low, run_ci_high (experiment, experiment_other, metric, layer_index,
      epoch): distance between two runs at the same epoch (NaN: not compared); floor,
      floor_ci_low/high (experiment, metric, layer_index, epoch): the seed floor, the mean
      run_distance to the experiment's replicates (NaN without replicates); drift_above_floor
      (distance − floor) and drift_above_floor_p (one-sided paired bootstrap p);
      departure_epoch (experiment, metric, layer_index); coords experiment_other (str),
      replicates (experiment, str: its replicate group, comma-separated, "" for none); attrs
      run_pairs, replicate_groups (JSON), departure_note
    attrs     ftdyn_results_format, ftdyn_version, reference_epoch, preset,
              bootstrap, seed, arguments (JSON), created; pwsm_degenerate,
              procrustes_degenerate, cka_degenerate (JSON lists "experiment:layer"
              whose values are NaN because the view's shape makes the metric 0 for
              any pair), map_center ("columns" | "rows"); optional, checked when present:
              estimators ({metric: "debiased" | "jackknife" | "plugin"}), unreliable_reasons
              ({"<experiment>/<metric>/<layer>": one-line reason})

CSV tables beside it (columns are part of the contract, documented in the README):
:data:`TABLES` (distances, reusability, agreement, agreement summary, relative distances,
probes, layer order, convergence).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ._version import __version__
from .errors import FtdynError

RESULTS_FORMAT = 1
RESULTS_STORE = "results.zarr"
DISTANCE_COLUMNS = (
    "experiment",
    "model",
    "dataset",
    "layer",
    "layer_index",
    "epoch",
    "metric",
    "view",
    "value",
    "ci_low",
    "ci_high",
    "heldout",
    "n_filters",
    "n_nan",
    "unreliable",
    "reason",
)
REUSABILITY_COLUMNS = ("experiment", "model", "dataset", "metric", "mean", "std")
AGREEMENT_COLUMNS = (
    "experiment",
    "model",
    "dataset",
    "layer",
    "layer_index",
    "metric_a",
    "metric_b",
    "r",
    "n_epochs",
)
AGREEMENT_SUMMARY_COLUMNS = ("metric_a", "metric_b", "mean_r", "std_r", "n")
RELATIVE_COLUMNS = (
    "experiment",
    "model",
    "dataset",
    "layer",
    "layer_index",
    "epoch",
    "metric",
    "view",
    "relative_distance",
    "ceiling",
    "delta_ci_low",
    "delta_ci_high",
    "unreliable",
    "reason",
)
PROBE_COLUMNS = (
    "experiment",
    "model",
    "dataset",
    "layer",
    "layer_index",
    "epoch",
    "probe_accuracy",
    "probe_accuracy_random_init",
    "probe_chance",
)
CONVERGENCE_COLUMNS = (
    "experiment",
    "metric",
    "layer",
    "layer_index",
    "fraction",
    "distance",
    "converged",
    "images_needed",
    "unreliable",
    "reason",
)
LAYER_ORDER_COLUMNS = (
    "experiment",
    "metric",
    "layer",
    "layer_index",
    "layer_other",
    "layer_index_other",
    "distance",
    "distance_other",
    "p",
)
FLOOR_COLUMNS = (
    "experiment",
    "replicates",
    "layer",
    "layer_index",
    "epoch",
    "metric",
    "distance",
    "floor",
    "floor_ci_low",
    "floor_ci_high",
    "drift_above_floor",
    "p",
    "departure_epoch",
    "unreliable",
    "reason",
)
RUN_COLUMNS = (
    "experiment",
    "experiment_other",
    "layer",
    "layer_index",
    "epoch",
    "metric",
    "run_distance",
    "ci_low",
    "ci_high",
)

REQUIRED_VARS = {
    "distance": ("experiment", "metric", "layer_index", "epoch"),
    "ci_low": ("experiment", "metric", "layer_index", "epoch"),
    "ci_high": ("experiment", "metric", "layer_index", "epoch"),
    "n_filters": ("experiment", "metric", "layer_index"),
    "n_nan": ("experiment", "metric", "layer_index", "epoch"),
    "filter_distance": ("experiment", "metric", "layer_index", "epoch", "filter"),
    "trajectory": ("experiment", "metric", "layer_index", "epoch", "epoch_other"),
    "reusability_mean": ("experiment", "metric"),
    "reusability_std": ("experiment", "metric"),
    "layer_reusability_mean": ("experiment", "metric", "layer_index"),
    "layer_reusability_std": ("experiment", "metric", "layer_index"),
    "agreement_r": ("experiment", "layer_index", "metric", "metric_other"),
}
#: present only when computed (see the module doc); checked when present
OPTIONAL_VARS = {
    "agreement_paper_code": ("experiment", "layer_index", "epoch", "class_index"),
    "agreement_paper_code_mean": ("experiment",),
    "agreement_paper_code_std": ("experiment",),
    # interpretation (ftdyn.analysis.interpret); absent in results written before it
    "ceiling": ("experiment", "metric", "layer_index"),
    "relative_distance": ("experiment", "metric", "layer_index", "epoch"),
    "relative_reusability_mean": ("experiment", "metric"),
    "relative_reusability_std": ("experiment", "metric"),
    "delta_ci_low": ("experiment", "metric", "layer_index", "epoch"),
    "delta_ci_high": ("experiment", "metric", "layer_index", "epoch"),
    "layer_order_p": ("experiment", "metric", "layer_index", "layer_index_other"),
    "probe_accuracy": ("experiment", "layer_index", "epoch"),
    "probe_accuracy_random_init": ("experiment", "layer_index"),
    "probe_chance": ("experiment",),
    "convergence": ("experiment", "metric", "layer_index", "fraction"),
    "converged": ("experiment", "metric", "layer_index"),
    "images_needed": ("experiment", "metric", "layer_index"),
    # reliability of a value at its view's shape; absent: every value reads as reliable
    "column_ratio": ("experiment", "metric", "layer_index"),
    "heldout_distance": ("experiment", "metric", "layer_index", "epoch"),
    "unreliable": ("experiment", "metric", "layer_index"),
    # runs compared (ftdyn.analysis.compare); absent in results written before it
    "run_distance": ("experiment", "experiment_other", "metric", "layer_index", "epoch"),
    "run_ci_low": ("experiment", "experiment_other", "metric", "layer_index", "epoch"),
    "run_ci_high": ("experiment", "experiment_other", "metric", "layer_index", "epoch"),
    "floor": ("experiment", "metric", "layer_index", "epoch"),
    "floor_ci_low": ("experiment", "metric", "layer_index", "epoch"),
    "floor_ci_high": ("experiment", "metric", "layer_index", "epoch"),
    "drift_above_floor": ("experiment", "metric", "layer_index", "epoch"),
    "drift_above_floor_p": ("experiment", "metric", "layer_index", "epoch"),
    "departure_epoch": ("experiment", "metric", "layer_index"),
}
#: dtype kinds of the optional variables that must have one ("f" float, "b" bool)
OPTIONAL_KINDS = {"column_ratio": "f", "unreliable": "b"}
#: the estimator of each metric, in attrs["estimators"] ({metric: one of these})
ESTIMATORS = ("debiased", "jackknife", "plugin")
#: optional attributes, checked when present (dicts, stored as such or as JSON text)
OPTIONAL_ATTRS = ("estimators", "unreliable_reasons")
REQUIRED_COORDS = (
    "experiment",
    "model",
    "dataset",
    "store",
    "metric",
    "view",
    "alpha",
    "layer_index",
    "layer",
    "epoch",
    "epoch_other",
)
REQUIRED_ATTRS = (
    "ftdyn_results_format",
    "ftdyn_version",
    "reference_epoch",
    "preset",
    "bootstrap",
    "arguments",
)


def validate_results(ds: xr.Dataset, source: str = "results") -> xr.Dataset:
    """Check a results Dataset against the schema above; raise FtdynError naming what is wrong."""
    missing = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise FtdynError(
            f"{source}: not ftdyn results (attributes missing: {', '.join(missing)}); re-run "
            "`ftdyn analyze` to write them."
        )
    if ds.attrs["ftdyn_results_format"] != RESULTS_FORMAT:
        raise FtdynError(
            f"{source}: results format {ds.attrs['ftdyn_results_format']} from ftdyn "
            f"{ds.attrs['ftdyn_version']}; this ftdyn {__version__} reads format {RESULTS_FORMAT}. "
            "Re-run `ftdyn analyze`."
        )
    for name in REQUIRED_COORDS:
        if name not in ds.coords:
            raise FtdynError(
                f"{source}: damaged results, coordinate '{name}' missing; re-run `ftdyn analyze`."
            )
    for name, dims in REQUIRED_VARS.items():
        if name not in ds.data_vars or ds[name].dims != dims:
            raise FtdynError(
                f"{source}: damaged results, variable '{name}' missing or not {dims}; re-run "
                "`ftdyn analyze`."
            )
    for name, dims in OPTIONAL_VARS.items():
        if name in ds.data_vars and ds[name].dims != dims:
            raise FtdynError(
                f"{source}: damaged results, variable '{name}' is not {dims}; re-run `ftdyn"
                " analyze`."
            )
        kind = OPTIONAL_KINDS.get(name)
        if name in ds.data_vars and kind is not None and ds[name].dtype.kind != kind:
            raise FtdynError(
                f"{source}: damaged results, variable '{name}' is {ds[name].dtype}, not"
                f" {'float' if kind == 'f' else 'bool'}; re-run `ftdyn analyze`."
            )
    unknown = set(estimators(ds, source).values()) - set(ESTIMATORS)
    if unknown:
        raise FtdynError(
            f"{source}: damaged results, attribute 'estimators' names {', '.join(sorted(unknown))}"
            f" (expected {', '.join(ESTIMATORS)}); re-run `ftdyn analyze`."
        )
    unreliable_reasons(ds, source)
    return ds


def _dict_attr(ds: xr.Dataset, name: str, source: str) -> dict[str, str]:
    """Root attribute ``name`` as a {str: str} dict (stored as a dict or as its JSON text);
    empty when absent, FtdynError naming it when it is something else."""
    value = ds.attrs.get(name, {})
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FtdynError(
            f"{source}: damaged results, attribute '{name}' is not a mapping of names to text;"
            " re-run `ftdyn analyze`."
        )
    return dict(value)


def estimators(ds: xr.Dataset, source: str = "results") -> dict[str, str]:
    """{metric: "debiased" | "jackknife" | "plugin"} of ``attrs["estimators"]``; empty in results
    written without it."""
    return _dict_attr(ds, "estimators", source)


def unreliable_reasons(ds: xr.Dataset, source: str = "results") -> dict[str, str]:
    """{"<experiment>/<metric>/<layer>": one-line reason} of ``attrs["unreliable_reasons"]``;
    empty in results written without it."""
    return _dict_attr(ds, "unreliable_reasons", source)


def unreliable(ds: xr.Dataset) -> np.ndarray:
    """(experiment, metric, layer_index) bool: the values that cannot be trusted at their view's
    shape; all False in results without the ``unreliable`` variable (older or a plugin's)."""
    if "unreliable" in ds.data_vars:
        return np.asarray(ds["unreliable"].values, dtype=bool)
    return np.zeros((ds.sizes["experiment"], ds.sizes["metric"], ds.sizes["layer_index"]), bool)


def unreliable_reason(ds: xr.Dataset, experiment: str, metric: str, layer: str) -> str:
    """Why the value of (``experiment``, ``metric``, ``layer``) is unreliable, as recorded; a
    generic reason built from ``column_ratio`` where none is."""
    reason = unreliable_reasons(ds).get(f"{experiment}/{metric}/{layer}")
    if reason:
        return reason
    if "column_ratio" in ds.data_vars:
        names = [str(n) for n in ds["layer"].sel(experiment=experiment).values]
        ratio = float(
            ds["column_ratio"]
            .sel(experiment=experiment, metric=metric, layer_index=names.index(layer))
            .values
        )
        return f"{ratio:.2f} columns per row in the {ds['view'].sel(metric=metric).values} view"
    return "unreliable at this shape"


def save_results_store(ds: xr.Dataset, path: str | Path) -> None:
    """Write ``ds`` as a new Zarr v3 results store at ``path``; strings are stored as
    variable-length (fixed-width numpy strings have no Zarr v3 specification).

    The store carries consolidated metadata, so a plain ``xarray.open_zarr(path)`` (a notebook
    user's first try) opens it without warning; it is written once and never edited, so that
    metadata cannot go stale. :func:`open_results` reads the arrays' own metadata all the same.
    """
    on_disk = ds.copy()
    for name, var in ds.variables.items():
        if var.dtype.kind == "U":
            on_disk[name] = var.copy(data=var.values.astype(object))
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is not (yet) part of the v3 specification; readers
        # without it still read the store from the arrays' own metadata
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        on_disk.to_zarr(path, mode="w-", zarr_format=3, consolidated=True)


def open_results(path: str | Path) -> xr.Dataset:
    """Open the results of ``ftdyn analyze`` (the output folder or its results.zarr), loaded
    in memory."""
    path = Path(path)
    store = path / RESULTS_STORE if (path / RESULTS_STORE).exists() else path
    if not (store / "zarr.json").is_file():
        raise FtdynError(
            f"{path}: no ftdyn results here (expected {RESULTS_STORE}); run `ftdyn analyze` first."
        )
    try:
        ds = xr.open_zarr(store, zarr_format=3, consolidated=False).load()
        return validate_results(ds, str(path))
    except FtdynError:
        raise
    except (
        Exception
    ) as exc:  # any damage (bad JSON, missing or corrupt chunks, odd attributes) reads the same
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FtdynError(
            f"{path}: damaged results, cannot be read ({type(exc).__name__}: {detail}); re-run "
            "`ftdyn analyze` to rewrite them."
        ) from None


# ------------------------------------------------------------------ CSV tables
def _cell(value) -> str:
    """One CSV cell: floats at full precision, NaN as an empty cell."""
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else repr(float(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def _write_csv(path: Path, columns: tuple[str, ...], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[c]) for c in columns])


def _has_epoch(ds: xr.Dataset) -> np.ndarray:
    if "has_epoch" in ds:
        return np.asarray(ds["has_epoch"].values, dtype=bool)
    return np.isfinite(ds["distance"].values).any(axis=(1, 2))  # (experiment, epoch)


def _reliability_cells(ds: xr.Dataset):
    """A function of (experiment, metric, layer) positions giving the ``unreliable`` and
    ``reason`` cells of a row (reason empty where the value is reliable)."""
    mask, exps, metrics = unreliable(ds), ds["experiment"].values, ds["metric"].values
    layers = ds["layer"].values

    def cells(e: int, m: int, l: int) -> dict:
        if not mask[e, m, l]:
            return {"unreliable": False, "reason": ""}
        reason = unreliable_reason(ds, str(exps[e]), str(metrics[m]), str(layers[e, l]))
        return {"unreliable": True, "reason": reason}

    return cells


def distance_rows(ds: xr.Dataset):
    """Rows of ``distances.csv`` (dicts keyed by :data:`DISTANCE_COLUMNS`): one per
    experiment, layer, epoch of that experiment and metric; padding is skipped."""
    has = _has_epoch(ds)
    dist, lo, hi = ds["distance"].values, ds["ci_low"].values, ds["ci_high"].values
    nf, nn = ds["n_filters"].values, ds["n_nan"].values
    held = (
        ds["heldout_distance"].values if "heldout_distance" in ds else np.full(dist.shape, np.nan)
    )
    layers = ds["layer"].values
    marks = _reliability_cells(ds)
    for e, exp in enumerate(ds["experiment"].values):
        for l, index in enumerate(ds["layer_index"].values):
            if not str(layers[e, l]):
                continue
            for k, epoch in enumerate(ds["epoch"].values):
                if not has[e, k]:
                    continue
                for m, metric in enumerate(ds["metric"].values):
                    yield {
                        "experiment": exp,
                        "model": ds["model"].values[e],
                        "dataset": ds["dataset"].values[e],
                        "layer": layers[e, l],
                        "layer_index": int(index),
                        "epoch": int(epoch),
                        "metric": metric,
                        "view": ds["view"].values[m],
                        "value": float(dist[e, m, l, k]),
                        "ci_low": float(lo[e, m, l, k]),
                        "ci_high": float(hi[e, m, l, k]),
                        "heldout": float(held[e, m, l, k]),
                        "n_filters": int(nf[e, m, l]),
                        "n_nan": int(nn[e, m, l, k]),
                        **marks(e, m, l),
                    }


def reusability_rows(ds: xr.Dataset):
    for e, exp in enumerate(ds["experiment"].values):
        for m, metric in enumerate(ds["metric"].values):
            yield {
                "experiment": exp,
                "model": ds["model"].values[e],
                "dataset": ds["dataset"].values[e],
                "metric": metric,
                "mean": float(ds["reusability_mean"].values[e, m]),
                "std": float(ds["reusability_std"].values[e, m]),
            }


def agreement_rows(ds: xr.Dataset):
    """One row per experiment, layer and pair of distinct metrics (metric order)."""
    r = ds["agreement_r"].values
    n = ds["agreement_n"].values if "agreement_n" in ds else None
    metrics = list(ds["metric"].values)
    layers = ds["layer"].values
    for e, exp in enumerate(ds["experiment"].values):
        for l, index in enumerate(ds["layer_index"].values):
            if not str(layers[e, l]):
                continue
            for a in range(len(metrics)):
                for b in range(a + 1, len(metrics)):
                    yield {
                        "experiment": exp,
                        "model": ds["model"].values[e],
                        "dataset": ds["dataset"].values[e],
                        "layer": layers[e, l],
                        "layer_index": int(index),
                        "metric_a": metrics[a],
                        "metric_b": metrics[b],
                        "r": float(r[e, l, a, b]),
                        "n_epochs": int(n[e, l, a, b]) if n is not None else "",
                    }


def agreement_summary_rows(ds: xr.Dataset):
    """Mean ± std (ddof=0) of the finite r over all layers and experiments, per metric pair."""
    r = ds["agreement_r"].values
    metrics = list(ds["metric"].values)
    for a in range(len(metrics)):
        for b in range(a + 1, len(metrics)):
            vals = r[:, :, a, b]
            vals = vals[np.isfinite(vals)]
            yield {
                "metric_a": metrics[a],
                "metric_b": metrics[b],
                "mean_r": float(vals.mean()) if vals.size else float("nan"),
                "std_r": float(vals.std()) if vals.size else float("nan"),
                "n": int(vals.size),
            }


def relative_rows(ds: xr.Dataset):
    """Rows of ``relative_distances.csv``: like distances.csv (same rows), relative values."""
    rel, ceil = ds["relative_distance"].values, ds["ceiling"].values
    dlo, dhi = ds["delta_ci_low"].values, ds["delta_ci_high"].values
    index = {int(e): k for k, e in enumerate(ds["epoch"].values)}
    metrics = list(ds["metric"].values)
    for row in distance_rows(ds):
        e = list(ds["experiment"].values).index(row["experiment"])
        m, l, k = metrics.index(row["metric"]), row["layer_index"], index[row["epoch"]]
        yield {
            **row,
            "relative_distance": float(rel[e, m, l, k]),
            "ceiling": float(ceil[e, m, l]),
            "delta_ci_low": float(dlo[e, m, l, k]),
            "delta_ci_high": float(dhi[e, m, l, k]),
        }


def probe_rows(ds: xr.Dataset):
    """Rows of ``probes.csv``: one per experiment, layer and epoch of that experiment."""
    has, layers = _has_epoch(ds), ds["layer"].values
    acc, rand, chance = (
        ds["probe_accuracy"].values,
        ds["probe_accuracy_random_init"].values,
        ds["probe_chance"].values,
    )
    for e, exp in enumerate(ds["experiment"].values):
        for l, index in enumerate(ds["layer_index"].values):
            if not str(layers[e, l]):
                continue
            for k, epoch in enumerate(ds["epoch"].values):
                if has[e, k]:
                    yield {
                        "experiment": exp,
                        "model": ds["model"].values[e],
                        "dataset": ds["dataset"].values[e],
                        "layer": layers[e, l],
                        "layer_index": int(index),
                        "epoch": int(epoch),
                        "probe_accuracy": float(acc[e, l, k]),
                        "probe_accuracy_random_init": float(rand[e, l]),
                        "probe_chance": float(chance[e]),
                    }


def _last_epoch(ds: xr.Dataset, e: int) -> int:
    return int(np.flatnonzero(_has_epoch(ds)[e])[-1])


def layer_order_rows(ds: xr.Dataset):
    """Rows of ``layer_order.csv``: every ordered pair of distinct layers, last-epoch distances and
    the paired bootstrap p-value (empty without --bootstrap)."""
    p, dist, layers = ds["layer_order_p"].values, ds["distance"].values, ds["layer"].values
    for e, exp in enumerate(ds["experiment"].values):
        k = _last_epoch(ds, e)
        for m, metric in enumerate(ds["metric"].values):
            for a in range(layers.shape[1]):
                for b in range(layers.shape[1]):
                    if a != b and str(layers[e, a]) and str(layers[e, b]):
                        yield {
                            "experiment": exp,
                            "metric": metric,
                            "layer": layers[e, a],
                            "layer_index": a,
                            "layer_other": layers[e, b],
                            "layer_index_other": b,
                            "distance": float(dist[e, m, a, k]),
                            "distance_other": float(dist[e, m, b, k]),
                            "p": float(p[e, m, a, b]),
                        }


def convergence_rows(ds: xr.Dataset):
    """Rows of ``convergence.csv``: the last epoch's distance per nested image fraction."""
    conv, ok, need, layers = (
        ds["convergence"].values,
        ds["converged"].values,
        ds["images_needed"].values,
        ds["layer"].values,
    )
    marks = _reliability_cells(ds)
    for e, exp in enumerate(ds["experiment"].values):
        for m, metric in enumerate(ds["metric"].values):
            for l in range(layers.shape[1]):
                if not str(layers[e, l]):
                    continue
                for f, fraction in enumerate(ds["fraction"].values):
                    yield {
                        "experiment": exp,
                        "metric": metric,
                        "layer": layers[e, l],
                        "layer_index": l,
                        "fraction": float(fraction),
                        "distance": float(conv[e, m, l, f]),
                        "converged": bool(ok[e, m, l]),
                        "images_needed": float(need[e, m, l]),
                        **marks(e, m, l),
                    }


def floor_rows(ds: xr.Dataset):
    """Rows of ``floor.csv``: like distances.csv (same rows), the seed floor, the drift above it,
    its p-value and the layer's departure epoch (no rows in results written without them)."""
    if "floor" not in ds:
        return
    metrics, epochs = list(ds["metric"].values), [int(x) for x in ds["epoch"].values]
    names = list(ds["experiment"].values)
    columns = {
        "floor": "floor",
        "floor_ci_low": "floor_ci_low",
        "floor_ci_high": "floor_ci_high",
        "drift_above_floor": "drift_above_floor",
        "p": "drift_above_floor_p",
    }
    values = {column: ds[name].values for column, name in columns.items()}
    departure, groups = ds["departure_epoch"].values, ds["replicates"].values
    for row in distance_rows(ds):
        e, m, l = names.index(row["experiment"]), metrics.index(row["metric"]), row["layer_index"]
        k = epochs.index(row["epoch"])
        yield {
            **{key: row[key] for key in ("experiment", "layer", "layer_index", "epoch", "metric")},
            "replicates": str(groups[e]),
            "distance": row["value"],
            **{column: float(v[e, m, l, k]) for column, v in values.items()},
            "departure_epoch": float(departure[e, m, l]),
            "unreliable": row["unreliable"],
            "reason": row["reason"],
        }


def run_rows(ds: xr.Dataset):
    """Rows of ``runs.csv``: every pair of runs compared (each order once: experiment before
    experiment_other), layer, epoch and metric (no rows in results written without them)."""
    if "run_distance" not in ds:
        return
    value, low, high = (ds[k].values for k in ("run_distance", "run_ci_low", "run_ci_high"))
    names, layers = list(ds["experiment"].values), ds["layer"].values
    for a, b in zip(*np.nonzero(np.isfinite(value).any(axis=(2, 3, 4))), strict=True):
        if a >= b:
            continue
        for l in range(layers.shape[1]):
            for k, epoch in enumerate(ds["epoch"].values):
                for m, metric in enumerate(ds["metric"].values):
                    if np.isnan(value[a, b, m, l, k]) and np.isnan(value[a, b, :, l, k]).all():
                        continue
                    yield {
                        "experiment": names[a],
                        "experiment_other": names[b],
                        "layer": layers[a, l],
                        "layer_index": l,
                        "epoch": int(epoch),
                        "metric": metric,
                        "run_distance": float(value[a, b, m, l, k]),
                        "ci_low": float(low[a, b, m, l, k]),
                        "ci_high": float(high[a, b, m, l, k]),
                    }


#: Every CSV table of a result set: (file name, columns, row builder). The analysis writes
#: all of them, always (a quantity that was not computed, e.g. no random-init baseline in
#: the store or no bootstrap, is an empty cell = NaN).
TABLES = (
    ("distances.csv", DISTANCE_COLUMNS, distance_rows),
    ("reusability.csv", REUSABILITY_COLUMNS, reusability_rows),
    ("agreement.csv", AGREEMENT_COLUMNS, agreement_rows),
    ("agreement_summary.csv", AGREEMENT_SUMMARY_COLUMNS, agreement_summary_rows),
    ("relative_distances.csv", RELATIVE_COLUMNS, relative_rows),
    ("probes.csv", PROBE_COLUMNS, probe_rows),
    ("layer_order.csv", LAYER_ORDER_COLUMNS, layer_order_rows),
    ("convergence.csv", CONVERGENCE_COLUMNS, convergence_rows),
    ("floor.csv", FLOOR_COLUMNS, floor_rows),
    ("runs.csv", RUN_COLUMNS, run_rows),
)
TABLE_NAMES = tuple(name for name, _, _ in TABLES)


def write_tables(ds: xr.Dataset, out_dir: str | Path) -> list[Path]:
    """Write every table of :data:`TABLES` into ``out_dir`` (columns exactly as the tuples
    above; empty cell = NaN, e.g. no bootstrap interval); returns their paths."""
    out_dir = Path(out_dir)
    paths = []
    for name, columns, rows in TABLES:
        _write_csv(out_dir / name, columns, rows(ds))
        paths.append(out_dir / name)
    return paths
