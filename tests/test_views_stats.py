"""Views (activation block -> matrices) and summary statistics (agreement, reusability,
bootstrap)."""

import numpy as np
import pytest
import torch

from ftdyn import summary as S
from ftdyn import views as V
from ftdyn.errors import FtdynError


@pytest.fixture
def block():
    return np.random.default_rng(0).random((3, 4, 2, 5)).astype(np.float16)  # n, C, H, W


def test_view_shapes_and_layout(block):
    n, c, h, w = block.shape
    ch = V.channels(block)
    assert ch.shape == (n * h * w, c) and ch.dtype == np.float64
    assert ch[1 * h * w + 1 * w + 3, 2] == block[1, 2, 1, 3]  # row = (image, y, x), col = filter
    assert V.flat(block).shape == (n, c * h * w)
    np.testing.assert_allclose(V.pooled(block), block.astype(np.float64).mean(axis=(2, 3)))
    f = V.filter(block)
    assert f.shape == (c, n, h * w) and f[2, 1, 1 * w + 3] == block[1, 2, 1, 3]
    assert V.map_(block).shape == (n, c, h, w)
    for view in V.VIEWS:
        batch, rows, cols = V.matrix_shape(view, *block.shape)
        assert V.to_matrices(view, block).shape == (*batch, rows, cols)


@pytest.mark.parametrize("view", V.VIEWS)
def test_views_numpy_and_torch_agree_and_blocks_stack(block, view):
    np.testing.assert_array_equal(
        V.to_matrices(view, torch.from_numpy(block)).numpy(), V.to_matrices(view, block)
    )
    if V.rows_split_by_sample(view):  # sample blocks stack along the rows
        whole = V.to_matrices(view, block)
        parts = np.concatenate(
            [V.to_matrices(view, block[:1]), V.to_matrices(view, block[1:])], axis=-2
        )
        np.testing.assert_array_equal(parts, whole)


def test_unknown_view():
    with pytest.raises(FtdynError, match="unknown view 'pixels'"):
        V.check_view("pixels")


def test_pearson_and_agreement():
    a = np.array([0.1, 0.2, 0.4, 0.5])
    r, n = S.pearson(a, 2 * a + 1)
    assert r == pytest.approx(1.0) and n == 4
    assert np.isnan(S.pearson(a[:2], a[:2])[0])  # fewer than 3 points
    assert np.isnan(S.pearson(a, np.ones(4))[0])  # constant curve
    assert S.pearson([1, 2, np.nan, 4], [1, 3, 5, 2])[1] == 3
    curves = np.stack([np.stack([a, a[::-1]]), np.stack([a**2, a])])  # (metric, layer, epoch)
    r, cnt = S.agreement(curves, np.array([True] * 4))
    assert r.shape == (2, 2, 2) and r[0, 0, 1] == pytest.approx(np.corrcoef(a, a**2)[0, 1])
    assert r[1, 0, 1] == pytest.approx(-1.0) and (cnt == 4).all()
    mean, std, k = S.agreement_summary(np.array([0.5, 1.0, np.nan]))
    assert (mean, std, k) == (pytest.approx(0.75), pytest.approx(0.25), 2)


def test_reusability_excludes_reference():
    curves = np.array([[[0.0, 0.2, 0.4], [0.0, 0.4, np.nan]]])  # 1 metric, 2 layers, 3 epochs
    mean, std, lmean, lstd = S.reusability(curves, np.array([False, True, True]))
    assert mean[0] == pytest.approx(np.mean([0.3, 0.4])) and std[0] == pytest.approx(
        np.std([0.3, 0.4])
    )
    np.testing.assert_allclose(lmean[0], [0.3, 0.4])
    np.testing.assert_allclose(lstd[0], [0.1, 0.0])


def test_bootstrap_helpers_and_class_mean():
    rng = np.random.default_rng(0)
    counts = S.bootstrap_counts(5, 100, rng)
    assert counts.shape == (100, 5) and (counts.sum(1) == 5).all()
    idx = S.bootstrap_indices(7, 3, rng)
    assert idx.shape == (3, 7) and idx.max() < 7
    lo, hi = S.percentile_interval(np.arange(101.0)[:, None], 0.9)
    assert lo[0] == pytest.approx(5.0) and hi[0] == pytest.approx(95.0)
    vals = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]])
    labels = np.array([0, 0, 1])
    np.testing.assert_allclose(
        S.class_balanced_mean(vals, labels), [(2.0 + 5.0) / 2, (2.0 + 4.0) / 2]
    )
