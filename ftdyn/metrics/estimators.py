"""Estimators of the metrics, and where a value can be trusted at a given matrix shape.

The plug-in estimators (each metric's formula on the sample) are biased by the ratio of
columns to rows: on the demo's filter-view activations Procrustes doubles from 84 to 336 probe
images. The *corrected* estimators remove that bias where it can be removed:

* CKA: the debiased (unbiased-HSIC) estimator (Song et al. 2012; Kornblith et al. 2019; Murphy
  et al. 2024), whose bias is negligible at any columns/rows (0.25, 1 and 3 are tested);
* Procrustes and PWSM (any α): the grouped (delete-a-group) jackknife (Quenouille/Tukey; Efron
  & Tibshirani 1993, ch. 11) over :data:`JACKKNIFE_GROUPS` seeded row groups. It removes the
  1/rows term of the bias, which is enough only while columns/rows is small
  (:data:`RELIABLE_COLUMN_RATIO`); above, no usable correction exists and the value is reported
  as unreliable (:func:`size_reliability`), never corrected further.

The metric functions take ``estimator="plugin" | "corrected"`` themselves (plug-in by default,
the published conventions); :func:`estimate` adds the jackknife interval and the reliability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from . import _linalg as L
from . import direct
from ._jackknife import (
    ESTIMATORS,
    JACKKNIFE_GROUPS,
    check_estimator,
    jackknife,
    jackknife_groups,
    leave_group_out,
)
from .registry import degenerate_reason, get_metric

__all__ = [
    "ESTIMATORS",
    "JACKKNIFE_GROUPS",
    "RELIABLE_COLUMN_RATIO",
    "column_limit",
    "JACKKNIFED",
    "jackknife_groups",
    "jackknife",
    "size_reliability",
    "Estimate",
    "estimate",
]

#: the largest columns/rows at which each metric's corrected estimator is trusted; None: no
#: limit. Measured: the jackknifed Procrustes of the demo's filter view was stable in the number
#: of images at columns/rows ≤ 0.4 and still grew by half from 168 to 336 images near 1.
RELIABLE_COLUMN_RATIO = {"procrustes": 0.4, "pwsm": 0.4, "cka": None}
#: the metrics whose corrected estimator is the grouped jackknife of the plug-in (the corrected
#: CKA is the debiased estimator where per-image Gram matrices exist)
JACKKNIFED = ("procrustes", "pwsm")
#: the ratio above which a plug-in value is flagged where the correction has no limit (CKA): the
#: plug-in is never less biased than the correction, so it shares the other metrics' limit
_PLUGIN_COLUMN_RATIO = min(v for v in RELIABLE_COLUMN_RATIO.values() if v is not None)


def column_limit(metric: str) -> float:
    """The columns/rows above which a value of ``metric`` depends on the number of rows unless a
    correction without limit removes it: its jackknife's limit, else the plug-in's."""
    return RELIABLE_COLUMN_RATIO[metric] or _PLUGIN_COLUMN_RATIO


def size_reliability(
    metric: str, rows: int, cols: int, estimator: str = "corrected", alpha: float = 0.0
) -> str | None:
    """Why a value of ``metric`` by ``estimator`` on (``rows`` × ``cols``) matrices cannot be
    trusted, in one line, or None.

    A degenerate shape (:func:`ftdyn.metrics.degenerate_reason`) comes first. Then the column/row
    ratio: above :data:`RELIABLE_COLUMN_RATIO` the corrected Procrustes and PWSM still depend on
    the number of rows (no usable size correction exists there), and a plug-in value of any
    metric above that ratio carries a large size bias (the debiased CKA has no such limit).
    """
    check_estimator(estimator)
    reason = degenerate_reason(metric, rows, cols, alpha)
    if reason is not None:
        return reason
    limit = RELIABLE_COLUMN_RATIO[metric]
    ratio = cols / rows
    if estimator == "corrected":
        if limit is None or ratio <= limit:
            return None
        return (
            f"columns/rows = {ratio:.2f} > {limit:g}: no usable size correction; about"
            f" {math.ceil(cols / limit)} rows would be needed"
        )
    if ratio <= column_limit(metric):
        return None
    if limit is None:
        return (
            f"columns/rows = {ratio:.2f} > {_PLUGIN_COLUMN_RATIO:g}: the plug-in's size bias is"
            " large; the corrected (debiased) estimator has none"
        )
    return (
        f"columns/rows = {ratio:.2f} > {limit:g}: the plug-in's size bias is large and has no"
        f" usable correction; about {math.ceil(cols / limit)} rows would be needed"
    )


@dataclass(frozen=True)
class Estimate:
    """A metric's value by one estimator, its normal confidence interval [low, high] from the
    grouped-jackknife standard error, and why it cannot be trusted (None when it can). Floats
    for one pair of matrices, float64 arrays of the batch shape for stacks."""

    value: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    estimator: str
    reason: str | None


def estimate(
    metric: str,
    X,
    Y,
    estimator: str = "corrected",
    alpha: float = 0.0,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``metric`` (a registered distance: ``pwsm``, ``procrustes``, ``cka``) of ``X`` and ``Y``
    (matrices or stacks, as the metric functions take them) with its interval.

    The standard error is the grouped jackknife's, over :data:`JACKKNIFE_GROUPS` row groups
    seeded by ``seed``, of the estimator's own leave-out values: the jackknifed value for the
    corrected Procrustes/PWSM, the debiased distance for the corrected CKA (the jackknife of an
    unbiased estimator still estimates its spread), the plug-in value for ``"plugin"``. The
    interval is value ± z·SE with z the normal quantile of ``confidence``. ``reason`` is
    :func:`size_reliability` of the matrices' shape.
    """
    get_metric(metric)
    check_estimator(estimator)
    alpha = L.check_alpha(alpha)
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if metric == "cka":

        def plugin(A, B):
            return direct.cka_distance(A, B, estimator=estimator)

    elif metric == "pwsm":

        def plugin(A, B):
            return direct.pwsm(A, B, alpha)

    else:
        plugin = direct.procrustes
    full, leave_out = leave_group_out(plugin, X, Y, seed)
    corrected, se = jackknife(full, leave_out)
    value = corrected if estimator == "corrected" and metric != "cka" else full
    half = NormalDist().inv_cdf(0.5 + float(confidence) / 2) * se
    rows, cols = np.shape(X)[-2], max(np.shape(X)[-1], np.shape(Y)[-1])
    return Estimate(
        value=value,
        low=value - half,
        high=value + half,
        estimator=estimator,
        reason=size_reliability(metric, rows, cols, estimator, alpha),
    )
