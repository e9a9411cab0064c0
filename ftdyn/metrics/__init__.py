"""ftdyn.metrics: the similarity metrics (pure numpy/torch/scipy, no I/O).

Metrics (paper §3.1, Eqs. 1-2; exact definitions with the paper's typos corrected
in the README's "Metrics" section), on matrices or stacks of matrices (..., rows, cols),
numpy or torch, all distances (lower = more similar, 0 for identical inputs) except CKA:

* :func:`pwsm` (radians, netrep convention), :func:`procrustes` (∈ [0, 1]),
  :func:`linear_cka` (similarity; ``debiased=True``), :func:`cka_distance` (1 − CKA);
* the published code's row-centered map metrics (``--preset paper-code``):
  :func:`procrustes_rows`, :func:`cka_distance_rows`;
* :func:`degenerate_reason`: the shapes where a metric is 0 for any pair;
* estimators: each metric function takes ``estimator="plugin"`` (default, the published
  conventions) or ``"corrected"`` (no bias growing with columns/rows: debiased CKA, grouped
  jackknife for Procrustes and PWSM, ``ftdyn analyze``'s default); :func:`estimate` gives a
  value with its jackknife interval and :func:`size_reliability` the shapes where a value
  cannot be trusted (:mod:`ftdyn.metrics.estimators`);
* by name, as ``ftdyn analyze --metric`` takes them: :data:`METRICS`, :func:`get_metric`,
  :class:`MetricInfo`.

Submodules hold the rest (README, "Metrics", **Out-of-core**):

* :mod:`ftdyn.metrics.stats`: the same metrics from streamed sufficient statistics: row side
  (:class:`~ftdyn.metrics.stats.RowStats`, ``row_stats``, ``merge``, ``*_from_row_stats``),
  Gram side (:class:`~ftdyn.metrics.stats.GramStats`, ``gram``, ``gram_stats``,
  ``*_from_gram``; per-model decompositions ``gram_eig``, ``*_from_gram_eig``, ``gram_center``,
  ``cka_from_gram_centered``), ``choose_side``, dead inputs (``dead_mask``, ``count_dead``);
* :mod:`ftdyn.metrics.estimators` (``ESTIMATORS``, ``RELIABLE_COLUMN_RATIO``, ``Estimate``,
  ``jackknife``, ``jackknife_groups``);
* :mod:`ftdyn.metrics.direct`, :mod:`ftdyn.metrics.paper_code` (``ROW_CENTERED``),
  :mod:`ftdyn.metrics.registry` (``diagonal_self_products``), :mod:`ftdyn.metrics.probe`
  (the linear probe), :mod:`ftdyn.metrics._linalg` (shared float64 kernels and tolerances such
  as ``EIG_CLIP``).
"""

import importlib

from . import stats as _stats
from .direct import cka_distance, linear_cka, procrustes, pwsm
from .estimators import estimate, size_reliability
from .paper_code import cka_distance_rows, procrustes_rows
from .registry import METRICS, MetricInfo, degenerate_reason, get_metric

__all__ = [
    "pwsm",
    "procrustes",
    "linear_cka",
    "cka_distance",
    "procrustes_rows",
    "cka_distance_rows",
    "degenerate_reason",
    "estimate",
    "size_reliability",
    "get_metric",
    "METRICS",
    "MetricInfo",
]

# Names this package exported before its public API was narrowed to ``__all__``, and the submodule
# that defines each: still served (on first use) for code written against the flat namespace.
_SUBMODULE_NAMES = {
    "stats": list(_stats.__all__),
    "paper_code": ["ROW_CENTERED"],
    "registry": ["diagonal_self_products"],
    "_linalg": ["EIG_CLIP"],
}
_SUBMODULE_OF = {name: module for module, names in _SUBMODULE_NAMES.items() for name in names}


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str):
    if name in _SUBMODULE_OF:
        return getattr(importlib.import_module(f".{_SUBMODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module 'ftdyn.metrics' has no attribute {name!r}")
