"""Figures of :mod:`ftdyn.analysis.interpret`: relative distances, linear probes, convergence.

* ``relative_curves.{png,svg}``: relative distance (distance / random-init ceiling) vs epoch,
  rows = experiments, columns = metrics, lines = layers; a hollow marker where the step from
  the previous epoch is not distinguishable from 0 (its paired 95 % interval contains 0).
* ``probe_accuracy.{png,svg}``: linear-probe accuracy vs epoch, one panel per experiment, lines
  = layers; dotted: chance; crosses at the left: the random-init network's accuracy.
* ``convergence.{png,svg}``: the last epoch's distance vs the number of probe images (nested
  subsets), rows = experiments, columns = metrics; dashed = not converged.

In all three a layer whose value cannot be trusted at its view's shape (``unreliable``) is drawn
grey and dashed with hollow markers (:func:`ftdyn.viz.curves.unreliable_style`), never as an
ordinary line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .curves import (
    UNRELIABLE_NOTE,
    _legend,
    as_strings,
    experiment_epochs,
    experiment_layers,
    layer_colors,
    metric_label,
    unreliable_layers,
    unreliable_style,
)
from .figure import record, save_figure


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid(rows: int, cols: int, sharey: str | bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.8 + 3.6 * cols, 0.8 + 2.6 * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, sharex=False, sharey=sharey)


def _save(fig, out: Path, stem: str) -> list[Path]:
    return [save_figure(fig, out / f"{stem}.png"), save_figure(fig, out / f"{stem}.svg")]


def plot_relative(results, out: Path) -> list[Path]:
    exps, metrics = as_strings(results["experiment"].values), as_strings(results["metric"].values)
    epochs = np.asarray(results["epoch"].values)
    fig, axes = _grid(len(exps), len(metrics), sharey="col")
    for r, exp in enumerate(exps):
        layers = experiment_layers(results, exp)
        has = experiment_epochs(results, exp)
        for m, metric in enumerate(metrics):
            ax = axes[r, m]
            sel = dict(experiment=exp, metric=metric)
            odd = unreliable_layers(results, exp, metric)
            for (li, name), color in zip(layers, layer_colors(len(layers)), strict=True):
                y = np.asarray(
                    results["relative_distance"].sel(**sel, layer_index=li).values, float
                )
                lo = np.asarray(results["delta_ci_low"].sel(**sel, layer_index=li).values, float)
                hi = np.asarray(results["delta_ci_high"].sel(**sel, layer_index=li).values, float)
                ok = np.isfinite(y)
                if not ok.any():
                    continue
                if li in odd:  # no step markers: a step of an untrusted value says nothing
                    style = unreliable_style(color)
                    ax.plot(epochs[has], y[has], marker="o", linewidth=1.2, label=name, **style)
                    continue
                ax.plot(epochs[has], y[has], linewidth=1.4, color=color, label=name)
                flat = ok & np.isfinite(lo) & (lo <= 0) & (hi >= 0)
                ax.plot(epochs[ok & ~flat], y[ok & ~flat], "o", markersize=3, color=color)
                ax.plot(
                    epochs[flat], y[flat], "o", markersize=4, markerfacecolor="white", color=color
                )
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            _integer_epochs(ax)
            ax.grid(True, linewidth=0.4, alpha=0.5)
            ax.tick_params(labelsize=8)
            if r == 0:
                ax.set_title(metric_label(results, metric), fontsize=9)
            if m == 0:
                ax.set_ylabel(f"{exp}\ndistance / random-init ceiling", fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
        if layers:
            _legend(axes[r, -1], "layer (shallow → deep)", others=axes[r, :-1])
    fig.suptitle(
        "Relative distance: 0 = unchanged, 1 = as far as an untrained network", fontsize=10
    )
    return _save(fig, out, "relative_curves")


def plot_probes(results, out: Path) -> list[Path]:
    exps = as_strings(results["experiment"].values)
    epochs = np.asarray(results["epoch"].values)
    fig, axes = _grid(1, len(exps), sharey=True)
    for c, exp in enumerate(exps):
        ax = axes[0, c]
        layers = experiment_layers(results, exp)
        for (li, name), color in zip(layers, layer_colors(len(layers)), strict=True):
            y = np.asarray(
                results["probe_accuracy"].sel(experiment=exp, layer_index=li).values, float
            )
            ok = np.isfinite(y)
            if ok.any():
                ax.plot(
                    epochs[ok],
                    y[ok],
                    marker="o",
                    markersize=2.5,
                    linewidth=1.4,
                    color=color,
                    label=name,
                )
            rand = float(
                results["probe_accuracy_random_init"].sel(experiment=exp, layer_index=li).values
            )
            if np.isfinite(rand):
                ax.plot([epochs.min() - 0.4], [rand], "x", color=color, markersize=5)
        chance = float(results["probe_chance"].sel(experiment=exp).values)
        if np.isfinite(chance):
            ax.axhline(chance, color="grey", linewidth=0.8, linestyle=":", label="chance")
        ax.set_title(exp, fontsize=9)
        ax.set_xlabel("epoch (x: random init)", fontsize=8)
        ax.set_ylim(0, 1.02)
        _integer_epochs(ax)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.tick_params(labelsize=8)
        _legend(ax, "layer (shallow → deep)")
    axes[0, 0].set_ylabel("linear-probe accuracy (cross-validated)", fontsize=8)
    fig.suptitle("Target-class information in each layer's pooled activations", fontsize=10)
    return _save(fig, out, "probe_accuracy")


def plot_convergence(results, out: Path) -> list[Path]:
    exps, metrics = as_strings(results["experiment"].values), as_strings(results["metric"].values)
    fractions = np.asarray(results["fraction"].values, float)
    fig, axes = _grid(len(exps), len(metrics))
    for r, exp in enumerate(exps):
        layers = experiment_layers(results, exp)
        for m, metric in enumerate(metrics):
            ax = axes[r, m]
            odd = unreliable_layers(results, exp, metric)
            for (li, name), color in zip(layers, layer_colors(len(layers)), strict=True):
                sel = dict(experiment=exp, metric=metric, layer_index=li)
                y = np.asarray(results["convergence"].sel(**sel).values, float)
                if not np.isfinite(y).any():
                    continue
                if li in odd:
                    style = unreliable_style(color)
                else:
                    converged = bool(results["converged"].sel(**sel).values)
                    style = dict(color=color, linestyle="-" if converged else "--")
                ax.plot(fractions, y, marker="o", markersize=3, linewidth=1.3, label=name, **style)
            ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
            ax.grid(True, linewidth=0.4, alpha=0.5)
            ax.tick_params(labelsize=8)
            ax.set_xlabel("fraction of the probe images (nested subsets)", fontsize=8)
            if r == 0:
                ax.set_title(metric_label(results, metric), fontsize=9)
            if m == 0:
                ax.set_ylabel(f"{exp}\ndistance at the last epoch", fontsize=8)
        if layers:
            _legend(axes[r, -1], "layer (dashed: not converged)", others=axes[r, :-1])
    fig.suptitle(
        "Is the probe set large enough? The last epoch's distance on 1/4, 1/2 and all images",
        fontsize=10,
    )
    return _save(fig, out, "convergence")


def plot_all(results, out: str | Path) -> list[Path]:
    """The three figures, recorded with captions in ``out/figures.json`` (nothing when the results
    predate the interpretation variables)."""
    if "relative_distance" not in results:
        return []
    out = Path(out)
    tol = results.attrs.get("convergence_tolerance", 0.02)
    boot = results.attrs.get("bootstrap") or 0
    relative = (
        "Distance from the reference divided by the distance between the reference and a randomly"
        " initialized network of the same architecture on the same probe images, metric and view"
        " (ftdyn extract --random-init-baseline): 0 = unchanged, 1 (dashed) = as far as a network"
        " that learned nothing. "
        + (
            "Hollow markers: the step from the previous epoch is not distinguishable from 0"
            f" (paired bootstrap, {boot} resamples of the images shared by every epoch and layer;"
            " 95 % interval contains 0)."
            if boot
            else "No bootstrap: steps are not tested (analyze with --bootstrap N)."
        )
        + f" {results.attrs.get('relative_note', '')}. Lines: {UNRELIABLE_NOTE}"
    )
    probes = (
        "Cross-validated accuracy (stratified 5-fold by image, seeded) of a ridge classifier of the"
        " probe images' class labels from each layer's spatially pooled, standardized activations"
        " (images × channels). Dotted: chance (the most frequent class's share); crosses: the"
        " random-init network. Read it beside the distance curves: a layer that drifts while its"
        " accuracy rises re-shapes its features toward the target classes; a drifting layer whose"
        " accuracy stays flat only re-weights them."
    )
    convergence = (
        "The distance between the reference and the last epoch on nested, seeded subsets of the"
        " probe images (1/4, 1/2, all; the same streamed statistics). A flat curve: the probe set"
        " is large enough. Dashed: not converged (the change from 1/2 to all exceeds both its"
        " noise, the bootstrap half-width or else the spread the subsets imply, and"
        f" {tol:.0%} of the random-init ceiling, else of the metric's range); convergence.csv"
        " gives the images such a layer would need, taking the change as proportional to"
        f" 1/images. {UNRELIABLE_NOTE}"
    )
    figures = (
        (plot_relative, "relative", "Relative distance to a random-init ceiling", relative),
        (plot_probes, "probes", "Linear-probe accuracy per layer and epoch", probes),
        (
            plot_convergence,
            "convergence",
            "Convergence of the distances with the number of probe images",
            convergence,
        ),
    )
    written, entries = [], []
    for plot, kind, title, caption in figures:
        paths = plot(results, out)
        written += paths
        entries.append(
            {
                "file": paths[0].name,
                "formats": [paths[1].name],
                "kind": kind,
                "title": title,
                "caption": caption,
            }
        )
    record(out, entries)
    return written
