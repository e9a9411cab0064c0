"""What a metrics task of a row- or Gram-side job returns, and how its arrays are laid out.

A job's metrics task (:func:`~ftdyn.analysis.rows.row_finish`,
:func:`~ftdyn.analysis.grams.gram_finish`) returns one :class:`MetricsResult` per filter group
(and checkpoint pass); :mod:`ftdyn.analysis.collect` joins them into records.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..metrics.estimators import jackknife


@dataclass(frozen=True)
class MetricsResult:
    """The metrics of one filter group (and checkpoint pass) of a job, per metric name.

    T positions (the checkpoints of the pass, the reference among them), ``*batch`` = (filters,)
    for a per-filter view and () for a whole-layer view.
    """

    #: {metric: (T, *batch)} distances of every (reference, position) pair (empty: a run for
    #: the convergence check alone)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: {metric: (T, T, *batch)} distances of every pair of positions (empty: reference pairs only)
    trajectory: dict[str, np.ndarray] = field(default_factory=dict)
    #: {metric: (N, T, *batch)} bootstrap replicates of ``values`` (metrics without: absent)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)
    #: {metric: (S, *batch)} the (reference, last epoch) distances on the convergence check's
    #: nested image subsets (empty: not this task's)
    nested: dict[str, np.ndarray] = field(default_factory=dict)
    #: {(position of the pass, sample chunk): (images, filters of the group)} float64 spatial
    #: means of the blocks read (the linear probes' features; None: not kept)
    pooled: dict[tuple[int, int], np.ndarray] | None = None
    #: {metric: (T, *batch)} held-out values of ``values`` beyond their correction's limit
    #: (:mod:`ftdyn.metrics.heldout`; NaN at the reference; metrics without: absent)
    heldout: dict[str, np.ndarray] = field(default_factory=dict)


def trajectory(
    reference_values: np.ndarray,
    ref: int,
    pair: Callable[[int, int], np.ndarray],
    skip: tuple[int, ...] = (),
) -> np.ndarray:
    """Symmetric checkpoint x checkpoint matrix: the reference row/column from the
    already computed distances, every other pair from ``pair(a, b)``; NaN for the pairs of a
    position in ``skip`` with another checkpoint (the random-init baseline is no epoch)."""
    T = len(reference_values)
    traj = np.full((T, T, *reference_values.shape[1:]), np.nan)
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


def replicated_positions(T: int, ref: int, skip: tuple[int, ...] = ()) -> list[int]:
    """Positions whose replicates are computed: not the reference (a checkpoint against itself:
    its replicates are its value, about 0) nor the positions in ``skip``."""
    return [t for t in range(T) if t != ref and t not in skip]


def recentred(values: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Bootstrap ``replicates`` (N, T, ...) moved to be centred on the point ``values`` (T, ...):
    their spread is kept and their own mean replaced. A replicate that draws an image twice sees
    fewer distinct images, which shifts an estimator whose bias depends on the probe-set size
    (the plug-in ones, and the corrections a little); centring on the estimate removes that
    shift, so an interval always surrounds its estimate."""
    with warnings.catch_warnings():  # all-NaN replicates (a dead filter) stay NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(replicates, axis=0) if len(replicates) else 0.0
    return values[None] + (replicates - mean)


def jackknifed(plugin: np.ndarray, leave_out: Callable[[int], np.ndarray], groups: int):
    """The grouped-jackknife value (:func:`ftdyn.metrics.estimators.jackknife`) from the
    ``plugin`` value and ``leave_out(g)``, the value without group g of the images, for
    ``groups`` groups; NaN with fewer than 2 groups."""
    if groups < 2:
        return np.full(np.shape(plugin), np.nan)
    return jackknife(plugin, np.stack([leave_out(g) for g in range(groups)]))[0]
