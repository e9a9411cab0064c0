"""How each analyzed metric is estimated and where its value is defined: the estimator per
metric and view (:mod:`ftdyn.metrics.estimators`: plug-in, debiased CKA, grouped jackknife) and
the shapes where a metric is degenerate (0 for any pair of checkpoints)."""

from __future__ import annotations

import math

import numpy as np

from ..config import DEBIASED_CKA, AnalyzeConfig
from ..metrics.estimators import JACKKNIFED, column_limit, size_reliability
from ..metrics.heldout import HELDOUT_METRICS
from ..metrics.registry import degenerate_reason
from ..views import matrix_shape
from .inputs import Source

#: the views whose CKA the corrected estimator takes from per-image Gram matrices (debiased); on
#: the others (positions or pooled rows) it is the grouped jackknife, like Procrustes and PWSM
GRAM_VIEWS = ("filter", "flat")


def jackknifed(config: AnalyzeConfig, metrics, src: Source | None = None) -> tuple[str, ...]:
    """Those of ``metrics`` estimated by the grouped jackknife (the corrected Procrustes and
    PWSM, and CKA outside :data:`GRAM_VIEWS`; :mod:`ftdyn.metrics.estimators`; the map view
    keeps the plug-in). With ``src``, only those whose view of that layer is within the
    jackknife's column/row limit: above it no correction holds, the value is marked unreliable
    and the plug-in's is kept (:func:`beyond_correction`), at a ninth of the cost."""
    if config.estimator != "corrected":
        return ()
    return tuple(
        m
        for m in metrics
        if config.views[m] != "map"
        and (m in JACKKNIFED or (m == "cka" and config.views[m] not in GRAM_VIEWS))
        and (src is None or not beyond_correction(config, src, m))
    )


def heldout_metrics(config: AnalyzeConfig, metrics, src: Source) -> tuple[str, ...]:
    """Those of ``metrics`` whose value on ``src`` is beyond its correction's limit
    (:func:`beyond_correction`: the plug-in value is kept and marked unreliable) and that have a
    held-out value (:mod:`ftdyn.metrics.heldout`): the other end of the plug-in's bias, reported
    beside it. Corrected estimators only (the plug-in preset keeps the published numbers);
    degenerate values have none."""
    if config.estimator != "corrected" or not config.heldout:
        return ()
    return tuple(
        m
        for m in metrics
        if m in HELDOUT_METRICS
        and config.views[m] != "map"
        and beyond_correction(config, src, m)
        and degenerate(config, src, m, src.n) is None
    )


def beyond_correction(config: AnalyzeConfig, src: Source, metric: str) -> bool:
    """Whether ``metric``'s view of ``src`` on all its images has more columns per row than the
    jackknife's limit (:func:`~ftdyn.metrics.estimators.column_limit`)."""
    _, rows, cols = matrix_shape(config.views[metric], src.n, src.channels, src.height, src.width)
    return cols > column_limit(metric) * rows


def debiased(config: AnalyzeConfig, metrics) -> bool:
    """Whether ``metrics`` hold a CKA estimated by the debiased estimator (the corrected CKA,
    computed from the per-image Gram matrices; the map view keeps the plug-in)."""
    return (
        config.estimator == "corrected" and "cka" in metrics and config.views["cka"] in GRAM_VIEWS
    )


def debiased_metrics(config: AnalyzeConfig, metrics) -> tuple[str, ...]:
    """Those of ``metrics`` that are a debiased CKA: the corrected CKA of a per-image view
    (:func:`debiased`) and ``cka_debiased``."""
    return tuple(m for m in metrics if m == DEBIASED_CKA or (m == "cka" and debiased(config, (m,))))


def estimator_names(config: AnalyzeConfig) -> dict[str, str]:
    """{metric: how it is estimated}: "debiased", "jackknife" or "plugin" (the results'
    ``estimators`` attr)."""
    return {
        m: "jackknife"
        if jackknifed(config, (m,))
        else "debiased"
        if m == DEBIASED_CKA or debiased(config, (m,))
        else "plugin"
        for m in config.metrics
    }


def degenerate(args: AnalyzeConfig, src: Source, metric: str, n_images: int) -> str | None:
    """Why ``metric`` on ``src`` in its view is 0 for any pair of checkpoints when computed on
    ``n_images`` images (the view's matrix shape decides, :func:`ftdyn.metrics.degenerate_reason`),
    or None."""
    view = args.views[metric]
    _, rows, cols = matrix_shape(view, n_images, src.channels, src.height, src.width)
    center = args.map_center if view == "map" and metric != "pwsm" else "columns"
    reason = degenerate_reason(
        "cka" if metric == DEBIASED_CKA else metric, rows, cols, args.alpha, center
    )
    if (metric == DEBIASED_CKA or debiased(args, (metric,))) and rows < 4:
        reason = reason or f"{rows} row(s) per matrix: debiased CKA needs at least 4"
    return reason


def subsets_degenerate(
    args: AnalyzeConfig, src: Source, metrics: list[str], sizes: list[int]
) -> np.ndarray:
    """(metrics, subsets) whether each metric is degenerate on subsets of ``sizes`` images: the
    convergence check leaves those NaN (a smaller subset can be degenerate where all images
    are not, e.g. PWSM with α = 0 and fewer rows than columns)."""
    return np.array([[degenerate(args, src, m, k) is not None for k in sizes] for m in metrics])


def size_reason(
    args: AnalyzeConfig, estimator: str, metric: str, shape: tuple[int, int, int]
) -> str | None:
    """:func:`~ftdyn.metrics.estimators.size_reliability` of ``metric`` as analyzed by
    ``estimator`` (:func:`~ftdyn.analysis.estimation.estimator_names`) on (rows, columns) of a
    layer of ``images`` probe images, with the images that would be needed where a row is not an
    image (the channels view). Beyond its limit a jackknifed metric keeps the plug-in value
    (:func:`~ftdyn.analysis.estimation.beyond_correction`), judged as one."""
    rows, cols, images = shape
    name = "cka" if metric == DEBIASED_CKA else metric
    limit = column_limit(name)
    kept_plugin = estimator == "jackknife" and cols > limit * rows
    judged = "plugin" if estimator == "plugin" or kept_plugin else "corrected"
    reason = size_reliability(name, rows, cols, judged, args.alpha)
    if reason and rows != images:
        reason += f" ({math.ceil(cols / limit / (rows / images))} probe images)"
    if reason and kept_plugin:
        reason += "; the plug-in value is shown"
    return reason


def untrusted(config: AnalyzeConfig, src: Source, metric: str) -> str | None:
    """Why ``metric``'s value on all the images of ``src`` cannot be trusted: degenerate, or beyond
    its estimator's column/row limit (:func:`size_reason`); None when it can."""
    _, rows, cols = matrix_shape(config.views[metric], src.n, src.channels, src.height, src.width)
    estimator = estimator_names(config)[metric]
    return degenerate(config, src, metric, src.n) or size_reason(
        config, estimator, metric, (rows, cols, src.n)
    )


def replicated(config: AnalyzeConfig, metrics, src: Source) -> list[str]:
    """Those of ``metrics`` that get bootstrap replicates on ``src``: the bootstrapped ones
    (``--bootstrap-metric``) whose value can be trusted. An interval around a value marked
    unreliable would say nothing more, and such values are the costly ones (the widest views:
    a decomposition per replicate)."""
    wanted = config.bootstrap_metrics
    return [
        m for m in metrics if (wanted is None or m in wanted) and untrusted(config, src, m) is None
    ]
