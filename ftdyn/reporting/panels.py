"""The panels of the interactive report (:mod:`.explore`), each HTML or inline SVG drawn here from
the results and the galleries: the layer x epoch heatmap, the distance curves, the per-filter
distance histogram and the filter cards.

The panels carry what the page's script needs as data attributes, so the script stays generic:
``data-col`` (the epoch's position: its cells are highlighted), ``data-xs`` (the epoch marker's x
at each position), ``data-at`` (shown only at that position), ``data-frames`` (a thumbnail per
gallery epoch) and ``data-drill`` (clicking opens that layer's filter view). A value that cannot
be trusted (the results' ``unreliable``) is hatched grey in the heatmap and grey, dashed and
hollow in the curves; a NaN is a blank cell or a gap, never an ordinary point.
"""

from __future__ import annotations

import base64
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..results import unreliable, unreliable_reason
from ..viz.curves import UNRELIABLE_LABEL, as_strings, experiment_layers, layer_colors
from ..viz.gallery import FilterCard, LayerGallery
from .sections import _e, _num

#: the heatmap's colormap (perceptually uniform, readable in grey)
HEAT_CMAP = "viridis"
#: the curves' and histogram's drawing area in px: width, height, margins left, right, top, bottom
CURVES_BOX = (480, 230, 46, 158, 10, 30)
HISTOGRAM_BOX = (440, 170, 40, 16, 10, 32)
HISTOGRAM_BINS = 20
UNRELIABLE_STROKE = "#999"


@dataclass
class Thumbnails:
    """Every thumbnail of the page once, as data URIs; elements refer to them by index."""

    uris: list[str] = field(default_factory=list)

    def add(self, webp: bytes) -> int:
        self.uris.append("data:image/webp;base64," + base64.b64encode(webp).decode("ascii"))
        return len(self.uris) - 1


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def _value(res, name: str, **at) -> float:
    """``res[name]`` at ``at`` (the dimensions it has of them), NaN when the results lack it (an
    optional variable such as ``floor``)."""
    if name not in res:
        return math.nan
    var = res[name]
    return float(var.sel({k: v for k, v in at.items() if k in var.dims}).values)


def heat_values(res, exp: str, metric: str) -> tuple[str, np.ndarray]:
    """(what, (layer_index, epoch) values) the heatmap colours: the relative distance (distance /
    random-init ceiling) where the results have it for some layer, else the distance."""
    at = {"experiment": exp, "metric": metric}
    if "relative_distance" in res:
        rel = np.asarray(res["relative_distance"].sel(**at).values, dtype=float)
        if np.isfinite(rel).any():
            return "relative distance (distance / random-init ceiling)", rel
    return "distance", np.asarray(res["distance"].sel(**at).values, dtype=float)


def _cell_title(res, at: dict, layer: str, epoch: int, reason: str | None) -> str:
    """The hover text of a heatmap cell: value, interval, relative value, ceiling, floor, and
    the held-out distance of an unreliable value."""
    lines = [
        f"{layer} · epoch {epoch}",
        f"distance {_num(_value(res, 'distance', **at))}"
        f" [{_num(_value(res, 'ci_low', **at))}, {_num(_value(res, 'ci_high', **at))}]",
    ]
    for name in ("relative_distance", "ceiling", "floor"):
        if name in res:
            lines.append(f"{name.replace('_', ' ')} {_num(_value(res, name, **at))}")
    if reason:
        lines.append(f"unreliable: {reason}")
    held = _value(res, "heldout_distance", **at)
    if math.isfinite(held):
        lines.append(f"held-out distance {_num(held)} (the value and it bracket the distance)")
    return "\n".join(lines)


def heatmap(res, exp: str, e_index: int, metric: str) -> str:
    """The layer x epoch table of ``metric`` for experiment ``exp`` (its position ``e_index``):
    cells coloured on one scale from 0 to the largest reliable value, unreliable rows hatched,
    NaN cells blank; a layer's name or cell opens its filter view."""
    import matplotlib

    what, values = heat_values(res, exp, metric)
    m = as_strings(res["metric"].values).index(metric)
    odd = unreliable(res)[e_index, m]
    layers = experiment_layers(res, exp)
    reliable = values[[li for li, _ in layers if not odd[li]]]
    finite = reliable[np.isfinite(reliable)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = matplotlib.colormaps[HEAT_CMAP]
    epochs = [int(x) for x in res["epoch"].values]
    head = "".join(f'<th data-col="{k}">{e}</th>' for k, e in enumerate(epochs))
    rows = []
    for li, name in layers:
        drill = f"{e_index}-{li}"
        reason = unreliable_reason(res, exp, metric, name) if odd[li] else None
        cells = []
        for k, epoch in enumerate(epochs):
            at = {"experiment": exp, "metric": metric, "layer_index": li, "epoch": epoch}
            title = _e(_cell_title(res, at, name, epoch, reason))
            v = values[li, k]
            if reason:
                style, cls, text = "", "unreliable", ""
            elif not np.isfinite(v):
                style, cls, text = "", "missing", "—"
            else:
                rgba = cmap(min(v / top, 1.0))
                ink = "#fff" if 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.55 else ""
                style = f' style="background:{_hex(rgba)}{";color:" + ink if ink else ""}"'
                cls, text = "value", f"{v:.2f}"
            cells.append(
                f'<td class="{cls}" data-col="{k}" data-drill="{drill}"{style}'
                f' title="{title}">{text}</td>'
            )
        rows.append(
            f'<tr><th class="l"><button type="button" class="layer" data-drill="{drill}">'
            f"{_e(name)}</button></th>{''.join(cells)}</tr>"
        )
    legend = (
        f'<div class="legend"><span>0</span><span class="ramp" style="background:linear-gradient('
        f'to right,{",".join(_hex(cmap(x)) for x in np.linspace(0, 1, 9))})"></span>'
        f'<span>{_num(top)}</span><span class="swatch unreliable"></span><span>unreliable</span>'
        f'<span class="swatch missing"></span><span>no {"relative " if what != "distance" else ""}'
        "value</span></div>"
    )
    return (
        f'<div class="panel"><h4>{_e(metric)}: {_e(what)}</h4><div class="scroll">'
        f'<table class="heat"><thead><tr><th class="l">layer \\ epoch</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{legend}</div>"
    )


def _scale(lo: float, hi: float, a: float, b: float):
    """The linear map of [lo, hi] onto [a, b] (the middle of it when lo == hi)."""
    if hi == lo:
        return lambda v: (a + b) / 2
    return lambda v: a + (v - lo) / (hi - lo) * (b - a)


def _axes(box, epochs: list[int], top: float, y_label: str) -> tuple[str, list[float], object]:
    """Frame, ticks and labels of a plot over ``epochs`` (x) and 0..``top`` (y); returns the SVG,
    the x of each epoch and the y map."""
    width, height, left, right, upper, lower = box
    x = _scale(epochs[0], epochs[-1], left + 8, width - right - 8)
    y = _scale(0.0, top, height - lower, upper)
    xs = [x(e) for e in epochs]
    parts = [
        f'<line class="axis" x1="{left}" y1="{height - lower}" x2="{width - right}"'
        f' y2="{height - lower}"/><line class="axis" x1="{left}" y1="{upper}" x2="{left}"'
        f' y2="{height - lower}"/>'
    ]
    parts += [
        f'<text class="tick" x="{xe:.1f}" y="{height - lower + 13}" text-anchor="middle">{e}</text>'
        for xe, e in zip(xs, epochs, strict=True)
    ]
    parts += [
        f'<text class="tick" x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2g}</text>'
        for v in (0.0, top / 2, top)
    ]
    middle = (upper + height - lower) / 2
    parts.append(
        f'<text class="tick" x="{(left + width - right) / 2:.0f}" y="{height - 2}"'
        f' text-anchor="middle">epoch</text><text class="tick" x="12" y="{middle:.0f}"'
        f' transform="rotate(-90 12 {middle:.0f})" text-anchor="middle">{_e(y_label)}</text>'
    )
    return "".join(parts), xs, y


def curves(res, exp: str, e_index: int, metric: str) -> str:
    """Distance from the reference checkpoint per layer across epochs, with the slider's epoch
    marked by a vertical line (``epoch-marker``)."""
    m = as_strings(res["metric"].values).index(metric)
    odd = unreliable(res)[e_index, m]
    layers = experiment_layers(res, exp)
    d = np.asarray(res["distance"].sel(experiment=exp, metric=metric).values, dtype=float)
    epochs = [int(x) for x in res["epoch"].values]
    finite = d[np.isfinite(d)]
    top = float(finite.max()) * 1.05 if finite.size and finite.max() > 0 else 1.0
    frame, xs, y = _axes(CURVES_BOX, epochs, top, "distance")
    colors = [_hex(c) for c in layer_colors(len(layers))]
    parts, legend = [frame], []
    for (li, name), color in zip(layers, colors, strict=True):
        stroke, cls = (UNRELIABLE_STROKE, "unreliable") if odd[li] else (color, "reliable")
        points = [(k, d[li, k]) for k in range(len(epochs)) if np.isfinite(d[li, k])]
        parts += [
            f'<line class="{cls}" x1="{xs[a]:.1f}" y1="{y(va):.1f}" x2="{xs[b]:.1f}"'
            f' y2="{y(vb):.1f}" stroke="{stroke}"/>'
            for (a, va), (b, vb) in itertools.pairwise(points)
            if b == a + 1  # a NaN between them is a gap
        ]
        fill = "none" if odd[li] else color
        parts += [
            f'<circle class="{cls}" cx="{xs[k]:.1f}" cy="{y(v):.1f}" r="3" fill="{fill}"'
            f' stroke="{color}"><title>{_e(name)}, epoch {epochs[k]}: {_num(v)}'
            f"{' (unreliable)' if odd[li] else ''}</title></circle>"
            for k, v in points
        ]
        legend.append((name, cls, stroke, fill, color))
    width, height, _, right, upper, lower = CURVES_BOX
    if odd[[li for li, _ in layers]].any():
        legend.append(
            (UNRELIABLE_LABEL, "unreliable", UNRELIABLE_STROKE, "none", UNRELIABLE_STROKE)
        )
    for i, (name, cls, stroke, fill, edge) in enumerate(legend):
        ly = upper + 8 + 14 * i
        lx = width - right + 8
        parts.append(
            f'<line class="{cls}" x1="{lx}" y1="{ly}" x2="{lx + 14}" y2="{ly}" stroke="{stroke}"/>'
            f'<circle cx="{lx + 7}"'
            f' cy="{ly}" r="3" fill="{fill}" stroke="{edge}"/><text class="tick" x="{lx + 18}"'
            f' y="{ly + 4}">{_e(name)}</text>'
        )
    parts.append(
        f'<line class="epoch-marker" x1="{xs[-1]:.1f}" x2="{xs[-1]:.1f}" y1="{upper}"'
        f' y2="{height - lower}" data-xs="{" ".join(f"{x:.1f}" for x in xs)}"/>'
    )
    return (
        f'<div class="panel"><h4>{_e(metric)}: distance per layer</h4><svg class="curves"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}">{"".join(parts)}</svg>'
        "</div>"
    )


def filter_histogram(values: np.ndarray, epochs: list[int], metric: str) -> str:
    """Histograms of the per-filter distances ``values`` (epoch, filter), one per epoch on common
    bins and scales, each shown only at its slider position (``data-at``)."""
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    edges = np.linspace(0.0, top, HISTOGRAM_BINS + 1)
    counts = [np.histogram(row[np.isfinite(row)], bins=edges)[0] for row in values]
    most = max(int(c.max()) for c in counts) or 1
    width, height, left, right, upper, lower = HISTOGRAM_BOX
    x = _scale(0.0, top, left, width - right)
    y = _scale(0.0, most, height - lower, upper)
    frame = (
        f'<line class="axis" x1="{left}" y1="{height - lower}" x2="{width - right}"'
        f' y2="{height - lower}"/>'
        + "".join(
            f'<text class="tick" x="{x(v):.1f}" y="{height - lower + 13}" text-anchor="middle">'
            f"{v:.2g}</text>"
            for v in (0.0, top / 2, top)
        )
        + f'<text class="tick" x="{left - 4}" y="{upper + 8}" text-anchor="end">{most}</text>'
        + f'<text class="tick" x="{(left + width - right) / 2:.0f}" y="{height - 2}"'
        f' text-anchor="middle">per-filter {_e(metric)} distance</text>'
    )
    groups = []
    for k, (epoch, row, count) in enumerate(zip(epochs, values, counts, strict=True)):
        n, dead = int(np.isfinite(row).sum()), int(np.isnan(row).sum())
        bars = "".join(
            f'<rect x="{x(a) + 0.5:.1f}" y="{y(c):.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}"'
            f' height="{y(0) - y(c):.1f}"><title>{_num(a)}–{_num(b)}: {c} filters</title></rect>'
            for a, b, c in zip(edges, edges[1:], count, strict=False)
            if c
        )
        label = f"epoch {epoch}: {n} filters" + (f", {dead} undefined" if dead else "")
        if not n:
            label = f"epoch {epoch}: no per-filter distance"
        groups.append(
            f'<g data-at="{k}">{bars}<text class="tick" x="{width - right}" y="{upper + 8}"'
            f' text-anchor="end">{_e(label)}</text></g>'
        )
    return (
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"{frame}{''.join(groups)}</svg>"
    )


@dataclass(frozen=True)
class GalleryView:
    """How a layer's galleries meet the page's slider: ``frame_of`` the gallery epoch shown at each
    slider position, ``source`` the gallery epoch of the reference checkpoint, ``scores`` each
    filter's per-filter distance where the results have one."""

    frame_of: list[int]
    source: int
    scores: dict[int, float]


def galleries(gallery: LayerGallery, view: GalleryView, thumbs: Thumbnails) -> str:
    """The most-changed and most-stable galleries of a layer: one card per filter, its rows (class
    averages, sample heatmaps) at the source and at the slider's epoch."""
    epochs = " ".join(map(str, gallery.epochs))
    frame_of = " ".join(map(str, view.frame_of))
    parts = [
        f'<div class="gallery" data-epochs="{epochs}" data-frame-of="{frame_of}">'
        f'<h5>{_e(title)} <small>(source | epoch <span class="shown-epoch"></span>)</small>'
        f'</h5><div class="cards">{"".join(_card(c, gallery, view, thumbs) for c in cards)}'
        "</div></div>"
        for title, cards in (("Most changed", gallery.changed), ("Most stable", gallery.stable))
        if cards
    ]
    return "".join(parts)


def _card(card: FilterCard, gallery: LayerGallery, view: GalleryView, thumbs: Thumbnails) -> str:
    score = view.scores.get(card.filter)
    head = f"filter {card.filter}" + (f" · d {_num(score)}" if score is not None else "")
    rows = []
    for row in card.rows:
        frames = " ".join(str(thumbs.add(f)) for f in row.frames)
        rows.append(
            f'<div class="row" data-label="{_e(row.label)}" data-frames="{frames}">'
            f'<span class="label">{_e(row.label)}</span>'
            f'<img class="thumb source" alt="" data-frame="{view.source}">'
            f'<img class="thumb now" alt=""></div>'
        )
    return (
        f'<figure class="card" tabindex="0" data-title="{_e(gallery.layer)} · {_e(head)}">'
        f"<figcaption>{_e(head)}</figcaption>{''.join(rows)}</figure>"
    )
