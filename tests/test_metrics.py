"""ftdyn.metrics: direct metrics against independent references and properties.

References independent of the package code (helpers.py): :func:`ref_pwsm` (netrep
transcribed), :func:`ref_procrustes` (scipy), :func:`ref_cka` (Kornblith et al. transcribed); and
the cross-library values in the README's "Metrics" section (netrep/repsim agree).

Statistics-based routes are in test_metrics_stats.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import centered_unit, ref_cka, ref_cos_pwsm, ref_procrustes, ref_pwsm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftdyn import metrics
from ftdyn.metrics import stats

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rand_orth(rng, p):
    q, r = np.linalg.qr(rng.standard_normal((p, p)))
    return q * np.sign(np.diag(r))


def rand_pair(rng, n, p, q=None, noise=0.7, offset=0.0):
    q = p if q is None else q
    X = rng.standard_normal((n, p)) + offset
    Y = (
        X[:, :q] @ rng.standard_normal((min(p, q), q))
        if q <= p
        else np.concatenate([X, rng.standard_normal((n, q - p))], 1)
    )
    return X, Y + noise * rng.standard_normal((n, q))


# ------------------------------------------------------- cross-library values
@pytest.fixture(scope="module")
def design_xy():
    np.random.seed(0)
    X = np.random.uniform(size=(30, 25))
    Y = np.random.uniform(size=(30, 25))
    return X, Y


def test_design_reference_values(design_xy):
    X, Y = design_xy
    assert metrics.pwsm(X, Y, alpha=1.0) == pytest.approx(0.7629815799340967, abs=1e-9)
    assert metrics.pwsm(X, Y, alpha=0.0) == pytest.approx(0.4732208798503, abs=1e-9)
    assert metrics.linear_cka(X, Y) == pytest.approx(0.4893427391044154, abs=1e-9)
    assert metrics.procrustes(X, Y) == pytest.approx(0.2772212824006635, abs=1e-9)
    assert metrics.cka_distance(X, Y) == pytest.approx(1 - 0.4893427391044154, abs=1e-9)
    assert isinstance(metrics.pwsm(X, Y), float)


def test_design_values_independent_references(design_xy):
    X, Y = design_xy
    assert ref_pwsm(X, Y, 1.0) == pytest.approx(0.7629815799340967, abs=1e-9)
    assert ref_pwsm(X, Y, 0.0) == pytest.approx(0.4732208798503, abs=1e-9)
    assert ref_cka(X, Y) == pytest.approx(0.4893427391044154, abs=1e-9)
    assert ref_procrustes(X, Y) == pytest.approx(0.2772212824006635, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("shape", [(30, 25), (200, 12), (12, 40), (7, 7)])
def test_pwsm_matches_netrep_transcription(alpha, shape):
    rng = np.random.default_rng(hash((alpha, shape)) % 2**32)
    X, Y = rand_pair(rng, *shape, offset=0.3)
    X *= 3.0  # scale matters for 0<α<1 (unnormalized covariance): keep it non-trivial
    if shape[0] <= shape[1] and alpha < 0.5:
        # rows ≤ cols: whitening is (nearly) degenerate, the angle ~0; compare cosines
        assert math.cos(metrics.pwsm(X, Y, alpha)) == pytest.approx(
            ref_cos_pwsm(X, Y, alpha), abs=1e-8
        )
    else:
        assert metrics.pwsm(X, Y, alpha) == pytest.approx(ref_pwsm(X, Y, alpha), abs=1e-9)


@pytest.mark.parametrize("shape", [(30, 25), (300, 8), (10, 50), (5, 3)])
def test_procrustes_and_cka_match_references(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    X, Y = rand_pair(rng, *shape, offset=1.0)
    assert metrics.procrustes(X, Y) == pytest.approx(ref_procrustes(X, Y), abs=1e-10)
    assert metrics.linear_cka(X, Y) == pytest.approx(ref_cka(X, Y), abs=1e-10)
    if shape[0] >= 4:
        assert metrics.linear_cka(X, Y, debiased=True) == pytest.approx(
            ref_cka(X, Y, True), abs=1e-10
        )


def test_different_widths():
    rng = np.random.default_rng(3)
    X, Y = rand_pair(rng, 40, 6, 9)
    # netrep (and scipy) need equal widths: zero-pad the narrower matrix (a null direction)
    Xp = np.concatenate([X, np.zeros((40, 3))], 1)
    assert metrics.procrustes(X, Y) == pytest.approx(ref_procrustes(Xp, Y), abs=1e-10)
    assert metrics.linear_cka(X, Y) == pytest.approx(ref_cka(X, Y), abs=1e-10)
    for a in (0.0, 0.5, 1.0):
        assert metrics.pwsm(X, Y, a) == pytest.approx(ref_pwsm(Xp, Y, a), abs=1e-9)


# ----------------------------------------------------------------- properties
shapes = st.tuples(st.integers(3, 12), st.integers(1, 8))
seeds = st.integers(0, 2**32 - 1)


@FAST
@given(shapes, seeds)
def test_alpha1_is_angular_procrustes(shape, seed):
    X, Y = rand_pair(np.random.default_rng(seed), *shape)
    nuc = np.linalg.svd(centered_unit(X).T @ centered_unit(Y), compute_uv=False).sum()
    assert metrics.pwsm(X, Y, 1.0) == pytest.approx(math.acos(min(1.0, nuc)), abs=1e-7)
    assert metrics.pwsm(X, Y, 1.0) == pytest.approx(
        math.acos(1 - metrics.procrustes(X, Y)), abs=1e-7
    )


@FAST
@given(st.integers(0, 6), st.integers(1, 5), seeds)
def test_alpha0_invariant_to_invertible_maps(extra, p, seed):
    n = p + 3 + extra  # n - 1 > p: otherwise α=0 is degenerate (angle ~0, all noise)
    rng = np.random.default_rng(seed)
    X, Y = rand_pair(rng, n, p)
    A = rand_orth(rng, p) @ np.diag(rng.uniform(0.3, 3.0, p)) @ rand_orth(rng, p)
    B = rand_orth(rng, p) @ np.diag(rng.uniform(0.3, 3.0, p)) @ rand_orth(rng, p)
    d0 = metrics.pwsm(X, Y, 0.0)
    assert metrics.pwsm(X @ A, Y @ B, 0.0) == pytest.approx(d0, abs=1e-7)
    # α=1 is *not* invariant to non-orthogonal maps (guards against a vacuous test)
    if p >= 2 and abs(metrics.pwsm(X @ A, Y, 1.0) - metrics.pwsm(X, Y, 1.0)) < 1e-9:
        assert np.allclose(A.T @ A, np.eye(p) * (A.T @ A)[0, 0], atol=1e-6)


@FAST
@given(shapes, seeds, st.floats(0.1, 10.0), st.sampled_from([0.0, 1.0]))
def test_invariances(shape, seed, scale, alpha):
    rng = np.random.default_rng(seed)
    X, Y = rand_pair(rng, *shape)
    n, p = shape
    Q1, Q2 = rand_orth(rng, p), rand_orth(rng, p)
    t1, t2 = rng.standard_normal(p) * 5, rng.standard_normal(p) * 5
    Xt, Yt = scale * (X @ Q1) + t1, (Y @ Q2) / scale + t2
    base = (metrics.pwsm(X, Y, alpha), metrics.procrustes(X, Y), metrics.linear_cka(X, Y))
    moved = (metrics.pwsm(Xt, Yt, alpha), metrics.procrustes(Xt, Yt), metrics.linear_cka(Xt, Yt))
    if n - 1 <= p and alpha == 0.0:  # degenerate (angle ~0): compare cosines
        assert math.cos(moved[0]) == pytest.approx(math.cos(base[0]), abs=1e-9)
        moved, base = moved[1:], base[1:]
    np.testing.assert_allclose(moved, base, atol=1e-7)


@FAST
@given(shapes, seeds, st.sampled_from([0.0, 0.5, 1.0]))
def test_symmetric_bounded_and_zero_on_identical(shape, seed, alpha):
    X, Y = rand_pair(np.random.default_rng(seed), *shape)
    # degenerate: angle ~0, where arccos magnifies rounding
    if shape[0] - 1 <= shape[1] and alpha == 0.0:
        assert math.cos(metrics.pwsm(X, Y, alpha)) == pytest.approx(
            math.cos(metrics.pwsm(Y, X, alpha)), abs=1e-9
        )
    else:
        assert metrics.pwsm(X, Y, alpha) == pytest.approx(metrics.pwsm(Y, X, alpha), abs=1e-7)
    assert metrics.procrustes(X, Y) == pytest.approx(metrics.procrustes(Y, X), abs=1e-10)
    assert metrics.linear_cka(X, Y) == pytest.approx(metrics.linear_cka(Y, X), abs=1e-10)
    assert 0.0 <= metrics.pwsm(X, Y, alpha) <= math.pi / 2
    assert 0.0 <= metrics.procrustes(X, Y) <= 1.0
    assert 0.0 <= metrics.linear_cka(X, Y) <= 1.0
    # zero up to rounding: cos θ = 1 − O(eps·cond²), and arccos turns 1e-12 into 1.4e-6
    assert math.cos(metrics.pwsm(X, X, alpha)) > 1 - 1e-10
    assert metrics.procrustes(X, X) < 1e-12
    assert metrics.cka_distance(X, X) < 1e-12


@FAST
@given(st.integers(4, 14), st.integers(1, 6), seeds, st.sampled_from([0.0, 1.0]))
def test_triangle_inequality(n, p, seed, alpha):
    rng = np.random.default_rng(seed)
    X, Y = rand_pair(rng, n, p, noise=1.0)
    Z = Y + rng.standard_normal((n, p))
    dxy, dyz, dxz = metrics.pwsm(X, Y, alpha), metrics.pwsm(Y, Z, alpha), metrics.pwsm(X, Z, alpha)
    assert dxz <= dxy + dyz + 1e-6
    assert dxy <= dxz + dyz + 1e-6


# --------------------------------------------------------------- stacked/batch
def test_stacked_equals_loop_and_broadcasts():
    rng = np.random.default_rng(5)
    for n, p in [(40, 6), (6, 30)]:
        X = rng.standard_normal((2, 3, n, p))
        Y = X + 0.8 * rng.standard_normal((2, 3, n, p))
        funcs = (
            lambda a, b: metrics.pwsm(a, b, 0.0),
            lambda a, b: metrics.pwsm(a, b, 0.4),
            metrics.procrustes,
            metrics.linear_cka,
            lambda a, b: metrics.linear_cka(a, b, debiased=True),
        )
        for f in funcs:
            out = f(X, Y)
            assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out.dtype == np.float64
            loop = np.array([[f(X[i, j], Y[i, j]) for j in range(3)] for i in range(2)])
            # rows < cols with α = 0 is degenerate (angle ~0, arccos noise ~2e-8)
            np.testing.assert_allclose(out, loop, atol=1e-6 if n < p and f is funcs[0] else 1e-10)
        # one source matrix against a stack of checkpoints
        out = metrics.pwsm(X[0, 0], Y[1], 0.4)
        np.testing.assert_allclose(
            out, [metrics.pwsm(X[0, 0], Y[1, j], 0.4) for j in range(3)], atol=1e-10
        )


def test_torch_inputs_and_float16():
    rng = np.random.default_rng(6)
    X, Y = rand_pair(rng, 50, 10, offset=2.0)
    X16, Y16 = X.astype(np.float16), Y.astype(np.float16)
    ref = metrics.pwsm(X16.astype(np.float64), Y16.astype(np.float64), 0.0)
    assert metrics.pwsm(X16, Y16, 0.0) == pytest.approx(ref, abs=1e-12)
    assert metrics.pwsm(torch.from_numpy(X16), torch.from_numpy(Y16), 0.0) == pytest.approx(
        ref, abs=1e-12
    )
    assert metrics.procrustes(
        torch.from_numpy(X).float(), torch.from_numpy(Y).float()
    ) == pytest.approx(
        metrics.procrustes(
            X.astype(np.float32).astype(np.float64), Y.astype(np.float32).astype(np.float64)
        ),
        abs=1e-12,
    )
    assert metrics.linear_cka(X.astype(np.int64), Y.astype(np.int64)) == pytest.approx(
        ref_cka(X.astype(np.int64), Y.astype(np.int64)), abs=1e-10
    )
    # float16 rows<cols (Gram side) too
    Xw, Yw = rand_pair(rng, 8, 30, offset=2.0)
    Xw16, Yw16 = Xw.astype(np.float16), Yw.astype(np.float16)
    assert metrics.procrustes(Xw16, Yw16) == pytest.approx(
        ref_procrustes(Xw16.astype(np.float64), Yw16.astype(np.float64)), abs=1e-10
    )


def test_small_distances_keep_float64_precision():
    rng = np.random.default_rng(7)
    X = np.maximum(rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16)), 0.0)
    Y = X + 1e-4 * rng.standard_normal(X.shape)
    for alpha in (0.0, 1.0):
        d = metrics.pwsm(X, Y, alpha)
        assert d > 1e-6
        assert d == pytest.approx(ref_pwsm(X, Y, alpha), rel=1e-6)
    dp = metrics.procrustes(X, Y)
    assert dp > 0 and dp == pytest.approx(ref_procrustes(X, Y), rel=1e-5, abs=1e-14)
    assert metrics.cka_distance(X, Y) > 0
    # float32 input is cast to float64 before any arithmetic: same answer as the float64 cast
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    d32 = metrics.pwsm(X32, Y32, 1.0)
    assert d32 == pytest.approx(
        ref_pwsm(X32.astype(np.float64), Y32.astype(np.float64), 1.0), rel=1e-6
    )
    assert d32 > 1e-6
    # …and a float32 computation would not have resolved it (the test can fail)
    Xc, Yc = X32 - X32.mean(0), Y32 - Y32.mean(0)
    s32 = np.linalg.svd(
        (Xc / np.linalg.norm(Xc)).T @ (Yc / np.linalg.norm(Yc)), compute_uv=False
    ).sum()
    assert abs(np.arccos(np.clip(s32, -1, 1)) - d32) > 0.1 * d32


# ---------------------------------------------------------------- edge cases
def test_nan_inf_rejected():
    X = np.ones((10, 3))
    X[0, 0] = 2.0
    for bad, word in ((np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")):
        Y = X.copy()
        Y[3, 1] = bad
        for f in (
            metrics.pwsm,
            metrics.procrustes,
            metrics.linear_cka,
            stats.row_stats,
            stats.gram_stats,
        ):
            with pytest.raises(ValueError, match=word):
                f(X, Y)
            with pytest.raises(
                ValueError,
                match="X contains 1 NaN and 0" if word == "NaN" else "X contains 0 NaN and 1 inf",
            ):
                f(Y, X)


def test_bad_shapes_and_alpha():
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.pwsm(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="rows, cols"):
        metrics.procrustes(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="alpha"):
        metrics.pwsm(np.eye(3), np.eye(3), alpha=1.5)
    with pytest.raises(ValueError, match="do not broadcast"):
        metrics.pwsm(np.ones((2, 4, 3)), np.ones((3, 4, 3)))


@pytest.mark.parametrize("shape", [(20, 5), (5, 20)])
def test_dead_inputs_give_nan_only_there(shape):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, *shape))
    Y = X + rng.standard_normal((6, *shape))
    X[2] = 0.0  # dead filter
    Y[4] = 3.25  # constant map: dead after centering
    funcs = [
        lambda a, b: metrics.pwsm(a, b, 0.0),
        lambda a, b: metrics.pwsm(a, b, 0.5),
        lambda a, b: metrics.pwsm(a, b, 1.0),
        metrics.procrustes,
        metrics.linear_cka,
        metrics.cka_distance,
        lambda a, b: metrics.linear_cka(a, b, debiased=True),
    ]
    for f in funcs:
        out = f(X, Y)
        assert np.isnan(out[[2, 4]]).all()
        assert np.isfinite(out[[0, 1, 3, 5]]).all()
        assert math.isnan(f(X[2], Y[2])) and math.isnan(f(np.zeros(shape), np.zeros(shape)))
    assert stats.count_dead(X, Y) == 2
    assert stats.dead_mask(X, Y).tolist() == [False, False, True, False, True, False]
    assert stats.dead_mask(X[2]) is True and stats.dead_mask(X[0]) is False


def test_zero_and_constant_columns_are_null_directions():
    rng = np.random.default_rng(9)
    X, Y = rand_pair(rng, 30, 5, offset=1.0)
    Xz = np.concatenate([X[:, :2], np.zeros((30, 1)), X[:, 2:], np.full((30, 1), 0.1)], 1)
    for a in (0.0, 0.3, 1.0):
        assert metrics.pwsm(Xz, Y, a) == pytest.approx(metrics.pwsm(X, Y, a), abs=1e-9)
        assert metrics.pwsm(Xz, Y, a) == pytest.approx(ref_pwsm(Xz, Y, a), abs=1e-8)
    assert metrics.procrustes(Xz, Y) == pytest.approx(metrics.procrustes(X, Y), abs=1e-12)
    assert metrics.linear_cka(Xz, Y) == pytest.approx(metrics.linear_cka(X, Y), abs=1e-12)


@pytest.mark.parametrize("n,p,r", [(60, 12, 4), (12, 60, 5), (40, 40, 10)])
def test_rank_deficient(n, p, r):
    rng = np.random.default_rng(n + p + r)
    X = rng.standard_normal((n, r)) @ rng.standard_normal((r, p)) * 10 + 3
    Y = X @ rng.standard_normal((p, p)) + 0.1 * rng.standard_normal((n, r)) @ rng.standard_normal(
        (r, p)
    )
    s, g = stats.row_stats(X, Y), stats.gram_stats(X, Y)
    for a in (0.0, 0.2, 0.6, 1.0):
        ref = ref_pwsm(X, Y, a)
        assert metrics.pwsm(X, Y, a) == pytest.approx(ref, abs=1e-7)
        # un-batched statistics too (the α=0 Cholesky test fails here and falls back to eigh)
        assert stats.pwsm_from_row_stats(s, a) == pytest.approx(ref, abs=1e-7)
        assert stats.pwsm_from_gram(g, a) == pytest.approx(ref, abs=1e-7)
    assert metrics.procrustes(X, Y) == pytest.approx(ref_procrustes(X, Y), abs=1e-10)
    assert metrics.linear_cka(X, Y) == pytest.approx(ref_cka(X, Y), abs=1e-10)


def test_rows_less_than_cols_alpha0_is_degenerate():
    rng = np.random.default_rng(10)
    X, Y = rand_pair(rng, 10, 40, noise=3.0)
    assert metrics.pwsm(X, Y, 0.0) < 1e-6
    assert ref_pwsm(X, Y, 0.0) < 1e-4
    assert metrics.pwsm(X, Y, 0.5) > 0.01


def test_degenerate_shapes_documented_and_named():
    """2 rows: rank 1 after centering, Procrustes 0 and CKA 1 for any pair (the functions return
    the number; degenerate_reason names the condition). Partial whitening (0 < alpha < 1) on
    20 x 30 is informative and matches netrep; only alpha = 0 is degenerate there."""
    rng = np.random.default_rng(12)
    X, Y = rng.random((2, 7)), rng.random((2, 7))
    assert metrics.procrustes(X, Y) < 1e-12 and metrics.cka_distance(X, Y) < 1e-12
    for m in ("procrustes", "cka", "pwsm"):
        assert metrics.degenerate_reason(m, 2, 7, alpha=0.5) is not None
        assert metrics.degenerate_reason(m, 3, 2, alpha=0.5) is None
    # rows centered: 2 free rows
    assert metrics.degenerate_reason("procrustes", 2, 7, center="rows") is None
    assert metrics.degenerate_reason("procrustes", 1, 7, center="rows") is not None
    X, Y = rand_pair(rng, 20, 30, noise=1.0)
    assert metrics.degenerate_reason("pwsm", 20, 30, alpha=0.0) is not None
    assert metrics.degenerate_reason("pwsm", 20, 30, alpha=0.3) is None
    assert (
        metrics.pwsm(X, Y, 0.3) == pytest.approx(ref_pwsm(X, Y, 0.3), abs=1e-7)
        and metrics.pwsm(X, Y, 0.3) > 0.1
    )


def test_row_centered_map_metrics_match_their_formulas():
    """The published code's map metrics: rows centered, then Procrustes ||A^T B||_* and CKA on
    the unit-norm maps (scipy's orthogonal_procrustes scale is the nuclear norm); batched,
    torch input, both CKA routes (h < w and h >= w), dead maps NaN; they differ from ftdyn's
    column-centered metrics."""
    rng = np.random.default_rng(13)
    for h, w in ((5, 8), (8, 5)):
        X = rng.random((3, 2, h, w))
        Y = X + 0.4 * rng.random(X.shape)
        X[1, 0] = 2.0  # a constant map: dead
        got_p, got_c = (
            metrics.procrustes_rows(X, Y),
            metrics.cka_distance_rows(torch.from_numpy(X), torch.from_numpy(Y)),
        )
        for i in range(3):
            for f in range(2):
                A = X[i, f] - X[i, f].mean(1, keepdims=True)
                B = Y[i, f] - Y[i, f].mean(1, keepdims=True)
                if (i, f) == (1, 0):
                    assert np.isnan(got_p[i, f]) and np.isnan(got_c[i, f])
                    continue
                A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
                scale = scipy.linalg.orthogonal_procrustes(A, B)[1]
                assert got_p[i, f] == pytest.approx(1 - scale, abs=1e-12)
                cka = np.linalg.norm(A.T @ B) ** 2 / (
                    np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B)
                )
                assert got_c[i, f] == pytest.approx(1 - cka, abs=1e-12)
        assert (
            abs(metrics.procrustes_rows(X[0, 0], Y[0, 0]) - metrics.procrustes(X[0, 0], Y[0, 0]))
            > 1e-3
        )


def test_clip_binds_like_netrep():
    """Tiny-variance directions (λ < 1e-7 but not null) are whitened with the clipped weight."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((50, 4))
    X[:, 3] *= 1e-5  # eigenvalue ~5e-9: clipped to 1e-7 by netrep, not a null direction
    Y = X + 0.5 * rng.standard_normal((50, 4))
    for a in (0.0, 0.5):
        assert metrics.pwsm(X, Y, a) == pytest.approx(ref_pwsm(X, Y, a), abs=1e-8)
        assert (
            metrics.pwsm(
                X.T @ rng.standard_normal((50, 50)), Y.T @ rng.standard_normal((50, 50)), a
            )
            >= 0
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(12)
    for shape in [(64, 40, 9), (8, 20, 300)]:
        X = rng.standard_normal(shape)
        Y = X + rng.standard_normal(shape)
        X[3] = 0
        Xc, Yc = torch.from_numpy(X).cuda(), torch.from_numpy(Y).float().cuda()
        Y32 = Y.astype(np.float32)
        # α=0 degenerate if rows<cols
        alphas = (0.0, 0.5, 1.0) if shape[1] > shape[2] else (0.5, 1.0)
        for a in alphas:
            np.testing.assert_allclose(metrics.pwsm(Xc, Yc, a), metrics.pwsm(X, Y32, a), atol=1e-9)
        np.testing.assert_allclose(
            metrics.procrustes(Xc, Yc), metrics.procrustes(X, Y32), atol=1e-10
        )
        np.testing.assert_allclose(
            metrics.linear_cka(Xc, Yc), metrics.linear_cka(X, Y32), atol=1e-10
        )
        s, g = stats.row_stats(Xc, Yc), stats.gram_stats(Xc, Yc)
        assert s.xx.is_cuda and g.K.is_cuda and s.xx.dtype == torch.float64
        np.testing.assert_allclose(
            stats.procrustes_from_row_stats(s), metrics.procrustes(X, Y32), atol=1e-9
        )
        np.testing.assert_allclose(
            stats.pwsm_from_gram(g, 0.5), metrics.pwsm(X, Y32, 0.5), atol=1e-9
        )
        np.testing.assert_allclose(
            stats.pwsm_from_gram_eig(stats.gram_eig(g.K), stats.gram_eig(g.L), 1.0),
            metrics.pwsm(X, Y32, 1.0),
            atol=1e-9,
        )


def test_unusual_numpy_inputs():
    rng = np.random.default_rng(13)
    X, Y = rand_pair(rng, 30, 5)
    ref = metrics.pwsm(X[::-1].copy(), Y[::-1].copy(), 0.3)
    assert metrics.pwsm(X[::-1], Y[::-1], 0.3) == pytest.approx(ref, abs=1e-12)  # negative strides
    Xr = X[::-1].copy()
    Xr.flags.writeable = False  # e.g. a read-only memory map: no copy, no warning
    assert metrics.pwsm(Xr, Y[::-1].astype(">f8"), 0.3) == pytest.approx(
        ref, abs=1e-12
    )  # big-endian
    assert metrics.pwsm(X.tolist(), Y.tolist(), 0.0) == pytest.approx(
        metrics.pwsm(X, Y, 0.0), abs=1e-12
    )
    with pytest.raises(ValueError, match="complex"):
        metrics.pwsm(X.astype(complex), Y)
