"""ftdyn.metrics sufficient statistics: chunking, merging, both sides, registry.

The direct metrics are checked against independent references in
test_metrics.py; here every statistics route must reproduce them (1e-9 unless the
case is numerically degenerate) whatever the chunking and merge order.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from helpers import ref_cka, ref_procrustes, ref_pwsm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftdyn import metrics
from ftdyn.metrics import _linalg, registry, stats

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALPHAS = (0.0, 0.35, 1.0)


def metrics_direct(X, Y):
    return [metrics.pwsm(X, Y, a) for a in ALPHAS] + [
        metrics.procrustes(X, Y),
        metrics.linear_cka(X, Y),
    ]


def metrics_rows(s):
    return [stats.pwsm_from_row_stats(s, a) for a in ALPHAS] + [
        stats.procrustes_from_row_stats(s),
        stats.cka_from_row_stats(s),
    ]


def metrics_gram(g):
    return [stats.pwsm_from_gram(g, a) for a in ALPHAS] + [
        stats.procrustes_from_gram(g),
        stats.cka_from_gram(g),
    ]


def assert_same_metrics(got, want, n, p):
    """Lists from metrics_direct/_rows/_gram agree to 1e-9; the α=0 PWSM (first entry) is
    compared through cos θ where it is degenerate (n - 1 ≤ p: angle ~0, arccos magnifies rounding).
    """
    for j, (a, b) in enumerate(zip(got, want, strict=True)):
        if j == 0 and n - 1 <= p:
            np.testing.assert_allclose(np.cos(a), np.cos(b), atol=1e-9)
        else:
            np.testing.assert_allclose(a, b, atol=1e-9)


def random_splits(rng, length, k):
    cuts = np.sort(rng.choice(np.arange(1, length), size=min(k, length - 1), replace=False))
    return np.split(np.arange(length), cuts)


def random_tree_merge(rng, parts):
    """Merge in a random binary tree over a shuffled list (what a Dask tree reduction may do)."""
    parts = list(parts)
    rng.shuffle(parts)
    while len(parts) > 1:
        i = int(rng.integers(0, len(parts) - 1))
        parts[i : i + 2] = [stats.merge(parts[i], parts[i + 1])]
    return parts[0]


def data(rng, batch, n, p, q=None, offset=1.0):
    q = p if q is None else q
    X = rng.standard_normal((*batch, n, p)) + offset
    Y = X[..., :q] if q <= p else np.concatenate([X, rng.standard_normal((*batch, n, q - p))], -1)
    return X, np.maximum(Y + 0.8 * rng.standard_normal((*batch, n, q)), 0)


# ----------------------------------------------------------------- row side
@FAST
@given(st.integers(0, 2**32 - 1), st.integers(8, 60), st.integers(1, 7), st.integers(1, 6))
def test_row_stats_any_chunking_equals_direct(seed, n, p, k):
    rng = np.random.default_rng(seed)
    X, Y = data(rng, (3,), n, p)
    direct = metrics_direct(X, Y)
    parts = [stats.row_stats(X[:, idx], Y[:, idx]) for idx in random_splits(rng, n, k)]
    s = random_tree_merge(rng, parts)
    assert s.n == n
    assert_same_metrics(metrics_rows(s), direct, n, p)


def test_row_stats_fields_and_kinds():
    rng = np.random.default_rng(1)
    X, Y = data(rng, (), 20, 4, 3)
    s = stats.row_stats(X.astype(np.float16), Y.astype(np.float32))
    assert isinstance(s, stats.RowStats) and s.n == 20
    assert s.sum_x.shape == (4,) and s.sum_y.shape == (3,)
    assert s.xx.shape == (4, 4) and s.yy.shape == (3, 3) and s.xy.shape == (4, 3)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in s[1:])
    X16 = X.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(s.xx, X16.T @ X16, rtol=1e-13)
    np.testing.assert_allclose(s.xy, X16.T @ Y.astype(np.float32).astype(np.float64), rtol=1e-13)
    st_ = stats.row_stats(torch.from_numpy(X), torch.from_numpy(Y))
    assert isinstance(st_.xx, torch.Tensor) and st_.xx.dtype == torch.float64
    both = stats.merge(s, st_)  # mixed kinds merge too
    assert both.n == 40
    assert stats.pwsm_from_row_stats(st_, 0.0) == pytest.approx(metrics.pwsm(X, Y, 0.0), abs=1e-10)


def test_row_stats_with_large_offset():
    """Raw moments are centered at the end: an offset 20× the spread still agrees to 1e-7."""
    rng = np.random.default_rng(2)
    X, Y = data(rng, (), 500, 6, offset=0.0)
    X, Y = X + 20.0, Y + 20.0
    s = random_tree_merge(rng, [stats.row_stats(X[i], Y[i]) for i in random_splits(rng, 500, 9)])
    np.testing.assert_allclose(metrics_rows(s), metrics_direct(X, Y), atol=1e-7)


# ---------------------------------------------------------------- Gram side
@FAST
@given(st.integers(0, 2**32 - 1), st.integers(3, 12), st.integers(2, 40), st.integers(1, 6))
def test_gram_stats_any_column_chunking_equals_direct(seed, n, p, k):
    rng = np.random.default_rng(seed)
    X, Y = data(rng, (2,), n, p)
    direct = metrics_direct(X, Y)
    parts = [stats.gram_stats(X[..., idx], Y[..., idx]) for idx in random_splits(rng, p, k)]
    g = random_tree_merge(rng, parts)
    assert_same_metrics(metrics_gram(g), direct, n, p)


def test_gram_pwsm_formula_against_netrep_rank_deficient():
    """The spectral map s = σ·d(σ²) on K's eigenvalues reproduces the netrep formula (rows
    < cols)."""
    rng = np.random.default_rng(3)
    for n, p, r in [(10, 60, 10), (15, 40, 4), (30, 200, 12)]:
        X = rng.standard_normal((n, r)) @ rng.standard_normal((r, p)) + 2.0
        Y = X @ rng.standard_normal((p, p)) * 0.1 + rng.standard_normal((n, p))
        g = stats.gram_stats(X, Y)
        for a in (0.05, 0.3, 0.7, 1.0):
            assert stats.pwsm_from_gram(g, a) == pytest.approx(ref_pwsm(X, Y, a), abs=1e-7)
        assert stats.procrustes_from_gram(g) == pytest.approx(ref_procrustes(X, Y), abs=1e-10)
        assert stats.cka_from_gram(g) == pytest.approx(ref_cka(X, Y), abs=1e-10)
        assert stats.cka_from_gram(g, debiased=True) == pytest.approx(
            ref_cka(X, Y, debiased=True), abs=1e-10
        )


def test_gram_of_one_model_and_eig_route_for_any_pair():
    rng = np.random.default_rng(4)
    ckpts = [rng.standard_normal((5, 12, 50))]
    for _ in range(3):  # a "series" of checkpoints, per-filter stacks of 5
        ckpts.append(np.maximum(ckpts[-1] + 0.5 * rng.standard_normal((5, 12, 50)), 0))
    ckpts[2][1] = 0.0  # a filter dies at epoch 2
    grams = [stats.gram(c) for c in ckpts]
    eigs = [stats.gram_eig(K) for K in grams]
    for i in range(4):
        for j in range(4):
            g = stats.GramStats(grams[i], grams[j])
            for a in (0.0, 0.5, 1.0):
                np.testing.assert_allclose(
                    stats.pwsm_from_gram_eig(eigs[i], eigs[j], a),
                    stats.pwsm_from_gram(g, a),
                    atol=1e-9,
                )
            np.testing.assert_allclose(
                stats.procrustes_from_gram_eig(eigs[i], eigs[j]),
                stats.procrustes_from_gram(g),
                atol=1e-12,
            )
            np.testing.assert_allclose(
                stats.cka_from_gram_eig(eigs[i], eigs[j]), stats.cka_from_gram(g), atol=1e-12
            )
            np.testing.assert_allclose(
                stats.procrustes_from_gram(g), metrics.procrustes(ckpts[i], ckpts[j]), atol=1e-12
            )
            dead = (i == 2) != (j == 2) or (i == 2 and j == 2)
            assert np.isnan(stats.cka_from_gram(g)[1]) == dead
    # a decomposition that reuses the Gram's double centering is the same decomposition
    for K, e in zip(grams, eigs, strict=True):
        reused = stats.gram_eig(K, stats.gram_center(K))
        for field in ("lam", "null", "tr", "dead"):
            assert torch.equal(getattr(reused, field), getattr(e, field))
    with pytest.raises(ValueError, match="centered"):
        stats.gram_eig(grams[0], stats.gram_center(grams[0][:, :6, :6]))


# ---------------------------------------------------------- sides agree
@pytest.mark.parametrize("n,p", [(40, 6), (25, 25), (6, 40), (9, 9)])
def test_row_side_and_gram_side_agree(n, p):
    rng = np.random.default_rng(n * p)
    X, Y = data(rng, (4,), n, p)
    rows = metrics_rows(stats.row_stats(X, Y))
    grams = metrics_gram(stats.gram_stats(X, Y))
    assert_same_metrics(rows, grams, n, p)
    assert stats.choose_side(n, p) == ("row" if n >= p else "gram")


def test_choose_side():
    assert stats.choose_side(100, 3136) == "gram"
    assert stats.choose_side(500, 49) == "row"
    assert stats.choose_side(8, 8) == "row"
    with pytest.raises(ValueError):
        stats.choose_side(0, 3)


def test_debiased_feature_space_equals_gram_space():
    rng = np.random.default_rng(5)
    X, Y = data(rng, (3,), 30, 5)
    np.testing.assert_allclose(
        metrics.linear_cka(X, Y, debiased=True),
        stats.cka_from_gram(stats.gram_stats(X, Y), True),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        metrics.linear_cka(X, Y, debiased=True)[0], ref_cka(X[0], Y[0], True), atol=1e-12
    )
    assert math.isnan(metrics.linear_cka(X[0, :3], Y[0, :3], debiased=True))  # n < 4


# ----------------------------------------------------------- dead in stats
def test_dead_elements_in_stats():
    rng = np.random.default_rng(6)
    X, Y = data(rng, (4,), 30, 5)
    X[1] = 0.0
    Y[3] = 7.0
    for vals in (metrics_rows(stats.row_stats(X, Y)), metrics_gram(stats.gram_stats(X, Y))):
        for v in vals:
            assert np.isnan(v[[1, 3]]).all() and np.isfinite(v[[0, 2]]).all()
    assert stats.dead_mask(stats.row_stats(X, Y)).tolist() == [False, True, False, True]
    assert stats.dead_mask(stats.gram_stats(X, Y)).tolist() == [False, True, False, True]
    assert stats.count_dead(stats.row_stats(X, Y)) == 2


def test_diagonal_self_products_give_procrustes_and_refuse_the_others():
    """Row statistics holding only the diagonals of XᵀX and YᵀY: Procrustes (it needs their
    traces) and the dead test as from the data, batched and single; PWSM and CKA refuse them."""
    rng = np.random.default_rng(8)
    X, Y = data(rng, (4,), 30, 5)
    X[1] = 0.0
    full = stats.row_stats(X, Y)

    def diagonals(s):
        return s._replace(
            xx=np.diagonal(s.xx, 0, -2, -1).copy(), yy=np.diagonal(s.yy, 0, -2, -1).copy()
        )

    diag = diagonals(full)
    got = stats.procrustes_from_row_stats(diag)
    assert np.isnan(got[1]) and stats.dead_mask(diag).tolist() == [False, True, False, False]
    for f in (0, 2, 3):
        assert got[f] == pytest.approx(ref_procrustes(X[f], Y[f]), abs=1e-12)
    single = diagonals(stats.row_stats(X[0], Y[0]))
    assert stats.procrustes_from_row_stats(single) == pytest.approx(got[0], abs=1e-15)
    for metric in (stats.cka_from_row_stats, lambda s: stats.pwsm_from_row_stats(s, 0.5)):
        with pytest.raises(ValueError, match="diagonals"):
            metric(diag)
    assert registry.diagonal_self_products(["procrustes"])
    assert not registry.diagonal_self_products(["procrustes", "cka"])


# ------------------------------------------------------- internal numerics
def test_nuclear_norm_methods_agree_including_tiny_singular_values():
    rng = np.random.default_rng(7)
    U = np.linalg.qr(rng.standard_normal((30, 30)))[0]
    V = np.linalg.qr(rng.standard_normal((30, 30)))[0]
    exact_zeros = np.concatenate([[1.0, 0.5, 1e-3, 1e-5], np.zeros(26)])
    tiny = np.concatenate([[1.0, 0.5], np.full(10, 1e-9), np.zeros(18)])  # below eigh's noise floor
    A = torch.from_numpy(
        np.stack([(U * exact_zeros) @ V.T, rng.standard_normal((30, 30)), (U * tiny) @ V.T])
    )
    ref = np.array(
        [exact_zeros.sum(), np.linalg.svd(A[1].numpy(), compute_uv=False).sum(), tiny.sum()]
    )
    np.testing.assert_allclose(_linalg.nuclear_norm(A, "svd"), ref, rtol=1e-13, atol=1e-14)
    eig = _linalg.nuclear_norm(A, "eigh").numpy()
    np.testing.assert_allclose(eig[:2], ref[:2], rtol=1e-10)
    # σ = ‖M v‖ (not sqrt of the eigenvalue): ≤ 1e-8 even inside a cluster of 28 tiny values,
    # ~10× better than the naive sqrt(eigvalsh(AᵀA)) (which the test shows to fail 1e-8)
    a = A[2].numpy()
    naive = np.sqrt(np.clip(np.linalg.eigvalsh(a.T @ a), 0, None)).sum()
    assert abs(eig[2] - ref[2]) < 1e-8 < abs(naive - ref[2])
    R = torch.from_numpy(rng.standard_normal((4, 7, 3)))
    np.testing.assert_allclose(
        _linalg.nuclear_norm(R, "eigh"), _linalg.nuclear_norm(R, "svd"), rtol=1e-13
    )
    np.testing.assert_allclose(
        _linalg.nuclear_norm(R.mT, "eigh"), _linalg.nuclear_norm(R, "svd"), rtol=1e-13
    )
    with pytest.raises(ValueError, match="nuclear-norm method"):
        _linalg.nuclear_norm(R, "qr")


def test_alpha0_cholesky_path_equals_eigh_path_with_fallback():
    rng = np.random.default_rng(8)
    X, Y = data(rng, (6,), 50, 8)
    X[2, :, 3] = X[2, :, 0]  # rank deficient: fails the Cholesky test, goes through eigh
    Y[4, :, 5] *= 1e-6  # λ ~ 5e-11 < 1e-7: clipped -> eigh route
    s = stats.row_stats(X, Y)
    core = stats._row_core(s)
    fast = core.pwsm(0.0)
    slow = _linalg.nan_where(
        _linalg.angle(core._cos_eigh(core.Cxx, core.Cyy, core.Cxy, core.refx, core.refy, 0.0)),
        core.dead,
    )
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), atol=1e-10)
    for i in range(6):
        assert metrics.pwsm(X[i], Y[i], 0.0) == pytest.approx(ref_pwsm(X[i], Y[i], 0.0), abs=1e-8)


@pytest.mark.parametrize("singular", [True, False])
@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy])
@pytest.mark.parametrize("name", ["pwsm", "procrustes", "cka"])
def test_unbatched_row_stats_equal_the_batched_result(name, kind, singular, monkeypatch):
    """One pair's statistics without a batch axis give a float equal bit for bit to the same
    statistics as a batch of one (and close to the direct route), also with an exactly singular
    covariance (a zero column: the α=0 Cholesky path fails and eigh fills the pair in). With this
    seed, torch's single and batched products round the regular pair's PWSM differently."""
    fallbacks = []
    cos_eigh = _linalg.RowCore._cos_eigh
    monkeypatch.setattr(
        _linalg.RowCore, "_cos_eigh", lambda *a: fallbacks.append(a[1].shape) or cos_eigh(*a)
    )
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(30, 5)), rng.normal(size=(30, 4))
    if singular:
        X[:, 2] = 0.0
    s = stats.row_stats(kind(X), kind(Y))
    info = metrics.get_metric(name)
    kw = {"alpha": 0.0} if "alpha" in info.params else {}
    single = info.from_row_stats(s, **kw)
    batched = info.from_row_stats(stats.RowStats(s.n, *(a[None] for a in s[1:])), **kw)
    assert isinstance(single, float) and np.isfinite(single)
    assert np.asarray(batched).shape == (1,) and single == float(np.asarray(batched)[0])
    assert single == pytest.approx(info.direct(X, Y, **kw), abs=1e-9)
    # singular pwsm: the single pair, the batch of one and the direct route each went through eigh
    assert len(fallbacks) == (3 if name == "pwsm" and singular else 0)
    assert all(shape[-2:] == (5, 5) for shape in fallbacks)


# ------------------------------------------------------------------ registry
def test_registry():
    assert set(metrics.METRICS) == {"pwsm", "procrustes", "cka"}
    rng = np.random.default_rng(9)
    X, Y = data(rng, (), 30, 6)
    for name, info in metrics.METRICS.items():
        assert info.name == name and info.lower_is_more_similar is True
        assert info.description and info.range
        d = info.direct(X, Y, **info.params)
        assert d == pytest.approx(
            info.from_row_stats(stats.row_stats(X, Y), **info.params), abs=1e-10
        )
        assert d == pytest.approx(info.from_gram(stats.gram_stats(X, Y), **info.params), abs=1e-10)
        assert info(X, X, **info.params) < 1e-6 < d  # a distance: 0 on identical input
    assert "distance" in metrics.get_metric("cka").description.lower()
    assert metrics.get_metric("cka").direct(X, Y) == pytest.approx(
        1 - metrics.linear_cka(X, Y), abs=1e-15
    )
    assert metrics.get_metric("pwsm").direct(X, Y, alpha=1.0) == pytest.approx(
        metrics.pwsm(X, Y, 1.0)
    )
    with pytest.raises(ValueError, match="unknown metric 'x'; choose from pwsm, procrustes, cka"):
        metrics.get_metric("x")


def test_merge_rejects_mismatches():
    rng = np.random.default_rng(10)
    X, Y = data(rng, (), 10, 3)
    with pytest.raises(ValueError, match="cannot merge"):
        stats.merge(stats.row_stats(X, Y), stats.gram_stats(X, Y))
    with pytest.raises(ValueError, match="different row sets"):
        stats.merge(stats.gram_stats(X, Y), stats.gram_stats(X[:5], Y[:5]))
    three = stats.merge(*(stats.row_stats(X, Y) for _ in range(3)))
    assert three.n == 30
    np.testing.assert_allclose(stats.pwsm_from_row_stats(three), metrics.pwsm(X, Y), atol=1e-10)


def test_reduce_with_functools_matches():
    rng = np.random.default_rng(11)
    X, Y = data(rng, (2,), 64, 5)
    parts = [stats.row_stats(X[:, i : i + 8], Y[:, i : i + 8]) for i in range(0, 64, 8)]
    s = functools.reduce(stats.merge, parts)
    np.testing.assert_allclose(metrics_rows(s), metrics_direct(X, Y), atol=1e-9)


def test_direct_chunked_paths_equal_one_chunk(monkeypatch):
    """Force many row/column chunks in the direct routes (shifted accumulation, column
    centering)."""
    rng = np.random.default_rng(12)
    cases = [data(rng, (3,), 70, 5, offset=4.0), data(rng, (2,), 6, 45, offset=4.0)]
    ref = [[*metrics_direct(X, Y), metrics.linear_cka(X, Y, debiased=True)] for X, Y in cases]
    monkeypatch.setattr(_linalg, "CHUNK_BYTES", 8 * 5 * 2 * 7)  # 7 rows / a few columns per chunk
    monkeypatch.setattr(_linalg, "CACHE_BYTES", 8 * 5 * 2 * 7)
    monkeypatch.setattr(_linalg, "MIN_CHUNK_UNITS", 1)
    assert _linalg.plan_blocks(3, 1, 70, 8 * 10) == (1, 7)  # blocks of one matrix, 10 row chunks
    assert _linalg.plan_blocks(2, 1, 45, 8 * 6) == (1, 11)  # Gram side: 5 column chunks
    assert _linalg.plan_blocks(5, 1, 3, 8 * 10) == (2, 3)  # small matrices: 2 per block
    for (X, Y), r in zip(cases, ref, strict=True):
        got = [*metrics_direct(X, Y), metrics.linear_cka(X, Y, debiased=True)]
        # α=0 may be degenerate
        np.testing.assert_allclose(np.cos(got[0]), np.cos(r[0]), atol=1e-12)
        for a, b in zip(got[1:], r[1:], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-10)
        X = X.copy()
        X[-1, -1, -1] = np.nan  # in the last chunk only
        for f in (metrics.pwsm, stats.row_stats, stats.gram_stats, stats.dead_mask):
            with pytest.raises(ValueError, match="X contains 1 NaN"):
                f(X, Y)
        got = [metrics_rows(stats.row_stats(*cases[0])), metrics_gram(stats.gram_stats(*cases[1]))]
        np.testing.assert_allclose(got[0][1:], ref[0][1:5], atol=1e-10)
        np.testing.assert_allclose(got[1][1:], ref[1][1:5], atol=1e-10)
