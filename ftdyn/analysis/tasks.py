"""The Dask tasks of the analysis: each takes one request dataclass (and the results of the
tasks it depends on) and returns one result, reading its chunks itself and trimming the heap
when it ends.

The tasks live by the seam they belong to; this module gathers them for the graph
(:mod:`ftdyn.analysis.graph`) and its callers:

* :mod:`~ftdyn.analysis.reading`: cached store arrays, checked blocks, heap trimming;
* :mod:`~ftdyn.analysis.rows`: row-side statistics (:class:`RowAccumulator`, :func:`row_leaf`)
  and their metrics (:func:`row_finish`);
* :mod:`~ftdyn.analysis.grams`: Gram matrices from panels (:func:`gram_panel`,
  :func:`gram_assemble`) and their metrics (:func:`gram_finish`);
* :mod:`~ftdyn.analysis.maps`: the map view (:func:`map_leaf`) and pooled features
  (:func:`pooled_leaf`);
* :mod:`~ftdyn.analysis.task_results`: what the metrics tasks return (:class:`MetricsResult`);
* :mod:`ftdyn.metrics.bootstrap`: the bootstrap CKA algebra the metrics tasks use.
"""

from __future__ import annotations

from ..metrics.bootstrap import STABLE_SHARE
from .grams import (
    GramFinishRequest,
    GramPanel,
    GramPanelRequest,
    NestedImages,
    gram_assemble,
    gram_finish,
    gram_panel,
)
from .maps import MapDistances, MapLeafRequest, concat_map, map_leaf, map_pairs, pooled_leaf
from .reading import F64, nonfinite_error, read_block, trim, trimmed
from .rows import (
    NestedCounts,
    RowAccumulator,
    RowFinishRequest,
    RowLeafRequest,
    row_cols,
    row_count,
    row_finish,
    row_leaf,
)
from .task_results import MetricsResult

__all__ = [
    "F64",
    "GramFinishRequest",
    "GramPanel",
    "GramPanelRequest",
    "MapDistances",
    "MapLeafRequest",
    "MetricsResult",
    "NestedCounts",
    "NestedImages",
    "RowAccumulator",
    "RowFinishRequest",
    "RowLeafRequest",
    "STABLE_SHARE",
    "concat_map",
    "gram_assemble",
    "gram_finish",
    "gram_panel",
    "map_leaf",
    "map_pairs",
    "nonfinite_error",
    "pooled_leaf",
    "read_block",
    "row_cols",
    "row_count",
    "row_finish",
    "row_leaf",
    "trim",
    "trimmed",
]
