"""The corrected estimators in the pipeline (``estimator="corrected"``, the default) equal an
independent computation on the same arrays: the grouped jackknife of the plug-in metric
functions over the analysis's seeded groups of images, and the debiased CKA per filter."""

from __future__ import annotations

import json

import numpy as np
from helpers import NOISE, make_planted_store

import ftdyn
from ftdyn import views
from ftdyn.metrics import linear_cka, procrustes, pwsm
from ftdyn.metrics.estimators import JACKKNIFE_GROUPS, jackknife
from ftdyn.summary import shared_units


def _jackknife(metric, x, y, groups, rows_per_image=1):
    """The grouped jackknife of ``metric`` on (rows × cols) matrices whose rows come in blocks of
    ``rows_per_image`` per image, images in ``groups``."""
    rows = np.repeat(groups, rows_per_image)
    left = [metric(x[rows != g], y[rows != g]) for g in np.unique(groups)]
    return float(jackknife(metric(x, y), np.array(left))[0])


def test_corrected_values_are_the_jackknife_and_the_debiased_cka(tmp_path):
    """48 images: layer2.relu's filter view (9 positions) is within the jackknife's column/row
    limit, features.3's (36 positions) beyond it, where the plug-in is kept and marked."""
    path, data = make_planted_store(tmp_path / "s.zarr", n=48)
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False)
    assert json.loads(ds.attrs["estimators"]) == {
        "pwsm": "jackknife",
        "procrustes": "jackknife",
        "cka": "debiased",
    }
    n = data[0]["features.3"].shape[0]
    groups = shared_units(n, JACKKNIFE_GROUPS, 0, 0)
    for last in range(1, len(NOISE)):
        x, y = data[0]["layer2.relu"], data[last]["layer2.relu"]
        h, w = x.shape[2:]
        got = ds["distance"].sel(metric="pwsm").values[0, 1, last]
        want = _jackknife(pwsm, views.channels(x), views.channels(y), groups, h * w)
        assert abs(got - want) < 1e-9
        got = ds["filter_distance"].sel(metric="procrustes").values[0, 1, last]
        fx, fy = views.filter(x), views.filter(y)  # (filters, images, positions)
        want = [_jackknife(procrustes, fx[f], fy[f], groups) for f in range(len(fx))]
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-9)
        got = ds["filter_distance"].sel(metric="cka").values[0, 1, last]
        want = [1 - linear_cka(fx[f], fy[f], debiased=True) for f in range(len(fx))]
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-9)
        wide_x, wide_y = views.filter(data[0]["features.3"]), views.filter(data[last]["features.3"])
        got = ds["filter_distance"].sel(metric="procrustes").values[0, 0, last]
        want = [procrustes(wide_x[f], wide_y[f]) for f in range(len(wide_x))]
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-9)
    unreliable = ds["unreliable"].sel(metric="procrustes").values[0]
    assert unreliable.tolist() == [True, False]
    reason = json.loads(ds.attrs["unreliable_reasons"])["resnet18/toy/procrustes/features.3"]
    assert "0.75 > 0.4" in reason and reason.endswith("the plug-in value is shown")


def test_bootstrap_intervals_hold_their_estimate_and_leave_it_unchanged(tmp_path):
    path, _ = make_planted_store(tmp_path / "s.zarr")
    plain = ftdyn.analyze(path, out=tmp_path / "p", progress=False)
    boot = ftdyn.analyze(path, out=tmp_path / "b", progress=False, bootstrap=20)
    np.testing.assert_allclose(boot["distance"].values, plain["distance"].values, atol=1e-12)
    value, lo, hi = (boot[k].values[..., 1:] for k in ("distance", "ci_low", "ci_high"))
    trusted = ~boot["unreliable"].values[..., None]  # the others get no interval
    assert np.isfinite(lo[trusted & np.isfinite(value)]).all()
    assert ((lo <= value + 1e-12) & (value <= hi + 1e-12))[trusted & np.isfinite(value)].all()


def test_cka_jackknifed_beyond_its_limit_is_the_plug_in_and_marked(tmp_path):
    """CKA on the pooled view takes the jackknife; with 12 images, 6 channels (0.5 columns per
    row) exceed its limit: the plug-in value is kept and marked, 4 channels (0.33) are not."""
    path, data = make_planted_store(tmp_path / "s.zarr")
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False, metrics=["cka"], views="pooled")
    assert json.loads(ds.attrs["estimators"]) == {"cka": "jackknife"}
    assert ds["unreliable"].values[0, 0].tolist() == [False, True]
    reason = json.loads(ds.attrs["unreliable_reasons"])["resnet18/toy/cka/layer2.relu"]
    assert "0.50 > 0.4" in reason and reason.endswith("the plug-in value is shown")
    for last in range(1, len(NOISE)):
        x, y = (views.pooled(data[e]["layer2.relu"]) for e in (0, last))
        got = ds["distance"].values[0, 0, 1, last]
        assert abs(got - (1 - linear_cka(x, y))) < 1e-9


def test_debiased_cka_is_the_same_from_row_statistics_and_from_grams(tmp_path):
    """layer2.relu's filter view (9 positions, 30 images) takes the row side, where the debiased
    CKA comes from the accumulated fourth moments; every pair of checkpoints (the trajectory)
    takes the per-image Grams: the same values, intervals and convergence subsets."""
    path, _ = make_planted_store(tmp_path / "s.zarr")
    kw = dict(metrics=["cka", "procrustes"], layers=["layer2.relu"], bootstrap=20, progress=False)
    rows = ftdyn.analyze(path, out=tmp_path / "rows", trajectory="reference", **kw)
    grams = ftdyn.analyze(path, out=tmp_path / "grams", trajectory="all", **kw)
    assert [j["side"] for j in json.loads(rows.attrs["plan"])] == ["row"]
    assert [j["side"] for j in json.loads(grams.attrs["plan"])] == ["gram"]
    for name in ("distance", "filter_distance", "ci_low", "ci_high", "convergence"):
        got, want = rows[name].sel(metric="cka"), grams[name].sel(metric="cka")
        np.testing.assert_allclose(got.values, want.values, atol=1e-12)


def test_values_that_cannot_be_trusted_get_no_interval(tmp_path):
    """48 images: Procrustes on features.3's filter view (36 positions) is beyond the jackknife's
    column limit and marked unreliable; it gets no bootstrap interval (NaN), layer2.relu does."""
    path, _ = make_planted_store(tmp_path / "s.zarr", n=48)
    ds = ftdyn.analyze(
        path, out=tmp_path / "r", metrics=["procrustes"], bootstrap=10, progress=False
    )
    assert ds["unreliable"].values[0, 0].tolist() == [True, False]
    low = ds["ci_low"].sel(metric="procrustes").values[0][:, 1:]
    assert np.isnan(low[0]).all() and np.isfinite(low[1]).all()
    assert np.isfinite(ds["distance"].sel(metric="procrustes").values[0][:, 1:]).all()
