"""The report's sections, each HTML from the results (and the stores): experiments, accuracy,
reusability, the interpretation's findings, metric agreement and how the numbers were computed;
with the small formatting helpers they share."""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FtdynError
from ..results import unreliable, unreliable_reason
from ..store import open_store
from ..viz import match_experiment, store_label
from ..viz.curves import as_strings, experiment_layers

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
        ep = [
            int(e)
            for e, ok in zip(res["epoch"].values, np.isfinite(d).any(axis=(0, 1)), strict=True)
            if ok
        ]
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
    odd = {(f["experiment"], f["metric"], f["layer"]) for f in unreliable_values(res)}
    for exp in as_strings(res["experiment"].values):
        for li, name in experiment_layers(res, exp):
            layer_rows.append(
                [exp, name]
                + [
                    _mean_std(res, "layer_reusability", experiment=exp, metric=m, layer_index=li)
                    + (" (unreliable)" if (exp, m, name) in odd else "")
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
        + _unreliable_note(res)
        + "<details><summary>Per layer</summary>"
        + _table(["experiment", "layer", *metrics], layer_rows, left=2)
        + "</details>"
    )


def unreliable_values(res) -> list[dict[str, str]]:
    """Every (experiment, metric, layer) whose value cannot be trusted at its view's shape, with
    the reason the results give (none in results without the ``unreliable`` variable)."""
    mask, exps = unreliable(res), as_strings(res["experiment"].values)
    metrics = as_strings(res["metric"].values)
    return [
        {
            "experiment": exp,
            "metric": m,
            "layer": name,
            "reason": unreliable_reason(res, exp, m, name),
        }
        for e, exp in enumerate(exps)
        for mi, m in enumerate(metrics)
        for li, name in experiment_layers(res, exp)
        if mask[e, mi, li]
    ]


def _unreliable_note(res) -> str:
    """The values that cannot be trusted, with their reasons (empty when there are none)."""
    found = unreliable_values(res)
    if not found:
        return ""
    items = "".join(
        f"<li>{_e(f['experiment'])} {_e(f['metric'])} {_e(f['layer'])}: {_e(f['reason'])}</li>"
        for f in found
    )
    return (
        '<p class="note">Unreliable values (drawn grey, dashed and hollow in the figures, marked'
        " in the tables and CSV files, left out of every statement): the metric's estimator"
        f" cannot be trusted at the view's shape.</p><ul>{items}</ul>"
    )


#: significance level of the report's statements on paired bootstrap results
ALPHA_LEVEL = 0.05


def layer_order_findings(res) -> list[dict[str, Any]]:
    """Every (experiment, metric, shallower layer a, deeper layer b) with a bootstrap p-value,
    both values reliable: the last-epoch distances, p and whether "a moved less than b" is
    significant."""
    odd = {(f["experiment"], f["metric"], f["layer"]) for f in unreliable_values(res)}
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
                    if np.isfinite(p[a, b]) and not {(exp, m, na), (exp, m, nb)} & odd:
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
    interval containing 0 (not distinguishable from no change); unreliable values left out."""
    odd = {(f["experiment"], f["metric"], f["layer"]) for f in unreliable_values(res)}
    lo, hi, epochs = (
        res["delta_ci_low"],
        res["delta_ci_high"],
        [int(e) for e in res["epoch"].values],
    )
    out = []
    for exp in as_strings(res["experiment"].values):
        for m in as_strings(res["metric"].values):
            for li, name in experiment_layers(res, exp):
                if (exp, m, name) in odd:
                    continue
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
        parts.append(
            f'<p class="note">Paired bootstrap ({_e(res.attrs.get("bootstrap"))} resamples of the'
            " images, "
            "each shared by every epoch and layer). At the last epoch, "
            f"{len(sig)} of {len(found)} 'early &lt; deep' comparisons are significant "
            f"(p &lt; {ALPHA_LEVEL}):</p>"
            + paired_tests_table(found)
            + _skipped_note(res)
            + f'<p class="note">{len(flat)} epoch step(s) are not distinguishable from 0 (their'
            " paired 95 % "
            "interval contains 0; hollow markers in the figure).</p>"
        )
    else:
        parts.append(
            '<p class="note">No bootstrap: epoch steps and layer orders are not tested; analyze'
            " with --bootstrap N (e.g. 100).</p>"
        )
    parts += ["<h3>Linear probes</h3>", block("probes"), _details("Per layer", probes_table(res))]
    parts += ["<h3>Convergence</h3>", _convergence_note(res), block("convergence")]
    parts.append(_details("Per layer", convergence_table(res)))
    return "".join(parts)


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{content}</details>" if content else ""


def paired_tests_table(found: list[dict[str, Any]]) -> str:
    """The layer-order comparisons of :func:`layer_order_findings` as a table, the significant
    ones first, each group by p."""
    rows = [
        [
            f["experiment"],
            f["metric"],
            f["early"],
            f["deep"],
            _num(f["d_early"]),
            _num(f["d_deep"]),
            _num(f["p"]),
            "yes" if f["significant"] else "no",
        ]
        for f in sorted(found, key=lambda f: (not f["significant"], f["p"]))
    ]
    if not rows:
        return (
            '<p class="empty">No comparison: every layer pair lacks a p-value or is unreliable.</p>'
        )
    return _table(
        [
            "experiment",
            "metric",
            "shallower",
            "deeper",
            "d shallower",
            "d deeper",
            "p",
            "early < deep",
        ],
        rows,
        left=4,
    )


def probes_table(res) -> str:
    """Linear-probe accuracy per experiment and layer: chance, random-init network, each epoch
    (empty when the results have no probes)."""
    if "probe_accuracy" not in res:
        return ""
    epochs = [int(e) for e in res["epoch"].values]
    rows = [
        [
            exp,
            name,
            _pct(res["probe_chance"].sel(experiment=exp).values),
            _pct(res["probe_accuracy_random_init"].sel(experiment=exp, layer_index=li).values),
            *(_pct(v) for v in res["probe_accuracy"].sel(experiment=exp, layer_index=li).values),
        ]
        for exp in as_strings(res["experiment"].values)
        for li, name in experiment_layers(res, exp)
    ]
    return _table(
        ["experiment", "layer", "chance", "random init", *(f"epoch {e}" for e in epochs)],
        rows,
        left=2,
    )


def convergence_table(res) -> str:
    """Per experiment, metric and layer: the last epoch's distance on each nested fraction of the
    probe images, whether it has converged and the images it would need (empty without
    convergence)."""
    if "convergence" not in res:
        return ""
    odd = {(f["experiment"], f["metric"], f["layer"]) for f in unreliable_values(res)}
    rows = []
    for exp in as_strings(res["experiment"].values):
        for m in as_strings(res["metric"].values):
            for li, name in experiment_layers(res, exp):
                at = {"experiment": exp, "metric": m, "layer_index": li}
                conv = res["convergence"].sel(**at).values
                verdict = "yes" if bool(res["converged"].sel(**at).values) else "no"
                if not np.isfinite(conv[-2:]).all():
                    verdict = "—"  # not checked: a fraction's distance is undefined
                if (exp, m, name) in odd:
                    verdict = "unreliable"
                needed = _num(res["images_needed"].sel(**at).values, 0)
                rows.append([exp, m, name, *(_num(v) for v in conv), verdict, needed])
    fractions = [f"d at {_pct(f)}" for f in res["fraction"].values]
    return _table(
        ["experiment", "metric", "layer", *fractions, "converged", "images needed"], rows, left=3
    )


def _skipped_note(res) -> str:
    """Which layers the comparisons left out, and why (empty when none was)."""
    found = unreliable_values(res)
    if not found:
        return ""
    items = "".join(
        f"<li>{_e(f['experiment'])} {_e(f['metric'])}: {_e(f['layer'])} skipped: unreliable"
        f" ({_e(f['reason'])})</li>"
        for f in found
    )
    return f'<p class="note">Left out of these comparisons:</p><ul>{items}</ul>'


def _convergence_note(res) -> str:
    """What the convergence verdict compares, and how many distances have not converged."""
    need, conv = res["images_needed"].values, res["convergence"].values
    checked = int(np.isfinite(conv[..., -2:]).all(axis=-1).sum())
    bad = json.loads(res.attrs.get("not_converged", "[]"))
    return (
        '<p class="note">A distance has converged when its change from half the probe images to'
        " all is within its own noise (the bootstrap half-width, else the spread the nested"
        " subsets imply) or"
        f" {_pct(res.attrs.get('convergence_tolerance'))} of the random-init ceiling (else of the"
        f" metric's range). Not converged: {int(np.isfinite(need).sum())} of {checked} checked"
        " (experiment, metric, layer) distances"
        + (f" ({_e(', '.join(bad))})" if bad and len(bad) <= 10 else "")
        + "; convergence.csv gives each one and the images it would need.</p>"
    )


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
