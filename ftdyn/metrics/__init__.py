"""ftdyn.metrics: the similarity metric engine (pure numpy/torch/scipy, no I/O).

Metrics (paper §3.1, Eqs. 1-2; exact definitions with the paper's typos corrected
in the README's "Metrics" section), on matrices or stacks of matrices (..., rows, cols):

* :func:`pwsm` (radians, netrep convention), :func:`procrustes` (∈ [0, 1]),
  :func:`linear_cka` (similarity; ``debiased=True``), :func:`cka_distance` (1 − CKA).

The same metrics from streamed sufficient statistics (README, "Metrics", **Out-of-core**):

* row side (rows ≥ cols): :class:`RowStats`, :func:`row_stats`, :func:`merge`,
  :func:`pwsm_from_row_stats`, :func:`procrustes_from_row_stats`, :func:`cka_from_row_stats`;
* Gram side (cols > rows): :class:`GramStats`, :func:`gram`, :func:`gram_stats`,
  :func:`merge`, :func:`pwsm_from_gram`, :func:`procrustes_from_gram`, :func:`cka_from_gram`;
  per-model decompositions for cheap pairs: :func:`gram_eig`, :func:`pwsm_from_gram_eig`,
  :func:`procrustes_from_gram_eig`, :func:`cka_from_gram_eig`; for CKA alone, one double
  centering per model: :func:`gram_center`, :func:`cka_from_gram_centered`;
* :func:`choose_side`; dead inputs (NaN results): :func:`dead_mask`, :func:`count_dead`;
  shapes where a metric is 0 for any pair: :func:`degenerate_reason`.

The published code's row-centered map metrics (``--preset paper-code``):
:func:`procrustes_rows`, :func:`cka_distance_rows`, :data:`ROW_CENTERED`.

Registry for the CLI: :data:`METRICS`, :func:`get_metric`, :class:`MetricInfo`
(all registered metrics are distances: lower = more similar).
"""

from ._linalg import EIG_CLIP
from .direct import cka_distance, linear_cka, procrustes, pwsm
from .paper_code import ROW_CENTERED, cka_distance_rows, procrustes_rows
from .registry import METRICS, MetricInfo, degenerate_reason, diagonal_self_products, get_metric
from .stats import (
    GramCentered,
    GramEig,
    GramStats,
    RowStats,
    choose_side,
    cka_from_gram,
    cka_from_gram_centered,
    cka_from_gram_eig,
    cka_from_row_stats,
    count_dead,
    dead_mask,
    gram,
    gram_center,
    gram_eig,
    gram_stats,
    merge,
    procrustes_from_gram,
    procrustes_from_gram_eig,
    procrustes_from_row_stats,
    pwsm_from_gram,
    pwsm_from_gram_eig,
    pwsm_from_row_stats,
    row_stats,
)

__all__ = [
    "pwsm",
    "procrustes",
    "linear_cka",
    "cka_distance",
    "RowStats",
    "GramStats",
    "GramEig",
    "GramCentered",
    "row_stats",
    "gram",
    "gram_stats",
    "gram_eig",
    "merge",
    "pwsm_from_row_stats",
    "procrustes_from_row_stats",
    "cka_from_row_stats",
    "pwsm_from_gram",
    "procrustes_from_gram",
    "cka_from_gram",
    "pwsm_from_gram_eig",
    "procrustes_from_gram_eig",
    "cka_from_gram_eig",
    "gram_center",
    "cka_from_gram_centered",
    "choose_side",
    "dead_mask",
    "count_dead",
    "procrustes_rows",
    "cka_distance_rows",
    "ROW_CENTERED",
    "METRICS",
    "MetricInfo",
    "get_metric",
    "degenerate_reason",
    "diagonal_self_products",
    "EIG_CLIP",
]
