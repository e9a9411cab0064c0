"""Metrics by name, for the CLI and the analysis stage.

Every registered metric is a *distance*: lower = more similar, 0 on identical
input (``lower_is_more_similar`` is True for all of them, so results can be
compared and averaged without sign flips). Each entry gives the same number from
the matrices (``direct``), from row statistics (``from_row_stats``) and from Gram
statistics (``from_gram``); extra keyword parameters (``params``, with defaults)
are passed to all three. ``direct`` also takes ``estimator`` (plug-in by default;
:mod:`ftdyn.metrics.estimators`), the statistics routes give the plug-in value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import direct as _d
from . import stats as _s

__all__ = [
    "MetricInfo",
    "METRICS",
    "get_metric",
    "degenerate_reason",
    "diagonal_self_products",
]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    description: str
    range: str
    lower_is_more_similar: bool
    direct: Callable[..., Any]
    from_row_stats: Callable[..., Any]
    from_gram: Callable[..., Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    #: what ``from_row_stats`` needs of the self-products XᵀX and YᵀY: "full" matrices, or
    #: only their "diagonal" (their traces: row statistics may then hold the diagonals alone)
    self_products: str = "full"

    def __call__(self, X, Y, **params):
        """Same as ``self.direct(X, Y, **params)``."""
        return self.direct(X, Y, **params)


def _cka_dist_row(s):
    return 1.0 - _s.cka_from_row_stats(s)


def _cka_dist_gram(g):
    return 1.0 - _s.cka_from_gram(g)


def _cka_dist_direct(X, Y, estimator: str = "plugin"):
    return _d.cka_distance(X, Y, estimator=estimator)


METRICS: Mapping[str, MetricInfo] = MappingProxyType(
    {
        "pwsm": MetricInfo(
            name="pwsm",
            description=(
                "Partial-whitening shape metric (Williams et al. 2021), angular form, in radians;"
                " alpha=0 full whitening (CCA-like, the paper's setting), alpha=1 angular"
                " Procrustes. netrep LinearMetric(alpha, center_columns=True,"
                " score_method='angular') convention: unnormalized covariance, eigenvalues clipped"
                " at 1e-7, so 0<alpha<1 depends on the activation scale."
            ),
            range="[0, pi/2] radians",
            lower_is_more_similar=True,
            direct=_d.pwsm,
            from_row_stats=_s.pwsm_from_row_stats,
            from_gram=_s.pwsm_from_gram,
            params=MappingProxyType({"alpha": 0.0}),
        ),
        "procrustes": MetricInfo(
            name="procrustes",
            description=(
                "Orthogonal Procrustes distance 1 - ||X^T Y||_* on centered, unit-Frobenius-norm "
                "matrices (Ding et al. 2021, halved to the paper's range [0, 1])."
            ),
            range="[0, 1]",
            lower_is_more_similar=True,
            direct=_d.procrustes,
            from_row_stats=_s.procrustes_from_row_stats,
            from_gram=_s.procrustes_from_gram,
            self_products="diagonal",
        ),
        "cka": MetricInfo(
            name="cka",
            description=(
                "Linear CKA *distance* 1 - CKA (Kornblith et al. 2019; plug-in: the biased HSIC"
                " estimator, corrected: the debiased one); registered as a distance like the"
                " others: 0 = identical up to rotation and scale. The similarity itself is"
                " ftdyn.metrics.linear_cka."
            ),
            range="[0, 1]",
            lower_is_more_similar=True,
            direct=_cka_dist_direct,
            from_row_stats=_cka_dist_row,
            from_gram=_cka_dist_gram,
        ),
    }
)


def get_metric(name: str) -> MetricInfo:
    """The registered metric called ``name``; ValueError naming the choices otherwise."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}") from None


def diagonal_self_products(metrics) -> bool:
    """Whether the diagonals of the self-products XᵀX and YᵀY are all that ``metrics`` need of
    them on the row side (:attr:`MetricInfo.self_products`)."""
    return all(get_metric(m).self_products == "diagonal" for m in metrics)


def degenerate_reason(
    metric: str, rows: int, cols: int, alpha: float = 0.0, center: str = "columns"
) -> str | None:
    """Why ``metric`` cannot tell *any* two (rows × cols) matrices apart, or None.

    Decided from the effective sample, not from the data: after centering, the
    left singular vectors of X̃ live in a space of dimension ``rows − 1`` (columns
    centered) or ``rows`` (``center="rows"``, the published code's map view). When
    that dimension is ≤ 1 (≤ 2 rows with column centering: rank ≤ 1 after centering),
    both matrices share their only left singular vector and Procrustes, CKA and PWSM
    (any α) give 0 for any pair. PWSM with α = 0 (full whitening) is degenerate as soon
    as the centered rows are spanned by both whitened matrices: ``rows − 1 ≤ cols``
    (column centering), ``rows ≤ cols`` (row centering). With 0 < α < 1 the partial
    whitening keeps the spectrum's shape and the angle is informative (netrep agrees).
    The metric functions themselves still return their number (0 up to rounding).
    """
    get_metric(metric)
    space = rows - 1 if center == "columns" else rows
    if space <= 1:
        return f"{rows} row(s) per matrix: rank <= 1 after centering"
    if metric == "pwsm" and float(alpha) == 0.0 and space <= cols:
        return (
            f"alpha=0 with {rows} rows <= {cols} columns + 1: full whitening spans the same row"
            " space"
        )
    return None
