"""The published code's Procrustes and CKA on single feature maps (``--preset paper-code``).

The paper's published code compares one (h × w) map M of the source model with the
same image's map of the fine-tuned model, and centers *rows*: its helper library's
``center(X, dim=1)`` subtracts each row's mean (the code's comment says "center
according to columns"). With M̃ = (M − row means) / ‖M − row means‖_F:

* Procrustes similarity ‖M̃₁ᵀM̃₂‖_* (distance 1 − similarity);
* linear CKA ‖M̃₁ᵀM̃₂‖_F² / (‖M̃₁ᵀM̃₁‖_F ‖M̃₂ᵀM̃₂‖_F) (distance 1 − CKA).

ftdyn's own :func:`~ftdyn.metrics.procrustes` and :func:`~ftdyn.metrics.cka_distance`
center *columns*, the definition of Ding et al. 2021 and Kornblith et al. 2019; the two
differ whenever the column means of a map are not constant. Here the rows of each map
are its "features" (so each map needs ≥ 2 rows to be informative, see
:func:`ftdyn.metrics.degenerate_reason` with ``center="rows"``).

Inputs: stacks ``(..., h, w)`` (numpy or torch, any float dtype), computed in float64
where the input lives; a map whose centered norm is 0 (constant rows: a dead map)
gives NaN, as the published code's 0/0 did. Returns a float for 2-D input, else a
float64 numpy array of the batch shape.
"""

from __future__ import annotations

import torch

from . import _linalg as L
from ._linalg import DEAD_RTOL, F64

__all__ = ["procrustes_rows", "cka_distance_rows", "ROW_CENTERED"]


def _centered(X, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row-centered float64 copy, its squared norm, dead mask: centered ≤ DEAD_RTOL · raw norm)."""
    t = L.as_tensor(X, name)
    x = L.f64_copy(t)
    raw = x.square().sum((-2, -1))
    L.check_finite(t, name, raw)
    x = x - x.mean(-1, keepdim=True)
    norm2 = x.square().sum((-2, -1))
    return x, norm2, norm2 <= DEAD_RTOL * raw


def _pair(X, Y):
    x, nx, dx = _centered(X, "X")
    y, ny, dy = _centered(Y, "Y")
    if x.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"maps of different shapes: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y, nx, ny, dx | dy


def procrustes_rows(X, Y):
    """1 − ‖M̃₁ᵀM̃₂‖_* with row-centered, unit-Frobenius-norm maps (the published code)."""
    x, y, nx, ny, dead = _pair(X, Y)
    sim = L.nuclear_norm(L.at_b(x, y)) / torch.sqrt(nx * ny)
    return L.finish(L.nan_where(1.0 - sim, dead))


def cka_distance_rows(X, Y):
    """1 − linear CKA of row-centered maps (the published code): the w×w products, or the
    equal h×h Gram products when h < w."""
    x, y, _, _, dead = _pair(X, Y)
    if x.shape[-2] < x.shape[-1]:  # ‖XᵀY‖_F² = ⟨XXᵀ, YYᵀ⟩_F and ‖XᵀX‖_F = ‖XXᵀ‖_F
        K, G = L.a_bt(x, x), L.a_bt(y, y)
        cross = (K * G).sum((-2, -1))
    else:
        K, G = L.at_b(x, x), L.at_b(y, y)
        cross = L.at_b(x, y).square().sum((-2, -1))
    cka = cross / (torch.linalg.matrix_norm(K) * torch.linalg.matrix_norm(G))
    return L.finish(L.nan_where(1.0 - cka.to(F64), dead))


#: metric name -> its row-centered (published code) map function
ROW_CENTERED = {"procrustes": procrustes_rows, "cka": cka_distance_rows}
