"""Bootstrap replicates of CKA from unit-level coefficients (pure torch, no I/O).

A bootstrap replicate draws whole units (groups of images) with counts c, one per unit. The
centered covariance of such a resample, C(c) = Σ_u c_u A_u − a(c) b(c)ᵀ/n(c) with
a(c) = Σ_u c_u a_u, enters CKA only through traces and squared Frobenius norms, which are
polynomials in c. Their unit-level coefficients (:func:`unit_quadratics` on the row side,
:func:`gram_unit_quadratics` on the Gram side) are computed once, and each replicate then
costs O(U³) per filter (:func:`cka_of_counts`) instead of re-summing O(U·p²) statistics or
re-centering an n × n Gram matrix.

The units' statistics are expanded about the overall mean (the centered covariance is
shift-invariant), so the expansion does not cancel the mean's large raw moments
(:func:`sums_about_mean`, :func:`centered_unit_products`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ._linalg import DEAD_RTOL

F64 = torch.float64

#: an expanded squared norm or trace below this share of the size of its terms may have lost
#: digits to cancellation (e.g. a filter active only in units a replicate did not draw): such
#: (replicate, filter) values are computed directly instead
STABLE_SHARE = 1e-4


class UnitQuadratics(NamedTuple):
    """The unit-level inner products that give ‖C(c)‖_F² (and trace C(c)) for any counts c, per
    batch entry B (a filter, or the whole layer) and units U."""

    #: (B, U, U) ⟨A_u, A_v⟩
    gram: torch.Tensor
    #: (B, U, U, U) a_vᵀ A_u b_w
    cubic: torch.Tensor
    #: (B, U, U) a_u·a_v
    left: torch.Tensor
    #: (B, U, U) b_u·b_v
    right: torch.Tensor
    #: (B, U) trace A_u (None where A is not square or not a self-product)
    trace: torch.Tensor | None


class PairQuadratics(NamedTuple):
    """The :class:`UnitQuadratics` of a pair (X, Y): of the cross product and of each side."""

    xy: UnitQuadratics
    xx: UnitQuadratics
    yy: UnitQuadratics


def sums_about_mean(sums: torch.Tensor, n_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(overall mean (B, p), the units' sums about it (U, B, p)) of the units' column sums
    ``sums`` (U, B, p) over ``n_u`` (U,) rows each."""
    mean = sums.sum(0) / n_u.sum()
    return mean, sums - n_u[:, None, None] * mean


def centered_unit_products(
    products: torch.Tensor,
    sums_x: torch.Tensor,
    mean_x: torch.Tensor,
    mean_y: torch.Tensor,
    about_y: torch.Tensor,
) -> torch.Tensor:
    """The units' products about the overall means, Σ_{i∈u} (x_i − m_x)(y_i − m_y)ᵀ =
    M_u − s_u m_yᵀ − m_x b_uᵀ, in one batched pass: ``products`` M (U, *batch, p, q) the units'
    raw XᵀY, ``sums_x`` (U, B, p) their raw column sums of X, ``mean_x`` (B, p) and ``mean_y``
    (B, q) the overall means, ``about_y`` (U, B, q) the units' sums of Y about its mean.
    Returns (U, B, p, q)."""
    units = sums_x.shape[0]
    products = products.reshape(units, -1, *products.shape[-2:])
    left = torch.stack([sums_x, mean_x.expand_as(sums_x)], dim=-1)  # (U, B, p, 2)
    right = torch.stack([mean_y.expand_as(about_y), about_y], dim=-2)  # (U, B, 2, q)
    return torch.baddbmm(
        products.flatten(0, 1), left.flatten(0, 1), right.flatten(0, 1), alpha=-1.0
    ).view(products.shape)


def unit_traces(products: torch.Tensor) -> torch.Tensor:
    """(U, B) the traces of the units' square products (U, *batch, p, p)."""
    return torch.diagonal(products, dim1=-2, dim2=-1).sum(-1).reshape(products.shape[0], -1)


def unit_quadratics(A: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> UnitQuadratics:
    """The coefficients of ‖Σ_u c_u A_u − a(c) b(c)ᵀ/n(c)‖_F² for any counts c (row side):
    ``A`` (U, B, p, q) the units' products about the means, ``a`` (U, B, p) and ``b`` (U, B, q)
    their column sums about the means."""
    flat = A.flatten(-2).movedim(0, 1)  # (B, U, p·q)
    G = torch.matmul(flat, flat.mT)
    Ab = torch.matmul(A, b.permute(1, 2, 0))  # (U, B, p, U): A_u b_w
    Q = torch.einsum("vbi,ubiw->buvw", a, Ab)
    at, bt = a.movedim(0, 1), b.movedim(0, 1)
    tr = (
        torch.diagonal(A, dim1=-2, dim2=-1).sum(-1).movedim(0, 1)
        if A.shape[-1] == A.shape[-2]
        else None
    )
    return UnitQuadratics(G, Q, torch.matmul(at, at.mT), torch.matmul(bt, bt.mT), tr)


def gram_unit_quadratics(K: torch.Tensor, L: torch.Tensor, ind: torch.Tensor) -> UnitQuadratics:
    """:func:`unit_quadratics` of the Gram side: for centered Grams K, L (B, n, n) and the
    images' unit indicator ``ind`` (n, U), the coefficients that give the weighted (resampled)
    ⟨K̃, L̃⟩ = wᵀ(K∘L)w − 2/n(c) Σ_i w_i (Kw)_i (Lw)_i + (wᵀKw)(wᵀLw)/n(c)², w = ind·c,
    where K̃ is K of the resampled images centered again (K̃w = 0 kills the other terms).
    The trace is kept for a Gram with itself (``K is L``)."""
    KU, LU = torch.matmul(K, ind), torch.matmul(L, ind)  # (B, n, U)
    G = torch.matmul(ind.T, torch.matmul(K * L, ind))
    tr = torch.matmul(torch.diagonal(K, dim1=-2, dim2=-1), ind) if K is L else None
    return UnitQuadratics(
        G, _unit_cubic(ind, KU, LU), torch.matmul(ind.T, KU), torch.matmul(ind.T, LU), tr
    )


def _unit_cubic(ind: torch.Tensor, KU: torch.Tensor, LU: torch.Tensor) -> torch.Tensor:
    """(B, U, U, U) Σ_i ind_iu (KU)_iv (LU)_iw, one unit at a time over the images it holds: a
    single einsum builds a (B, n, U, U) intermediate, three times the Gram matrices themselves
    at the default 32 units and a few hundred images, and costs U times the products."""
    parts = []
    for u in range(ind.shape[1]):
        rows = torch.nonzero(ind[:, u]).flatten()
        parts.append(torch.matmul((KU[:, rows] * ind[rows, u, None]).mT, LU[:, rows]))
    return torch.stack(parts, dim=1)


def gram_unit_traces(K: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """(U, B) the units' traces of raw Grams ``K`` (B, n, n), images' unit indicator ``ind``
    (n, U)."""
    return torch.matmul(torch.diagonal(K, dim1=-2, dim2=-1), ind).T


def sq_norm(quad: UnitQuadratics, c: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(N, B) ‖C(c)‖_F² of every replicate's counts ``c`` (N, U), ``n`` (N, 1) rows drawn."""
    cgc = torch.einsum("nu,buv,nv->nb", c, quad.gram, c)
    cubic = torch.einsum("nu,nv,nw,buvw->nb", c, c, c, quad.cubic)
    a2 = torch.einsum("nu,buv,nv->nb", c, quad.left, c)
    b2 = torch.einsum("nu,buv,nv->nb", c, quad.right, c)
    return cgc - 2.0 * cubic / n + a2 * b2 / n**2


def cka_of_counts(
    counts: np.ndarray,
    n_u: torch.Tensor,
    quads: PairQuadratics,
    raw_x: torch.Tensor,
    raw_y: torch.Tensor,
    exact: Callable[[int, torch.Tensor], np.ndarray],
) -> np.ndarray:
    """(N, B) CKA distances of the replicates' unit counts (N, U), the units holding ``n_u``
    rows: ``quads`` of the pair and of each side, ``raw_x``/``raw_y`` (U, B) the units' raw
    traces (the dead test of :class:`ftdyn.metrics.stats.RowStats` and Gram CKA).
    ``exact(b, filters)``: the directly computed distances of replicate b at those filters
    (a LongTensor), used where the expansion is not accurate (:data:`STABLE_SHARE`)."""
    c = torch.as_tensor(counts, dtype=F64, device=n_u.device)
    n = torch.round(c @ n_u)[:, None]

    def form(M):
        return torch.einsum("nu,buv,nv->nb", c, M, c)

    def norm_and_size(quad):  # (value, size of its terms)
        unit_norms = torch.diagonal(quad.gram, dim1=-2, dim2=-1).clamp(min=0.0).sqrt()
        size = (
            c @ unit_norms.T
            + (form(quad.left).clamp(min=0.0) * form(quad.right).clamp(min=0.0)).sqrt() / n
        ) ** 2
        return sq_norm(quad, c, n), size

    def trace_of(quad):  # trace C(c) = Σ_u c_u tr A_u − ‖a(c)‖²/n(c), at least 0 like RowCore's
        a2 = form(quad.left) / n
        return (c @ quad.trace.T - a2).clamp(min=0.0), c @ quad.trace.abs().T + a2.abs()

    (tx, tx_size), (ty, ty_size) = trace_of(quads.xx), trace_of(quads.yy)
    (nxx, xx_size), (nyy, yy_size), (nxy, xy_size) = (
        norm_and_size(q) for q in (quads.xx, quads.yy, quads.xy)
    )
    dead = (tx <= DEAD_RTOL * (c @ raw_x)) | (ty <= DEAD_RTOL * (c @ raw_y))
    sim = torch.clamp(nxy / (nxx.clamp(min=0.0).sqrt() * nyy.clamp(min=0.0).sqrt()), 0.0, 1.0)
    out = (1.0 - torch.where(dead, torch.full_like(sim, float("nan")), sim)).cpu().numpy()
    unstable = (
        (tx < STABLE_SHARE * tx_size)
        | (ty < STABLE_SHARE * ty_size)
        | (nxx < STABLE_SHARE * xx_size)
        | (nyy < STABLE_SHARE * yy_size)
        | (nxy.abs() < STABLE_SHARE * xy_size)
    ).cpu()
    for b in torch.nonzero(unstable.any(1)).flatten().tolist():
        filters = torch.nonzero(unstable[b]).flatten()
        out[b, filters.numpy()] = np.asarray(exact(b, filters.to(n_u.device))).reshape(-1)
    return out
