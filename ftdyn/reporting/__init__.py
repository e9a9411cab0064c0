"""The HTML report: ``report.html``, one self-contained file a person can open.

:func:`report` reads the results of ``ftdyn analyze`` (:mod:`ftdyn.results`), makes
the curves and trajectory figures (and, for stores, the default class- and
sample-based figures) in ``<out>/figures`` and writes ``<out>/report.html`` with:

1. the experiments (model, dataset, layers, epochs, store) and the settings;
2. Table 1: accuracy per epoch, from each store's training manifest when present;
3. Table 2: reusability (mean +- std over epochs of the layer-averaged distance), and per layer;
4. metric agreement: Pearson r between metrics, summary and per layer;
5. the distance curves, distance by depth and the checkpoint x checkpoint matrices;
6. the class-based and sample-based visualizations;
7. how the numbers were computed (metrics, views, reference epoch, preset, bootstrap, arguments).

Every figure has a caption that says what it shows and how it was computed (from
``figures/figures.json``). Images are embedded as base64 PNG data URIs; the PNG
and SVG files beside the report are linked for papers. No scripts, no external
resources: a Content-Security-Policy in the page forbids loading anything that is
not embedded.

Beside it, ``<out>/explore.html`` (unless ``interactive=False``): the interactive report, one
self-contained page with a global epoch slider, a layer x epoch overview per experiment and metric,
per-layer filter galleries and sortable tables (:mod:`.explore`).

Modules: :mod:`.style` (the style sheet and Content-Security-Policies), :mod:`.sections` (each
section's HTML), :mod:`.panels` (the interactive page's heatmaps, curves, histograms and filter
cards), :mod:`.explore` (the interactive page) and :mod:`.page` (:func:`report`: the figures,
the sections in order, the pages written).
"""

from .explore import EXPLORE_NAME
from .page import REPORT_NAME, report
from .sections import ALPHA_LEVEL, METRIC_NOTES, VIEW_NOTES, flat_steps, layer_order_findings
from .style import CSP, CSS, EXPLORE_CSP

__all__ = [
    "ALPHA_LEVEL",
    "CSP",
    "CSS",
    "EXPLORE_CSP",
    "EXPLORE_NAME",
    "METRIC_NOTES",
    "REPORT_NAME",
    "VIEW_NOTES",
    "flat_steps",
    "layer_order_findings",
    "report",
]
