"""The row-side tasks: float64 statistics of sample chunks (:func:`row_leaf`), summed by a tree
of merges, then the metrics, trajectory and bootstrap replicates from them (:func:`row_finish`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from ..metrics.bootstrap import (
    PairQuadratics,
    centered_unit_products,
    cka_of_counts,
    sums_about_mean,
    unit_quadratics,
    unit_traces,
)
from ..metrics.heldout import heldout_folds, heldout_from_row_stats
from ..metrics.registry import get_metric
from ..metrics.stats import FourthMoments, RowStats, cka_debiased_from_row_stats
from ..views import to_matrices
from .inputs import Source
from .reading import F64, read_block, spatial_means, trimmed
from .task_results import MetricsResult, jackknifed, recentred, replicated_positions, trajectory


@dataclass(frozen=True)
class RowLeafRequest:
    """What one row leaf accumulates (:func:`row_leaf`): the statistics of the filter group
    ``filters`` of ``src`` in ``view`` over the sample chunks ``chunks``, for the checkpoints
    ``ckpts`` (store indices) with ``ckpts[ref]`` the reference."""

    src: Source
    chunks: list[int]
    ckpts: list[int]
    #: position of the reference in ``ckpts``
    ref: int
    view: str
    filters: slice
    #: "all": every pair of checkpoints; otherwise the pairs with the reference
    mode: str
    #: the bootstrap unit of every image (None: one unit; -1: in no unit)
    units: np.ndarray | None
    n_units: int
    #: bytes of float64 products a block may take
    sub_bytes: int
    #: also keep the spatial means of the blocks read (:attr:`RowAccumulator.pooled`)
    pooled: bool = False
    #: keep the self-products' diagonals only (:attr:`RowAccumulator.diagonal`)
    diagonal: bool = False
    #: also the fourth moments of the debiased CKA (:attr:`RowAccumulator.q`)
    quartic: bool = False


@dataclass(frozen=True)
class NestedCounts:
    """The convergence check's image subsets of a row-side job, as unit counts."""

    #: position (in the pass) of the checkpoint compared with the reference
    position: int
    #: (S, U) unit counts of each subset
    counts: np.ndarray
    #: (metrics, S) whether a metric is degenerate on a subset (its value stays NaN)
    undefined: np.ndarray


@dataclass(frozen=True)
class RowFinishRequest:
    """Which metrics one row-side metrics task computes from its statistics (:func:`row_finish`)."""

    metrics: list[str]
    alpha: float
    #: the number of positions (checkpoints of the pass)
    n_positions: int
    #: position of the reference
    ref: int
    #: "all": also the trajectory of every pair
    mode: str
    #: (N, U) unit counts of the bootstrap replicates (None: no bootstrap)
    counts: np.ndarray | None
    #: the metrics with replicates (None: all)
    boot_metrics: list[str] | None = None
    #: positions without replicates or trajectory (they stay NaN)
    skip: tuple[int, ...] = ()
    #: the convergence check's subsets, where this task gives them
    nested: NestedCounts | None = None
    #: False: only the nested values (a run for the convergence check alone)
    point: bool = True
    #: False: the reference against itself left NaN (a later checkpoint pass: the first one
    #: gives it)
    ref_value: bool = True
    #: the metrics estimated by the grouped jackknife (the corrected Procrustes and PWSM)
    jackknifed: tuple[str, ...] = ()
    #: (U,) the jackknife group of every unit of images (needed with ``jackknifed``)
    jack_groups: np.ndarray | None = None
    #: the metrics that are a debiased CKA (their statistics carry the fourth moments; their
    #: replicates are the plug-in's, centred on the estimate)
    debiased: tuple[str, ...] = ()
    #: the metrics degenerate on all the images (their values are NaN, never computed)
    undefined: tuple[str, ...] = ()
    #: the metrics whose values are beyond their correction's limit: their held-out values too
    #: (:mod:`ftdyn.metrics.heldout`, over the jackknife groups)
    heldout: tuple[str, ...] = ()


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


def _at_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.mT, b)


def _total(x: torch.Tensor, counts: np.ndarray | None) -> torch.Tensor:
    """The sum of per-unit statistics ``x`` (U, ...) over the units, each ``counts`` times."""
    if counts is None:
        return x.sum(0)
    return torch.einsum("u,u...->...", torch.as_tensor(counts, dtype=F64, device=x.device), x)


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
    #: (U, T, *batch, 2 + 3p) the debiased CKA's fourth moments of the pair (reference X,
    #: checkpoint Y), a_i = ‖x_i‖², b_i = ‖y_i‖²: [Σ a b, Σ b², Σ b x, Σ a y, Σ b y] (at the
    #: reference: X's own); None: not kept (:class:`~ftdyn.metrics.stats.FourthMoments`)
    q: torch.Tensor | None = None

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
        quartic: bool = False,
    ) -> RowAccumulator:
        """Empty statistics; the reference pairs are kept without all pairs or with several units
        (the replicates re-sum them); ``diagonal``: of the self-products XᵀX and YᵀY only their
        diagonals (reference pairs only); ``quartic``: the debiased CKA's fourth moments too."""

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
            q=zeros(units, T, *batch, 2 + 3 * p) if quartic else None,
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
            q=pick(self.q, 2),
        )

    def fourth_moments(self, t: int, ref: int, counts: np.ndarray | None = None) -> FourthMoments:
        """The debiased CKA's :class:`~ftdyn.metrics.stats.FourthMoments` of the pair
        (reference, t): the totals, or the units re-summed ``counts`` (U,) times each."""
        p = self.s.shape[-1]
        mine = _total(self.q[:, ref], counts)
        theirs = _total(self.q[:, t], counts)
        return FourthMoments(
            ab=theirs[..., 0],
            aa=mine[..., 0],
            bb=theirs[..., 1],
            ax=mine[..., 2 : 2 + p],
            bx=theirs[..., 2 : 2 + p],
            ay=theirs[..., 2 + p : 2 + 2 * p],
            by=theirs[..., 2 + 2 * p :],
        )

    def row_stats(self, a: int, b: int, ref: int, counts: np.ndarray | None = None) -> RowStats:
        """RowStats of checkpoint pair (a, b) (a = X side): the totals, or with ``counts`` (U,) the
        units re-summed that many times each (a bootstrap replicate). Without all pairs or with
        ``counts``, a must be the reference ``ref``."""

        def tot(x):
            return _total(x, counts)

        n = round(float(tot(self.n)))
        s = tot(self.s)
        if self.G is not None and counts is None:
            p = s.shape[-1]
            ba, bb = slice(a * p, (a + 1) * p), slice(b * p, (b + 1) * p)
            G = self.G
            return RowStats(n, s[a], s[b], G[..., ba, ba], G[..., bb, bb], G[..., ba, bb])
        # reference pairs only: (ref, t)
        if a != ref:
            raise ValueError("pair statistics without the reference need all-pairs accumulation")
        xx = tot(self.xx)
        if b == ref:  # with diagonals, the reference's own XᵀX is kept as its pair
            return RowStats(
                n, s[ref], s[ref], xx, xx, tot(self.xy[:, ref]) if self.diagonal else xx
            )
        return RowStats(n, s[ref], s[b], xx, tot(self.yy[:, b]), tot(self.xy[:, b]))

    def reference_pairs(
        self, ref: int, ts: list[int], counts: np.ndarray | None = None
    ) -> RowStats:
        """RowStats of the pairs (reference, t) for the positions ``ts`` (not the reference)
        stacked on a first axis of the checkpoints' side, the reference's side once (it
        broadcasts, :class:`~ftdyn.metrics.stats.RowStats`): the totals, or the units re-summed
        ``counts`` times."""
        if self.G is not None and counts is None:
            pairs = [self.row_stats(ref, t, ref) for t in ts]
            first = pairs[0]
            return RowStats(
                first.n,
                first.sum_x,
                torch.stack([p.sum_y for p in pairs]),
                first.xx,
                torch.stack([p.yy for p in pairs]),
                torch.stack([p.xy for p in pairs]),
            )
        index = torch.as_tensor(ts, device=self.s.device)
        s = _total(self.s, counts)
        return RowStats(
            round(float(_total(self.n, counts))),
            s[ref],
            s.index_select(0, index),
            _total(self.xx, counts),
            _total(self.yy.index_select(1, index), counts),
            _total(self.xy.index_select(1, index), counts),
        )


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
        return to_matrices(self.view, part, dtype=F64)


def _add_at(target: torch.Tensor, value: torch.Tensor, bsl: slice | None, dim: int = 0) -> None:
    """target += value, at the filters ``bsl`` on axis ``dim`` (None: all of target)."""
    if bsl is not None:
        target = target[(slice(None),) * dim + (bsl,)]
    target += value


@trimmed
def row_leaf(request: RowLeafRequest) -> RowAccumulator:
    """Row-side statistics of a group of sample chunks (accumulated sequentially) for the
    request's checkpoints: every pair (``mode`` "all") or the pairs with the reference, per
    bootstrap unit."""
    src, view, fsl = request.src, request.view, request.filters
    T, p = len(request.ckpts), row_cols(src, view)
    batch = (fsl.stop or src.channels) - (fsl.start or 0) if view == "filter" else None
    rows_per_img = src.height * src.width if view == "channels" else 1
    all_pairs = request.mode == "all"
    n_mats = T if all_pairs else 2
    rp = _RowPass(
        src, view, fsl, batch, request.units, rows_per_img * p * 8 * n_mats, request.sub_bytes
    )
    acc = RowAccumulator.zeros(
        request.n_units,
        T,
        () if batch is None else (batch,),
        p,
        all_pairs=all_pairs,
        device=src.device,
        diagonal=request.diagonal,
        quartic=request.quartic,
    )
    acc.pooled = {} if request.pooled else None
    for c in request.chunks:
        if all_pairs:
            _add_all_pairs(acc, rp, c, request.ckpts, request.ref)
        else:
            _add_reference_pairs(acc, rp, c, request.ckpts, request.ref)
    return acc


def _keep_pooled(acc: RowAccumulator, t: int, chunk: int, raw: torch.Tensor) -> None:
    """Keep the spatial means of a block read (:func:`~ftdyn.analysis.reading.spatial_means`),
    where the leaf keeps them."""
    if acc.pooled is not None:
        acc.pooled[(t, chunk)] = spatial_means(raw)


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
        if acc.q is not None:
            X = Z[..., ref * p : (ref + 1) * p]
            for t in range(T):
                _add_at(acc.q[u, t], _fourth(X, Z[..., t * p : (t + 1) * p]), bsl)


def _fourth(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """One block's fourth moments of the pair (X, Y) (..., rows, p) as :attr:`RowAccumulator.q`
    lays them out: [Σ a b, Σ b², Σ b x, Σ a y, Σ b y], a = ‖x_i‖², b = ‖y_i‖²."""
    a, b = (X * X).sum(-1), (Y * Y).sum(-1)
    return torch.cat(
        [
            (a * b).sum(-1, keepdim=True),
            (b * b).sum(-1, keepdim=True),
            _at_b(X, b[..., None])[..., 0],
            _at_b(Y, a[..., None])[..., 0],
            _at_b(Y, b[..., None])[..., 0],
        ],
        dim=-1,
    )


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
        if acc.q is not None:
            _add_at(acc.q[u, ref], _fourth(X, X), bsl)
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
            if acc.q is not None:
                _add_at(acc.q[u, t], _fourth(X, Y), bsl)
        del raw_t


# ========================================================================= metrics
def _metric_from_rows(metric: str, st: RowStats, alpha: float) -> np.ndarray:
    info = get_metric(metric)
    kw = {"alpha": alpha} if "alpha" in info.params else {}
    return np.asarray(info.from_row_stats(st, **kw), dtype=np.float64)


def _replicates(values: np.ndarray, n: int, ts: list[int], of_position) -> np.ndarray:
    """(n, T, ...) replicates: ``of_position(t)`` (all n of position t) at the positions ``ts``,
    the point value elsewhere (the reference; the caller blanks skipped ones)."""
    reps = np.repeat(np.asarray(values, dtype=np.float64)[None], n, axis=0)
    for t in ts:
        reps[:, t] = of_position(t)
    return reps


def _cka_replicates(
    acc: RowAccumulator, ref: int, ts: list[int], counts: np.ndarray
) -> dict[int, np.ndarray]:
    """{t: (N, *batch) CKA distances of the pair (reference, t)} for every replicate's unit
    counts (N, U) at once, from the units' statistics expanded about the overall mean
    (:mod:`ftdyn.metrics.bootstrap`; the reference's own coefficients once for all ``ts``).

    The same numbers (to rounding) as re-summing the units' statistics per replicate
    (:meth:`RowAccumulator.row_stats` + :class:`~ftdyn.metrics.stats.RowStats` CKA), in
    O(U²·p²) per filter once and O(U³) per replicate instead of O(U·p²).
    """
    n_u = acc.n
    units = n_u.shape[0]
    batch = acc.s.shape[2:-1]

    def unit_sums(t):  # a checkpoint's unit sums (U, B, p)
        return acc.s[:, t].reshape(units, -1, acc.s.shape[-1])

    s_x = unit_sums(ref)
    m_x, a = sums_about_mean(s_x, n_u)
    quad_xx = unit_quadratics(centered_unit_products(acc.xx, s_x, m_x, m_x, a), a, a)
    raw_x = unit_traces(acc.xx)
    out = {}
    for t in ts:
        s_y = unit_sums(t)
        m_y, b = sums_about_mean(s_y, n_u)
        yy = acc.yy[:, t]
        quads = PairQuadratics(
            xy=unit_quadratics(centered_unit_products(acc.xy[:, t], s_x, m_x, m_y, b), a, b),
            xx=quad_xx,
            yy=unit_quadratics(centered_unit_products(yy, s_y, m_y, m_y, b), b, b),
        )

        def exact(replicate, filters, t=t):
            """The replicate re-summed at ``filters`` (the whole layer for whole-layer views)."""
            sub = acc.select(filters) if batch else acc
            return _metric_from_rows("cka", sub.row_stats(ref, t, ref, counts[replicate]), 0.0)

        out[t] = cka_of_counts(counts, n_u, quads, raw_x, unit_traces(yy), exact).reshape(
            len(counts), *batch
        )
    return out


@trimmed
def row_finish(request: RowFinishRequest, acc: RowAccumulator) -> MetricsResult:
    """Metrics of every (reference, checkpoint) pair, the trajectory and bootstrap replicates
    (of ``boot_metrics``, default all; not at the positions ``skip``, which stay NaN and out of
    the trajectory) from the merged statistics ``acc``; with ``nested``, every metric of
    (reference, position) on those image subsets (the convergence check), NaN where degenerate.
    The leaves' spatial means pass through, where they kept them."""
    metrics, alpha, ref, skip = request.metrics, request.alpha, request.ref, request.skip
    T, counts = request.n_positions, request.counts
    values, traj, reps, nested = {}, {}, {}, {}
    blank = np.full(acc.s.shape[2:-1], np.nan)

    def pair(m, a, b):
        """The plug-in value of the pair (a, b); NaN for a degenerate metric: decomposing the
        widest views to blank the result would be the costliest work of the task."""
        if m in request.undefined:
            return blank
        return _metric_from_rows(m, acc.row_stats(a, b, ref), alpha)

    def plugin(m, t, counts=None):
        if m in request.undefined:
            return blank
        if m in request.debiased:  # CKA's corrected estimator: no jackknife, no plug-in
            stats = acc.row_stats(ref, t, ref, counts)
            moments = acc.fourth_moments(t, ref, counts)
            return 1.0 - np.asarray(cka_debiased_from_row_stats(stats, moments), dtype=np.float64)
        return _metric_from_rows(m, acc.row_stats(ref, t, ref, counts), alpha)

    others = [t for t in range(T) if t != ref]

    def plugins(m, ts, counts=None):
        """(len(ts), *batch) plug-in values of the pairs (reference, t ∈ ts, not the reference)
        as one batch, so that the reference's own decompositions (PWSM's whitening) are done
        once for all of them."""
        if not ts:
            return np.empty((0, *blank.shape))
        if len(ts) < 2 or m in request.undefined or m in request.debiased:
            return np.stack([plugin(m, t, counts) for t in ts])
        return _metric_from_rows(m, acc.reference_pairs(ref, ts, counts), alpha)

    def estimates(m, ts, base=None):
        """(len(ts), *batch) estimates of the pairs (reference, t ∈ ts) on the units ``base``
        (None: all)."""
        point = plugins(m, ts, base)
        if m not in request.jackknifed:
            return point
        leave_out = _leave_out_counts(base, request.jack_groups)
        if len(leave_out) and min(leave_out @ acc.n.cpu().numpy()) < 3:
            leave_out = leave_out[:0]  # rank ≤ 1 after centering: no leave-out value
        return jackknifed(point, lambda g: plugins(m, ts, leave_out[g]), len(leave_out))

    def at_all(m, of_others, at_ref):
        """(T, *batch): ``of_others`` at the positions but the reference, ``at_ref`` there."""
        out = np.empty((T, *blank.shape))
        out[ref] = at_ref
        if others:
            out[others] = of_others(m, others)
        return out

    def value(m, t, base=None):
        """The estimate of pair (reference, t) on the units ``base`` (None: all)."""
        if t == ref:
            return plugin(m, t, base) if request.ref_value else blank
        return estimates(m, [t], base)[0]

    for m in metrics if request.point else []:
        values[m] = at_all(m, estimates, plugin(m, ref) if request.ref_value else blank)
    if request.mode == "all" and request.point:
        for m in metrics:  # the plug-in estimator: pairs without the reference have no units
            plain = m not in request.jackknifed and request.ref_value  # values are the plug-in's
            traj[m] = trajectory(
                values[m] if plain else at_all(m, plugins, plugin(m, ref)),
                ref,
                lambda a, b, m=m: pair(m, a, b),
                skip,
            )

    def of_counts(m, ts, counts):  # CKA's replicates need no re-summing of the statistics
        if m == "cka" or m in request.debiased:  # the debiased ones: centred on the estimate
            return _cka_replicates(acc, ref, ts, counts).__getitem__
        each = np.stack([plugins(m, ts, c) for c in counts])  # (N, len(ts), *batch)
        return lambda t: each[:, ts.index(t)]

    if counts is not None and len(counts):
        ts = replicated_positions(T, ref, skip)
        boot = request.boot_metrics
        for m in metrics if boot is None else [m for m in metrics if m in boot]:
            reps[m] = _replicates(values[m], len(counts), ts, of_counts(m, ts, counts))
            reps[m][:, ts] = recentred(values[m][ts], reps[m][:, ts])
            reps[m][:, list(skip)] = np.nan
    if request.nested is not None:
        t, undefined = request.nested.position, request.nested.undefined
        for mi, m in enumerate(metrics):
            # a few subsets: CKA's expansion (of_counts) costs more than re-summing for them
            nested[m] = np.stack(
                [
                    blank if undefined[mi, i] else value(m, t, c)
                    for i, c in enumerate(request.nested.counts)
                ]
            )
    heldout = {m: _heldout(request, acc, m) for m in request.heldout if m in values}
    return MetricsResult(values, traj, reps, nested, acc.pooled, heldout)


def _heldout(request: RowFinishRequest, acc: RowAccumulator, metric: str) -> np.ndarray:
    """(T, *batch) held-out values of ``metric`` for the pairs (reference, t), each fold of
    images (:func:`~ftdyn.metrics.heldout.heldout_folds` of the jackknife groups) scored by the
    alignment fitted on the others; NaN at the reference and the positions ``skip``."""
    ref = request.ref
    out = np.full((request.n_positions, *acc.s.shape[2:-1]), np.nan)
    fold_of_unit = heldout_folds(request.jack_groups)
    folds = [(fold_of_unit == f).astype(np.int64) for f in np.unique(fold_of_unit)]
    ts = replicated_positions(request.n_positions, ref, request.skip)
    if ts:  # one batch: the reference's whitening once per fold for all the checkpoints
        stats = [acc.reference_pairs(ref, ts, counts) for counts in folds]
        out[ts] = heldout_from_row_stats(metric, stats, request.alpha)
    return out


def _leave_out_counts(base: np.ndarray | None, groups: np.ndarray) -> np.ndarray:
    """(G, U) unit counts: ``base`` (None: every unit once) without each of the jackknife
    ``groups`` (the group of every unit) that it holds, one at a time."""
    base = np.ones(len(groups), dtype=np.int64) if base is None else np.asarray(base)
    present = np.unique(groups[base > 0])
    return np.stack([base * (groups != g) for g in present]) if len(present) else base[:0, None]


def row_cols(src: Source, view: str) -> int:
    """The number of columns of ``src``'s matrices in a row-side ``view``."""
    return {
        "channels": src.channels,
        "pooled": src.channels,
        "flat": src.channels * src.height * src.width,
        "filter": src.height * src.width,
    }[view]


def row_count(src: Source, view: str) -> int:
    """The number of rows of ``src``'s matrices in a row-side ``view``, over all images."""
    return src.n * src.height * src.width if view == "channels" else src.n
