"""Reliability of a value: the results contract, figures, findings, report and CSV tables of
values that cannot be trusted at their view's shape, and the convergence verdict."""

from __future__ import annotations

import csv
import html
import json
import warnings

import numpy as np
import pytest
from helpers import make_results

import ftdyn
from ftdyn import demos
from ftdyn.analysis.interpret import warn_unconverged
from ftdyn.errors import ConvergenceWarning
from ftdyn.reporting.sections import (
    _interpretation_section,
    _reusability_section,
    layer_order_findings,
)
from ftdyn.results import unreliable, validate_results, write_tables
from ftdyn.summary import convergence_verdict, subset_noise
from ftdyn.viz import curves

LAYERS = ("features.3", "features.8", "features.18.2")
REASON = "0.95 columns per row in the channels view: above the plug-in estimator's limit"
EML = ("experiment", "metric", "layer_index")


def results_with_unreliable(mark=True):
    """A small results Dataset (tests/helpers.make_results) with the interpretation variables and
    PWSM at the deepest layer of the first experiment unreliable and closest to the source."""
    ds = make_results(layers=LAYERS)
    E, M, L, T = ds["distance"].shape
    pwsm = list(ds["metric"].values).index("pwsm")
    dist = ds["distance"].values.copy()
    dist[0, pwsm, 2] = 0.01 * np.sqrt(ds["epoch"].values)  # "the deepest layer moved least"
    ds["distance"] = (ds["distance"].dims, dist)
    fractions = np.array([0.25, 0.5, 1.0])
    conv = np.repeat(dist[..., -1:], 3, axis=-1)
    conv[0, 0, 0] = [0.50, 0.30, 0.20]  # a drift ∝ 1/images: not converged
    ds = ds.assign_coords(layer_index_other=np.arange(L), fraction=fractions)
    p = np.full((E, M, L, L), 0.01)
    ds = ds.assign(
        ceiling=(EML, np.ones((E, M, L))),
        relative_distance=(ds["distance"].dims, dist),
        relative_reusability_mean=(("experiment", "metric"), np.zeros((E, M))),
        relative_reusability_std=(("experiment", "metric"), np.zeros((E, M))),
        delta_ci_low=(ds["distance"].dims, np.full_like(dist, 0.001)),
        delta_ci_high=(ds["distance"].dims, np.full_like(dist, 0.002)),
        layer_order_p=((*EML, "layer_index_other"), p),
        probe_accuracy=(("experiment", "layer_index", "epoch"), np.full((E, L, T), 0.5)),
        probe_accuracy_random_init=(("experiment", "layer_index"), np.full((E, L), 0.4)),
        probe_chance=(("experiment",), np.full(E, 1 / 3)),
        convergence=((*EML, "fraction"), conv),
    )
    ok, need = convergence_verdict(conv, 48, ceiling=ds["ceiling"].values)
    ds = ds.assign(converged=(EML, ok), images_needed=(EML, need))
    ds.attrs.update(
        convergence_tolerance=0.02,
        not_converged=json.dumps([]),
        probe_images=json.dumps([48, 48]),
        relative_note="relative_distance = distance / ceiling",
    )
    if mark:
        odd = np.zeros((E, M, L), bool)
        odd[0, pwsm, 2] = True
        ds = ds.assign(
            unreliable=(EML, odd), column_ratio=(EML, np.where(odd, 0.95, 0.1).astype(float))
        )
        ds.attrs["estimators"] = {"procrustes": "plugin", "pwsm": "plugin", "cka": "debiased"}
        ds.attrs["unreliable_reasons"] = {f"toynet/shapes/pwsm/{LAYERS[2]}": REASON}
    return validate_results(ds)


# ------------------------------------------------------------------- the convergence verdict
def test_verdict_compares_the_change_with_the_tolerance_of_the_ceiling():
    subsets = np.array([[0.50, 0.510, 0.515], [0.80, 0.60, 0.50]])
    ok, need = convergence_verdict(subsets, 100, ceiling=np.array([1.0, 1.0]))
    # 0.005 <= 2 % of 1; a drift of 0.1 the subsets do not take for noise (it is the c/n trend)
    assert ok.tolist() == [True, False]
    assert np.isnan(need[0]) and need[1] == 500  # 100 images · 0.1 / 0.02
    assert subset_noise(subsets[1]) == pytest.approx(0.0, abs=1e-12)
    # a 0.1 change is 2 % of a ceiling of 5
    assert convergence_verdict(subsets[1], 100, ceiling=5.0)[0]


def test_verdict_uses_the_bootstrap_half_width_else_the_subsets_noise():
    wobbly = np.array([0.5, 0.7, 0.6])  # no trend: the subsets imply noise of the change's size
    noise = 1.959963984540054 * abs(0.5 - 2.1 + 1.2) / np.sqrt(6)
    assert subset_noise(wobbly) == pytest.approx(noise)
    assert convergence_verdict(wobbly, 10, ceiling=1.0)[0]
    # a bootstrap half-width, where there is one, is the noise instead
    ok, need = convergence_verdict(wobbly, 10, half_width=0.05, ceiling=1.0)
    assert not ok and need == 20
    assert convergence_verdict(wobbly, 10, half_width=0.2, ceiling=1.0)[0]


def test_verdict_without_a_ceiling_takes_the_metrics_range_and_is_undefined_without_values():
    drift = np.array([0.9, 0.6, 0.57])  # 0.03 change, no noise left after the trend
    assert not convergence_verdict(drift, 10, metric_range=1.0, half_width=0.0)[0]
    assert convergence_verdict(drift, 10, metric_range=np.pi / 2, half_width=0.0)[0]
    ok, need = convergence_verdict(np.array([np.nan, np.nan, 0.3]), 10)
    assert not ok and np.isnan(need)


def test_the_convergence_warning_is_one_short_line_with_counts():
    ds = results_with_unreliable()
    hits = int(np.isfinite(ds["images_needed"].values).sum())
    assert hits == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_unconverged(ds)
    (warning,) = caught
    text = str(warning.message)
    assert warning.category is ConvergenceWarning and "\n" not in text and len(text) < 120
    checked = int(np.isfinite(ds["convergence"].values[..., -2:]).all(-1).sum())
    assert text == (
        f"1 of {checked} (experiment, metric, layer) distances not converged at 48 images;"
        " see convergence.csv"
    )


# ------------------------------------------------------------------------- the contract
def test_results_without_reliability_variables_read_as_all_reliable():
    ds = results_with_unreliable(mark=False)
    assert "unreliable" not in ds and not unreliable(ds).any()
    assert unreliable(results_with_unreliable())[0].any()


def test_reliability_variables_and_attributes_are_checked():
    ds = results_with_unreliable()
    as_json = ds.copy()
    as_json.attrs["estimators"] = json.dumps(ds.attrs["estimators"])
    validate_results(as_json)  # stored as JSON text reads the same
    bad = ds.copy()
    bad["unreliable"] = (EML, ds["unreliable"].values.astype(float))
    with pytest.raises(ftdyn.FtdynError, match="'unreliable' is float64, not bool"):
        validate_results(bad)
    bad = ds.copy()
    bad["column_ratio"] = (("experiment", "metric"), np.zeros((2, 3)))
    with pytest.raises(ftdyn.FtdynError, match="'column_ratio' is not"):
        validate_results(bad)
    bad = ds.copy()
    bad.attrs["estimators"] = {"pwsm": "exact"}
    with pytest.raises(ftdyn.FtdynError, match="'estimators' names exact"):
        validate_results(bad)
    bad = ds.copy()
    bad.attrs["unreliable_reasons"] = "[1, 2]"
    with pytest.raises(ftdyn.FtdynError, match="'unreliable_reasons' is not a mapping"):
        validate_results(bad)


def test_csv_tables_mark_the_unreliable_rows(tmp_path):
    write_tables(results_with_unreliable(), tmp_path)
    for name in ("distances.csv", "relative_distances.csv", "convergence.csv"):
        with open(tmp_path / name) as f:
            rows = list(csv.DictReader(f))
        marked = [r for r in rows if r["unreliable"] == "True"]
        assert marked and all(
            (r["experiment"], r["metric"], r["layer"], r["reason"])
            == ("toynet/shapes", "pwsm", LAYERS[2], REASON)
            for r in marked
        )
        others = [r for r in rows if r not in marked]
        assert {(r["unreliable"], r["reason"]) for r in others} == {("False", "")}
    with open(tmp_path / "convergence.csv") as f:
        assert {r["converged"] for r in csv.DictReader(f)} == {"True", "False"}


# ------------------------------------------------------------------------------ figures
def _line_of(ax, label):
    (line,) = [l for l in ax.lines if l.get_label() == label]
    return line


def test_curves_draw_an_unreliable_layer_hollow_grey_and_dashed():
    ds = results_with_unreliable()
    fig = curves.curves_figure(ds)
    axes = np.array(fig.axes[: 2 * 3]).reshape(2, 3)
    odd, ok = _line_of(axes[0, 1], LAYERS[2]), _line_of(axes[0, 1], LAYERS[1])
    assert odd.get_markerfacecolor() == "none" and odd.get_linestyle() == "--"
    assert odd.get_color() == curves.UNRELIABLE_COLOR
    assert ok.get_linestyle() == "-" and not isinstance(ok.get_markerfacecolor(), str)
    # the same layer under another metric is an ordinary line
    assert _line_of(axes[0, 0], LAYERS[2]).get_linestyle() == "-"
    legend = [t.get_text() for t in axes[0, -1].get_legend().get_texts()]
    assert legend == [*LAYERS, "unreliable (see report)"]
    assert "unreliable" not in [t.get_text() for t in axes[1, -1].get_legend().get_texts()]


def test_by_layer_point_of_an_unreliable_value_is_hollow_never_on_the_line():
    ds = results_with_unreliable()
    pwsm = curves.by_layer_figure(ds).axes[1]
    main = pwsm.lines[0]
    assert np.isnan(main.get_ydata()[2]) and np.isfinite(main.get_ydata()[:2]).all()
    (odd,) = [l for l in pwsm.lines if l.get_gid() == curves.UNRELIABLE_GID]
    assert odd.get_markerfacecolor() == "none" and odd.get_color() == curves.UNRELIABLE_COLOR
    assert odd.get_ydata()[-1] == pytest.approx(ds["distance"].values[0, 1, 2, -1])


def test_a_nan_is_a_gap_not_a_joined_line():
    ds = make_results()
    dist = ds["distance"].values.copy()
    dist[0, 0, 0, 2] = np.nan
    ds["distance"] = (ds["distance"].dims, dist)
    line = _line_of(curves.curves_figure(ds).axes[0], "features.3")
    assert list(line.get_xdata()) == [0, 1, 2, 3] and np.isnan(line.get_ydata()[2])


# -------------------------------------------------------------------- findings and report
def test_findings_skip_the_unreliable_deepest_layer_and_say_so():
    ds = results_with_unreliable()
    rows = {(r["experiment"], r["metric"]): r for r in demos.findings(ds)}
    pwsm = rows[("toynet/shapes", "pwsm")]
    assert pwsm["skipped"] == [f"{LAYERS[2]} skipped: unreliable ({REASON})"]
    assert pwsm["unreliable"] == {LAYERS[2]: REASON}
    # without the skip the deepest layer would read as the closest to the source
    assert pwsm["deepest"]["layer"] == LAYERS[1] and pwsm["early_closer_than_deep"]
    assert pwsm["increasing_with_depth"] and pwsm["layers"][LAYERS[2]] < pwsm["layers"][LAYERS[0]]
    kept = ds["distance"].sel(experiment="toynet/shapes", metric="pwsm").values[:2, 1:]
    assert pwsm["reusability_mean"] == pytest.approx(kept.mean(axis=0).mean())
    cka = rows[("toynet/shapes", "cka")]
    assert cka["skipped"] == [] and cka["deepest"]["layer"] == LAYERS[2]
    assert cka["reusability_mean"] == float(ds["reusability_mean"].values[0, 2])
    text = demos.format_findings(list(rows.values()))
    assert f"toynet/shapes pwsm: {LAYERS[2]} skipped: unreliable ({REASON})" in text
    page = demos.findings_html(list(rows.values()), {})
    assert f"{LAYERS[2]} 0.017 (unreliable)" in page and "skipped: unreliable" in page


def test_report_marks_unreliable_values_and_leaves_them_out_of_comparisons():
    ds = results_with_unreliable()
    found = layer_order_findings(ds)
    assert not [f for f in found if f["metric"] == "pwsm" and LAYERS[2] in (f["early"], f["deep"])]
    assert [f for f in found if f["metric"] == "cka" and f["deep"] == LAYERS[2]]
    table = _reusability_section(ds)
    assert "(unreliable)" in table and html.escape(REASON) in table
    section = _interpretation_section(ds, lambda kind, *_: "")
    assert f"{LAYERS[2]} skipped: unreliable ({html.escape(REASON)})" in section
    assert "Not converged: 1 of 15 checked" in section and "2.0 % of the random-init" in section
