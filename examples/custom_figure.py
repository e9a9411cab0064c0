"""Open ftdyn results in Python with xarray and draw your own figure.

``ftdyn analyze`` writes ``results.zarr``: one xarray Dataset (schema in
``ftdyn/results.py``). The main variables::

    distance         (experiment, metric, layer_index, epoch)   distance from epoch 0
    filter_distance  (experiment, metric, layer_index, epoch, filter)  per-filter S_l
    trajectory       (experiment, metric, layer_index, epoch, epoch_other)
    reusability_mean (experiment, metric)                       the paper's Table 2

``layer`` (experiment, layer_index) names the layers (``""`` where an experiment has
fewer layers than another); ``layer_index`` 0 is the shallowest. Epochs are the union
over experiments (NaN where one has none); ``filter`` is padded to the widest layer
(``n_filters`` gives each layer's width).

This script draws two panels and saves a PNG::

    python examples/custom_figure.py --results paper-run/results --out drift.png

1. per experiment, the distance from the source over epochs of the shallowest
   (dashed) and the deepest (solid) layer: the paper's "early layers stay close";
2. the histogram of per-filter distances of each experiment's deepest layer at its
   last epoch (a per-filter metric: procrustes or cka in the default preset).

Opening the results yourself (``ftdyn.open_results`` validates the schema and loads
it in memory; plain xarray works as well)::

    import ftdyn, xarray as xr
    ds = ftdyn.open_results("paper-run/results")
    ds = xr.open_zarr("paper-run/results/results.zarr", zarr_format=3, consolidated=False)
    ds["distance"].sel(metric="pwsm").to_dataframe().dropna()
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

import ftdyn
from ftdyn.errors import FtdynError


def layer_range(ds, experiment: str) -> tuple[int, str, int, str]:
    """(index, name) of the shallowest and of the deepest layer of ``experiment``."""
    names = [str(v) for v in ds["layer"].sel(experiment=experiment).values]
    present = [i for i, n in enumerate(names) if n]
    return present[0], names[present[0]], present[-1], names[present[-1]]


def per_filter_metric(ds, wanted: str | None) -> str | None:
    """``wanted`` if it has per-filter values, else the first metric that has them."""
    metrics = [str(m) for m in ds["metric"].values]
    has = [m for m in metrics if np.isfinite(ds["filter_distance"].sel(metric=m).values).any()]
    if wanted is not None:
        if wanted not in metrics:
            raise FtdynError(
                f"--hist-metric: '{wanted}' is not in the results ({', '.join(metrics)})."
            )
        if wanted not in has:
            raise FtdynError(
                f"--hist-metric: '{wanted}' has no per-filter values (its view is"
                f" {ds['view'].sel(metric=wanted).item()}); choose one of:"
                f" {', '.join(has) or 'none'}."
            )
        return wanted
    return has[0] if has else None


def draw(ds, out: Path, metric: str | None = None, hist_metric: str | None = None) -> Path:
    metrics = [str(m) for m in ds["metric"].values]
    metric = metric or metrics[0]
    if metric not in metrics:
        raise FtdynError(f"--metric: '{metric}' is not in the results ({', '.join(metrics)}).")
    hist_metric = per_filter_metric(ds, hist_metric)

    experiments = [str(e) for e in ds["experiment"].values]
    colors = matplotlib.colormaps["tab10"](np.arange(len(experiments)) % 10)
    fig, axes = plt.subplots(
        1, 2 if hist_metric else 1, figsize=(12 if hist_metric else 6.5, 4.4), squeeze=False
    )
    ax = axes[0, 0]
    dist = ds["distance"].sel(metric=metric)
    epochs = ds["epoch"].values
    for color, exp in zip(colors, experiments, strict=True):
        lo, lo_name, hi, hi_name = layer_range(ds, exp)
        for index, name, style in ((lo, lo_name, "--"), (hi, hi_name, "-")):
            y = dist.sel(experiment=exp, layer_index=index).values
            ok = np.isfinite(y)
            ax.plot(epochs[ok], y[ok], style, marker="o", ms=3, color=color, label=f"{exp}: {name}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(
        f"{metric} distance from epoch {ds.attrs.get('reference_epoch', 0)} "
        f"({ds['view'].sel(metric=metric).item()} view)"
    )
    ax.set_title("shallowest (dashed) vs deepest (solid) layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    if hist_metric:
        ax = axes[0, 1]
        fd = ds["filter_distance"].sel(metric=hist_metric)
        for color, exp in zip(colors, experiments, strict=True):
            _, _, hi, hi_name = layer_range(ds, exp)
            per_epoch = fd.sel(experiment=exp, layer_index=hi)
            has = np.isfinite(per_epoch.values).any(axis=1)
            if not has.any():
                continue
            last = epochs[has][-1]
            values = per_epoch.sel(epoch=last).values
            values = values[np.isfinite(values)]  # padding and dead filters are NaN
            ax.hist(
                values,
                bins=np.linspace(0, max(1e-9, np.nanmax(fd.values)), 31),
                histtype="step",
                linewidth=1.8,
                color=color,
                label=f"{exp}: {hi_name}, epoch {last}",
            )
        ax.set_xlabel(
            f"{hist_metric} distance per filter ({ds['view'].sel(metric=hist_metric).item()} view)"
        )
        ax.set_ylabel("filters")
        ax.set_title("deepest layer at the last epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", type=Path, required=True, help="folder written by ftdyn analyze")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument(
        "--metric", default=None, help="metric of the curves (default: the first in the results)"
    )
    p.add_argument(
        "--hist-metric",
        default=None,
        help="per-filter metric of the histogram (default: the first one with per-filter values)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ds = ftdyn.open_results(args.results)
        path = draw(ds, args.out, args.metric, args.hist_metric)
    except FtdynError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # a number to go with the picture: how much more the deepest layer moved than the shallowest
    metric = args.metric or str(ds["metric"].values[0])
    dist = ds["distance"].sel(metric=metric)
    for exp in [str(e) for e in ds["experiment"].values]:
        lo, lo_name, hi, hi_name = layer_range(ds, exp)
        d = dist.sel(experiment=exp)
        finite = d.epoch.values[np.isfinite(d.sel(layer_index=hi).values)]
        if not finite.size:
            continue
        last = finite[-1]
        print(
            f"{exp}: {metric} at epoch {last}: {lo_name}"
            f" {d.sel(layer_index=lo, epoch=last).item():.4f}, {hi_name}"
            f" {d.sel(layer_index=hi, epoch=last).item():.4f}"
        )
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
