"""The Gram-side tasks: each checkpoint's raw Gram matrix built from panels of rows
(:func:`gram_panel`, :func:`gram_assemble`), then the metrics, trajectory and bootstrap
replicates of all checkpoints from them (:func:`gram_finish`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import DEBIASED_CKA
from ..metrics._linalg import cka_u_centered, raw_gram_dead, u_center
from ..metrics.bootstrap import (
    PairQuadratics,
    cka_of_counts,
    gram_unit_quadratics,
    gram_unit_traces,
)
from ..metrics.heldout import heldout_folds, heldout_from_gram
from ..metrics.stats import (
    GramCentered,
    GramEig,
    cka_from_gram_centered,
    cka_from_gram_eig,
    gram_center,
    gram_eig,
    procrustes_from_gram_eig,
    pwsm_from_gram_eig,
)
from ..summary import shared_indices
from .inputs import Source
from .reading import F64, read_matrices, trimmed
from .task_results import MetricsResult, jackknifed, recentred, replicated_positions, trajectory


@dataclass(frozen=True)
class GramPanelRequest:
    """Rows of one checkpoint's raw Gram matrix (:func:`gram_panel`): the images of the sample
    chunks ``panel`` against themselves and every later chunk (``stream``)."""

    src: Source
    #: the checkpoint (store index)
    ckpt: int
    view: str
    #: the filter group
    filters: slice
    panel: list[int]
    stream: list[int]


@dataclass(frozen=True)
class GramPanel:
    """Rows of a raw Gram matrix from :func:`gram_panel`."""

    #: the first image (row) of the panel
    first_row: int
    #: (*batch, images of the panel, images from the first row on)
    block: torch.Tensor


@dataclass(frozen=True)
class NestedImages:
    """The convergence check's image subsets of a Gram-side job."""

    #: position of the checkpoint compared with the reference (the last epoch)
    position: int
    #: the metrics to compute on them (the view's, not only the job's)
    metrics: list[str]
    #: the image indices of each subset
    subsets: list[np.ndarray]
    #: (metrics, S) whether a metric is degenerate on a subset (its value stays NaN)
    undefined: np.ndarray


@dataclass(frozen=True)
class GramFinishRequest:
    """Which metrics one Gram-side metrics task computes from every checkpoint's raw Gram
    (:func:`gram_finish`)."""

    metrics: list[str]
    alpha: float
    #: position of the reference
    ref: int
    #: "all": also the trajectory of every pair; otherwise one decomposition at a time
    mode: str
    #: (unit of every image, (N, U) unit counts of the replicates) (None: no bootstrap)
    boot: tuple[np.ndarray, np.ndarray] | None
    #: bytes of the n × n float64 Grams of the filters whose replicates are computed together
    block_bytes: int
    #: the metrics with replicates (None: all)
    boot_metrics: list[str] | None = None
    #: positions without replicates or trajectory (they stay NaN)
    skip: tuple[int, ...] = ()
    #: the convergence check's subsets (None: no check)
    nested: NestedImages | None = None
    #: the corrected estimators: CKA debiased, ``jackknifed`` metrics by the grouped jackknife
    corrected: bool = False
    #: the metrics estimated by the grouped jackknife (the corrected Procrustes and PWSM)
    jackknifed: tuple[str, ...] = ()
    #: (n,) the jackknife group of every image (needed with ``jackknifed``)
    jack_groups: np.ndarray | None = None
    #: the metrics degenerate on all the images (their values are NaN, never computed)
    undefined: tuple[str, ...] = ()
    #: the metrics whose values are beyond their correction's limit: their held-out values too
    #: (:mod:`ftdyn.metrics.heldout`, over the jackknife groups; PWSM: NaN)
    heldout: tuple[str, ...] = ()

    def computed(self, metric: str) -> str:
        """The metric as computed: the corrected CKA is the debiased one."""
        return DEBIASED_CKA if self.corrected and metric == "cka" else metric


@trimmed
def gram_panel(request: GramPanelRequest, after=None) -> GramPanel:
    """Rows of one checkpoint's raw Gram for the images of the request's panel against
    themselves and every later chunk. ``after``: the previous filter group's result, only so
    that Dask builds one group's Gram matrices at a time (the plan budgets one group)."""
    src, ckpt, view, fsl = request.src, request.ckpt, request.view, request.filters
    panel = request.panel
    # filled in place, not concatenated: a concatenation holds the panel (and the block) twice,
    # which the plan does not budget
    r0, r1 = src.rows(panel[0]).start, src.rows(panel[-1]).stop
    P = None
    for c in panel:
        m = read_matrices(src, ckpt, c, fsl, view)
        if P is None:
            P = m.new_empty((*m.shape[:-2], r1 - r0, m.shape[-1]))
        rows = src.rows(c)
        P[..., rows.start - r0 : rows.stop - r0, :] = m
        del m
    block = P.new_empty((*P.shape[:-1], src.n - r0))
    block[..., : r1 - r0] = torch.matmul(P, P.mT)
    for c in request.stream:
        rows = src.rows(c)
        block[..., rows.start - r0 : rows.stop - r0] = torch.matmul(
            P, read_matrices(src, ckpt, c, fsl, view).mT
        )
    return GramPanel(r0, block)


@trimmed
def gram_assemble(n: int, *panels: GramPanel) -> torch.Tensor:
    """The raw Gram matrix (*batch, n, n) from the panels of :func:`gram_panel` (one panel of
    all the images is the matrix itself: no copy; double centering symmetrizes it)."""
    if len(panels) == 1 and panels[0].block.shape[-2] == n:
        return panels[0].block
    batch = panels[0].block.shape[:-2]
    K = torch.empty((*batch, n, n), dtype=F64, device=panels[0].block.device)
    for panel in panels:
        r0, block = panel.first_row, panel.block
        r1 = r0 + block.shape[-2]
        K[..., r0:r1, r0:] = block
        K[..., r0:, r0:r1] = block.mT
    return K


_EIG_FUNCS = {
    "pwsm": lambda ex, ey, alpha: pwsm_from_gram_eig(ex, ey, alpha),
    "procrustes": lambda ex, ey, alpha: procrustes_from_gram_eig(ex, ey),
    "cka": lambda ex, ey, alpha: 1.0 - np.asarray(cka_from_gram_eig(ex, ey)),
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
        self._centered: GramCentered | None = None
        self._eig: GramEig | None = None
        self._u: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def u_centered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U-centered K, its squared norm): the debiased CKA's, once for all pairs."""
        if self._u is None:
            Ku = u_center(self.K)
            self._u = (Ku, (Ku * Ku).sum((-2, -1)))
        return self._u

    @property
    def centered(self) -> GramCentered:
        if self._centered is None:
            self._centered = gram_center(self.K)
        return self._centered

    @property
    def eig(self) -> GramEig:
        if self._eig is None:
            self._eig = gram_eig(self.K, self.centered)  # one double centering for both
        return self._eig

    def select(self, images: torch.Tensor) -> _Gram:
        """The Grams of some images (an index tensor; repeats allowed: a resample)."""
        return _Gram(self.K.index_select(-1, images).index_select(-2, images))


def _gram_pair(metric: str, a: _Gram, b: _Gram, alpha: float) -> np.ndarray:
    """One metric of a checkpoint pair: CKA from the centered Grams (O(n²), no decomposition),
    debiased CKA from the raw ones, the others from the decompositions."""
    if metric == "cka":
        return 1.0 - np.asarray(cka_from_gram_centered(a.centered, b.centered), dtype=np.float64)
    if metric == DEBIASED_CKA:
        return 1.0 - _debiased_cka(a, b)
    return _metric_from_eigs(metric, a.eig, b.eig, alpha)


def _debiased_cka(a: _Gram, b: _Gram) -> np.ndarray:
    """Debiased linear CKA (:func:`ftdyn.metrics.linear_cka` ``debiased=True``) of two
    checkpoints from their U-centered Grams, each centered once for all its pairs; NaN for dead
    inputs and below 4 images."""
    if a.K.shape[-1] < 4:
        return np.full(a.K.shape[:-2], np.nan)
    value = cka_u_centered(*a.u_centered, *b.u_centered, raw_gram_dead(a.K) | raw_gram_dead(b.K))
    return np.asarray(value.cpu(), dtype=np.float64)


def _gram_cka_replicates(
    ref: _Gram, grams: dict[int, _Gram], units: np.ndarray, counts: np.ndarray, block_bytes: int
) -> dict[int, np.ndarray]:
    """{t: (N, *batch) CKA distances of (reference, t)} for every replicate's unit counts (N, U),
    from the raw Grams: the same numbers (to rounding) as CKA of the resampled Grams
    (``K[idx][:, idx]`` of :func:`ftdyn.summary.shared_indices`), O(n²·U) per checkpoint and
    O(U³) per replicate instead of O(n²) per replicate (the expansion of
    :func:`~ftdyn.metrics.bootstrap.gram_unit_quadratics` about the all-image centering, which
    leaves the resampled centering unchanged and avoids cancelling the mean's large raw
    moments). A few filters at a time, their n × n Grams at most ``block_bytes``: the centered
    Grams and the expansion's products are temporaries of that size, not of the whole filter
    group (as :mod:`ftdyn.analysis.gram_memory` budgets them)."""
    n, batch, dev = ref.K.shape[-1], ref.K.shape[:-2], ref.K.device
    ind = torch.from_numpy(np.eye(counts.shape[1])[units]).to(device=dev, dtype=F64)
    n_u = ind.sum(0)
    indices = shared_indices(units, counts)
    ref_k = ref.K.reshape(-1, n, n)
    out = {t: np.empty((len(counts), ref_k.shape[0])) for t in grams}

    def prepared(g):  # (centered Gram, its own quadratics, raw traces per unit (U, B))
        Kc = g.centered.Kc
        return Kc, gram_unit_quadratics(Kc, Kc, ind), gram_unit_traces(g.K, ind)

    step = max(1, block_bytes // (n * n * ref_k.element_size()))
    for f0 in range(0, ref_k.shape[0], step):
        part = slice(f0, f0 + step)
        part_ref = _Gram(ref_k[part])
        ref_c, ref_quad, ref_raw = prepared(part_ref)
        for t, g in grams.items():
            part_t = _Gram(g.K.reshape(-1, n, n)[part])
            Kc, quad, raw = prepared(part_t)
            quads = PairQuadratics(xy=gram_unit_quadratics(ref_c, Kc, ind), xx=ref_quad, yy=quad)

            def exact(b, filters, pair=(part_ref, part_t)):  # the resampled Grams at those filters
                ii = torch.from_numpy(indices[b]).to(dev)
                pick = [_Gram(k.K.index_select(0, filters)) for k in pair]
                return _gram_pair("cka", *(k.select(ii) for k in pick), 0.0)

            out[t][:, part] = cka_of_counts(counts, n_u, quads, ref_raw, raw, exact)
    return {t: v.reshape(len(counts), *batch) for t, v in out.items()}


@trimmed
def gram_finish(request: GramFinishRequest, *Ks: torch.Tensor) -> MetricsResult:
    """Metrics of Gram-side views from every checkpoint's raw Gram matrix ``Ks``; replicates of
    ``boot_metrics`` (default all); with ``nested``, those metrics of (reference, position) on
    those image subsets (the convergence check)."""
    metrics, alpha, ref, skip = request.metrics, request.alpha, request.ref, request.skip
    T = len(Ks)
    traj, reps, nested = {}, {}, {}
    grams = [_Gram(K) for K in Ks]
    blank = np.full(Ks[ref].shape[:-2], np.nan)

    def pair(m, a, b):  # NaN for a degenerate metric, without decomposing anything
        if m in request.undefined:
            return blank
        return _gram_pair(request.computed(m), grams[a], grams[b], alpha)

    vals = {m: [None] * T for m in metrics}
    for t in range(T):
        for m in metrics:
            vals[m][t] = pair(m, ref, t)
        if request.mode != "all" and t != ref:  # reference pairs: one decomposition at a time
            grams[t].forget()
    values = {m: np.stack(vals[m]) for m in metrics}
    if request.mode == "all":
        for m in metrics:  # the trajectory keeps the plug-in Procrustes and PWSM
            traj[m] = trajectory(
                values[m],
                ref,
                lambda a, b, m=m: pair(m, a, b),
                skip,
            )
    for g in grams:  # what follows builds its own: the cached decompositions would sit beside it
        g.forget()
    others = {t: grams[t] for t in range(T) if t != ref}
    everyone = np.arange(grams[ref].K.shape[-1])
    for m, by_t in _jackknife(request, grams[ref], others, values, everyone).items():
        for t, v in by_t.items():
            values[m][t] = v
    if request.boot is not None and len(request.boot[1]):
        reps = _gram_replicates(request, values, grams)
    if request.nested is not None:
        nested = _gram_subsets(request, grams[ref], grams[request.nested.position])
    heldout, ts = {}, replicated_positions(T, ref, skip)
    folds = heldout_folds(request.jack_groups) if request.heldout else None
    for m in request.heldout:
        heldout[m] = np.full_like(values[m], np.nan)
        if ts:  # the reference's decompositions once for all the checkpoints
            heldout[m][ts] = heldout_from_gram(m, Ks[ref], [Ks[t] for t in ts], folds, alpha)
    return MetricsResult(values, traj, reps, nested, heldout=heldout)


def _jackknife(
    request: GramFinishRequest,
    ref: _Gram,
    others: dict[int, _Gram],
    plugin: dict[str, np.ndarray],
    images: np.ndarray,
) -> dict[str, dict[int, np.ndarray]]:
    """{metric: {position: value}} of the request's jackknifed metrics on ``images``: the
    grouped jackknife of the ``plugin`` values (:func:`jackknifed`) over the jackknife groups
    those images hold; each group left out decomposes the reference once."""
    metrics = [m for m in request.jackknifed if m in plugin and m not in request.undefined]
    if not metrics:
        return {}
    groups = request.jack_groups[images]
    kept = [images[groups != g] for g in np.unique(groups)]
    if min((len(k) for k in kept), default=0) < 3:  # rank ≤ 1 after centering: no leave-out value
        kept = []
    left = {m: {t: [] for t in others} for m in metrics}
    for keep in kept:
        ii = torch.from_numpy(keep).to(ref.K.device)
        sub_ref = ref.select(ii)
        for t, g in others.items():
            sub = g.select(ii)
            for m in metrics:
                left[m][t].append(_gram_pair(m, sub_ref, sub, request.alpha))
    return {
        m: {
            t: jackknifed(plugin[m][t], lambda k, m=m, t=t: left[m][t][k], len(kept))
            for t in others
        }
        for m in metrics
    }


def _gram_subsets(request: GramFinishRequest, ref: _Gram, other: _Gram) -> dict[str, np.ndarray]:
    """{metric: (S, ...)} of the pair (ref, other) restricted to each subset of images of the
    request's convergence check; NaN where the metric is degenerate on that subset."""
    nested = request.nested
    vals = {m: [] for m in nested.metrics}
    for i, idx in enumerate(nested.subsets):
        idx = np.asarray(idx)
        ii = torch.from_numpy(idx).to(ref.K.device)
        a, b = ref.select(ii), other.select(ii)
        blank = np.full(ref.K.shape[:-2], np.nan)
        point = {
            m: blank[None]
            if nested.undefined[mi, i]
            else _gram_pair(request.computed(m), a, b, request.alpha)[None]
            for mi, m in enumerate(nested.metrics)
        }
        defined = {m: v for mi, (m, v) in enumerate(point.items()) if not nested.undefined[mi, i]}
        corrected = _jackknife(request, ref, {0: other}, defined, idx)
        for m in nested.metrics:
            vals[m].append(corrected[m][0] if m in corrected else point[m][0])
    return {m: np.stack(v) for m, v in vals.items()}


def _gram_replicates(
    request: GramFinishRequest, values: dict[str, np.ndarray], grams: list[_Gram]
) -> dict[str, np.ndarray]:
    """Replicates (N, T, ...) of the request's bootstrapped metrics at the replicated positions
    (the point value elsewhere, NaN at ``skip``): CKA from unit-level coefficients, the others
    by resampling the Grams' images (and decomposing them where the metric needs it)."""
    metrics, ref, skip = request.metrics, request.ref, request.skip
    boot = (
        metrics
        if request.boot_metrics is None
        else [m for m in metrics if m in request.boot_metrics]
    )
    ts = replicated_positions(len(grams), ref, skip)
    units, counts = request.boot
    reps = {
        m: np.repeat(np.asarray(values[m], dtype=np.float64)[None], len(counts), axis=0)
        for m in boot
    }
    # CKA's replicates from unit-level coefficients (the plug-in's deviations, centred below on
    # the estimate, debiased or not): resampling the Grams per replicate costs O(n²) each
    if "cka" in boot:
        for t, r in _gram_cka_replicates(
            grams[ref], {t: grams[t] for t in ts}, units, counts, request.block_bytes
        ).items():
            reps["cka"][:, t] = r
    resampled = [m for m in boot if m != "cka"]
    for b, idx in enumerate(shared_indices(units, counts) if resampled else []):
        ii = torch.from_numpy(idx).to(grams[ref].K.device)
        g_ref = grams[ref].select(ii)
        for t in ts:
            g_t = grams[t].select(ii)
            for m in resampled:
                reps[m][b, t] = _gram_pair(request.computed(m), g_ref, g_t, alpha=request.alpha)
    for m in boot:
        reps[m][:, ts] = recentred(values[m][ts], reps[m][:, ts])
        reps[m][:, list(skip)] = np.nan
    return reps
