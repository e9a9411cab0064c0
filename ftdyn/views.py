"""Activation tensor -> matrices, one function per *view* (README, "Metrics", **Views**).

A layer's activations for a block of ``n`` images are ``A`` of shape
``(n, C, H, W)`` (C filters, H×W maps). A *view* says which matrices X (rows ×
cols) the similarity metrics compare; the same function applied to the source
and the fine-tuned model's block gives matrices with the same row order.

========== ========================= ============================================
view       matrices (batch, rows, cols) notes
========== ========================= ============================================
channels   (), n·H·W, C              positions as rows (published code: PWSM)
flat       (), n, C·H·W              one row per image (CKA literature)
pooled     (), n, C                  spatial mean per filter
filter     (C,), n, H·W              one matrix per filter -> C distances
map        (n, C), H, W              one matrix per (image, filter), rows = y,
                                     cols = x (published code: Procrustes/CKA,
                                     averaged per class, then classes, filters)
========== ========================= ============================================

The metrics center each matrix's columns; ``--preset paper-code`` centers the rows
of each ``map`` matrix instead, as the published code did
(:mod:`ftdyn.metrics.paper_code`). With ≤ 2 rows per matrix every metric is 0 for
any pair (:func:`ftdyn.metrics.degenerate_reason`): a ``map`` view of 2-pixel-high
maps, or ``filter``/``flat``/``pooled`` with 2 images.

All functions are pure, work on any sample block (so a store chunk can be
transformed on its own) and return arrays of ``dtype`` (float64 by default:
statistics are accumulated in float64: README, "Metrics"). They accept a
numpy array (-> C-contiguous numpy array) or a torch tensor (-> torch tensor of
``torch.float64``/the given torch dtype; the analysis uses this route: torch casts
float16 -> float64 ~20× faster than numpy on CPU).
``channels``, ``flat``, ``pooled`` and ``filter`` put samples on the row axis, so
row-side statistics of consecutive sample blocks add up (:func:`rows_split_by_sample`);
``map`` matrices live inside one image, so each block is complete on its own.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import VIEWS, check_view  # noqa: F401  (VIEWS: the views by name, V.VIEWS)

PER_FILTER_VIEWS = ("filter", "map")

DESCRIPTIONS = {
    "channels": "rows = image positions (n*h*w), cols = filters (d); one distance per layer",
    "flat": "rows = images (n), cols = d*h*w; one distance per layer",
    "pooled": "rows = images (n), cols = filters (d), spatial mean; one distance per layer",
    "filter": "one matrix per filter, rows = images (n), cols = h*w; d distances, NaN-aware mean",
    "map": "one matrix per (image, filter), rows = h, cols = w; averaged over images then filters",
}


def is_per_filter(view: str) -> bool:
    """True when the view gives one value per filter (a vector S_l)."""
    return check_view(view) in PER_FILTER_VIEWS


def rows_split_by_sample(view: str) -> bool:
    """True when the rows of the view's matrices are indexed by samples (so sample blocks stack)."""
    return check_view(view) != "map"


def matrix_shape(view: str, n: int, c: int, h: int, w: int) -> tuple[tuple[int, ...], int, int]:
    """(batch shape, rows, cols) of the view of an (n, c, h, w) block."""
    check_view(view)
    if view == "channels":
        return (), n * h * w, c
    if view == "flat":
        return (), n, c * h * w
    if view == "pooled":
        return (), n, c
    if view == "filter":
        return (c,), n, h * w
    return (n, c), h, w


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {
        np.dtype(np.float64): torch.float64,
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
    }[np.dtype(dtype)]


def _check(block):
    if not isinstance(block, torch.Tensor):
        block = np.asarray(block)
    if block.ndim != 4:
        raise ValueError(f"a view needs an (n, C, H, W) block, got shape {block.shape}")
    return block


def channels(block: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(n·H·W, C): one row per (image, y, x) position, one column per filter."""
    block = _check(block)
    n, c, h, w = block.shape
    if isinstance(block, torch.Tensor):
        return block.to(_torch_dtype(dtype)).permute(0, 2, 3, 1).reshape(n * h * w, c)
    out = np.empty((n, h, w, c), dtype=dtype)
    out[...] = block.transpose(0, 2, 3, 1)
    return out.reshape(n * h * w, c)


def flat(block: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(n, C·H·W): one row per image."""
    block = _check(block)
    if isinstance(block, torch.Tensor):
        return block.to(_torch_dtype(dtype)).reshape(block.shape[0], -1)
    return np.ascontiguousarray(block.reshape(block.shape[0], -1), dtype=dtype)


def pooled(block: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(n, C): spatial mean of each filter's map (computed in float64)."""
    block = _check(block)
    if isinstance(block, torch.Tensor):
        return block.to(torch.float64).mean(dim=(2, 3)).to(_torch_dtype(dtype))
    return np.ascontiguousarray(block.mean(axis=(2, 3), dtype=np.float64), dtype=dtype)


def filter(block: np.ndarray, dtype=np.float64) -> np.ndarray:  # the view's name
    """(C, n, H·W): one matrix per filter, rows = images, cols = map positions."""
    block = _check(block)
    n, c, h, w = block.shape
    if isinstance(block, torch.Tensor):
        return block.to(_torch_dtype(dtype)).reshape(n, c, h * w).transpose(0, 1).contiguous()
    out = np.empty((c, n, h * w), dtype=dtype)
    out[...] = block.reshape(n, c, h * w).transpose(1, 0, 2)
    return out


def map_(block: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(n, C, H, W): one (H × W) matrix per (image, filter), rows = y, cols = x."""
    block = _check(block)
    if isinstance(block, torch.Tensor):
        return block.to(_torch_dtype(dtype)).contiguous()
    return np.ascontiguousarray(block, dtype=dtype)


_FUNCS = {"channels": channels, "flat": flat, "pooled": pooled, "filter": filter, "map": map_}


def to_matrices(view: str, block: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The view ``view`` of an (n, C, H, W) block: an array (*batch, rows, cols)."""
    return _FUNCS[check_view(view)](block, dtype)
