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
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._version import __version__
from .config import arg
from .errors import FtdynError
from .outputs import folder_lock, update_result_set
from .results import open_results
from .store import open_store
from .viz import (
    FIGURES_DIR,
    check_out,
    default_figures,
    match_experiment,
    read_index,
    results_stores,
    same_path,
    store_label,
)
from .viz.curves import as_strings, experiment_layers

REPORT_NAME = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#ffffff; --alt:#f5f7fa;
--accent:#2b5c9e; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#1f2a3c; color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:600; }
header p { margin:0; color:#c9d3e3; font-size:14px; }
main { max-width:1240px; margin:0 auto; padding:10px 40px 60px; }
nav { margin:22px 0 8px; padding:12px 18px; background:var(--alt); border:1px solid var(--line);
border-radius:6px; }
nav ol { margin:0; padding-left:20px; columns:2; }
nav a { color:var(--accent); text-decoration:none; }
section { margin-top:34px; }
h2 { font-size:21px; border-bottom:2px solid var(--line); padding-bottom:4px; margin-bottom:12px; }
h3 { font-size:17px; margin:22px 0 8px; }
p.lead, p.note { color:var(--muted); margin:6px 0 12px; }
p.note { font-size:13px; }
table { border-collapse:collapse; margin:8px 0 14px; font-size:13.5px; }
th, td { border:1px solid var(--line); padding:4px 10px; text-align:right; white-space:nowrap; }
th { background:var(--alt); font-weight:600; }
td.l, th.l { text-align:left; }
tbody tr:nth-child(even) td { background:#fafbfc; }
.scroll { overflow-x:auto; }
figure { margin:14px 0 26px; padding:12px; border:1px solid var(--line); border-radius:6px;
background:#fff; }
figure img { display:block; max-width:100%; height:auto; margin:0 auto; }
figcaption { margin-top:8px; font-size:13px; color:var(--muted); }
figcaption b { color:var(--fg); }
figcaption .files { margin-left:6px; }
figcaption .files a { color:var(--accent); }
details { margin:8px 0; }
details > summary { cursor:pointer; color:var(--accent); font-weight:600; margin:6px 0; }
pre { background:var(--alt); border:1px solid var(--line); padding:10px; font-size:12.5px;
overflow-x:auto; }
.empty { color:var(--muted); font-style:italic; }
dl.settings { display:grid; grid-template-columns:max-content auto; gap:2px 16px; font-size:14px; }
dl.settings dt { color:var(--muted); }
dl.settings dd { margin:0; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding:20px; border-top:1px solid
var(--line); }
"""

METRIC_NOTES = {
    "pwsm": (
        "Partial-Whitening Shape Metric (Williams et al. 2021), angular form, in radians (0 to"
        " pi/2); alpha=1 rotations only, alpha=0 full whitening (netrep convention: covariance not"
        " divided by the row count)."
    ),
    "procrustes": (
        "Orthogonal Procrustes distance 1 - ||X^T Y||_* of centred, unit-Frobenius-norm matrices "
        "(Ding et al. 2021, halved to lie in [0, 1])."
    ),
    "cka": "1 - linear CKA (Kornblith et al. 2019).",
}
VIEW_NOTES = {
    "channels": "rows = images x positions, columns = filters (one value per layer)",
    "flat": "rows = images, columns = filters x positions",
    "pooled": "rows = images, columns = filters (spatial mean)",
    "filter": (
        "one matrix per filter (rows = images, columns = positions); NaN-safe mean over filters"
    ),
    "map": "one matrix per (image, filter) (rows x columns of the map); averaged",
}


# ----------------------------------------------------------------------------- small HTML helpers


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(v) else f"{100 * v:.1f} %"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text, cells are escaped."""
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# ----------------------------------------------------------------------------- data for the tables


def _store_summaries(res, stores: Sequence[Path]) -> list[dict[str, Any]]:
    """For each store: its path, label, matched experiment, model, dataset, manifest (or
    an error)."""
    out = []
    for path in stores:
        try:
            ds = open_store(path, allow_partial=True)
        except FtdynError as exc:
            out.append(
                {
                    "path": str(path),
                    "label": Path(path).name,
                    "error": str(exc),
                    "experiment": None,
                    "manifest": None,
                }
            )
            continue
        out.append(
            {
                "path": str(path),
                "label": store_label(ds, Path(path)),
                "experiment": match_experiment(res, ds, Path(path)),
                "model": ds.attrs.get("model"),
                "dataset": ds.attrs.get("dataset"),
                "manifest": ds.attrs.get("manifest"),
                "error": None,
            }
        )
    return out


def _experiments_section(res) -> str:
    rows = []
    for exp in as_strings(res["experiment"].values):
        layers = experiment_layers(res, exp)
        d = res["distance"].sel(experiment=exp).values
        ep = [int(e) for e, ok in zip(res["epoch"].values, np.isfinite(d).any(axis=(0, 1))) if ok]
        rows.append(
            [
                exp,
                str(res["model"].sel(experiment=exp).values),
                str(res["dataset"].sel(experiment=exp).values),
                f"{len(layers)}: {layers[0][1]} … {layers[-1][1]}" if layers else "—",
                f"{ep[0]}–{ep[-1]} ({len(ep)})" if ep else "—",
                str(res["store"].sel(experiment=exp).values) or "—",
            ]
        )
    metrics = [
        [m, str(res["view"].sel(metric=m).values), _num(res["alpha"].sel(metric=m).values, 2)]
        for m in as_strings(res["metric"].values)
    ]
    a = res.attrs
    return (
        _table(
            ["experiment", "model", "dataset", "layers (shallow … deep)", "epochs", "store"],
            rows,
            left=4,
        )
        + "<h3>Metrics</h3>"
        + _table(["metric", "view", "alpha"], metrics, left=2)
        + '<p class="note">Distances are measured from the reference checkpoint, epoch'
        f" {_e(a.get('reference_epoch'))} (epoch 0 = the source model with its new head, before"
        f" any update); preset {_e(a.get('preset'))}; bootstrap {_e(a.get('bootstrap'))}; seed"
        f" {_e(a.get('seed'))}. Lower = more similar.</p>"
    )


def _accuracy_section(summaries: list[dict[str, Any]]) -> str:
    with_manifest = [s for s in summaries if s.get("manifest") and s["manifest"].get("epochs")]
    if not summaries:
        return (
            '<p class="empty">No activation store was given or found, so the training manifests are'
            " unknown. Pass the stores (<code>ftdyn report RESULTS --store S</code>) to show"
            " accuracies.</p>"
        )
    if not with_manifest:
        return (
            '<p class="empty">The stores carry no training manifest (a checkpoint series not made'
            " by <code>ftdyn train</code>): accuracies are unknown.</p>"
        )
    rows, details = [], []
    for s in with_manifest:
        entries = sorted(s["manifest"]["epochs"], key=lambda e: e.get("epoch", 0))
        src = next((e for e in entries if e.get("epoch") == 0), None)
        last = entries[-1]
        vals = [(e.get("val_acc"), e.get("epoch")) for e in entries if e.get("val_acc") is not None]
        best = max(vals, key=lambda t: t[0]) if vals else (None, None)
        rows.append(
            [
                s.get("experiment") or s["label"],
                s.get("model") or "",
                s.get("dataset") or "",
                _pct(src.get("val_acc")) if src else "—",
                str(last.get("epoch")),
                _pct(last.get("train_acc")),
                _pct(last.get("val_acc")),
                f"{_pct(best[0])} (epoch {best[1]})" if best[0] is not None else "—",
            ]
        )
        per_epoch = [
            [
                str(e.get("epoch")),
                _pct(e.get("train_acc")),
                _pct(e.get("val_acc")),
                _num(e.get("train_loss")),
                _num(e.get("val_loss")),
            ]
            for e in entries
        ]
        details.append(
            f"<details><summary>{_e(s.get('experiment') or s['label'])}: per epoch</summary>"
            + _table(["epoch", "train acc", "val acc", "train loss", "val loss"], per_epoch)
            + "</details>"
        )
    missing = [s for s in summaries if s not in with_manifest]
    note = ""
    if missing:
        note = (
            '<p class="note">No manifest (accuracies unknown) for: '
            + ", ".join(_e(s.get("experiment") or s["label"]) for s in missing)
            + ".</p>"
        )
    return (
        _table(
            [
                "experiment",
                "model",
                "dataset",
                "source val acc (epoch 0)",
                "last epoch",
                "train acc",
                "val acc",
                "best val acc",
            ],
            rows,
            left=3,
        )
        + '<p class="note">From the training manifest of each store: accuracy on the training set'
        " during the epoch (with augmentation) and on the held-out validation split after it."
        " Epoch 0 is the source model with a new, untrained head.</p>" + "".join(details) + note
    )


def _mean_std(res, name: str, **where) -> str:
    """``mean ± std`` of ``<name>_mean`` and ``<name>_std`` at ``where``; — when undefined."""
    mean = res[f"{name}_mean"].sel(**where).values
    std = res[f"{name}_std"].sel(**where).values
    return "—" if not np.isfinite(mean) else f"{_num(mean)} ± {_num(std)}"


def _reusability_section(res) -> str:
    metrics = as_strings(res["metric"].values)
    rows = []
    for exp in as_strings(res["experiment"].values):
        row = [
            exp,
            str(res["model"].sel(experiment=exp).values),
            str(res["dataset"].sel(experiment=exp).values),
        ]
        row += [_mean_std(res, "reusability", experiment=exp, metric=m) for m in metrics]
        rows.append(row)
    layer_rows = []
    for exp in as_strings(res["experiment"].values):
        for li, name in experiment_layers(res, exp):
            layer_rows.append(
                [exp, name]
                + [
                    _mean_std(res, "layer_reusability", experiment=exp, metric=m, layer_index=li)
                    for m in metrics
                ]
            )
    return (
        _table(["experiment", "model", "dataset", *metrics], rows, left=3)
        + f'<p class="note">Reusability (the paper\'s Table 2): mean ± standard deviation over the'
        f" epochs "
        f"(reference epoch {_e(res.attrs.get('reference_epoch'))} excluded) of the layer-averaged"
        " distance from "
        "the reference checkpoint. Lower = the fine-tuned features stay closer to the source's,"
        " i.e. more of "
        "the source is reused.</p>"
        + "<details><summary>Per layer</summary>"
        + _table(["experiment", "layer", *metrics], layer_rows, left=2)
        + "</details>"
    )


#: significance level of the report's statements on paired bootstrap results
ALPHA_LEVEL = 0.05


def layer_order_findings(res) -> list[dict[str, Any]]:
    """Every (experiment, metric, shallower layer a, deeper layer b) with a bootstrap p-value:
    the last-epoch distances, p and whether "a moved less than b" is significant."""
    out = []
    for exp in as_strings(res["experiment"].values):
        layers = experiment_layers(res, exp)
        last = int(
            np.flatnonzero(
                np.isfinite(res["distance"].sel(experiment=exp).values).any(axis=(0, 1))
            )[-1]
        )
        for m in as_strings(res["metric"].values):
            d = res["distance"].sel(experiment=exp, metric=m).values[:, last]
            p = res["layer_order_p"].sel(experiment=exp, metric=m).values
            for i, (a, na) in enumerate(layers):
                for b, nb in layers[i + 1 :]:
                    if np.isfinite(p[a, b]):
                        out.append(
                            {
                                "experiment": exp,
                                "metric": m,
                                "early": na,
                                "deep": nb,
                                "d_early": float(d[a]),
                                "d_deep": float(d[b]),
                                "p": float(p[a, b]),
                                "significant": bool(p[a, b] < ALPHA_LEVEL and d[a] < d[b]),
                            }
                        )
    return out


def flat_steps(res) -> list[dict[str, Any]]:
    """(experiment, metric, layer, epoch) whose step from the previous epoch has a paired
    interval containing 0 (not distinguishable from no change)."""
    lo, hi, epochs = (
        res["delta_ci_low"],
        res["delta_ci_high"],
        [int(e) for e in res["epoch"].values],
    )
    out = []
    for exp in as_strings(res["experiment"].values):
        for m in as_strings(res["metric"].values):
            for li, name in experiment_layers(res, exp):
                a = lo.sel(experiment=exp, metric=m, layer_index=li).values
                b = hi.sel(experiment=exp, metric=m, layer_index=li).values
                out += [
                    {"experiment": exp, "metric": m, "layer": name, "epoch": epochs[k]}
                    for k in np.flatnonzero(np.isfinite(a) & (a <= 0) & (b >= 0))
                ]
    return out


def _interpretation_section(res, block) -> str:
    """Relative drift, paired significance, probes and convergence (ftdyn.analysis.interpret)."""
    if "relative_distance" not in res:
        return (
            '<p class="empty">These results predate the interpretation variables; re-run `ftdyn'
            " analyze`.</p>"
        )
    metrics = as_strings(res["metric"].values)
    rows = [
        [exp] + [_mean_std(res, "relative_reusability", experiment=exp, metric=m) for m in metrics]
        for exp in as_strings(res["experiment"].values)
    ]
    parts = [
        (
            '<p class="lead">Is a distance large? Is it more than the noise of the probe set? Did'
            " the layer lose or gain target-class information?</p>"
        ),
        f'<p class="note">{_e(res.attrs.get("relative_note", ""))}.</p>',
        _table(["experiment", *[f"relative {m}" for m in metrics]], rows),
        (
            '<p class="note">Relative reusability: Table 2 on relative distances (mean ± std over'
            " epochs of the layer-averaged distance / ceiling).</p>"
        ),
        block("relative"),
    ]
    if int(res.attrs.get("bootstrap") or 0):
        found = layer_order_findings(res)
        sig = [f for f in found if f["significant"]]
        flat = flat_steps(res)
        items = [
            f"<li>{_e(f['experiment'])} {_e(f['metric'])}: {_e(f['early'])} ({_num(f['d_early'])})"
            f" &lt; {_e(f['deep'])} ({_num(f['d_deep'])}), p = {_num(f['p'])}</li>"
            for f in sig
        ]
        parts.append(
            f'<p class="note">Paired bootstrap ({_e(res.attrs.get("bootstrap"))} resamples of the'
            " images, "
            "each shared by every epoch and layer). At the last epoch, "
            f"{len(sig)} of {len(found)} 'early &lt; deep' comparisons are significant "
            f"(p &lt; {ALPHA_LEVEL}):</p><ul>{''.join(items) or '<li>none</li>'}</ul>"
            f'<p class="note">{len(flat)} epoch step(s) are not distinguishable from 0 (their'
            " paired 95 % "
            "interval contains 0; hollow markers in the figure).</p>"
        )
    else:
        parts.append(
            '<p class="note">No bootstrap: epoch steps and layer orders are not tested; analyze'
            " with --bootstrap N (e.g. 100).</p>"
        )
    parts += ["<h3>Linear probes</h3>", block("probes"), "<h3>Convergence</h3>"]
    bad = json.loads(res.attrs.get("not_converged", "[]"))
    parts.append(
        '<p class="note">Not converged (tolerance'
        f" {_pct(res.attrs.get('convergence_tolerance'))}): "
        f"{_e(', '.join(bad)) if bad else 'none'}.</p>" + block("convergence")
    )
    return "".join(parts)


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _agreement_section(res, results_dir: Path) -> str:
    metrics = as_strings(res["metric"].values)
    pairs = [(a, b) for i, a in enumerate(metrics) for b in metrics[i + 1 :]]
    if not pairs:
        return '<p class="empty">Only one metric was computed: nothing to compare.</p>'
    per_layer, values = [], {p: [] for p in pairs}
    for exp in as_strings(res["experiment"].values):
        for li, name in experiment_layers(res, exp):
            row = [exp, name]
            for a, b in pairs:
                r = float(
                    res["agreement_r"]
                    .sel(experiment=exp, layer_index=li, metric=a, metric_other=b)
                    .values
                )
                row.append(_num(r))
                if math.isfinite(r):
                    values[(a, b)].append(r)
            per_layer.append(row)
    summary_csv = _read_csv(results_dir / "agreement_summary.csv")
    if summary_csv:
        summary = [
            [
                r.get("metric_a", ""),
                r.get("metric_b", ""),
                _num(r.get("mean_r")),
                _num(r.get("std_r")),
                r.get("n", ""),
            ]
            for r in summary_csv
        ]
        source = "agreement_summary.csv"
    else:
        summary = [
            [a, b, _num(np.mean(v)) if v else "—", _num(np.std(v)) if v else "—", str(len(v))]
            for (a, b), v in values.items()
        ]
        source = (
            "the per-layer values below (mean and standard deviation over experiments and layers)"
        )
    return (
        _table(["metric a", "metric b", "mean r", "std r", "n"], summary, left=2)
        + f'<p class="note">Pearson correlation between two metrics\' distances across epochs'
        f" (reference "
        f"excluded), per experiment and layer; summarized from {_e(source)}. The paper's r = 0.83 ±"
        " 0.43 "
        "is another statistic: its code correlates CKA with Procrustes across filters per (epoch,"
        " layer, "
        "class) and takes a plain mean (--preset paper-code computes it).</p>"
        + _paper_code_agreement(res)
        + "<details><summary>Per layer</summary>"
        + _table(["experiment", "layer", *[f"r({a}, {b})" for a, b in pairs]], per_layer, left=2)
        + "</details>"
    )


def _paper_code_agreement(res) -> str:
    """The published code's agreement (mean ± std per experiment), when the results hold it."""
    if "agreement_paper_code_mean" not in res:
        return ""
    rows = [
        [
            exp,
            _num(float(res["agreement_paper_code_mean"].values[i])),
            _num(float(res["agreement_paper_code_std"].values[i])),
        ]
        for i, exp in enumerate(as_strings(res["experiment"].values))
    ]
    return (
        _table(["experiment", "published r(cka, procrustes) mean", "std"], rows, left=1)
        + '<p class="note">As the published code computes it: Pearson r across filters per (epoch,'
        " layer, class), plain mean and std over them (one undefined cell, e.g. a filter dead in"
        " every image of a class, makes it undefined).</p>"
    )


def _method_section(res) -> str:
    items = []
    for m in as_strings(res["metric"].values):
        view = str(res["view"].sel(metric=m).values)
        note = METRIC_NOTES.get(m, "")
        items.append(
            f"<li><b>{_e(m)}</b>, view <i>{_e(view)}</i>"
            f" ({_e(VIEW_NOTES.get(view, 'see the README'))}). {_e(note)}</li>"
        )
    a = res.attrs
    try:
        arguments = json.dumps(json.loads(a.get("arguments", "{}")), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        arguments = str(a.get("arguments"))
    settings = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(a.get(k))}</dd>"
        for k in ("reference_epoch", "preset", "bootstrap", "seed", "created", "ftdyn_version")
        if k in a
    )
    return (
        f"<ul>{''.join(items)}</ul>"
        "<p>Every distance compares a layer's activations of the fine-tuned checkpoint with those"
        " of the "
        "reference checkpoint on the same probe images (same order), accumulated in float64. Dead"
        " filters "
        "(all-zero maps) make per-filter values undefined; they are counted (n_nan) and left out of"
        " means, "
        "never dropped silently.</p>"
        "<p>Class-based figures: for each image, the argmax unit of the filter's map (decoded with"
        " the map's "
        "real height and width), its receptive-field crop (Araujo et al. 2019 geometry; padded"
        " where it leaves "
        "the image), averaged weighted by the activation. Sample-based figures: maps placed on the"
        " image at "
        "their cells' receptive-field centres, bilinear, one colour scale per filter across"
        " epochs.</p>"
        f'<dl class="settings">{settings}</dl><h3>Arguments of the'
        f" analysis</h3><pre>{_e(arguments)}</pre>"
    )


# ----------------------------------------------------------------------------- figures


class _Figures:
    """Numbers figures and renders them as <figure> elements with embedded PNGs; ``entries`` are the
    index entries (with their folders) that :meth:`block` chooses from."""

    def __init__(self, out: Path, entries: list[tuple[dict[str, Any], Path]]):
        self.out = out
        self.entries = entries
        self.count = 0
        self.missing: list[str] = []

    def render(self, entry: dict[str, Any], folder: Path) -> str:
        png = folder / entry["file"]
        if not png.is_file():
            self.missing.append(str(png))
            return ""
        self.count += 1
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        links = [
            f'<a href="{_e(Path(os.path.relpath(folder / name, self.out)).as_posix())}">'
            f"{_e(Path(name).suffix[1:].upper())}</a>"
            for name in [entry["file"], *entry.get("formats", [])]
            if (folder / name).is_file()
        ]
        title = entry.get("title") or entry["file"]
        return (
            f'<figure id="fig-{self.count}"><img src="data:image/png;base64,{data}"'
            f' alt="{_e(title)}">'
            f"<figcaption><b>Figure {self.count}. {_e(title)}.</b> {_e(entry.get('caption', ''))}"
            f'<span class="files">[{" · ".join(links)}]</span></figcaption></figure>'
        )

    def block(self, kind: str, group_by: str | None = None, open_first: bool = True) -> str:
        """The figures of ``kind``, in one collapsible group per value of ``group_by``
        when given."""
        chosen = [(e, f) for e, f in self.entries if e.get("kind") == kind]
        if not chosen:
            return '<p class="empty">None.</p>'
        if group_by is None:
            return "".join(self.render(e, f) for e, f in chosen)
        groups: dict[str, list] = {}
        for e, f in chosen:
            groups.setdefault(str(e.get(group_by) or e.get("store_label") or "other"), []).append(
                (e, f)
            )
        parts = []
        for i, (name, items) in enumerate(groups.items()):
            opened = " open" if (open_first and i == 0) else ""
            parts.append(
                f"<details{opened}><summary>{_e(name)} ({len(items)}"
                f" figure{'s' if len(items) > 1 else ''})"
                f"</summary>{''.join(self.render(e, f) for e, f in items)}</details>"
            )
        return "".join(parts)


def _collect(folders: Sequence[Path]) -> list[tuple[dict[str, Any], Path]]:
    seen, out = set(), []
    for folder in folders:
        for entry in read_index(folder):
            key = entry.get("file") or f"note:{entry.get('caption')}"
            if key in seen:
                continue
            seen.add(key)
            out.append((entry, folder))
    return out


# ----------------------------------------------------------------------------- entry point


def report(results_dir, *, stores: Sequence[str | Path] | None = None, out=None) -> Path:
    """Write ``report.html`` (and its figures in ``figures/``) and return its path.

    ``results_dir``: the folder of ``ftdyn analyze`` (holding results.zarr and the
    CSV tables), or its results.zarr. ``stores``: activation stores whose manifests
    give Table 1 and whose default class/sample figures are (re)made, each one of the
    results' experiments; default: the stores named in the results that exist, whose
    figures are made only when the figure index does not already have them. ``out``:
    output folder (default ``results_dir``; not inside a Zarr store).
    Curves and trajectory matrices are always redrawn from the results. ``figures/`` and
    report.html join the result set of ``out`` (:mod:`ftdyn.outputs`) as its new version,
    made current in one atomic step: a killed or interrupted report leaves the previous
    version whole.
    """
    results_dir = Path(results_dir)
    res = open_results(results_dir)
    if (
        results_dir / "zarr.json"
    ).is_file():  # given results.zarr itself: the tables and figures are beside it
        results_dir = results_dir.parent
    out = Path(out) if out is not None else results_dir
    check_out(out, what=arg("out", out))
    figdir = out / FIGURES_DIR
    if stores is not None:
        store_paths = [Path(s) for s in stores]
        for s in store_paths:
            if not s.exists():
                raise FtdynError(f"{arg('stores', s)}: no such store.")
            if match_experiment(res, open_store(s, allow_partial=True), s) is None:
                raise FtdynError(
                    f"{arg('stores', s)}: not among the experiments of {results_dir}"
                    f" [{results_stores(res)}]; give one of their stores, or run `ftdyn analyze`"
                    " with this store first."
                )
        todo = store_paths
    else:
        store_paths = [
            Path(s)
            for s in dict.fromkeys(as_strings(res["store"].values))
            if s and Path(s).exists()
        ]
        indexed = {e.get("store") for e in read_index(figdir)} | {
            e.get("store") for e in read_index(results_dir / FIGURES_DIR)
        }
        todo = [s for s in store_paths if not any(same_path(s, i) for i in indexed)]
    # a second report (or analyze) into this folder is refused, naming this run
    with folder_lock(out):
        update_result_set(
            out,
            lambda folder: _write_report(
                res,
                results_dir,
                folder,
                store_paths,
                todo,
                elsewhere=not same_path(out, results_dir),
            ),
            carry=[FIGURES_DIR, REPORT_NAME],
        )
    return out / REPORT_NAME


def _write_report(
    res, results_dir: Path, out: Path, store_paths: list[Path], todo: list[Path], *, elsewhere: bool
) -> list[str]:
    """Draw ``out/figures`` and write ``out/report.html`` (``out``: the new result set's folder);
    ``elsewhere``: the results folder is not ``out``, and its figures are shown too. Returns the
    names written."""
    figdir = out / FIGURES_DIR
    # curves and matrices always; class/sample figures for `todo`
    default_figures(res, todo, figdir)
    summaries = _store_summaries(res, store_paths)
    entries = _collect([figdir] + ([results_dir / FIGURES_DIR] if elsewhere else []))
    figs = _Figures(out, entries)
    sections = _sections(res, results_dir, summaries, figs.block)
    notes = _notes(res, [e for e, _ in entries if e.get("kind") == "note"], figs.missing)
    if notes:
        sections.insert(-1, ("notes", "Notes", f"<ul>{''.join(notes)}</ul>"))
    page = _page(
        res,
        sections,
        footer=(
            f"Results: {_e(results_dir)} · {figs.count} figures · the PNG/SVG files are "
            f"in {_e(Path(os.path.relpath(figdir, out)).as_posix())}/"
        ),
    )
    (out / REPORT_NAME).write_text(page, encoding="utf-8")
    return [FIGURES_DIR, REPORT_NAME]


def _sections(
    res, results_dir: Path, summaries: list[dict[str, Any]], block
) -> list[tuple[str, str, str]]:
    """(id, title, HTML) of every section in page order; ``block(kind, group_by)`` renders
    figures."""
    return [
        ("experiments", "Experiments", _experiments_section(res)),
        ("accuracy", "Table 1 · Accuracy per epoch", _accuracy_section(summaries)),
        ("reusability", "Table 2 · Reusability", _reusability_section(res)),
        ("agreement", "Metric agreement", _agreement_section(res, results_dir)),
        (
            "curves",
            "Distance curves",
            '<p class="lead">How far each layer moves from the reference checkpoint, epoch by'
            " epoch.</p>" + block("curves") + block("by_layer"),
        ),
        (
            "trajectories",
            "Checkpoint × checkpoint distances",
            '<p class="lead">Every pair of checkpoints compared, per layer: how the features'
            " travel, not only how far from the start they end.</p>"
            + block("trajectory", "experiment"),
        ),
        ("interpretation", "Interpreting the distances", _interpretation_section(res, block)),
        (
            "class-based",
            "Class-based visualizations",
            '<p class="lead">What a filter looks at for a class, and how that changes during'
            " fine-tuning.</p>" + block("class", "experiment"),
        ),
        (
            "sample-based",
            "Sample-based visualizations",
            '<p class="lead">Where on one image a filter responds, epoch by epoch.</p>'
            + block("sample", "experiment"),
        ),
        ("method", "How these numbers were computed", _method_section(res)),
    ]


def _notes(res, notes: list[dict[str, Any]], missing: list[str]) -> list[str]:
    """<li> items of the Notes section: figure notes, degenerate estimators, missing
    figure files."""
    degenerate = json.loads(res.attrs.get("pwsm_degenerate", "[]"))
    others = {m: json.loads(res.attrs.get(f"{m}_degenerate", "[]")) for m in ("procrustes", "cka")}
    items = [f"<li>{_e(n.get('caption'))}</li>" for n in notes]
    if degenerate:
        items.append(
            f"<li>PWSM with α={_e(res.attrs.get('alpha'))} is degenerate where a view has too few"
            " rows (α = 0: no more rows than columns + 1; any α: 2 rows), so the angle is 0"
            f" whatever the checkpoints: {_e(', '.join(degenerate))}. Those PWSM values are left"
            " undefined (NaN); more probe images avoid it.</li>"
        )
    for m, where in others.items():
        if where:
            items.append(
                f"<li>{_e(m)} is degenerate where its view has 2 rows or fewer per matrix (rank ≤ 1"
                f" after centering: 0 whatever the checkpoints): {_e(', '.join(where))}. Those"
                " values are left undefined (NaN).</li>"
            )
    return items + [f"<li>figure file missing, left out: {_e(m)}</li>" for m in missing]


def _page(res, sections: list[tuple[str, str, str]], *, footer: str) -> str:
    """The whole HTML page: header, table of contents, numbered sections, ``footer`` (HTML)."""
    exps = as_strings(res["experiment"].values)
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    toc = "".join(f'<li><a href="#{sid}">{_e(title)}</a></li>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{i}. {_e(title)}</h2>{content}</section>'
        for i, (sid, title, content) in enumerate(sections, 1)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="ftdyn {_e(__version__)}">'
        f"<title>ftdyn report: {_e(', '.join(exps))}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Feature dynamics during fine-tuning</h1><p>{len(exps)} experiment"
        f"{'s' if len(exps) != 1 else ''}: {_e(', '.join(exps))} · reference epoch "
        f"{_e(res.attrs.get('reference_epoch'))} · preset {_e(res.attrs.get('preset'))} · generated"
        f" {_e(created)} by "
        f"ftdyn {_e(__version__)}</p></header>"
        f"<main><nav><ol>{toc}</ol></nav>{body}</main>"
        f"<footer>{footer}</footer></body></html>\n"
    )
