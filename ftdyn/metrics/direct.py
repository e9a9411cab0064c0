"""Metrics on matrices: PWSM, orthogonal Procrustes, linear CKA (paper §3.1;
definitions in the README's "Metrics" section).

``X`` and ``Y`` are (rows × cols) matrices of the source and the fine-tuned model
for the same inputs in the same row order, or stacks ``(..., rows, cols)`` (one
batched computation, e.g. batch = filters; batch dims broadcast, so one source
matrix can be compared with a stack of checkpoints). numpy arrays or torch tensors
of any float/int dtype; everything is computed in float64 (float16/32 inputs are
cast chunk by chunk, never as a whole), on the CPU or on the CUDA device of the
input tensors. Returns a python float for 2-D input, else a float64 numpy array of
the batch shape.

Columns are centered (exactly, in float64) and the computation then goes through
the smaller of the two sufficient statistics (:func:`ftdyn.metrics.stats.choose_side`):
p×p covariances when rows ≥ cols, n×n Gram matrices otherwise. The two routes
agree to ~1e-12 (tested).

Conventions

* ``pwsm(X, Y, alpha)`` is netrep's ``LinearMetric(alpha, center_columns=True,
  score_method="angular")``: the whitening uses the *unnormalized* covariance
  ``XᵀX`` (not divided by the row count) with eigenvalues clipped at 1e-7, so for
  ``0 < α < 1`` the value depends on the scale of the activations (only α = 0 and
  α = 1 are scale free). repsim divides by n and floors at 1e-9: for 0 < α < 1 its
  numbers differ from these. When rows − 1 ≤ cols, α = 0 is degenerate (both whitened
  matrices span the same centered row space): the angle is 0 up to the clip. Only
  α = 0 is: for 0 < α < 1 the angle stays informative.
* Degenerate shapes: with ≤ 2 rows the centered matrices have rank ≤ 1 and share their
  left singular vector, so every metric here is 0 (CKA similarity 1) for *any* pair.
  The functions still return that number for the caller to judge;
  :func:`ftdyn.metrics.degenerate_reason` names the condition and ``ftdyn analyze``
  reports such values as NaN (counted, warned, listed in its attrs).
* ``procrustes`` is the paper's range-[0, 1] distance 1 − ‖X̂ᵀŶ‖_* (half of Ding
  et al.'s squared distance).
* ``linear_cka`` is a *similarity* (1 = identical); :func:`cka_distance` = 1 − CKA.
* Dead input (an all-zero matrix after centering) → NaN for that element; see
  :func:`ftdyn.metrics.stats.dead_mask`. An all-zero *column* is not dead: it is a null
  direction and the value equals that of the matrix without the column.
* NaN/Inf in the input raise ValueError.
* ``estimator``: every function returns the plug-in value (the published conventions above)
  unless asked for ``"corrected"``, the estimator whose bias does not grow with columns/rows
  (debiased CKA; grouped jackknife for Procrustes and PWSM), which ``ftdyn analyze`` uses by
  default; :mod:`ftdyn.metrics.estimators` has the details and the intervals.
"""

from __future__ import annotations

import torch

from . import _linalg as L
from ._jackknife import check_estimator, jackknife, leave_group_out
from ._linalg import F64
from .stats import choose_side

__all__ = ["pwsm", "procrustes", "linear_cka", "cka_distance"]


def _prepare(X, Y):
    Xt, Yt = L.as_tensor(X, "X"), L.as_tensor(Y, "Y")
    L.check_pair(Xt, Yt)
    return Xt, Yt


def _means(T: torch.Tensor, name: str, full: torch.Tensor) -> torch.Tensor:
    s = T.sum(-2, dtype=F64)
    L.check_finite(full, name, s)
    return s / T.shape[-2]


def _shifted(chunk: torch.Tensor, shift: torch.Tensor | None, name: str, full: torch.Tensor):
    """(float64 copy of a row chunk minus ``shift``, shift); shift=None: the chunk's own mean."""
    out = L.f64_copy(chunk)
    if shift is None:
        shift = out.mean(-2)
        L.check_finite(full, name, shift)
    return out.sub_(shift[..., None, :]), shift


def _row_core_from_data(Xt, Yt, debiased: bool = False) -> L.RowCore:
    """Centered covariances, streamed: one pass, memory O(block + cols²).

    Rows are shifted by the mean of the block's first row chunk (exact centering when all
    rows fit in one chunk) and the remaining offset δ = mean − shift is removed at the end
    (C = Σ x_s x_sᵀ − n δδᵀ): the cancellation is only of the size of δ, which is tiny.
    The debiased CKA needs exactly centered rows, so it takes a first pass for the means.
    """
    n = Xt.shape[-2]

    def block(Xb, Yb, c):
        ax = ay = None
        if debiased:
            ax, ay = _means(Xb, "X", Xt), _means(Yb, "Y", Yt)
        Cxx = Cyy = Cxy = None
        sx = sy = 0.0
        zero = torch.zeros(Xb.shape[:-2], dtype=F64, device=Xb.device)
        dxy = dxx = dyy = zero
        for s in range(0, n, c):
            xc, ax = _shifted(Xb[..., s : s + c, :], ax, "X", Xt)
            yc, ay = _shifted(Yb[..., s : s + c, :], ay, "Y", Yt)
            parts = (L.at_b(xc, xc), L.at_b(yc, yc), L.at_b(xc, yc))
            if Cxx is None:
                Cxx, Cyy, Cxy = parts
            else:
                Cxx, Cyy, Cxy = Cxx + parts[0], Cyy + parts[1], Cxy + parts[2]
            if not debiased:
                sx, sy = sx + xc.sum(-2), sy + yc.sum(-2)
            else:
                rx, ry = (xc * xc).sum(-1), (yc * yc).sum(-1)
                dxy = dxy + (rx * ry).sum(-1)
                dxx = dxx + (rx * rx).sum(-1)
                dyy = dyy + (ry * ry).sum(-1)
        if not debiased:
            L.check_finite(Xt, "X", sx)
            L.check_finite(Yt, "Y", sy)
            Cxx = Cxx - sx[..., :, None] * sx[..., None, :] / n
            Cyy = Cyy - sy[..., :, None] * sy[..., None, :] / n
            Cxy = Cxy - sx[..., :, None] * sy[..., None, :] / n
            ax, ay = ax + sx / n, ay + sy / n
        rawx = L.trace(Cxx) + n * (ax * ax).sum(-1)
        rawy = L.trace(Cyy) + n * (ay * ay).sum(-1)
        return Cxx, Cyy, Cxy, rawx, rawy, dxy, dxx, dyy

    Cxx, Cyy, Cxy, rawx, rawy, dxy, dxx, dyy = L.blocked(
        Xt, Yt, block, n, 8 * (Xt.shape[-1] + Yt.shape[-1])
    )
    core = L.RowCore(Cxx, Cyy, Cxy, rawx, rawy)
    if debiased:
        core.debiased_terms = (n, dxy, dxx, dyy)
    return core


def _centered_gram(T: torch.Tensor, name: str):
    """X̃X̃ᵀ by column chunks (X̃ = column-centered X; a column chunk holds all rows, so it
    is centered exactly on its own) and the raw squared norm ‖X‖_F². One pass."""
    n, p = T.shape[-2:]

    def block(Tb, _, c):
        K = None
        raw = 0.0
        for a in range(0, p, c):
            x = L.f64_copy(Tb[..., :, a : a + c])
            m = x.mean(-2, keepdim=True)
            L.check_finite(T, name, m)
            xc = x.sub_(m)
            part = L.a_bt(xc, xc)
            K = part if K is None else K + part
            raw = raw + n * (m * m).sum((-2, -1))
        return K, L.trace(K) + raw

    return L.blocked(T, None, block, p, 8 * n)


def _gram_core_from_data(Xt, Yt) -> L.GramCore:
    K, rawK = _centered_gram(Xt, "X")
    Lm, rawL = _centered_gram(Yt, "Y")
    return L.GramCore(K, Lm, centered=True, raw_trK=rawK, raw_trL=rawL)


def _core(X, Y, debiased: bool = False):
    Xt, Yt = _prepare(X, Y)
    n = Xt.shape[-2]
    if choose_side(n, max(Xt.shape[-1], Yt.shape[-1])) == "row":
        return _row_core_from_data(Xt, Yt, debiased)
    return _gram_core_from_data(Xt, Yt)


def _jackknifed(plugin, X, Y, seed: int):
    """The grouped-jackknife value of ``plugin(X, Y)``
    (:func:`ftdyn.metrics.estimators.jackknife`)."""
    return jackknife(*leave_group_out(plugin, X, Y, seed))[0]


def pwsm(X, Y, alpha: float = 0.0, estimator: str = "plugin", seed: int = 0):
    """Partial-whitening shape metric, angular form, in radians ∈ [0, π/2].

    α = 1: angular Procrustes (rotations only); α = 0: full whitening (CCA-like,
    invariant to invertible linear maps). netrep convention, see the module doc.

    ``estimator="plugin"`` (the default here, netrep's number) or ``"corrected"``: the grouped
    jackknife over 8 row groups (partition seeded by ``seed``), which removes the 1/rows term of
    the bias that grows with columns/rows; ``ftdyn analyze`` defaults to ``"corrected"``. The
    correction is usable only up to a column/row ratio
    (:func:`ftdyn.metrics.size_reliability`).
    """
    alpha = L.check_alpha(alpha)
    if check_estimator(estimator) == "corrected":
        return _jackknifed(lambda A, B: pwsm(A, B, alpha), X, Y, seed)
    return L.finish(_core(X, Y).pwsm(alpha))


def procrustes(X, Y, estimator: str = "plugin", seed: int = 0):
    """Orthogonal Procrustes distance 1 − ‖X̂ᵀŶ‖_* ∈ [0, 1] (X̂, Ŷ centered, unit Frobenius norm).

    With ≤ 2 rows (rank ≤ 1 after centering) the value is 0 for any pair: see
    :func:`ftdyn.metrics.degenerate_reason`.

    ``estimator="plugin"`` (the default here, Ding et al.'s number) or ``"corrected"``: the
    grouped jackknife over 8 row groups (partition seeded by ``seed``), which removes the 1/rows
    term of the bias that grows with columns/rows; ``ftdyn analyze`` defaults to
    ``"corrected"``. The correction is usable only up to a column/row ratio
    (:func:`ftdyn.metrics.size_reliability`).
    """
    if check_estimator(estimator) == "corrected":
        return _jackknifed(procrustes, X, Y, seed)
    return L.finish(_core(X, Y).procrustes())


def linear_cka(X, Y, debiased: bool = False, estimator: str = "plugin"):
    """Linear CKA *similarity* ‖ỸᵀX̃‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F) ∈ [0, 1] (1 = same up to
    rotation/scale).

    ``debiased=True``, or ``estimator="corrected"`` (the same; ``ftdyn analyze``'s default): the
    unbiased HSIC estimator (Song et al. 2012, as in Kornblith et al. 2019), whose size bias is
    negligible at any column/row ratio; needs rows ≥ 4 (else NaN) and may be slightly
    negative. ``estimator="plugin"`` (the default here, Kornblith et al.'s reference number):
    the biased estimator, 1 for any pair with ≤ 2 rows (rank ≤ 1 after centering): see
    :func:`ftdyn.metrics.degenerate_reason`.
    """
    debiased = bool(debiased) or check_estimator(estimator) == "corrected"
    return L.finish(_core(X, Y, debiased).cka_debiased() if debiased else _core(X, Y).cka())


def cka_distance(X, Y, debiased: bool = False, estimator: str = "plugin"):
    """1 − linear CKA: a dissimilarity (lower = more similar), the registry's ``cka``;
    ``debiased`` and ``estimator`` as in :func:`linear_cka`."""
    v = linear_cka(X, Y, debiased, estimator)
    return 1.0 - v
