"""Distance curves (paper Figs. 2–4) and checkpoint x checkpoint matrices, from results.

* :func:`plot_curves` — ``distance_curves.{png,svg}``: one row per experiment, one
  panel per metric (y shared per metric so experiments compare), distance from the
  reference epoch vs epoch, one line per layer coloured shallow (dark) -> deep
  (light) with viridis, bootstrap bands when computed.
* :func:`plot_by_layer` — ``distance_by_layer.{png,svg}``: one panel per metric,
  distance at the last epoch vs layer depth, one line per experiment (tab10).
* :func:`plot_trajectory` — ``trajectory_<experiment>_<metric>.png``: the
  checkpoint x checkpoint distance matrix of every layer, one shared colour scale
  per figure.
* :func:`plot_all` — all three, recorded with captions in ``figures.json``.

A value that cannot be trusted at its view's shape (the results' ``unreliable``) is never an
ordinary point: grey dashed segments and hollow markers (:func:`unreliable_style`), with a legend
entry "unreliable (see report)"; a NaN is a gap.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..results import unreliable
from .figure import record, save_figure, slug

LAYER_CMAP = "viridis"
MATRIX_CMAP = "viridis"
EXPERIMENT_CMAP = "tab10"
MAX_MATRIX_COLUMNS = 6
#: how a value that cannot be trusted at its view's shape is drawn (:func:`unreliable_style`)
UNRELIABLE_COLOR = "0.6"
UNRELIABLE_LABEL = "unreliable (see report)"
UNRELIABLE_GID = "unreliable"
UNRELIABLE_NOTE = (
    "grey dashed with hollow markers: a value that cannot be trusted at its view's shape"
    " (degenerate, or too many columns per row for the estimator; the report says why), with a"
    " dotted bar up to its held-out value where it has one (the two bracket the population"
    " distance); a gap: no value."
)


def unreliable_style(color) -> dict:
    """Line keywords of a value that cannot be trusted at its view's shape: a grey dashed line
    and hollow markers edged in the series' own colour, never an ordinary point."""
    return dict(
        color=UNRELIABLE_COLOR,
        linestyle="--",
        markerfacecolor="none",
        markeredgecolor=color,
        gid=UNRELIABLE_GID,
    )


def heldout_values(results, exp: str, metric: str, layer_index: int) -> np.ndarray:
    """(epoch,) held-out distances of one layer (NaN where it has none, and in results without
    the ``heldout_distance`` variable)."""
    if "heldout_distance" not in results:
        return np.full(results.sizes["epoch"], np.nan)
    held = results["heldout_distance"].sel(experiment=exp, metric=metric, layer_index=layer_index)
    return np.asarray(held.values, dtype=float)


def draw_brackets(ax, x, low, high, color) -> None:
    """Dotted bars from each unreliable value ``low`` to its held-out value ``high`` (the bias
    bracket of :mod:`ftdyn.metrics.heldout`), where both are finite."""
    x, low, high = (np.asarray(a, dtype=float) for a in (x, low, high))
    keep = np.isfinite(low) & np.isfinite(high)
    if keep.any():
        ax.vlines(
            x[keep],
            low[keep],
            high[keep],
            colors=color,
            linestyles=":",
            linewidth=1.0,
            gid=UNRELIABLE_GID,
        )


def _legend(ax, title: str, others=()) -> None:
    """A legend right of ``ax`` of the labeled lines of ``ax`` and ``others`` (one entry per
    label, in its ordinary style where it has one), when there are any (all-NaN curves, e.g. an
    undefined metric, draw none); plus the unreliable style's entry when one of them uses it."""
    from matplotlib.lines import Line2D

    entries: dict[str, object] = {}
    marked = False
    for axis in (*others, ax):
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            odd = handle.get_gid() == UNRELIABLE_GID
            marked |= odd
            if label not in entries or (not odd and entries[label].get_gid() == UNRELIABLE_GID):
                entries[label] = handle
        marked |= any(line.get_gid() == UNRELIABLE_GID for line in axis.lines)
    if not entries:
        return
    handles, labels = list(entries.values()), list(entries)
    if marked:
        handles.append(
            Line2D([], [], marker="o", markersize=4, **unreliable_style(UNRELIABLE_COLOR))
        )
        labels.append(UNRELIABLE_LABEL)
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7,
        frameon=False,
        title=title,
        title_fontsize=7,
    )


def unreliable_layers(results, experiment: str, metric: str) -> set[int]:
    """The layer indices whose value of ``metric`` cannot be trusted (none in results without the
    ``unreliable`` variable)."""
    e = as_strings(results["experiment"].values).index(experiment)
    m = as_strings(results["metric"].values).index(metric)
    return {int(i) for i in np.flatnonzero(unreliable(results)[e, m])}


def experiment_epochs(results, experiment: str) -> np.ndarray:
    """(epoch,) bool: the epochs the experiment has (any finite distance); a NaN at one of them
    is a gap in its curves, an epoch it lacks is not."""
    d = np.asarray(results["distance"].sel(experiment=experiment).values, dtype=float)
    return np.isfinite(d).any(axis=(0, 1))


def as_strings(values) -> list[str]:
    """Coordinate values (numpy strings or objects) as a list of Python strings."""
    return [str(v) for v in np.asarray(values).tolist()]


def metric_label(results, metric: str) -> str:
    """``"pwsm (alpha=0, view channels)"``-style description of a metric."""
    view = str(results["view"].sel(metric=metric).values)
    alpha = float(results["alpha"].sel(metric=metric).values)
    extra = [] if math.isnan(alpha) else [f"alpha={alpha:g}"]
    return f"{metric} ({', '.join([*extra, f'view {view}'])})"


def experiment_layers(results, experiment: str) -> list[tuple[int, str]]:
    """(layer_index, layer name) of an experiment, shallow -> deep (padding excluded)."""
    names = as_strings(results["layer"].sel(experiment=experiment).values)
    return [(int(i), n) for i, n in zip(results["layer_index"].values, names, strict=True) if n]


def layer_colors(n: int) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps[LAYER_CMAP](np.linspace(0.0, 0.85, max(n, 1)))[:n]


def _settings(results) -> str:
    a = results.attrs
    boot = a.get("bootstrap")
    boot_txt = (
        f"shaded bands: bootstrap intervals over probe images ({boot} resamples)"
        if boot not in (None, 0, False, "0", "none")
        else "no bootstrap (no intervals)"
    )
    return f"Reference epoch {a.get('reference_epoch')}; preset {a.get('preset')}; {boot_txt}."


def plot_curves(results, out: str | Path) -> list[Path]:
    """Distance vs epoch, rows = experiments, columns = metrics, lines = layers. PNG + SVG."""
    fig = curves_figure(results)
    out = Path(out)
    return [
        save_figure(fig, out / "distance_curves.png"),
        save_figure(fig, out / "distance_curves.svg"),
    ]


def curves_figure(results):
    """The figure of :func:`plot_curves`; an unreliable layer's curve in
    :func:`unreliable_style`, a NaN at an epoch of the experiment a gap."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    exps = as_strings(results["experiment"].values)
    metrics = as_strings(results["metric"].values)
    epochs = np.asarray(results["epoch"].values)
    ref = results.attrs.get("reference_epoch")
    R, M = len(exps), len(metrics)
    fig = Figure(figsize=(1.8 + 3.6 * M, 0.8 + 2.6 * R), layout="constrained")
    axes = fig.subplots(R, M, squeeze=False, sharex=True, sharey="col")
    for r, exp in enumerate(exps):
        layers = experiment_layers(results, exp)
        colors = layer_colors(len(layers))
        has = experiment_epochs(results, exp)
        for m, metric in enumerate(metrics):
            ax = axes[r, m]
            d = results["distance"].sel(experiment=exp, metric=metric)
            lo = results["ci_low"].sel(experiment=exp, metric=metric)
            hi = results["ci_high"].sel(experiment=exp, metric=metric)
            odd = unreliable_layers(results, exp, metric)
            for (li, name), color in zip(layers, colors, strict=True):
                y = np.asarray(d.sel(layer_index=li).values, dtype=float)
                ok = np.isfinite(y)
                if not ok.any():
                    continue
                style = unreliable_style(color) if li in odd else dict(color=color)
                ax.plot(
                    epochs[has],
                    y[has],
                    marker="o",
                    markersize=2.5,
                    linewidth=1.4,
                    label=name,
                    **style,
                )
                if li in odd:
                    held = heldout_values(results, exp, metric, li)
                    draw_brackets(ax, epochs[has], y[has], held[has], color)
                yl = np.asarray(lo.sel(layer_index=li).values, dtype=float)
                yh = np.asarray(hi.sel(layer_index=li).values, dtype=float)
                band = ok & np.isfinite(yl) & np.isfinite(yh) & (li not in odd)
                if band.any():
                    ax.fill_between(
                        epochs[band], yl[band], yh[band], color=color, alpha=0.2, linewidth=0
                    )
            ax.grid(True, linewidth=0.4, alpha=0.5)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == 0:
                ax.set_title(metric_label(results, metric), fontsize=9)
            if r == R - 1:
                ax.set_xlabel("epoch", fontsize=8)
            if m == 0:
                ax.set_ylabel(f"{exp}\ndistance from epoch {ref}", fontsize=8)
        if layers:
            _legend(axes[r, -1], "layer (shallow → deep)", others=axes[r, :-1])
    fig.suptitle("Distance from the reference checkpoint during fine-tuning", fontsize=10)
    return fig


def _last_finite(values: np.ndarray) -> int | None:
    idx = np.flatnonzero(np.isfinite(values))
    return int(idx[-1]) if len(idx) else None


def _last_epoch_points(results, exp: str, metric: str, layers, same: bool):
    """Per layer: x position, distance, CI and epoch at its last finite one (NaN, a gap in the
    line, for a layer without any), and whether the value is unreliable."""
    epochs = np.asarray(results["epoch"].values)
    d = results["distance"].sel(experiment=exp, metric=metric)
    odd = unreliable_layers(results, exp, metric)
    xs, ys, los, his, last, flags, held = [], [], [], [], [], [], []
    for k, (li, _) in enumerate(layers):
        y = np.asarray(d.sel(layer_index=li).values, dtype=float)
        t = _last_finite(y)
        xs.append(k if same else (k / max(len(layers) - 1, 1)))
        flags.append(li in odd)
        if t is None:
            ys += [np.nan]
            los += [np.nan]
            his += [np.nan]
            held += [np.nan]
            continue
        ys.append(y[t])
        held.append(heldout_values(results, exp, metric, li)[t] if li in odd else np.nan)
        los.append(
            float(results["ci_low"].sel(experiment=exp, metric=metric, layer_index=li).values[t])
        )
        his.append(
            float(results["ci_high"].sel(experiment=exp, metric=metric, layer_index=li).values[t])
        )
        last.append(int(epochs[t]))
    return xs, ys, los, his, last, flags, held


def _plot_layer_curve(ax, exp: str, color, xs, ys, los, his, last, flags, held) -> None:
    """One experiment's distance-by-layer line, with its CI band where both ends are finite; an
    unreliable layer's point hollow, the segments to it in :func:`unreliable_style` and a bar to
    its held-out value (:func:`draw_brackets`)."""
    ep = sorted(set(last))
    xs, ys, flags = np.array(xs, dtype=float), np.array(ys, dtype=float), np.array(flags)
    ax.plot(
        xs,
        np.where(flags, np.nan, ys),
        marker="o",
        markersize=3.5,
        linewidth=1.5,
        color=color,
        label=f"{exp} (epoch {'/'.join(map(str, ep))})",
    )
    for k in np.flatnonzero(flags):
        near = slice(max(k - 1, 0), k + 2)
        ax.plot(
            xs[near],
            np.where(np.arange(len(xs))[near] == k, ys[near], np.where(flags, np.nan, ys)[near]),
            marker="o",
            markersize=3.5,
            linewidth=1.2,
            markevery=[int(k - near.start)],
            **unreliable_style(color),
        )
    draw_brackets(ax, xs, ys, held, color)
    los, his = np.array(los), np.array(his)
    band = np.isfinite(los) & np.isfinite(his) & ~flags
    if band.any():
        ax.fill_between(
            np.array(xs)[band],
            los[band],
            his[band],
            color=color,
            alpha=0.2,
            linewidth=0,
        )


def _style_layer_panel(ax, results, metric: str, names: list[str] | None, first: bool) -> None:
    """Title, grid and axis labels; layer names on x when all experiments share them."""
    ax.set_title(metric_label(results, metric), fontsize=9)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.tick_params(labelsize=8)
    if names is not None:
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("layer (shallow → deep)", fontsize=8)
    else:
        ax.set_xlabel("relative depth (0 = shallowest layer, 1 = deepest)", fontsize=8)
    if first:
        ax.set_ylabel(f"distance from epoch {results.attrs.get('reference_epoch')}", fontsize=8)


def plot_by_layer(results, out: str | Path) -> list[Path]:
    """Distance at each experiment's last epoch vs layer depth, one panel per metric. PNG + SVG."""
    fig = by_layer_figure(results)
    out = Path(out)
    return [
        save_figure(fig, out / "distance_by_layer.png"),
        save_figure(fig, out / "distance_by_layer.svg"),
    ]


def by_layer_figure(results):
    """The figure of :func:`plot_by_layer`."""
    import matplotlib
    from matplotlib.figure import Figure

    exps = as_strings(results["experiment"].values)
    metrics = as_strings(results["metric"].values)
    layer_lists = {e: experiment_layers(results, e) for e in exps}
    same = len({tuple(n for _, n in v) for v in layer_lists.values()}) == 1
    names = [n for _, n in layer_lists[exps[0]]] if same and exps else None
    colors = matplotlib.colormaps[EXPERIMENT_CMAP](np.arange(len(exps)) % 10)
    M = len(metrics)
    fig = Figure(figsize=(1.5 + 3.8 * M, 3.6 if same else 3.2), layout="constrained")
    axes = fig.subplots(1, M, squeeze=False)[0]
    for m, metric in enumerate(metrics):
        ax = axes[m]
        for e, exp in enumerate(exps):
            layers = layer_lists[exp]
            if not layers:
                continue
            points = _last_epoch_points(results, exp, metric, layers, same)
            if np.isfinite(points[1]).any():
                _plot_layer_curve(ax, exp, colors[e], *points)
        _style_layer_panel(ax, results, metric, names, m == 0)
    _legend(axes[-1], "experiment", others=axes[:-1])
    fig.suptitle("Distance at the last epoch, by layer depth", fontsize=10)
    return fig


def trajectory_matrices(
    results, experiment: str, metric: str
) -> tuple[np.ndarray, list[tuple[int, str]], np.ndarray]:
    """(matrices (L, T, T), layers, epochs) of one experiment and metric, restricted to
    the epochs that have values; layers without any value are left out."""
    t = results["trajectory"].sel(experiment=experiment, metric=metric)
    epochs = np.asarray(results["epoch"].values)
    layers, mats = [], []
    for li, name in experiment_layers(results, experiment):
        mat = np.asarray(t.sel(layer_index=li).values, dtype=float)
        if np.isfinite(mat).any():
            layers.append((li, name))
            mats.append(mat)
    if not mats:
        return np.zeros((0, 0, 0)), [], epochs[:0]
    stack = np.stack(mats)
    keep = np.isfinite(stack).any(axis=(0, 2)) | np.isfinite(stack).any(axis=(0, 1))
    return stack[:, keep][:, :, keep], layers, epochs[keep]


def plot_trajectory(
    results, experiment: str, metric: str, out: str | Path, *, svg: bool = False
) -> list[Path]:
    """The checkpoint x checkpoint matrices of every layer of one experiment and metric (PNG; + SVG
    if ``svg``)."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    mats, layers, epochs = trajectory_matrices(results, experiment, metric)
    if not layers:
        return []
    L = len(layers)
    cols = min(L, MAX_MATRIX_COLUMNS)
    rows = math.ceil(L / cols)
    fig = Figure(figsize=(1.2 + 2.3 * cols, 0.9 + 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = float(np.nanmax(mats)) if np.isfinite(mats).any() else 1.0
    norm = Normalize(vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    cmap = matplotlib.colormaps[MATRIX_CMAP].with_extremes(bad="0.85")
    # an unreliable layer's matrix in greys, so that none of its cells reads as a value
    grey = matplotlib.colormaps["Greys"].with_extremes(bad="0.85")
    odd = unreliable_layers(results, experiment, metric)
    step = max(1, math.ceil(len(epochs) / 6))
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= L:
            ax.set_visible(False)
            continue
        shown = ax.imshow(
            np.ma.masked_invalid(mats[k]),
            cmap=grey if layers[k][0] in odd else cmap,
            norm=norm,
            interpolation="nearest",
        )
        if layers[k][0] in odd:
            ax.set_title(f"{layers[k][1]}\n{UNRELIABLE_LABEL}", fontsize=7, color="0.4")
        else:
            image = shown
            ax.set_title(layers[k][1], fontsize=8)
        ticks = np.arange(0, len(epochs), step)
        ax.set_xticks(ticks, [str(int(epochs[i])) for i in ticks], fontsize=7)
        ax.set_yticks(ticks, [str(int(epochs[i])) for i in ticks], fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("epoch", fontsize=8)
        if k // cols == rows - 1 or k + cols >= L:
            ax.set_xlabel("epoch", fontsize=8)
    cb = fig.colorbar(image or shown, ax=axes, shrink=0.8, aspect=25)
    cb.set_label("distance", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle(
        f"{experiment}: checkpoint × checkpoint distance, {metric_label(results, metric)}",
        fontsize=10,
    )
    stem = f"trajectory_{slug(experiment)}_{slug(metric)}"
    paths = [save_figure(fig, Path(out) / f"{stem}.png")]
    if svg:
        paths.append(save_figure(fig, Path(out) / f"{stem}.svg"))
    return paths


def plot_all(results, out: str | Path, *, svg_matrices: bool = False) -> list[Path]:
    """Curves, by-layer plot and trajectory matrices, recorded with captions in
    ``out/figures.json``."""
    out = Path(out)
    written: list[Path] = []
    entries = []
    settings = _settings(results)
    metrics = as_strings(results["metric"].values)
    mdesc = "; ".join(metric_label(results, m) for m in metrics)
    paths = plot_curves(results, out)
    written += paths
    entries.append(
        {
            "file": paths[0].name,
            "formats": [paths[1].name],
            "kind": "curves",
            "title": "Distance from the reference checkpoint, per layer and epoch",
            "caption": (
                "Each panel: the distance between every layer's activations at an epoch and at the"
                " reference checkpoint, on the same probe images, for one experiment (row) and one"
                " metric (column; lower = more similar). Lines: layers, coloured from shallow"
                f" (dark) to deep (light, {LAYER_CMAP}); {UNRELIABLE_NOTE} Metrics: {mdesc}."
                f" {settings} Expect early"
                " layers to stay closer to the source than deep ones and distances to grow over"
                " epochs."
            ),
        }
    )
    paths = plot_by_layer(results, out)
    written += paths
    entries.append(
        {
            "file": paths[0].name,
            "formats": [paths[1].name],
            "kind": "by_layer",
            "title": "Distance at the last epoch by layer depth",
            "caption": (
                "Per metric, the distance from the reference checkpoint at each experiment's last"
                " computed epoch (named in the legend), against layer depth; one line per"
                f" experiment; {UNRELIABLE_NOTE} Metrics: {mdesc}. {settings}"
            ),
        }
    )
    for exp in as_strings(results["experiment"].values):
        for metric in metrics:
            paths = plot_trajectory(results, exp, metric, out, svg=svg_matrices)
            if not paths:
                continue
            written += paths
            entries.append(
                {
                    "file": paths[0].name,
                    "formats": [p.name for p in paths[1:]],
                    "kind": "trajectory",
                    "experiment": exp,
                    "metric": metric,
                    "title": f"Trajectory matrices: {exp}, {metric}",
                    "caption": (
                        f"{exp}: for every layer, the distance ({metric_label(results, metric)}) "
                        "between the activations of every pair of checkpoints (row epoch vs "
                        "column epoch; the diagonal is 0). One colour scale for all layers of the "
                        f"figure ({MATRIX_CMAP}, 0 to the largest value); grey = not computed;"
                        " a layer whose value cannot be trusted at its view's shape in greys,"
                        " titled unreliable. "
                        f"{settings}"
                    ),
                }
            )
    record(out, entries)
    return written
