"""The interactive report, ``explore.html``: one self-contained page to browse the results.

Written beside ``report.html`` (:func:`ftdyn.reporting.report`, ``ftdyn report``, ``ftdyn
analyze``), it opens from ``file://`` with no server and no network: its style, its script
(``explore.js``, a few hundred lines of plain JavaScript) and every image are embedded, and its
Content-Security-Policy (:data:`~.style.EXPLORE_CSP`) forbids loading anything else.

* one epoch slider drives every panel: the curves' marker, the heatmaps' highlighted column, the
  per-filter histograms and the gallery images (that epoch next to the source's);
* per experiment and metric, the layer x epoch heatmap of the (relative) distance, hover showing
  value, interval, ceiling and floor (where the results have them), unreliable cells hatched;
* clicking a layer opens its filter view: the per-filter distance histogram and the galleries of
  the most-changed and most-stable filters (:mod:`ftdyn.viz.gallery`); clicking a filter shows
  its thumbnails at every epoch;
* the tables (reusability, agreement, paired tests, convergence, probes), sortable.

The galleries render at most :attr:`~ftdyn.config.ReportConfig.max_filters` filters, which bounds
the page's size; the page says how many it shows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..config import DEFAULT_CLASSES, MAX_DEFAULT_EPOCHS, ReportConfig, arg
from ..errors import FtdynError
from ..store import decoding, open_store
from ..viz.curves import as_strings, experiment_layers
from ..viz.gallery import GalleryRequest, layer_gallery
from ..viz.patches import filter_distances
from . import panels
from .sections import (
    _agreement_section,
    _e,
    _reusability_section,
    convergence_table,
    layer_order_findings,
    paired_tests_table,
    probes_table,
)
from .style import CSS, EXPLORE_CSP

EXPLORE_NAME = "explore.html"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryPlan:
    """Which layers get galleries: the opened store of each experiment that has one, the filters
    per gallery and the (experiment, layer) pairs within the cap; ``note`` says so on the page."""

    stores: dict[str, tuple[Path, Any]]  # experiment -> (path, opened store)
    per_gallery: int
    layers: frozenset[tuple[str, str]]
    note: str


def plan_galleries(res, summaries: list[dict[str, Any]], config: ReportConfig) -> GalleryPlan:
    """Share ``config.max_filters`` among the layers of the experiments with a store: each gallery
    (most changed, most stable) gets ``gallery_filters``, fewer when the layers are many, down to
    one; past that, the later layers get none."""
    stores = {}
    for s in summaries:
        if s.get("experiment") and not s.get("error"):
            path = Path(s["path"])
            stores.setdefault(s["experiment"], (path, open_store(path, allow_partial=True)))
    wanted = [(exp, name) for exp in stores for _, name in experiment_layers(res, exp)]
    per = min(config.gallery_filters, max(1, config.max_filters // (2 * max(len(wanted), 1))))
    chosen = wanted[: config.max_filters // (2 * per)]
    note = (
        f"Galleries: up to {per} filters each (most changed, most stable) for {len(chosen)} of"
        f" {len(wanted)} layers with a store; at most {config.max_filters} filters are rendered in"
        f" this page ({arg('max_filters', config.max_filters)}, with"
        f" {arg('gallery_filters', config.gallery_filters)} asked per gallery)."
    )
    if not stores:
        note = (
            "No activation store was given or found, so there are no galleries; pass the stores"
            " (ftdyn report RESULTS --store S)."
        )
    return GalleryPlan(stores, per, frozenset(chosen), note)


def write_explore(res, results_dir: Path, out: Path, plan: GalleryPlan) -> int:
    """Write ``out/explore.html``; returns the number of filters rendered."""
    thumbs = panels.Thumbnails()
    rendered = 0
    body = []
    for e_index, exp in enumerate(as_strings(res["experiment"].values)):
        section, count = _experiment_section(res, exp, e_index, plan, thumbs)
        body.append(section)
        rendered += count
    body.append(_tables_section(res, results_dir))
    body.append(_about_section(plan, rendered))
    (out / EXPLORE_NAME).write_text(_page(res, "".join(body), thumbs), encoding="utf-8")
    log.debug(f"{EXPLORE_NAME}: {rendered} filters in galleries, {len(thumbs.uris)} images")
    return rendered


def _experiment_section(res, exp: str, e_index: int, plan: GalleryPlan, thumbs) -> tuple[str, int]:
    metrics = as_strings(res["metric"].values)
    overview = "".join(
        f'<div class="panels">{panels.heatmap(res, exp, e_index, m)}'
        f"{panels.curves(res, exp, e_index, m)}</div>"
        for m in metrics
    )
    drills, rendered = [], 0
    for li, name in experiment_layers(res, exp):
        content, count = _filter_view(res, exp, name, plan, thumbs)
        rendered += count
        drills.append(
            f'<div class="drill" id="drill-{e_index}-{li}" hidden><h3>{_e(name)}: its filters</h3>'
            f"{content}</div>"
        )
    model = str(res["model"].sel(experiment=exp).values)
    dataset = str(res["dataset"].sel(experiment=exp).values)
    return (
        f'<section class="experiment" id="exp-{e_index}"><h2>{_e(exp)}</h2>'
        f'<p class="note">{_e(model)} fine-tuned on {_e(dataset)}. Click a layer (its name or a'
        " cell) to open its filters below; hover a cell for its value, interval, ceiling and"
        f' floor.</p>{overview}<div class="drills">{"".join(drills)}</div></section>',
        rendered,
    )


def _filter_view(res, exp: str, layer: str, plan: GalleryPlan, thumbs) -> tuple[str, int]:
    """The drill-down of one layer: its per-filter histogram and its galleries (or why not)."""
    found = filter_distances(res, exp, layer)
    epochs = [int(e) for e in res["epoch"].values]
    parts, scores = [], {}
    if found is None:
        parts.append(
            '<p class="note">No per-filter distances for this layer: its metrics\' views give one'
            " value per layer (a per-filter view, e.g. --view filter, gives one per filter).</p>"
        )
    else:
        metric, row, values = found
        li = next(i for i, n in experiment_layers(res, exp) if n == layer)
        n = int(res["n_filters"].sel(experiment=exp, metric=metric, layer_index=li).values)
        values = values[:, :n]
        parts.append(panels.filter_histogram(values, epochs, metric))
        scores = {f: float(values[row, f]) for f in range(n) if np.isfinite(values[row, f])}
    if (exp, layer) not in plan.layers:
        why = "no activation store" if exp not in plan.stores else "over the cap on filters"
        parts.append(f'<p class="note">No galleries for this layer: {why} (see below).</p>')
        return "".join(parts), 0
    path, store = plan.stores[exp]
    try:
        with decoding(path, f"layer {layer}"):
            gallery = layer_gallery(GalleryRequest(store, layer, res, exp, plan.per_gallery))
    except FtdynError as exc:
        log.debug(f"no galleries for {exp} {layer}: {exc}")
        parts.append(f'<p class="note">No galleries for this layer: {_e(exc)}</p>')
        return "".join(parts), 0
    view = panels.GalleryView(
        frame_of=_frames_of(gallery.epochs, epochs),
        source=_source_frame(gallery.epochs, int(res.attrs.get("reference_epoch", 0))),
        scores=scores,
    )
    parts.append(
        f'<p class="note">Ranking: {_e(gallery.why)}; d on a card is that distance. Each card: the'
        " class-based average of the filter's receptive field per class, then its heatmap on the"
        " probe images "
        + ", ".join(f"{sid} ({_e(cls)})" for sid, cls, _ in gallery.samples)
        + "; the source's on the left, the slider's epoch on the right (the nearest drawn epoch"
        " at or before it). Click a card for every epoch.</p>"
    )
    parts.append(panels.galleries(gallery, view, thumbs))
    return "".join(parts), len(gallery.changed) + len(gallery.stable)


def _frames_of(drawn: list[int], epochs: list[int]) -> list[int]:
    """For each epoch of the slider, the position in ``drawn`` of the last drawn epoch at or
    before it (the first drawn one before any)."""
    return [max(int(np.searchsorted(drawn, e, side="right")) - 1, 0) for e in epochs]


def _source_frame(drawn: list[int], reference: int) -> int:
    return drawn.index(reference) if reference in drawn else 0


def _tables_section(res, results_dir: Path) -> str:
    parts = [
        "<h3>Reusability</h3>",
        _reusability_section(res),
        "<h3>Metric agreement</h3>",
        _agreement_section(res, results_dir),
    ]
    if int(res.attrs.get("bootstrap") or 0) and "layer_order_p" in res:
        parts += ["<h3>Paired tests: is a shallower layer closer than a deeper one?</h3>"]
        parts.append(paired_tests_table(layer_order_findings(res)))
    for title, table in (("Convergence", convergence_table(res)), ("Probes", probes_table(res))):
        if table:
            parts += [f"<h3>{title}</h3>", table]
    return (
        '<section class="tables" id="tables"><h2>Tables</h2><p class="note">Click a column'
        " heading to sort.</p>" + "".join(parts) + "</section>"
    )


def _about_section(plan: GalleryPlan, rendered: int) -> str:
    return (
        '<section id="about"><h2>About this page</h2>'
        f'<p class="note">{_e(plan.note)} {rendered} filters are shown. Class-based averages and'
        " heatmaps are computed as by <code>ftdyn visualize</code> (the first"
        f" {DEFAULT_CLASSES} classes, the probe images the shown filters respond to most, up to"
        f" {MAX_DEFAULT_EPOCHS} epochs evenly spaced) and stored as"
        " small WebP thumbnails. The static report (report.html) has every figure as PNG and"
        " SVG, with its caption.</p></section>"
    )


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _page(res, body: str, thumbs: panels.Thumbnails) -> str:
    exps = as_strings(res["experiment"].values)
    epochs = [int(e) for e in res["epoch"].values]
    last = len(epochs) - 1
    bar = (
        '<div class="bar"><label for="epoch">Epoch</label><input type="range" id="epoch" min="0"'
        f' max="{last}" value="{last}" step="1" data-epochs="{" ".join(map(str, epochs))}">'
        f'<output id="epoch-label">{epochs[-1]}</output><span class="note">reference epoch'
        f' {_e(res.attrs.get("reference_epoch"))} · <a href="report.html">static report</a>'
        "</span></div>"
    )
    dialog = (
        '<dialog id="enlarged"><form method="dialog"><button class="close">close</button></form>'
        '<h3></h3><div class="scroll"><table class="frames"></table></div></dialog>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{EXPLORE_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="ftdyn {_e(__version__)}">'
        f"<title>ftdyn explorer: {_e(', '.join(exps))}</title>"
        f"<style>{CSS}{_asset('explore.css')}</style></head><body>"
        "<header><h1>Feature dynamics during fine-tuning: explorer</h1>"
        f"<p>{_e(', '.join(exps))}</p></header>{bar}<main>{body}</main>{dialog}"
        f'<script type="application/json" id="thumbs">{json.dumps(thumbs.uris)}</script>'
        f"<script>{_asset('explore.js')}</script></body></html>\n"
    )
