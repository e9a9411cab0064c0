"""Sufficient statistics: accumulate chunk by chunk, merge (associative), metrics.

Every metric depends on X and Y only through small float64 accumulations, so a
layer can be streamed once and never held in memory (README, "Metrics", **Out-of-core**).

Row side — rows ≫ cols (``channels``, ``pooled``, ``filter`` in deep layers)
    :class:`RowStats` ``(n, sum_x, sum_y, xx, yy, xy)`` with ``xx = XᵀX``,
    ``yy = YᵀY``, ``xy = XᵀY`` (raw, uncentered), accumulated over row chunks
    (:func:`row_stats` per chunk, :func:`merge` to combine). Centering happens at
    the end: ``C = xx − sum_x sum_xᵀ / n``. ``xx``/``yy`` belong to one model, but
    ``xy`` is a *pair* statistic: it needs both models' rows together, so each pair
    of checkpoints needs its own pass (or its own ``xy``) on this side.
    Raw moments lose ~log10(1 + mean²/var) digits when centered; harmless for ReLU
    activations in float64 (mean ≈ std), but do not feed data with huge offsets.

Gram side — cols ≫ rows (``flat``, ``filter`` in early layers)
    :class:`GramStats` ``(K, L)`` with ``K = XXᵀ``, ``L = YYᵀ`` (n×n, raw),
    accumulated over *column* chunks (all rows of a column chunk are needed). Each
    Gram belongs to one model (:func:`gram`), so every checkpoint's Gram (or its
    eigen-decomposition, :func:`gram_eig`) is computed once and *any* pair of
    checkpoints costs one n×n product and one nuclear norm
    (:func:`pwsm_from_gram_eig` & co.). Grams are double centered (``H K H`` via
    row/column means, H never formed) when the metrics are computed.

PWSM from the Gram side (derivation; tested against the direct formula)
    Let X̃ = Σ σ_i u_i v_iᵀ (thin SVD of the centered data). The eigenvectors of
    C = X̃ᵀX̃ are the v_i with λ_i = σ_i² (plus null directions, where X̃v = 0), so
    netrep's whitening Z = Σ d(λ_i) v_i v_iᵀ with d(λ) = α + (1−α)·max(λ, 1e-7)^(−1/2)
    gives X̃Z = Σ s_i u_i v_iᵀ with s_i = σ_i·d(σ_i²): the whitened data has the *same*
    left singular vectors u_i (the eigenvectors of K̃ = X̃X̃ᵀ = Σ σ_i² u_i u_iᵀ) and
    singular values s_i obtained by a spectral map of K̃'s eigenvalues. Hence
    ‖(X̃Z_x)ᵀ(ỸZ_y)‖_* = ‖V_x diag(s_x) U_xᵀ U_y diag(s_y) V_yᵀ‖_* =
    ‖diag(s_x) U_xᵀ U_y diag(s_y)‖_* (V orthonormal), and ‖X̃Z_x‖_F² = Σ s_x,i².
    Each side needs only its own eigen-decomposition; the pair needs U_xᵀU_y.
    With α = 1 this is Procrustes (s = σ); CKA is ⟨K̃, L̃⟩/(‖K̃‖‖L̃‖).

Both sides give the same numbers (tested); :func:`choose_side` picks the smaller
problem. All statistics accept leading batch dims (per-filter: batch = filters) and
numpy arrays or torch tensors; results keep the input's kind (numpy in -> numpy
out; torch in -> torch on the input's device). float16/32 inputs are accumulated
in float64.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from . import _linalg as L
from ._linalg import F64, GramCentered, GramEig

__all__ = [
    "RowStats",
    "FourthMoments",
    "cka_debiased_from_row_stats",
    "GramStats",
    "GramEig",
    "GramCentered",
    "row_stats",
    "gram",
    "gram_stats",
    "gram_eig",
    "merge",
    "pwsm_from_row_stats",
    "procrustes_from_row_stats",
    "cka_from_row_stats",
    "pwsm_from_gram",
    "procrustes_from_gram",
    "cka_from_gram",
    "pwsm_from_gram_eig",
    "procrustes_from_gram_eig",
    "cka_from_gram_eig",
    "gram_center",
    "cka_from_gram_centered",
    "choose_side",
    "dead_mask",
    "count_dead",
]

Array = Any  # numpy.ndarray | torch.Tensor


class RowStats(NamedTuple):
    """Row-side sufficient statistics of a pair (X: n×p, Y: n×q), batch dims (...).

    ``n``: rows seen (int); ``sum_x`` (..., p), ``sum_y`` (..., q): column sums;
    ``xx`` = XᵀX (..., p, p), ``yy`` = YᵀY (..., q, q), ``xy`` = XᵀY (..., p, q).
    All float64, uncentered. Add two with :func:`merge`.
    ``xx``/``yy`` may instead be the diagonals (..., p)/(..., q) of XᵀX and YᵀY: all that
    Procrustes needs of them (their traces); PWSM and CKA then raise ValueError.
    X's statistics may have fewer leading batch dims than Y's and the pair's (one reference
    against a stack of checkpoints): they broadcast, and X's own decompositions are done once.
    """

    n: int
    sum_x: Array
    sum_y: Array
    xx: Array
    yy: Array
    xy: Array


class FourthMoments(NamedTuple):
    """Row-side sums of a pair (X: n×p, Y: n×q) that the debiased CKA needs beyond
    :class:`RowStats`, with a_i = ‖x_i‖², b_i = ‖y_i‖² of the raw rows, batch dims (...):
    ``ab`` = Σ a_i b_i, ``aa`` = Σ a_i², ``bb`` = Σ b_i² (...); ``ax`` = Σ a_i x_i,
    ``bx`` = Σ b_i x_i (..., p); ``ay`` = Σ a_i y_i, ``by`` = Σ b_i y_i (..., q). All sums over
    rows: they add over chunks and bootstrap units like the row statistics."""

    ab: Array
    aa: Array
    bb: Array
    ax: Array
    bx: Array
    ay: Array
    by: Array


class GramStats(NamedTuple):
    """Gram-side sufficient statistics: K = XXᵀ and L = YYᵀ, float64 (..., n, n), raw.

    Sums over column chunks of the same rows; add two with :func:`merge`.
    """

    K: Array
    L: Array


# ---------------------------------------------------------------------- helpers
def _is_torch(*xs) -> bool:
    return any(isinstance(x, torch.Tensor) for x in xs)


def _out(t: torch.Tensor, as_torch: bool):
    return t if as_torch else t.cpu().numpy()


def _t(a, device=None) -> torch.Tensor:
    """A statistic (numpy/torch) as a float64 tensor."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    t = t.to(F64)
    return t if device is None else t.to(device)


def choose_side(rows: int, cols: int) -> str:
    """``"row"`` when rows ≥ cols (p×p statistics), else ``"gram"`` (n×n statistics).

    Both sides give the same metric values; this only picks the cheaper one. For a
    pair with different widths pass ``max(p, q)``.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be positive, got {rows}, {cols}")
    return "row" if rows >= cols else "gram"


# ---------------------------------------------------------------- accumulation
def row_stats(X, Y) -> RowStats:
    """Row-side statistics of one chunk of rows (X: (..., n, p), Y: (..., n, q))."""
    Xt, Yt = L.as_tensor(X, "X"), L.as_tensor(Y, "Y")
    L.check_pair(Xt, Yt)
    n = Xt.shape[-2]

    def block(Xb, Yb, c):
        sx = sy = xx = yy = xy = None
        for s in range(0, n, c):
            xc, yc = L.f64_copy(Xb[..., s : s + c, :]), L.f64_copy(Yb[..., s : s + c, :])
            parts = (xc.sum(-2), yc.sum(-2), L.at_b(xc, xc), L.at_b(yc, yc), L.at_b(xc, yc))
            if xx is None:
                sx, sy, xx, yy, xy = parts
            else:
                sx, sy, xx, yy, xy = (
                    u + v for u, v in zip((sx, sy, xx, yy, xy), parts, strict=True)
                )
        L.check_finite(Xt, "X", sx)
        L.check_finite(Yt, "Y", sy)
        return sx, sy, L.sym(xx), L.sym(yy), xy

    sx, sy, xx, yy, xy = L.blocked(Xt, Yt, block, n, 8 * (Xt.shape[-1] + Yt.shape[-1]))
    k = _is_torch(X, Y)
    return RowStats(n, _out(sx, k), _out(sy, k), _out(xx, k), _out(yy, k), _out(xy, k))


def gram(X) -> Array:
    """One model's raw Gram matrix XXᵀ (float64, (..., n, n)) of a column chunk."""
    Xt = L.as_tensor(X, "X")
    n, p = Xt.shape[-2:]

    def block(Xb, _, c):
        K = None
        for a in range(0, p, c):
            xc = L.f64_copy(Xb[..., :, a : a + c])
            L.check_finite(Xt, "X", xc.sum((-2, -1)))
            part = L.a_bt(xc, xc)
            K = part if K is None else K + part
        return (L.sym(K),)

    (K,) = L.blocked(Xt, None, block, p, 8 * n)
    return _out(K, _is_torch(X))


def gram_stats(X, Y) -> GramStats:
    """Gram-side statistics of one chunk of columns (same rows in X and Y)."""
    Xt, Yt = L.as_tensor(X, "X"), L.as_tensor(Y, "Y")
    L.check_pair(Xt, Yt)
    return GramStats(gram(X), gram(Y))


def merge(a, b, *more):
    """Sum of partial statistics (RowStats or GramStats); associative and commutative.

    Suitable as the combine step of a tree reduction (e.g. ``dask.bag.fold`` /
    ``dask.array.reduction``). Inputs keep their kind (numpy or torch).
    """
    out = _merge2(a, b)
    for m in more:
        out = _merge2(out, m)
    return out


def _add(u, v):
    if isinstance(u, torch.Tensor) != isinstance(v, torch.Tensor):
        v = torch.as_tensor(v, device=u.device) if isinstance(u, torch.Tensor) else v.cpu().numpy()
    return u + v


def _merge2(a, b):
    if type(a) is not type(b):
        raise ValueError(f"cannot merge {type(a).__name__} with {type(b).__name__}")
    if isinstance(a, RowStats):
        return RowStats(a.n + b.n, *(_add(u, v) for u, v in zip(a[1:], b[1:], strict=True)))
    if isinstance(a, GramStats):
        if tuple(a.K.shape[-2:]) != tuple(b.K.shape[-2:]):
            raise ValueError(
                f"Gram statistics of different row sets: {tuple(a.K.shape)} vs {tuple(b.K.shape)}"
            )
        return GramStats(_add(a.K, b.K), _add(a.L, b.L))
    raise ValueError(f"merge expects RowStats or GramStats, got {type(a).__name__}")


# ------------------------------------------------------------ row-side metrics
def _row_core(s: RowStats, nuc: str = "auto") -> L.RowCore:
    if not isinstance(s, RowStats):
        raise ValueError(f"expected RowStats, got {type(s).__name__}")
    if s.n < 1:
        raise ValueError("RowStats with n < 1")
    dev = s.xx.device if isinstance(s.xx, torch.Tensor) else None
    sx, sy, xx, yy, xy = (_t(a, dev) for a in s[1:])
    n = float(s.n)
    Cxy = xy - sx[..., :, None] * sy[..., None, :] / n
    if xx.ndim == sx.ndim:  # the self-products' diagonals only: their centered traces
        return L.RowCore.of_traces(
            (xx - sx * sx / n).sum(-1), (yy - sy * sy / n).sum(-1), Cxy, xx.sum(-1), yy.sum(-1)
        )
    Cxx = xx - sx[..., :, None] * sx[..., None, :] / n
    Cyy = yy - sy[..., :, None] * sy[..., None, :] / n
    dx, dy = torch.diagonal(xx, dim1=-2, dim2=-1), torch.diagonal(yy, dim1=-2, dim2=-1)
    return L.RowCore(
        Cxx,
        Cyy,
        Cxy,
        dx.sum(-1),
        dy.sum(-1),
        dx.amax(-1).clamp(min=0.0),
        dy.amax(-1).clamp(min=0.0),
        nuc=nuc,
    )


def _row_metric(s: RowStats, metric):
    """``metric(core)`` of row statistics; statistics without a batch axis are evaluated as a batch
    of one, so that a pair's value is the same whether it comes alone or in a batch (torch's batched
    and single matrix products round differently) and every route indexes a batch axis."""
    single = isinstance(s, RowStats) and s.xy.ndim == 2
    if single:
        s = RowStats(s.n, *(a[None] for a in s[1:]))
    out = metric(_row_core(s))
    return L.finish(out[0] if single else out)


def pwsm_from_row_stats(s: RowStats, alpha: float = 0.0):
    """PWSM angle (radians) from row statistics: Xwᵀ Yw = Z_x C_xy Z_y, ‖Xw‖² = tr(Z_x C_xx Z_x)."""
    return _row_metric(s, lambda core: core.pwsm(L.check_alpha(alpha)))


def procrustes_from_row_stats(s: RowStats):
    """1 − ‖C_xy‖_* / sqrt(tr C_xx · tr C_yy)."""
    return _row_metric(s, L.RowCore.procrustes)


def cka_from_row_stats(s: RowStats):
    """Linear CKA *similarity* ‖C_xy‖_F² / (‖C_xx‖_F ‖C_yy‖_F) (biased estimator only)."""
    return _row_metric(s, L.RowCore.cka)


#: relative size below which a centered fourth moment is rounding of the raw ones
FOURTH_RTOL = 1e-9


def _centered_fourth(n: float, mu_x, mu_y, xy, sum_a, sum_b, ab, ay, bx) -> torch.Tensor:
    """Σ_i ‖x_i − μ_x‖² ‖y_i − μ_y‖² from raw sums (a_i = ‖x_i‖², b_i = ‖y_i‖², xy = XᵀY):
    the product of the two centered norms expanded about the means."""
    mx, my = (mu_x * mu_x).sum(-1), (mu_y * mu_y).sum(-1)
    cross = (mu_x[..., :, None] * xy * mu_y[..., None, :]).sum((-2, -1))
    return (
        ab
        - 2.0 * (mu_y * ay).sum(-1)
        - 2.0 * (mu_x * bx).sum(-1)
        + 4.0 * cross
        + my * sum_a
        + mx * sum_b
        - 3.0 * n * mx * my
    )


def cka_debiased_from_row_stats(s: RowStats, q: FourthMoments):
    """Debiased linear CKA *similarity* (Kornblith et al.'s feature-space estimator, the same as
    the U-centered Grams of :func:`cka_from_gram` ``debiased=True``) from row statistics with full
    self-products and the pair's :class:`FourthMoments`: O(p²) per pair instead of O(n²)."""
    single = isinstance(s, RowStats) and s.xy.ndim == 2
    if single:
        s = RowStats(s.n, *(a[None] for a in s[1:]))
        q = FourthMoments(*(a[None] for a in q))
    core = _row_core(s)
    core._full("the debiased CKA")
    dev = core.Cxy.device
    n = float(s.n)
    sx, sy, xx, yy, xy = (_t(a, dev) for a in s[1:])
    q = FourthMoments(*(_t(a, dev) for a in q))
    mu_x, mu_y = sx / n, sy / n
    sum_a = torch.diagonal(xx, dim1=-2, dim2=-1).sum(-1)
    sum_b = torch.diagonal(yy, dim1=-2, dim2=-1).sum(-1)
    dxx = _centered_fourth(n, mu_x, mu_x, xx, sum_a, sum_a, q.aa, q.ax, q.ax)
    dyy = _centered_fourth(n, mu_y, mu_y, yy, sum_b, sum_b, q.bb, q.by, q.by)
    core.debiased_terms = (
        n,
        _centered_fourth(n, mu_x, mu_y, xy, sum_a, sum_b, q.ab, q.ay, q.bx),
        dxx,
        dyy,
    )
    # the centered fourth moments come from raw ones about the mean: where they are not well
    # above the raw ones' rounding (a representation nearly constant over the images), the
    # estimate is rounding noise, not a value
    unresolved = (dxx <= FOURTH_RTOL * q.aa) | (dyy <= FOURTH_RTOL * q.bb)
    out = torch.where(unresolved, torch.nan, core.cka_debiased())
    return L.finish(out[0] if single else out)


# ----------------------------------------------------------- Gram-side metrics
def _gram_core(g: GramStats, nuc: str = "auto") -> L.GramCore:
    if not isinstance(g, GramStats):
        raise ValueError(f"expected GramStats, got {type(g).__name__}")
    dev = g.K.device if isinstance(g.K, torch.Tensor) else None
    K, Lm = _t(g.K, dev), _t(g.L, dev)
    if K.shape[-1] != Lm.shape[-1] or K.shape[-1] != K.shape[-2]:
        raise ValueError(
            f"K and L must be n×n with the same n, got {tuple(K.shape)}, {tuple(Lm.shape)}"
        )
    return L.GramCore(K, Lm, centered=False, nuc=nuc)


def pwsm_from_gram(g: GramStats, alpha: float = 0.0):
    """PWSM angle (radians) from Gram statistics (see the module docstring)."""
    return L.finish(_gram_core(g).pwsm(L.check_alpha(alpha)))


def procrustes_from_gram(g: GramStats):
    """1 − ‖Λ_x^½ U_xᵀ U_y Λ_y^½‖_* / sqrt(tr K̃ · tr L̃)."""
    return L.finish(_gram_core(g).procrustes())


def cka_from_gram(g: GramStats, debiased: bool = False):
    """Linear CKA *similarity* ⟨K̃, L̃⟩ / (‖K̃‖ ‖L̃‖); ``debiased`` uses U-centering (n ≥ 4)."""
    core = _gram_core(g)
    return L.finish(core.cka_debiased() if debiased else core.cka())


def gram_eig(K, centered: GramCentered | None = None) -> GramEig:
    """Decompose one model's raw Gram matrix once (double centering, eigh, null space).

    The result feeds :func:`pwsm_from_gram_eig`, :func:`procrustes_from_gram_eig` and
    :func:`cka_from_gram_eig` for any pair of checkpoints with the same rows. Fields are
    torch tensors (on K's device). ``centered``: :func:`gram_center` of the same K, whose
    double centering is then reused.
    """
    Kt = _raw_gram(K)
    if centered is None:
        return L.gram_eig_raw(Kt)
    if not isinstance(centered, GramCentered) or centered.Kc.shape != Kt.shape:
        raise ValueError("centered: expected gram_center() of the same Gram matrix")
    return L.gram_eig_raw(Kt, centered.Kc)


def gram_center(K) -> GramCentered:
    """Double-center one model's raw Gram matrix once, for :func:`cka_from_gram_centered` with
    any pair of checkpoints with the same rows (CKA needs no decomposition)."""
    return L.gram_centered_raw(_raw_gram(K))


def _raw_gram(K) -> torch.Tensor:
    """One model's raw Gram matrix (..., n, n) as a float64 tensor, checked: square, finite."""
    Kt = _t(K, K.device if isinstance(K, torch.Tensor) else None)
    if Kt.ndim < 2 or Kt.shape[-1] != Kt.shape[-2]:
        raise ValueError(f"expected a Gram matrix (..., n, n), got {tuple(Kt.shape)}")
    L.check_finite(Kt, "K", Kt.sum((-2, -1)))  # one pass when finite
    return Kt


def cka_from_gram_centered(cx: GramCentered, cy: GramCentered):
    """Biased linear CKA similarity of two :func:`gram_center` results: ⟨K̃, L̃⟩ / (‖K̃‖ ‖L̃‖)."""
    if not (isinstance(cx, GramCentered) and isinstance(cy, GramCentered)):
        raise ValueError("expected two GramCentered (from gram_center)")
    if cx.Kc.shape[-1] != cy.Kc.shape[-1]:
        raise ValueError(f"Grams of different row counts: {cx.Kc.shape[-1]} vs {cy.Kc.shape[-1]}")
    return L.finish(L.gram_cka(cx.Kc, cy.Kc, cx.dead | cy.dead, (cx.norm, cy.norm)))


def _check_eigs(ex, ey):
    if not (isinstance(ex, GramEig) and isinstance(ey, GramEig)):
        raise ValueError("expected two GramEig (from gram_eig)")
    if ex.lam.shape[-1] != ey.lam.shape[-1]:
        raise ValueError(f"Grams of different row counts: {ex.lam.shape[-1]} vs {ey.lam.shape[-1]}")


def pwsm_from_gram_eig(ex: GramEig, ey: GramEig, alpha: float = 0.0):
    _check_eigs(ex, ey)
    return L.finish(L.gram_pwsm(ex, ey, L.check_alpha(alpha)))


def procrustes_from_gram_eig(ex: GramEig, ey: GramEig):
    _check_eigs(ex, ey)
    return L.finish(L.gram_procrustes(ex, ey))


def cka_from_gram_eig(ex: GramEig, ey: GramEig):
    """Biased linear CKA similarity from two decompositions: ‖Λx^½UxᵀUyΛy^½‖_F² / (‖λx‖ ‖λy‖)."""
    _check_eigs(ex, ey)
    return L.finish(L.gram_cka_eig(ex, ey))


# ------------------------------------------------------------------ dead inputs
def _dead_of_matrix(X, name: str) -> torch.Tensor:
    Xt = L.as_tensor(X, name)
    n, p = Xt.shape[-2:]

    def block(Xb, _, c):
        # two passes over each block: exact column means, then centered squares
        mx = Xb.sum(-2, dtype=F64) / n
        L.check_finite(Xt, name, mx)
        cen = torch.zeros(Xb.shape[:-2], dtype=F64, device=Xb.device)
        for s in range(0, n, c):
            xc = L.f64_copy(Xb[..., s : s + c, :]).sub_(mx[..., None, :])
            cen = cen + (xc * xc).sum((-2, -1))
        return (cen <= L.DEAD_RTOL * (cen + n * (mx * mx).sum(-1)),)

    return L.blocked(Xt, None, block, n, 8 * p)[0]


def dead_mask(X, Y=None):
    """Which elements have no defined distance (dead input on either side).

    ``X`` (and ``Y``): arrays (..., rows, cols) — dead where the centered matrix has zero
    norm (relative to its raw norm: all-zero or constant columns only) — or one
    :class:`RowStats` / :class:`GramStats`. Returns a bool (2-D input) or a numpy bool
    array of the batch shape. The metric functions return NaN exactly there; any other
    NaN would be a bug. :func:`count_dead` counts them.
    """
    if isinstance(X, RowStats):
        d = _row_core(X).dead
    elif isinstance(X, GramStats):
        d = _gram_core(X).dead
    else:
        d = _dead_of_matrix(X, "X")
        if Y is not None:
            d = d | _dead_of_matrix(Y, "Y")
    return bool(d) if d.ndim == 0 else d.cpu().numpy()


def count_dead(X, Y=None) -> int:
    """Number of elements whose distance is NaN because an input is dead (see :func:`dead_mask`)."""
    return int(np.sum(dead_mask(X, Y)))
