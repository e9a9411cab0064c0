"""ftdyn.metrics.heldout: the held-out Procrustes and PWSM bracket the population distance with
the plug-in value where no correction holds (planted data of known population values, the
model of tests/test_estimators.py), the row and Gram routes agree, and ``ftdyn analyze`` reports
the held-out value beside every value beyond its estimator's limit."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
from helpers import NOISE, make_planted_store
from test_estimators import METRIC, PLUGIN, ROWS, planted_pair, population

import ftdyn
from ftdyn import views
from ftdyn.metrics.estimators import JACKKNIFE_GROUPS
from ftdyn.metrics.heldout import (
    heldout,
    heldout_folds,
    heldout_from_gram,
    heldout_from_row_stats,
)
from ftdyn.metrics.stats import RowStats
from ftdyn.summary import shared_units

DRAWS = 20


@functools.cache
def bracket(rank: str, ratio: float, name: str) -> tuple[float, float, float]:
    """(mean plug-in − truth, mean held-out − truth, share of draws with plug-in ≤ truth ≤
    held-out) over DRAWS seeded draws of ROWS rows at columns/rows = ``ratio``."""
    cols = round(ratio * ROWS)
    rng = np.random.default_rng(7)
    A = rng.standard_normal((cols if rank == "full" else cols // 4, cols))
    B = A + 0.5 * rng.standard_normal(A.shape)
    truth = population(A, B)[name]
    metric, alpha = METRIC[name]
    low, high, inside = [], [], []
    for _ in range(DRAWS):
        X, Y = planted_pair(rng, A, B)
        plug, held = PLUGIN[name](X, Y), heldout(metric, X, Y, alpha=alpha)
        low.append(plug - truth)
        high.append(held - truth)
        inside.append(plug <= truth <= held)
    return float(np.mean(low)), float(np.mean(high)), float(np.mean(inside))


@pytest.mark.parametrize("rank", ["full", "low"])
@pytest.mark.parametrize(
    "ratio, name",
    [
        (1.0, "procrustes"),
        (1.0, "pwsm1"),
        (0.5, "pwsm0"),
        pytest.param(3.0, "procrustes", marks=pytest.mark.slow),
        pytest.param(3.0, "pwsm1", marks=pytest.mark.slow),
    ],
)
def test_plug_in_and_held_out_bracket_the_truth_beyond_the_column_limit(rank, ratio, name):
    # measured (mean − truth, plug-in / held-out; share inside), 15 draws: full rank,
    # columns/rows 1: procrustes −0.022 / +0.068, pwsm α=1 −0.076 / +0.126; 3: procrustes
    # −0.038 / +0.472, pwsm α=1 −0.155 / +0.116; low rank 1: −0.021 / +0.011, −0.085 / +0.021;
    # 3: −0.012 / +0.040, −0.070 / +0.016; the truth was inside in every draw
    below, above, inside = bracket(rank, ratio, name)
    assert below < 0 < above
    assert inside >= 0.8


def _folds(X: torch.Tensor, Y: torch.Tensor, groups: np.ndarray) -> list[RowStats]:
    out = []
    for g in np.unique(groups):
        rows = torch.as_tensor(np.flatnonzero(groups == g))
        A, B = X[..., rows, :], Y[..., rows, :]
        out.append(RowStats(len(rows), A.sum(-2), B.sum(-2), A.mT @ A, B.mT @ B, A.mT @ B))
    return out


def test_row_and_gram_routes_agree_and_identical_inputs_are_at_zero():
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.standard_normal((3, 30, 50)))
    Y = X + torch.as_tensor(rng.standard_normal((3, 30, 50)))
    groups = np.arange(30) % 8
    rows = heldout_from_row_stats("procrustes", _folds(X, Y, groups))
    grams = heldout_from_gram("procrustes", X @ X.mT, Y @ Y.mT, groups)
    np.testing.assert_allclose(rows, grams, atol=1e-12)
    assert rows.shape == (3,) and (rows > np.asarray(ftdyn.metrics.procrustes(X, Y))).all()
    # the diagonals of the self-products are all Procrustes needs
    diag = [
        RowStats(f.n, f.sum_x, f.sum_y, f.xx.diagonal(0, -2, -1), f.yy.diagonal(0, -2, -1), f.xy)
        for f in _folds(X, Y, groups)
    ]
    np.testing.assert_allclose(heldout_from_row_stats("procrustes", diag), rows, atol=1e-12)
    tall = X[0, :, :6]
    for metric, alpha in (("procrustes", 0.0), ("pwsm", 0.0), ("pwsm", 0.5)):
        assert abs(heldout(metric, tall, tall, alpha=alpha)) < 1e-7
    assert np.isnan(heldout_from_gram("pwsm", X @ X.mT, Y @ Y.mT, groups)).all()


def test_dead_input_is_nan_and_bad_arguments_are_refused():
    X = np.random.default_rng(1).standard_normal((20, 4))
    assert np.isnan(heldout("procrustes", X, np.ones((20, 4))))
    assert np.isnan(heldout("pwsm", np.zeros((20, 4)), X))
    with pytest.raises(ValueError, match="no held-out value of 'cka'"):
        heldout("cka", X, X)
    with pytest.raises(ValueError, match="at least 2 folds"):
        heldout_from_gram("procrustes", X @ X.T, X @ X.T, np.zeros(20))
    with pytest.raises(ValueError, match="at least 2 rows"):
        heldout("procrustes", X[:1], X[:1])


def test_analyze_reports_the_held_out_value_beyond_the_limit(tmp_path):
    """48 images: Procrustes on features.3's filter view (36 positions) is beyond the jackknife's
    column limit: its plug-in value is kept, marked, and given its held-out value over 4 folds of
    the analysis's jackknife groups (the independent computation); layer2.relu (9 positions) is
    within the limit and has none. The CSV carries it; the Gram-side (trajectory "all") and
    row-side routes give the same numbers."""
    path, data = make_planted_store(tmp_path / "s.zarr", n=48)
    kw = dict(metrics=["procrustes", "cka"], layers=["features.3"], progress=False)
    ds = ftdyn.analyze(path, out=tmp_path / "r", **kw)
    held = ds["heldout_distance"].sel(metric="procrustes").values[0, 0]
    assert ds["unreliable"].sel(metric="procrustes").values[0].tolist() == [True]
    assert np.isnan(held[0]) and np.isnan(ds["heldout_distance"].sel(metric="cka").values).all()
    groups = heldout_folds(shared_units(48, JACKKNIFE_GROUPS, 0, 0))
    for last in range(1, len(NOISE)):
        fx, fy = views.filter(data[0]["features.3"]), views.filter(data[last]["features.3"])
        want = np.nanmean(
            [
                heldout_from_gram(
                    "procrustes",
                    torch.as_tensor(a @ a.T, dtype=torch.float64),
                    torch.as_tensor(b @ b.T, dtype=torch.float64),
                    groups,
                )
                for a, b in zip(fx.astype(np.float64), fy.astype(np.float64), strict=True)
            ]
        )
        assert abs(held[last] - want) < 1e-7  # Grams summed over chunks vs at once
        assert held[last] > ds["distance"].sel(metric="procrustes").values[0, 0, last]
    rows = ftdyn.analyze(path, out=tmp_path / "rows", trajectory="all", **kw)
    # the alignment's weakest directions (near POLAR_RTOL) round differently on the two sides
    np.testing.assert_allclose(
        rows["heldout_distance"].values, ds["heldout_distance"].values, atol=1e-7
    )
    with open(tmp_path / "r" / "distances.csv") as f:
        table = [r for r in csv.DictReader(f) if r["metric"] == "procrustes" and r["epoch"] != "0"]
    assert [float(r["heldout"]) for r in table] == pytest.approx(held[1:], abs=1e-6)
