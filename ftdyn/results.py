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
    attrs     ftdyn_results_format, ftdyn_version, reference_epoch, preset,
              bootstrap, seed, arguments (JSON), created

CSV tables beside it (columns are part of the contract, documented in the README):
``distances.csv``, ``reusability.csv``, ``agreement.csv``, ``agreement_summary.csv``.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ._version import __version__
from .errors import FtdynError

RESULTS_FORMAT = 1
RESULTS_STORE = "results.zarr"
DISTANCE_COLUMNS = ("experiment", "model", "dataset", "layer", "layer_index", "epoch", "metric", "view",
                    "value", "ci_low", "ci_high", "n_filters", "n_nan")
REUSABILITY_COLUMNS = ("experiment", "model", "dataset", "metric", "mean", "std")
AGREEMENT_COLUMNS = ("experiment", "model", "dataset", "layer", "layer_index", "metric_a", "metric_b", "r", "n_epochs")
AGREEMENT_SUMMARY_COLUMNS = ("metric_a", "metric_b", "mean_r", "std_r", "n")

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
REQUIRED_COORDS = ("experiment", "model", "dataset", "store", "metric", "view", "alpha", "layer_index", "layer",
                   "epoch", "epoch_other")
REQUIRED_ATTRS = ("ftdyn_results_format", "ftdyn_version", "reference_epoch", "preset", "bootstrap", "arguments")


def validate_results(ds: xr.Dataset, source: str = "results") -> xr.Dataset:
    """Check a results Dataset against the schema above; raise FtdynError naming what is wrong."""
    missing = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise FtdynError(f"{source}: not ftdyn results (attributes missing: {', '.join(missing)}).")
    if ds.attrs["ftdyn_results_format"] != RESULTS_FORMAT:
        raise FtdynError(f"{source}: results format {ds.attrs['ftdyn_results_format']} from ftdyn "
                         f"{ds.attrs['ftdyn_version']}; this ftdyn {__version__} reads format {RESULTS_FORMAT}. "
                         "Re-run `ftdyn analyze`.")
    for name in REQUIRED_COORDS:
        if name not in ds.coords:
            raise FtdynError(f"{source}: damaged results, coordinate '{name}' missing.")
    for name, dims in REQUIRED_VARS.items():
        if name not in ds.data_vars or ds[name].dims != dims:
            raise FtdynError(f"{source}: damaged results, variable '{name}' missing or not {dims}.")
    return ds


def open_results(path: str | Path) -> xr.Dataset:
    """Open the results of ``ftdyn analyze`` (the output folder or its results.zarr), loaded in memory."""
    path = Path(path)
    store = path / RESULTS_STORE if (path / RESULTS_STORE).exists() else path
    if not (store / "zarr.json").is_file():
        raise FtdynError(f"{path}: no ftdyn results here (expected {RESULTS_STORE}); run `ftdyn analyze` first.")
    ds = xr.open_zarr(store, zarr_format=3, consolidated=False).load()
    return validate_results(ds, str(path))
