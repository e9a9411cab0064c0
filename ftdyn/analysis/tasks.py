"""The bodies of the Dask tasks: read chunks, accumulate float64 statistics, finish metrics.

Each task gets a :class:`~ftdyn.analysis.inputs.Source` (picklable) and chunk indices,
reads what it needs itself (so a distributed worker never receives activations through
the scheduler), runs on ``Source.device`` and trims the heap when it ends.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import zarr

from .. import metrics as M
from .. import summary as S
from .. import views as V
from ..config import DEBIASED_CKA
from ..errors import FtdynError
from ..metrics._linalg import DEAD_RTOL
from ..store import all_finite, baseline_var, chunk_on_disk, decoding
from .inputs import BASELINE, Source

F64 = torch.float64

_ARRAYS: dict[tuple[str, str], Any] = {}
_ARRAYS_LOCK = threading.Lock()


def _array(path: str, var: str):
    key = (path, var)
    arr = _ARRAYS.get(key)
    if arr is None:
        with _ARRAYS_LOCK:
            arr = _ARRAYS.get(key)
            if arr is None:
                arr = zarr.open_group(path, mode="r", zarr_format=3)[var]
                _ARRAYS[key] = arr
    return arr


def read_block(src: Source, ckpt: int, chunk: int, channels: slice = slice(None)) -> torch.Tensor:
    """One (checkpoint, sample chunk) block as stored (float16/32), on the analysis device
    (copied in the stored dtype: the float64 conversion happens there). ``channels``: a
    filter group; in a sharded store only the inner chunks holding it are decoded.
    A block with any NaN/inf raises a one-line FtdynError (:func:`nonfinite_error`)."""
    rows = src.rows(chunk)
    var, index = (baseline_var(src.var), 0) if ckpt == BASELINE else (src.var, ckpt)
    with decoding(src.path, src.where(ckpt, chunk)):
        block = np.asarray(_array(src.path, var)[index, rows, channels])
    if not all_finite(block):
        raise nonfinite_error(src, ckpt, chunk, block)
    return torch.from_numpy(np.ascontiguousarray(block)).to(src.device)


def nonfinite_error(src: Source, ckpt: int, chunk: int, block: np.ndarray) -> FtdynError:
    """Tell a chunk file that is gone (it reads as the fill value, NaN) from stored NaN/inf."""
    where = f"{src.path}: {src.where(ckpt, chunk)}"
    var, index = (baseline_var(src.var), 0) if ckpt == BASELINE else (src.var, ckpt)
    if not chunk_on_disk(src.path, var, index, chunk):
        return FtdynError(
            f"{where}: the chunk file is missing (removed after extraction, it reads as empty); "
            "the store is damaged: run the same `ftdyn extract` again to rewrite it."
        )
    finite = np.isfinite(block)
    n_inf = int(np.isinf(block).sum())
    n_nan = int(block.size - finite.sum()) - n_inf
    largest = float(np.abs(block[finite]).max()) if finite.any() else float("nan")
    if n_inf and block.dtype == np.float16:
        cause = (
            f"float16 overflow, |x| > {float(np.finfo(np.float16).max):.0f}",
            "re-extract with --dtype float32 into a new --out",
        )
    else:
        cause = (
            "the network produced them: a diverged checkpoint?",
            "check that checkpoint and extract a series without it",
        )
    return FtdynError(
        f"{where}: holds {n_inf} infinite and {n_nan} NaN stored value(s) (largest finite "
        f"magnitude {largest:.4g}; {cause[0]}); distances need finite activations: {cause[1]}."
    )


# ===================================================================== accumulation
def _unit_rows(units: np.ndarray | None, n_rows: int, device: str):
    """(unit, image indices of one chunk): all images (unit 0) or one group per unit; images
    of unit -1 are in none (the convergence run reads only the groups it needs)."""
    if units is None:
        yield 0, slice(0, n_rows)
        return
    for u in np.unique(units[units >= 0]):
        yield int(u), torch.from_numpy(np.flatnonzero(units == u)).to(device)


def _blocks(n_img: int, batch: int, per_img_filter_bytes: int, sub_bytes: int):
    """(image slice, batch slice) blocks whose float64 matrices take ≤ sub_bytes.

    Per-filter views are blocked over filters first, so each product keeps every image
    of the chunk as its inner dimension (few, large GEMMs; the h·w × h·w statistics are
    touched once per chunk); whole-layer views (batch 1) are blocked over images.
    """
    per_img = per_img_filter_bytes * max(1, batch)
    if n_img * per_img <= sub_bytes or batch <= 1:
        step = max(1, int(sub_bytes // max(1, per_img)))
        for s in range(0, n_img, step):
            yield slice(s, min(s + step, n_img)), slice(0, max(1, batch))
        return
    fstep = max(1, int(sub_bytes // max(1, n_img * per_img_filter_bytes)))
    if fstep > 1 or n_img * per_img_filter_bytes <= sub_bytes:
        for f in range(0, batch, fstep):
            yield slice(0, n_img), slice(f, min(f + fstep, batch))
        return
    step = max(1, int(sub_bytes // max(1, per_img_filter_bytes)))
    for f in range(batch):
        for s in range(0, n_img, step):
            yield slice(s, min(s + step, n_img)), slice(f, f + 1)


def _mat(raw: torch.Tensor, view: str) -> torch.Tensor:
    """View matrices (batch..., rows, cols) in float64 of a raw block."""
    return V.to_matrices(view, raw, dtype=F64)


def _at_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.mT, b)


@dataclass
class RowAccumulator:
    """Row-side float64 statistics of one filter group over some sample chunks, per bootstrap unit
    (U units; 1 without bootstrap), so that a replicate can re-sum the units it drew.

    T checkpoints (those of the pass), ``batch`` = (filters,) for the per-filter view and () for
    whole-layer views, p columns of the view. The reference pairs ``xx``/``xy``/``yy`` pair the
    pass's reference checkpoint X with each checkpoint Y; ``G`` holds every pair at once. Built by
    :func:`row_leaf`, summed by :meth:`merge`, read through :meth:`row_stats`.
    """

    #: (U,) rows seen per unit
    n: torch.Tensor
    #: (U, T, *batch, p) column sums per unit and checkpoint
    s: torch.Tensor
    #: (U, *batch, p, p) XᵀX of the reference per unit (None: all pairs only, one unit;
    #: (U, *batch, p) its diagonal where the metrics need no more, :attr:`diagonal`)
    xx: torch.Tensor | None = None
    #: (U, T, *batch, p, p) XᵀY of the reference X and checkpoint Y per unit
    xy: torch.Tensor | None = None
    #: (U, T, *batch, p, p) YᵀY of checkpoint Y per unit (or (U, T, *batch, p) its diagonal)
    yy: torch.Tensor | None = None
    #: (*batch, T·p, T·p) ZᵀZ of every checkpoint side by side, Z = [X_0 … X_T−1], all units
    #: together (None: reference pairs only)
    G: torch.Tensor | None = None
    #: {(checkpoint of the pass, sample chunk): (images, filters of the group)} float64 spatial
    #: means of the blocks read (the linear probes' features; None: not kept)
    pooled: dict | None = None

    @classmethod
    def zeros(
        cls,
        units: int,
        T: int,
        batch: tuple[int, ...],
        p: int,
        *,
        all_pairs: bool,
        device,
        diagonal: bool = False,
    ) -> RowAccumulator:
        """Empty statistics; the reference pairs are kept without all pairs or with several units
        (the replicates re-sum them); ``diagonal``: of the self-products XᵀX and YᵀY only their
        diagonals (reference pairs only)."""

        def zeros(*shape):
            return torch.zeros(shape, dtype=F64, device=device)

        pairs = not all_pairs or units > 1
        own = (p,) if diagonal and not all_pairs else (p, p)
        return cls(
            n=zeros(units),
            s=zeros(units, T, *batch, p),
            xx=zeros(units, *batch, *own) if pairs else None,
            xy=zeros(units, T, *batch, p, p) if pairs else None,
            yy=zeros(units, T, *batch, *own) if pairs else None,
            G=zeros(*batch, T * p, T * p) if all_pairs else None,
        )

    @property
    def diagonal(self) -> bool:
        """Whether the self-products are kept as their diagonals (Procrustes needs no more)."""
        return self.xx is not None and self.xx.ndim < self.xy.ndim - 1

    def merge(self, *others: RowAccumulator) -> RowAccumulator:
        """These statistics plus ``others`` (same shapes), summed into these in place (the
        tree reduction's combine step: each partial result has exactly one consumer)."""
        for other in others:
            for f in fields(self):
                mine = getattr(self, f.name)
                if f.name == "pooled":
                    if mine is not None:
                        mine.update(other.pooled)  # other chunks: disjoint keys
                elif mine is not None:
                    mine += getattr(other, f.name)
        return self

    def merged(self, *others: RowAccumulator) -> RowAccumulator:
        """Like :meth:`merge` without touching its inputs (distributed: a task may be retried)."""
        return self.copy().merge(*others)

    def copy(self) -> RowAccumulator:
        return RowAccumulator(
            **{
                f.name: None
                if (t := getattr(self, f.name)) is None
                else (dict(t) if f.name == "pooled" else t.clone())
                for f in fields(self)
            }
        )

    def select(self, filters: torch.Tensor) -> RowAccumulator:
        """The statistics of some filters of a per-filter view (indices on the batch axis)."""

        def pick(t, dim):
            return None if t is None else t.index_select(dim, filters)

        return RowAccumulator(
            self.n,
            pick(self.s, 2),
            pick(self.xx, 1),
            pick(self.xy, 2),
            pick(self.yy, 2),
            pick(self.G, 0),
        )

    def row_stats(self, a: int, b: int, ref: int, counts: np.ndarray | None = None) -> M.RowStats:
        """RowStats of checkpoint pair (a, b) (a = X side): the totals, or with ``counts`` (U,) the
        units re-summed that many times each (a bootstrap replicate). Without all pairs or with
        ``counts``, a must be the reference ``ref``."""

        def tot(x):
            if counts is None:
                return x.sum(0)
            return torch.einsum(
                "u,u...->...", torch.as_tensor(counts, dtype=F64, device=x.device), x
            )

        n = int(round(float(tot(self.n))))
        s = tot(self.s)
        if self.G is not None and counts is None:
            p = s.shape[-1]
            ba, bb = slice(a * p, (a + 1) * p), slice(b * p, (b + 1) * p)
            G = self.G
            return M.RowStats(n, s[a], s[b], G[..., ba, ba], G[..., bb, bb], G[..., ba, bb])
        # reference pairs only: (ref, t)
        if a != ref:
            raise ValueError("pair statistics without the reference need all-pairs accumulation")
        xx = tot(self.xx)
        if b == ref:  # with diagonals, the reference's own XᵀX is kept as its pair
            return M.RowStats(
                n, s[ref], s[ref], xx, xx, tot(self.xy[:, ref]) if self.diagonal else xx
            )
        return M.RowStats(n, s[ref], s[b], xx, tot(self.yy[:, b]), tot(self.xy[:, b]))


@dataclass(frozen=True)
class _RowPass:
    """How a row leaf reads and blocks the filter group ``fsl`` of ``src`` in ``view``: ``batch``
    filters (per-filter view; None: a whole-layer view), ``units`` the bootstrap unit of every
    image (None: one unit), float64 products of at most ``sub_bytes``."""

    src: Source
    view: str
    fsl: slice
    batch: int | None
    units: np.ndarray | None
    per_img_filter_bytes: int
    sub_bytes: int

    def read(self, ckpt: int, chunk: int) -> torch.Tensor:
        return read_block(self.src, ckpt, chunk, self.fsl)

    def blocks(self, chunk: int):
        """(unit, images, filters, first) blocks of a chunk: images a slice or an index tensor,
        filters a slice of the group (None for whole-layer views), first whether they are the
        first filters of these images (which count the rows)."""
        rows = self.src.rows(chunk)
        n_img = rows.stop - rows.start
        units = None if self.units is None else self.units[rows]
        for u, sel in _unit_rows(units, n_img, self.src.device):
            n_sel = n_img if isinstance(sel, slice) else len(sel)
            for isl, bsl in _blocks(
                n_sel, self.batch or 1, self.per_img_filter_bytes, self.sub_bytes
            ):
                imgs = sel[isl] if isinstance(sel, torch.Tensor) else isl
                yield u, imgs, None if self.batch is None else bsl, bsl.start == 0

    def matrices(self, raw: torch.Tensor, imgs, bsl: slice | None) -> torch.Tensor:
        """float64 view of some images and filters; slices are views, so only they are copied."""
        part = raw if bsl is None else raw[:, bsl]  # raw holds the group's channels only
        part = part[imgs] if isinstance(imgs, slice) else part.index_select(0, imgs)
        return V.to_matrices(self.view, part, dtype=F64)


def _add_at(target: torch.Tensor, value: torch.Tensor, bsl: slice | None, dim: int = 0) -> None:
    """target += value, at the filters ``bsl`` on axis ``dim`` (None: all of target)."""
    if bsl is not None:
        target = target[(slice(None),) * dim + (bsl,)]
    target += value


def row_leaf(
    src: Source,
    chunks: list[int],
    ckpts: list[int],
    ref: int,
    view: str,
    fsl: slice,
    mode: str,
    units: np.ndarray | None,
    n_units: int,
    sub_bytes: int,
    pooled: bool = False,
    diagonal: bool = False,
) -> RowAccumulator:
    """Row-side statistics of a group of sample chunks (accumulated sequentially) for the
    checkpoints ``ckpts``: every pair (``mode`` "all") or the pairs with ``ckpts[ref]``, per
    bootstrap unit (``units``: the unit of every image, ``n_units`` of them; None: one);
    ``pooled``: also the spatial means of the blocks read (:attr:`RowAccumulator.pooled`);
    ``diagonal``: the self-products' diagonals only (:attr:`RowAccumulator.diagonal`)."""
    T, p = len(ckpts), row_cols(src, view)
    batch = (fsl.stop or src.channels) - (fsl.start or 0) if view == "filter" else None
    rows_per_img = src.height * src.width if view == "channels" else 1
    n_mats = T if mode == "all" else 2
    rp = _RowPass(src, view, fsl, batch, units, rows_per_img * p * 8 * n_mats, sub_bytes)
    acc = RowAccumulator.zeros(
        n_units,
        T,
        () if batch is None else (batch,),
        p,
        all_pairs=mode == "all",
        device=src.device,
        diagonal=diagonal,
    )
    acc.pooled = {} if pooled else None
    for c in chunks:
        if mode == "all":
            _add_all_pairs(acc, rp, c, ckpts, ref)
        else:
            _add_reference_pairs(acc, rp, c, ckpts, ref)
    return acc


def _keep_pooled(acc: RowAccumulator, t: int, chunk: int, raw: torch.Tensor) -> None:
    """Keep the spatial means of a block read (:func:`_spatial_means`), where the leaf keeps
    them."""
    if acc.pooled is not None:
        acc.pooled[(t, chunk)] = _spatial_means(raw)


def _add_all_pairs(acc: RowAccumulator, rp: _RowPass, chunk: int, ckpts: list[int], ref: int):
    """Add one chunk's products of every checkpoint pair (one Gram of all checkpoints side by
    side) and, with several units, the units' reference pairs cut out of it."""
    T, p = len(ckpts), acc.s.shape[-1]
    raws = [rp.read(k, chunk) for k in ckpts]
    for t, raw in enumerate(raws):
        _keep_pooled(acc, t, chunk, raw)
    for u, imgs, bsl, first in rp.blocks(chunk):
        Z = torch.cat([rp.matrices(r, imgs, bsl) for r in raws], dim=-1)
        G = _at_b(Z, Z)
        _add_at(acc.G, G, bsl)
        if first:
            acc.n[u] += Z.shape[-2]
        sums = Z.sum(-2)  # (*b, T·p)
        _add_at(acc.s[u], torch.movedim(sums.reshape(*sums.shape[:-1], T, p), -2, 0), bsl, dim=1)
        if acc.xx is not None:
            r = slice(ref * p, (ref + 1) * p)
            _add_at(acc.xx[u], G[..., r, r], bsl)
            for t in range(T):
                b = slice(t * p, (t + 1) * p)
                _add_at(acc.xy[u, t], G[..., r, b], bsl)
                _add_at(acc.yy[u, t], G[..., b, b], bsl)


def _self_product(acc: RowAccumulator, X: torch.Tensor) -> torch.Tensor:
    """XᵀX, or its diagonal (the columns' sums of squares) where the accumulator keeps no more."""
    return (X * X).sum(-2) if acc.diagonal else _at_b(X, X)


def _add_reference_pairs(acc: RowAccumulator, rp: _RowPass, chunk: int, ckpts: list[int], ref: int):
    """Add one chunk's products of the reference with itself and with every other checkpoint,
    reading one other checkpoint at a time."""
    raw_ref = rp.read(ckpts[ref], chunk)
    _keep_pooled(acc, ref, chunk, raw_ref)
    for u, imgs, bsl, first in rp.blocks(chunk):
        X = rp.matrices(raw_ref, imgs, bsl)
        _add_at(acc.xx[u], _self_product(acc, X), bsl)
        if acc.diagonal:
            _add_at(acc.xy[u, ref], _at_b(X, X), bsl)
        _add_at(acc.s[u, ref], X.sum(-2), bsl)
        if first:
            acc.n[u] += X.shape[-2]
    for t in range(len(ckpts)):
        if t == ref:
            continue
        raw_t = rp.read(ckpts[t], chunk)
        _keep_pooled(acc, t, chunk, raw_t)
        for u, imgs, bsl, _ in rp.blocks(chunk):
            X, Y = rp.matrices(raw_ref, imgs, bsl), rp.matrices(raw_t, imgs, bsl)
            _add_at(acc.xy[u, t], _at_b(X, Y), bsl)
            _add_at(acc.yy[u, t], _self_product(acc, Y), bsl)
            _add_at(acc.s[u, t], Y.sum(-2), bsl)
        del raw_t


def _metric_from_rows(metric: str, st: M.RowStats, alpha: float) -> np.ndarray:
    info = M.get_metric(metric)
    kw = {"alpha": alpha} if "alpha" in info.params else {}
    return np.asarray(info.from_row_stats(st, **kw), dtype=np.float64)


def _trajectory(
    reference_values: np.ndarray, ref: int, pair, skip: tuple[int, ...] = ()
) -> np.ndarray:
    """Symmetric checkpoint x checkpoint matrix: the reference row/column from the
    already computed distances, every other pair from ``pair(a, b)``; NaN for the pairs of a
    position in ``skip`` with another checkpoint (the random-init baseline is no epoch)."""
    T = len(reference_values)
    traj = np.full((T, T) + reference_values.shape[1:], np.nan)
    for a in range(T):
        for b in range(a, T):
            if a == ref or b == ref:
                v = reference_values[b] if a == ref else reference_values[a]
            elif a in skip or b in skip:
                continue
            else:
                v = pair(a, b)
            traj[a, b] = traj[b, a] = v
    return traj


def _replicated(T: int, ref: int, skip: tuple[int, ...] = ()) -> list[int]:
    """Positions whose replicates are computed: not the reference (a checkpoint against itself:
    its replicates are its value, about 0) nor the positions in ``skip``."""
    return [t for t in range(T) if t != ref and t not in skip]


def _replicates(values: np.ndarray, n: int, ts: list[int], of_position) -> np.ndarray:
    """(n, T, ...) replicates: ``of_position(t)`` (all n of position t) at the positions ``ts``,
    the point value elsewhere (the reference; the caller blanks skipped ones)."""
    reps = np.repeat(np.asarray(values, dtype=np.float64)[None], n, axis=0)
    for t in ts:
        reps[:, t] = of_position(t)
    return reps


def _unit_quadratics(A: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The unit-level inner products that give ‖Σ_u c_u A_u − a(c) b(c)ᵀ/n(c)‖_F² for any counts c
    (a(c) = Σ_u c_u a_u): ``G`` (B, U, U) = ⟨A_u, A_v⟩, ``Q`` (B, U, U, U) = a_vᵀ A_u b_w,
    ``aa``/``bb`` (B, U, U) = a_u·a_v, b_u·b_v and ``tr`` (B, U) = trace A_u.
    ``A`` (U, B, p, q), ``a`` (U, B, p), ``b`` (U, B, q)."""
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
    return G, Q, torch.matmul(at, at.mT), torch.matmul(bt, bt.mT), tr


def _sq_norm(quad: tuple, c: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(N, B) ‖C(c)‖_F² of every replicate's counts c (N, U) from :func:`_unit_quadratics`."""
    G, Q, aa, bb, _ = quad
    cgc = torch.einsum("nu,buv,nv->nb", c, G, c)
    cubic = torch.einsum("nu,nv,nw,buvw->nb", c, c, c, Q)
    a2, b2 = torch.einsum("nu,buv,nv->nb", c, aa, c), torch.einsum("nu,buv,nv->nb", c, bb, c)
    return cgc - 2.0 * cubic / n + a2 * b2 / n**2


def _cka_replicates(acc: RowAccumulator, ref: int, ts: list[int], counts: np.ndarray) -> dict:
    """{t: (N, *batch) CKA distances of the pair (reference, t)} for every replicate's unit
    counts (N, U) at once.

    The same numbers (to rounding) as re-summing the units' statistics per replicate
    (:meth:`RowAccumulator.row_stats` + :class:`ftdyn.metrics.RowStats` CKA), but the centered
    covariance of a resample, C(c) = Σ_u c_u A_u − a(c) b(c)ᵀ/n(c), enters CKA only through
    squared Frobenius norms, which are polynomials in c: their unit-level coefficients are
    computed once (O(U²·p²) per filter; the reference's own once for all ``ts``) and each
    replicate then costs O(U³) per filter instead of O(U·p²). The units' statistics are first
    centered at the overall mean (C is shift-invariant), so the expansion does not cancel the
    mean's large raw moments.
    """
    n_u = acc.n
    units, total = n_u.shape[0], n_u.sum()
    batch = acc.s.shape[2:-1]

    def about_mean(t):  # a checkpoint's unit sums (U, B, p), overall mean, unit sums about it
        sums = acc.s[:, t].reshape(units, -1, acc.s.shape[-1])
        mean = sums.sum(0) / total
        return sums, mean, sums - n_u[:, None, None] * mean

    # Σ_{i∈u} (x_i − m_a)(y_i − m_b)ᵀ = M − sa m_bᵀ − m_a b_uᵀ, one pass
    def centered(M, sa, ma, mb, b_u):
        M = M.reshape(units, -1, *M.shape[-2:])
        left = torch.stack([sa, ma.expand_as(sa)], dim=-1)  # (U, B, p, 2)
        right = torch.stack([mb.expand_as(b_u), b_u], dim=-2)  # (U, B, 2, q)
        return torch.baddbmm(
            M.flatten(0, 1), left.flatten(0, 1), right.flatten(0, 1), alpha=-1.0
        ).view(M.shape)

    def raw_trace(M):  # (U, B) the units' raw traces
        return torch.diagonal(M, dim1=-2, dim2=-1).sum(-1).reshape(units, -1)

    s_x, m_x, a = about_mean(ref)
    quad_xx = _unit_quadratics(centered(acc.xx, s_x, m_x, m_x, a), a, a)
    raw_x = raw_trace(acc.xx)
    out = {}
    for t in ts:
        s_y, m_y, b = about_mean(t)
        yy = acc.yy[:, t]
        quads = {
            "xy": _unit_quadratics(centered(acc.xy[:, t], s_x, m_x, m_y, b), a, b),
            "xx": quad_xx,
            "yy": _unit_quadratics(centered(yy, s_y, m_y, m_y, b), b, b),
        }

        def exact(replicate, filters, t=t):
            """The replicate re-summed at ``filters`` (the whole layer for whole-layer views)."""
            sub = acc.select(filters) if batch else acc
            return _metric_from_rows("cka", sub.row_stats(ref, t, ref, counts[replicate]), 0.0)

        out[t] = _cka_of_counts(counts, n_u, quads, raw_x, raw_trace(yy), exact).reshape(
            len(counts), *batch
        )
    return out


#: an expanded squared norm or trace below this share of the size of its terms may have lost
#: digits to cancellation (e.g. a filter active only in units a replicate did not draw): such
#: (replicate, filter) values are computed directly instead
STABLE_SHARE = 1e-4


def _cka_of_counts(
    counts: np.ndarray,
    n_u: torch.Tensor,
    quads: dict,
    raw_x: torch.Tensor,
    raw_y: torch.Tensor,
    exact,
) -> np.ndarray:
    """(N, B) CKA distances of the replicates' unit counts (N, U), the units holding ``n_u``
    rows: ``quads`` of the pair ("xy") and of each side ("xx", "yy"), ``raw_x``/``raw_y`` (U, B)
    the units' raw traces (the dead test of :class:`ftdyn.metrics.RowStats` and Gram CKA).
    ``exact(b, filters)``: the directly computed distances of replicate b at those filters
    (a LongTensor), used where the expansion is not accurate (:data:`STABLE_SHARE`)."""
    c = torch.as_tensor(counts, dtype=F64, device=n_u.device)
    n = torch.round(c @ n_u)[:, None]

    def form(M):
        return torch.einsum("nu,buv,nv->nb", c, M, c)

    def sq_norm(quad):  # (value, size of its terms)
        unit_norms = torch.diagonal(quad[0], dim1=-2, dim2=-1).clamp(min=0.0).sqrt()
        size = (
            c @ unit_norms.T
            + (form(quad[2]).clamp(min=0.0) * form(quad[3]).clamp(min=0.0)).sqrt() / n
        ) ** 2
        return _sq_norm(quad, c, n), size

    def trace_of(quad):  # trace C(c) = Σ_u c_u tr A_u − ‖a(c)‖²/n(c), at least 0 like RowCore's
        a2 = form(quad[2]) / n
        return (c @ quad[4].T - a2).clamp(min=0.0), c @ quad[4].abs().T + a2.abs()

    (tx, tx_size), (ty, ty_size) = trace_of(quads["xx"]), trace_of(quads["yy"])
    (nxx, xx_size), (nyy, yy_size), (nxy, xy_size) = (sq_norm(quads[k]) for k in ("xx", "yy", "xy"))
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


def row_finish(
    acc: RowAccumulator,
    metrics: list[str],
    alpha: float,
    T: int,
    ref: int,
    mode: str,
    counts: np.ndarray | None,
    boot_metrics: list[str] | None = None,
    skip: tuple[int, ...] = (),
    nested: tuple[int, np.ndarray, np.ndarray] | None = None,
    point: bool = True,
    ref_value: bool = True,
) -> dict:
    """Metrics of every (reference, checkpoint) pair, the trajectory and bootstrap replicates
    (of ``boot_metrics``, default all; not at the positions ``skip``, which stay NaN and out of
    the trajectory). ``nested`` = (position, unit counts (S, U), degenerate (metrics, S)): every
    metric of (reference, position) on those image subsets (the convergence check), NaN where
    degenerate, ``out["nested"]`` (S, ...).
    ``point=False``: only the nested values (a run for the convergence check alone);
    ``ref_value=False``: the reference against itself left NaN (a later checkpoint pass: the
    first one gives it). ``out["pooled"]``: the leaves' spatial means, where they kept them."""
    out: dict[str, Any] = {"values": {}, "traj": {}, "reps": {}, "nested": {}}
    if acc.pooled is not None:
        out["pooled"] = acc.pooled

    def value(m, t):
        if t == ref and not ref_value:
            return np.full(acc.s.shape[2:-1], np.nan)
        return _metric_from_rows(m, acc.row_stats(ref, t, ref), alpha)

    for m in metrics if point else []:
        out["values"][m] = np.stack([value(m, t) for t in range(T)])
    if mode == "all" and point:
        for m in metrics:
            out["traj"][m] = _trajectory(
                out["values"][m],
                ref,
                lambda a, b, m=m: _metric_from_rows(m, acc.row_stats(a, b, ref), alpha),
                skip,
            )

    def direct(m, t, counts):
        return np.stack(
            [_metric_from_rows(m, acc.row_stats(ref, t, ref, c), alpha) for c in counts]
        )

    def of_counts(m, ts, counts):  # CKA's replicates need no re-summing of the statistics
        if m == "cka":
            return _cka_replicates(acc, ref, ts, counts).__getitem__
        return lambda t: direct(m, t, counts)

    if counts is not None and len(counts):
        ts = _replicated(T, ref, skip)
        for m in metrics if boot_metrics is None else [m for m in metrics if m in boot_metrics]:
            reps = _replicates(out["values"][m], len(counts), ts, of_counts(m, ts, counts))
            reps[:, list(skip)] = np.nan
            out["reps"][m] = reps
    if nested is not None:
        t, subsets, undefined = nested
        for mi, m in enumerate(metrics):
            # a few subsets: CKA's expansion (of_counts) costs more than re-summing for them
            out["nested"][m] = np.stack(
                [
                    np.full(acc.s.shape[2:-1], np.nan)
                    if undefined[mi, i]
                    else direct(m, t, c[None])[0]
                    for i, c in enumerate(subsets)
                ]
            )
    return out


# ------------------------------------------------------------------------ Gram side
def gram_panel(
    src: Source, ckpt: int, view: str, fsl: slice, panel: list[int], stream: list[int], after=None
):
    """Rows of one checkpoint's raw Gram for the images of ``panel`` against themselves
    and every later chunk (``stream``): returns (first row, block (*batch, n_panel, n_rest)).
    ``after``: the previous filter group's result, only so that Dask builds one group's
    Gram matrices at a time (the plan budgets one group)."""
    # filled in place, not concatenated: a concatenation holds the panel (and the block) twice,
    # which the plan does not budget
    r0, r1 = src.rows(panel[0]).start, src.rows(panel[-1]).stop
    P = None
    for c in panel:
        m = _mat(read_block(src, ckpt, c, fsl), view)
        if P is None:
            P = m.new_empty(m.shape[:-2] + (r1 - r0, m.shape[-1]))
        rows = src.rows(c)
        P[..., rows.start - r0 : rows.stop - r0, :] = m
        del m
    block = P.new_empty(P.shape[:-1] + (src.n - r0,))
    block[..., : r1 - r0] = torch.matmul(P, P.mT)
    for c in stream:
        rows = src.rows(c)
        block[..., rows.start - r0 : rows.stop - r0] = torch.matmul(
            P, _mat(read_block(src, ckpt, c, fsl), view).mT
        )
    return r0, block


def gram_assemble(n: int, *blocks) -> torch.Tensor:
    """The raw Gram matrix (*batch, n, n) from the panels of :func:`gram_panel` (one panel of
    all the images is the matrix itself: no copy; double centering symmetrizes it)."""
    if len(blocks) == 1 and blocks[0][1].shape[-2] == n:
        return blocks[0][1]
    batch = blocks[0][1].shape[:-2]
    K = torch.empty(batch + (n, n), dtype=F64, device=blocks[0][1].device)
    for r0, block in blocks:
        r1 = r0 + block.shape[-2]
        K[..., r0:r1, r0:] = block
        K[..., r0:, r0:r1] = block.mT
    return K


_EIG_FUNCS = {
    "pwsm": lambda ex, ey, alpha: M.pwsm_from_gram_eig(ex, ey, alpha),
    "procrustes": lambda ex, ey, alpha: M.procrustes_from_gram_eig(ex, ey),
    "cka": lambda ex, ey, alpha: 1.0 - np.asarray(M.cka_from_gram_eig(ex, ey)),
}


def _metric_from_eigs(metric: str, ex, ey, alpha: float) -> np.ndarray:
    return np.asarray(_EIG_FUNCS[metric](ex, ey, alpha), dtype=np.float64)


class _Gram:
    """One checkpoint's raw Gram matrices K (*batch, n, n) and what the metrics need of them,
    computed on first use and kept until :meth:`forget`: the double-centered K (CKA) and its
    decomposition (the others)."""

    def __init__(self, K: torch.Tensor):
        self.K = K
        self.forget()

    def forget(self) -> None:
        self._centered: M.GramCentered | None = None
        self._eig: M.GramEig | None = None

    @property
    def centered(self) -> M.GramCentered:
        if self._centered is None:
            self._centered = M.gram_center(self.K)
        return self._centered

    @property
    def eig(self) -> M.GramEig:
        if self._eig is None:
            self._eig = M.gram_eig(self.K, self.centered)  # one double centering for both
        return self._eig

    def select(self, images: torch.Tensor) -> _Gram:
        """The Grams of some images (an index tensor; repeats allowed: a resample)."""
        return _Gram(self.K.index_select(-1, images).index_select(-2, images))


def _gram_pair(metric: str, a: _Gram, b: _Gram, alpha: float) -> np.ndarray:
    """One metric of a checkpoint pair: CKA from the centered Grams (O(n²), no decomposition),
    debiased CKA from the raw ones, the others from the decompositions."""
    if metric == "cka":
        return 1.0 - np.asarray(M.cka_from_gram_centered(a.centered, b.centered), dtype=np.float64)
    if metric == DEBIASED_CKA:
        return 1.0 - np.asarray(
            M.cka_from_gram(M.GramStats(a.K, b.K), debiased=True), dtype=np.float64
        )
    return _metric_from_eigs(metric, a.eig, b.eig, alpha)


def _gram_unit_quadratics(
    K: torch.Tensor, L: torch.Tensor, ind: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """:func:`_unit_quadratics` of the Gram side: for centered Grams K, L (B, n, n) and the
    images' unit indicator ``ind`` (n, U), the coefficients that give the weighted (resampled)
    ⟨K̃, L̃⟩ = wᵀ(K∘L)w − 2/n(c) Σ_i w_i (Kw)_i (Lw)_i + (wᵀKw)(wᵀLw)/n(c)², w = ind·c,
    where K̃ is K of the resampled images centered again (K̃w = 0 kills the other terms)."""
    KU, LU = torch.matmul(K, ind), torch.matmul(L, ind)  # (B, n, U)
    G = torch.matmul(ind.T, torch.matmul(K * L, ind))
    Q = torch.einsum("iu,biv,biw->buvw", ind, KU, LU)
    tr = torch.matmul(torch.diagonal(K, dim1=-2, dim2=-1), ind) if K is L else None
    return G, Q, torch.matmul(ind.T, KU), torch.matmul(ind.T, LU), tr


def _gram_cka_replicates(ref: _Gram, grams: dict, units: np.ndarray, counts: np.ndarray) -> dict:
    """{t: (N, *batch) CKA distances of (reference, t)} for every replicate's unit counts (N, U),
    from the raw Grams: the same numbers (to rounding) as CKA of the resampled Grams
    (``K[idx][:, idx]`` of :func:`ftdyn.summary.shared_indices`), O(n²·U) per checkpoint and
    O(U³) per replicate instead of O(n²) per replicate (the expansion of
    :func:`_gram_unit_quadratics` about the all-image centering, which leaves the resampled
    centering unchanged and avoids cancelling the mean's large raw moments)."""
    n, batch, dev = ref.K.shape[-1], ref.K.shape[:-2], ref.K.device
    ind = torch.from_numpy(np.eye(counts.shape[1])[units]).to(device=dev, dtype=F64)
    n_u = ind.sum(0)

    def prepared(g):  # (centered Gram, its own quadratics, raw traces per unit (U, B))
        Kc = g.centered.Kc.reshape(-1, n, n)
        return (
            Kc,
            _gram_unit_quadratics(Kc, Kc, ind),
            torch.matmul(torch.diagonal(g.K.reshape(-1, n, n), dim1=-2, dim2=-1), ind).T,
        )

    ref_c, ref_quad, ref_raw = prepared(ref)
    indices = S.shared_indices(units, counts)
    out = {}
    for t, g in grams.items():
        Kc, quad, raw = prepared(g)
        quads = {"xy": _gram_unit_quadratics(ref_c, Kc, ind), "xx": ref_quad, "yy": quad}

        def exact(b, filters, g=g):  # the resampled Grams at those filters
            ii = torch.from_numpy(indices[b]).to(dev)
            pick = [_Gram(k.K.reshape(-1, n, n).index_select(0, filters)) for k in (ref, g)]
            return _gram_pair("cka", *(k.select(ii) for k in pick), 0.0)

        out[t] = _cka_of_counts(counts, n_u, quads, ref_raw, raw, exact).reshape(
            len(counts), *batch
        )
        g.forget()  # one checkpoint's centered Grams at a time, as with reference pairs
    return out


def gram_finish(
    metrics: list[str],
    alpha: float,
    ref: int,
    mode: str,
    boot,
    *Ks,
    boot_metrics: list[str] | None = None,
    skip: tuple[int, ...] = (),
    nested: tuple[int, list[str], list[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Metrics of Gram-side views from every checkpoint's raw Gram matrix; replicates of
    ``boot_metrics`` (default all) for ``boot`` = (unit of every image, unit counts (N, U));
    ``nested`` = (position, metrics, image indices of each subset, (metrics, subsets)
    degenerate): those metrics (the view's, not only the job's) of (reference, position) on
    those subsets, ``out["nested"]`` (S, ...) (the convergence check)."""
    T = len(Ks)
    out: dict[str, Any] = {"values": {}, "traj": {}, "reps": {}, "nested": {}}
    grams = [_Gram(K) for K in Ks]
    vals = {m: [None] * T for m in metrics}
    for t in range(T):
        for m in metrics:
            vals[m][t] = _gram_pair(m, grams[ref], grams[t], alpha)
        if mode != "all" and t != ref:  # reference pairs: one checkpoint's decomposition at a time
            grams[t].forget()
    for m in metrics:
        out["values"][m] = np.stack(vals[m])
    if mode == "all":
        for m in metrics:
            out["traj"][m] = _trajectory(
                out["values"][m],
                ref,
                lambda a, b, m=m: _gram_pair(m, grams[a], grams[b], alpha),
                skip,
            )
    if boot is not None and len(boot[1]):
        out["reps"] = _gram_replicates(
            metrics if boot_metrics is None else [m for m in metrics if m in boot_metrics],
            out["values"],
            alpha,
            ref,
            boot,
            grams,
            _replicated(T, ref, skip),
            skip,
        )
    if nested is not None:
        t, nested_metrics, subsets, undefined = nested
        out["nested"] = _gram_subsets(
            nested_metrics, alpha, grams[ref], grams[t], subsets, undefined
        )
    return out


def _gram_subsets(
    metrics: list[str],
    alpha: float,
    ref: _Gram,
    other: _Gram,
    subsets: list[np.ndarray],
    undefined: np.ndarray,
) -> dict:
    """{metric: (S, ...)} of the pair (ref, other) restricted to each subset of images; NaN
    where ``undefined`` (metrics, S) says the metric is degenerate on that subset."""
    vals = {m: [] for m in metrics}
    for i, idx in enumerate(subsets):
        ii = torch.from_numpy(np.asarray(idx)).to(ref.K.device)
        a, b = ref.select(ii), other.select(ii)
        for mi, m in enumerate(metrics):
            blank = np.full(ref.K.shape[:-2], np.nan)
            vals[m].append(blank if undefined[mi, i] else _gram_pair(m, a, b, alpha))
    return {m: np.stack(v) for m, v in vals.items()}


def _gram_replicates(
    boot: list[str],
    values: dict,
    alpha: float,
    ref: int,
    units_counts,
    grams: list[_Gram],
    ts: list[int],
    skip: tuple[int, ...],
) -> dict:
    """Replicates (N, T, ...) of the metrics ``boot`` at the positions ``ts`` (the point value
    elsewhere, NaN at ``skip``): CKA from unit-level coefficients, the others by resampling
    the Grams' images (and decomposing them where the metric needs it)."""
    units, counts = units_counts
    reps = {
        m: np.repeat(np.asarray(values[m], dtype=np.float64)[None], len(counts), axis=0)
        for m in boot
    }
    if "cka" in boot:
        for t, r in _gram_cka_replicates(
            grams[ref], {t: grams[t] for t in ts}, units, counts
        ).items():
            reps["cka"][:, t] = r
    resampled = [m for m in boot if m != "cka"]
    for b, idx in enumerate(S.shared_indices(units, counts) if resampled else []):
        ii = torch.from_numpy(idx).to(grams[ref].K.device)
        g_ref = grams[ref].select(ii)
        for t in ts:
            g_t = grams[t].select(ii)
            for m in resampled:
                reps[m][b, t] = _gram_pair(m, g_ref, g_t, alpha)
    for m in boot:
        reps[m][:, list(skip)] = np.nan
    return reps


# ------------------------------------------------------------------------- map view
def _map_function(metric: str, alpha: float, center: str):
    """The per-map distance: the registry's (columns centered) or, with ``center="rows"``,
    the published code's row-centered Procrustes/CKA (:mod:`ftdyn.metrics.paper_code`)."""
    if center == "rows" and metric in M.ROW_CENTERED:
        return M.ROW_CENTERED[metric]
    if metric == DEBIASED_CKA:
        return lambda X, Y: M.cka_distance(X, Y, debiased=True)
    info = M.get_metric(metric)
    kw = {"alpha": alpha} if "alpha" in info.params else {}
    return lambda X, Y: info.direct(X, Y, **kw)


def map_leaf(
    src: Source,
    chunks: list[int],
    ckpts: list[int],
    ref: int,
    metrics: list[str],
    alpha: float,
    fsl: slice,
    mode: str,
    center: str = "columns",
) -> dict:
    """Per-(image, filter) distances of the map view for a group of chunks.

    Returns {metric: (P, n_images, filters)} for the pairs of :func:`map_pairs`."""
    T = len(ckpts)
    pairs = map_pairs(T, ref, mode)
    funcs = {m: _map_function(m, alpha, center) for m in metrics}
    out = {m: [] for m in metrics}
    for c in chunks:
        need = sorted({k for pair in pairs for k in pair})
        mats = {}
        if mode == "all":
            mats = {k: _mat(read_block(src, ckpts[k], c, fsl), "map") for k in need}
        else:
            mats[ref] = _mat(read_block(src, ckpts[ref], c, fsl), "map")
        rows = {m: [] for m in metrics}
        for a, b in pairs:
            if b not in mats:
                mats = {ref: mats[ref], b: _mat(read_block(src, ckpts[b], c, fsl), "map")}
            X, Y = mats[a], mats[b]
            for m in metrics:
                rows[m].append(np.asarray(funcs[m](X, Y), dtype=np.float64).reshape(X.shape[:2]))
        for m in metrics:
            out[m].append(np.stack(rows[m]))
    return {m: np.concatenate(v, axis=1) for m, v in out.items()}


def map_pairs(T: int, ref: int, mode: str) -> list[tuple[int, int]]:
    if mode == "all":
        return [(a, b) for a in range(T) for b in range(a, T)]
    return [(ref, t) for t in range(T)]


def concat_map(*parts: dict) -> dict:
    return {m: np.concatenate([p[m] for p in parts], axis=1) for m in parts[0]}


# ------------------------------------------------------------------ pooled features
def _spatial_means(raw: torch.Tensor) -> np.ndarray:
    """(images, channels) float64 means over the positions of a raw block: on the CPU numpy
    accumulates in float64 through a small buffer (no float64 copy of the block); on a GPU
    they are taken there, and only they cross to the host."""
    if raw.device.type != "cpu":
        return torch.mean(raw, dim=(-2, -1), dtype=F64).cpu().numpy()
    return raw.numpy().mean(axis=(-2, -1), dtype=np.float64)


def pooled_leaf(src: Source, ckpts: list[int]) -> np.ndarray:
    """(checkpoints, images, channels) float64 spatial means of every image (the linear probes'
    features) of a layer that no row-side job reads (:func:`ftdyn.analysis.plan.mark_pooled`),
    read block by block like the other tasks."""
    out = np.empty((len(ckpts), src.n, src.channels))
    for t, ckpt in enumerate(ckpts):
        for c in range(src.n_chunks):
            out[t, src.rows(c)] = _spatial_means(read_block(src, ckpt, c))
    return out


def row_cols(src: Source, view: str) -> int:
    return {
        "channels": src.channels,
        "pooled": src.channels,
        "flat": src.channels * src.height * src.width,
        "filter": src.height * src.width,
    }[view]


def row_count(src: Source, view: str) -> int:
    return src.n * src.height * src.width if view == "channels" else src.n


# ==================================================================== heap trimming
_LIBC = None


def trim() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    glibc raises its mmap threshold up to 32 MiB after the first large free, after which
    chunk-sized temporaries come from per-thread arenas and stay resident: without a trim
    after each task the peak RSS grows far beyond the data actually held. (Forcing mmap for
    all large allocations instead, ``mallopt(M_MMAP_THRESHOLD)``, measured 4-7× slower.)
    """
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        _LIBC = False


def trimmed(func):
    """Run a task, then trim the heap (see :func:`trim`); keeps the task's name and pickles."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            if _LIBC is not False:
                trim()

    return wrapper


# every Dask task trims the heap when it ends
row_leaf = trimmed(row_leaf)
row_finish = trimmed(row_finish)
gram_panel = trimmed(gram_panel)
gram_assemble = trimmed(gram_assemble)
gram_finish = trimmed(gram_finish)
map_leaf = trimmed(map_leaf)
