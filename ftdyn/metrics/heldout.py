"""Held-out (cross-validated) Procrustes and PWSM: the other end of a plug-in value's bias.

A plug-in Procrustes or PWSM distance fits its alignment (rotation, whitening) to the same rows
it scores, so it is biased toward 0 (the nuclear norm is convex: E‖Ĉ_xy‖_* ≥ ‖Σ_xy‖_*); the
bias grows with columns/rows and, beyond :data:`~ftdyn.metrics.estimators.RELIABLE_COLUMN_RATIO`,
no correction removes it. The *held-out* distance fits the alignment on all rows but one fold
and scores it on that fold, for every fold (K-fold cross-validation, :data:`HELDOUT_FOLDS`
folds of the jackknife's row groups; Williams et al. 2021, "Generalized shape metrics on neural
representations"). An alignment fitted on other rows cannot beat the population's best one on
rows it has not seen (its expected score is ``tr(Qᵀ Σ_xy) ≤ ‖Σ_xy‖_*`` for any Q with
‖Q‖ ≤ 1), so the held-out distance is biased away from 0: the plug-in and held-out values
bracket the population distance (in expectation), however many columns a row has.
``ftdyn analyze`` reports the held-out value beside every value beyond its estimator's limit.

Every fold's statistics are centred on the mean of all rows, so that the folds' cross-products
add up to the full ones and the row side (p×p statistics) and the Gram side (n×n) give the same
numbers. The alignment is a partial isometry: directions the fitting rows do not span are not
aligned (an arbitrary rotation there would score noise).

* :func:`heldout_from_row_stats`: Procrustes or PWSM (any α) from each fold's raw
  :class:`~ftdyn.metrics.stats.RowStats`;
* :func:`heldout_from_gram`: Procrustes from the raw Gram matrices and the fold of every row
  (PWSM on a Gram-side view has no held-out value here: NaN);
* :func:`heldout`: either, from two matrices (or stacks) and a seeded partition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import _linalg as L
from ._jackknife import jackknife_groups
from .stats import RowStats, _t, choose_side, gram, row_stats

__all__ = [
    "HELDOUT_METRICS",
    "HELDOUT_FOLDS",
    "heldout_folds",
    "heldout",
    "heldout_from_row_stats",
    "heldout_from_gram",
]

#: the metrics with a held-out value (those whose correction has a limit)
HELDOUT_METRICS = ("procrustes", "pwsm")
#: folds of the held-out value: each the union of two of the jackknife's 8 row groups, so an
#: alignment is fitted on 3/4 of the rows (8 folds fit on 7/8 and cost about 3× as much: the
#: decompositions of the fitting rows are the held-out value's whole cost)
HELDOUT_FOLDS = 4
#: singular values of a fitted cross-covariance below this fraction of its largest are left
#: unaligned (AᵀA resolves them down to about the square root of the float64 precision)
POLAR_RTOL = 1e-6


def heldout_folds(groups) -> np.ndarray:
    """The held-out value's fold of every row from its jackknife group (0 … G−1): group g in fold
    g mod :data:`HELDOUT_FOLDS` (fewer groups: the groups themselves)."""
    groups = np.asarray(groups)
    return groups % HELDOUT_FOLDS


def _check_metric(metric: str, alpha: float) -> float:
    if metric not in HELDOUT_METRICS:
        raise ValueError(f"no held-out value of {metric!r}; choose one of {HELDOUT_METRICS}")
    return L.check_alpha(alpha)


def _partial_isometry(A: torch.Tensor) -> torch.Tensor:
    """U Vᵀ over A's singular directions above :data:`POLAR_RTOL` of the largest (the polar
    factor on A's range): A (AᵀA)^(-1/2) from the eigendecomposition of AᵀA, several times cheaper
    than A's SVD; the directions it cannot resolve are the ones with almost no cross-covariance,
    whose rotation would only score noise."""
    lam, V = torch.linalg.eigh(L.sym(torch.matmul(A.mT, A)))
    s = torch.sqrt(lam.clamp(min=0.0))
    keep = s > POLAR_RTOL * s[..., -1:]
    return torch.matmul(A, torch.matmul(V * _inverse_where(s, keep)[..., None, :], V.mT))


def _inverse_where(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """1 / ``values`` where ``keep``, 0 elsewhere (no division by the values left out)."""
    return torch.where(keep, 1.0 / torch.where(keep, values, torch.ones_like(values)), 0.0)


def _inner(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """tr(Aᵀ B) over the last two axes."""
    return (A * B).sum((-2, -1))


def _whitening(C: torch.Tensor, alpha: float, ref: torch.Tensor) -> torch.Tensor:
    """The symmetric whitening V diag(d) Vᵀ of the covariance C, d as :class:`RowCore` whitens
    (netrep's α-weighting, 0 on the numerical null space)."""
    lam, V = torch.linalg.eigh(L.sym(C))
    d, _ = L._whiten_weights(lam, alpha, torch.maximum(lam[..., -1].clamp(min=0.0), ref))
    return torch.matmul(V * d[..., None, :], V.mT)


def _fold_products(folds: Sequence[RowStats]):
    """Each fold's (Cxx, Cyy, Cxy) centred on the mean of all rows (Cxx/Cyy their diagonals where
    the statistics hold only those), their sums and the raw squared norms of all rows."""
    dev = folds[0].xy.device if isinstance(folds[0].xy, torch.Tensor) else None
    tensors = [[_t(a, dev) for a in f[1:]] for f in folds]
    n = float(sum(f.n for f in folds))
    mx = sum(t[0] for t in tensors) / n
    my = sum(t[1] for t in tensors) / n

    def centred(raw, s_a, s_b, m_a, m_b, k):
        if raw.ndim < s_a.ndim + 1:  # a diagonal: Σ (x − m)² per column
            return raw - 2 * s_a * m_a + k * m_a * m_a
        outer = s_a[..., :, None] * m_b[..., None, :] + m_a[..., :, None] * s_b[..., None, :]
        return raw - outer + k * m_a[..., :, None] * m_b[..., None, :]

    out = []
    for f, (sx, sy, xx, yy, xy) in zip(folds, tensors, strict=True):
        k = float(f.n)
        out.append(
            (
                centred(xx, sx, sx, mx, mx, k),
                centred(yy, sy, sy, my, my, k),
                centred(xy, sx, sy, mx, my, k),
            )
        )
    # the raw diagonals of all rows: their sums for the dead test, their largest entries for the
    # whitening's rounding floor (as :class:`~ftdyn.metrics._linalg.RowCore` has them)
    dx, dy = (sum(_diag(t[i], t[i - 2]) for t in tensors) for i in (2, 3))
    return out, (dx.sum(-1), dy.sum(-1), dx.amax(-1).clamp(min=0.0), dy.amax(-1).clamp(min=0.0))


def _diag(C: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """The diagonal of a self-product C, which may be held as its diagonal already (C has the
    column sums' dims then)."""
    return C if C.ndim == sums.ndim else torch.diagonal(C, dim1=-2, dim2=-1)


def heldout_from_row_stats(metric: str, folds: Sequence[RowStats], alpha: float = 0.0):
    """The held-out ``metric`` ("procrustes" or "pwsm" with ``alpha``) from the raw
    :class:`~ftdyn.metrics.stats.RowStats` of each of ≥ 2 folds (disjoint groups of rows that
    together are all of them): per fold, the alignment fitted on the other folds scores that
    fold. Procrustes ∈ [0, 1], PWSM in radians; NaN for dead input (as the plug-in) and where a
    fold is empty. Batch dims (...) as the statistics' (X's may broadcast against a stack of Y's:
    its whitening is then computed once per fold); Procrustes accepts self-product diagonals."""
    alpha = _check_metric(metric, alpha)
    if len(folds) < 2 or min(f.n for f in folds) < 1:
        raise ValueError("held-out values need at least 2 folds, each with at least one row")
    products, (rawx, rawy, refx, refy) = _fold_products(folds)
    full = [sum(p[i] for p in products) for i in range(3)]
    diagonal = np.ndim(folds[0].xx) == np.ndim(folds[0].sum_x)
    trx, try_ = (C.sum(-1) if diagonal else L.trace(C) for C in full[:2])
    trx, try_ = trx.clamp(min=0.0), try_.clamp(min=0.0)
    dead = (trx <= L.DEAD_RTOL * rawx) | (try_ <= L.DEAD_RTOL * rawy)
    score = nx = ny = 0.0
    for cxx, cyy, cxy in products:
        fit = [full[i] - v for i, v in enumerate((cxx, cyy, cxy))]
        if metric == "procrustes":
            score = score + _inner(_partial_isometry(fit[2]), cxy)
            continue
        if diagonal:
            raise ValueError("PWSM needs the self-products XᵀX and YᵀY, not only their diagonals")
        wx, wy = _whitening(fit[0], alpha, refx), _whitening(fit[1], alpha, refy)
        q = _partial_isometry(torch.matmul(torch.matmul(wx, fit[2]), wy))
        score = score + _inner(q, torch.matmul(torch.matmul(wx, cxy), wy))
        nx = nx + L.trace(torch.matmul(torch.matmul(wx, cxx), wx))
        ny = ny + L.trace(torch.matmul(torch.matmul(wy, cyy), wy))
    if metric == "procrustes":
        value = torch.clamp(1.0 - score / torch.sqrt(trx * try_), 0.0, 1.0)
    else:
        value = L.angle(score / torch.sqrt(nx * ny))
    return L.finish(L.nan_where(value, dead))


def heldout_from_gram(metric: str, K, Lg, groups, alpha: float = 0.0):
    """The held-out Procrustes from the raw Gram matrices ``K`` = XXᵀ and ``Lg`` = YYᵀ
    (..., n, n) and the fold (0 … G−1, ≥ 2 folds) of every row, ``groups`` (n,); equal to
    :func:`heldout_from_row_stats` on the same rows. PWSM: NaN (its whitening is not fitted from
    the Grams here). ``Lg`` may be a list of several Y's Grams: their values are stacked on a
    first axis, X's decompositions done once for all of them."""
    alpha = _check_metric(metric, alpha)
    K = _t(K)
    several = isinstance(Lg, list | tuple)
    Ls = [_t(one, K.device) for one in (Lg if several else [Lg])]
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise ValueError("held-out values need at least 2 folds")
    if metric == "pwsm":
        nan = torch.full((len(Ls), *K.shape[:-2]), float("nan"), dtype=K.dtype)
        return L.finish(nan if several else nan[0])
    Kc = L.double_center(K.clone())
    trx, rawx = L.centered_trace(Kc), L.trace(K)
    folds = [
        tuple(
            torch.as_tensor(np.flatnonzero(pick), device=K.device)
            for pick in (groups != g, groups == g)
        )
        for g in np.unique(groups)
    ]
    reference = [_projections(Kc, fit, held) for fit, held in folds]
    values = []
    for one in Ls:
        Lc = L.double_center(one.clone())
        try_ = L.centered_trace(Lc)
        score = 0.0
        for (fit, held), (px, sx, ux) in zip(folds, reference, strict=True):
            py, sy, uy = _projections(Lc, fit, held)
            # X_fitᵀY_fit = V_x (Σ_x U_xᵀ U_y Σ_y) V_yᵀ: its polar factor is V_x R V_yᵀ
            R = _partial_isometry(sx[..., :, None] * torch.matmul(ux.mT, uy) * sy[..., None, :])
            score = score + _inner(torch.matmul(px, R), py)
        value = torch.clamp(1.0 - score / torch.sqrt(trx * try_), 0.0, 1.0)
        dead = (trx <= L.DEAD_RTOL * rawx) | (try_ <= L.DEAD_RTOL * L.trace(one))
        values.append(L.nan_where(value, dead))
    return L.finish(torch.stack(values) if several else values[0])


def _projections(Kc: torch.Tensor, fit: torch.Tensor, held: torch.Tensor):
    """(X_held V, Σ, U) of the fitting rows' X_fit = U Σ Vᵀ from the centred Gram: the held rows
    in the fitting rows' right singular basis (K_held,fit U Σ⁻¹), 0 on its null space."""
    K_fit = Kc.index_select(-2, fit).index_select(-1, fit)
    lam, U = torch.linalg.eigh(L.sym(K_fit))
    keep = lam > L.NULL_FACTOR * lam.shape[-1] * L.EPS * lam[..., -1:].clamp(min=0.0)
    sigma = torch.where(keep, torch.sqrt(lam.clamp(min=0.0)), torch.zeros_like(lam))
    inv = _inverse_where(sigma, keep)
    cross = Kc.index_select(-2, held).index_select(-1, fit)
    return torch.matmul(cross, U) * inv[..., None, :], sigma, U


def heldout(metric: str, X, Y, alpha: float = 0.0, seed: int = 0):
    """The held-out ``metric`` of ``X`` and ``Y`` ((..., rows, cols), numpy or torch) over
    :data:`HELDOUT_FOLDS` folds of the jackknife's seeded row groups
    (:func:`~ftdyn.metrics.estimators.jackknife_groups`, :func:`heldout_folds`): from
    row statistics where rows ≥ columns, else (Procrustes) from the Gram matrices."""
    _check_metric(metric, alpha)
    Xt, Yt = L.as_tensor(X, "X"), L.as_tensor(Y, "Y")
    L.check_pair(Xt, Yt)
    n = Xt.shape[-2]
    if n < 2:
        raise ValueError(f"held-out values need at least 2 rows, got {n}")
    groups = heldout_folds(jackknife_groups(n, seed=seed))
    if metric == "procrustes" and choose_side(n, max(Xt.shape[-1], Yt.shape[-1])) == "gram":
        return heldout_from_gram(metric, gram(Xt), gram(Yt), groups)
    folds = []
    for g in np.unique(groups):
        rows = torch.as_tensor(np.flatnonzero(groups == g))
        folds.append(row_stats(Xt.index_select(-2, rows), Yt.index_select(-2, rows)))
    return heldout_from_row_stats(metric, folds, alpha)
