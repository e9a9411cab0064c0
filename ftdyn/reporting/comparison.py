"""The report's section on runs compared: the seed floor, the departure epochs and the
run-vs-run distances (:mod:`ftdyn.analysis.compare`)."""

from __future__ import annotations

import json
import math

import numpy as np

from ..results import unreliable
from ..viz.curves import as_strings, experiment_layers
from .sections import _e, _num, _table


def departure_findings(res) -> list[dict]:
    """Per experiment, metric and layer: the departure epoch (None: never beyond the floor;
    "unreliable" or "not tested", without a bootstrap of the metric: not judged), the last
    epoch's distance and floor."""
    if "departure_epoch" not in res:
        return []
    mask = unreliable(res)
    metrics, out = as_strings(res["metric"].values), []
    for e, exp in enumerate(as_strings(res["experiment"].values)):
        last = int(np.flatnonzero(np.asarray(res["has_epoch"].values[e]))[-1])
        for mi, metric in enumerate(metrics):
            for li, layer in experiment_layers(res, exp):
                departed = float(res["departure_epoch"].values[e, mi, li])
                tested = np.isfinite(res["drift_above_floor_p"].values[e, mi, li]).any()
                if mask[e, mi, li] or not tested:
                    departed = "unreliable" if mask[e, mi, li] else "not tested"
                out.append(
                    {
                        "experiment": exp,
                        "metric": metric,
                        "layer": layer,
                        "departure": departed
                        if isinstance(departed, str)
                        else (None if math.isnan(departed) else int(departed)),
                        "distance": float(res["distance"].values[e, mi, li, last]),
                        "floor": float(res["floor"].values[e, mi, li, last]),
                    }
                )
    return out


def _departure_cell(found: dict) -> str:
    if isinstance(found["departure"], str):
        return found["departure"]
    if found["departure"] is None:
        return "—"
    return f"epoch {found['departure']}"


def runs_section(res) -> str:
    """HTML: one table per experiment (layers × metrics) of departure epochs with the last
    epoch's distance and floor, and the run pairs compared."""
    if "departure_epoch" not in res:
        return '<p class="empty">These results predate run comparisons; re-run `ftdyn analyze`.</p>'
    groups = json.loads(res.attrs.get("replicate_groups", "[]"))
    pairs = json.loads(res.attrs.get("run_pairs", "[]"))
    parts = [
        '<p class="lead">Did a layer move further than two runs of the same condition move apart'
        " (the seed floor)? From which epoch?</p>",
        f'<p class="note">{_e(res.attrs.get("departure_note", ""))}. Replicate groups: '
        f"{_e('; '.join(', '.join(g) for g in groups) or 'none')}. Run pairs compared: "
        f"{len(pairs)} (runs.csv); the floor, the drift above it and its p-value per epoch are in"
        " floor.csv.</p>",
    ]
    found = departure_findings(res)
    metrics = as_strings(res["metric"].values)
    for exp in as_strings(res["experiment"].values):
        mine = [f for f in found if f["experiment"] == exp]
        rows = []
        for _, layer in experiment_layers(res, exp):
            cells = [f for f in mine if f["layer"] == layer]
            rows.append(
                [layer]
                + [
                    f"{_departure_cell(f)} ({_num(f['distance'])} / {_num(f['floor'])})"
                    for f in sorted(cells, key=lambda f: metrics.index(f["metric"]))
                ]
            )
        parts.append(f"<h3>{_e(exp)}</h3>")
        parts.append(_table(["layer", *metrics], rows))
    parts.append(
        '<p class="note">Each cell: the departure epoch (— : never significantly above the floor;'
        " not tested: no bootstrap of that metric), then the last epoch's distance from the source"
        " / the seed floor (nan without replicates).</p>"
    )
    return "".join(parts)
