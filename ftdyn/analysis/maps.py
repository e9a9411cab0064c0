"""The map-view tasks (a distance per image and filter, :func:`map_leaf`) and the pooled features
of the layers no row-side job reads (:func:`pooled_leaf`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DEBIASED_CKA
from ..metrics.direct import cka_distance
from ..metrics.paper_code import ROW_CENTERED
from ..metrics.registry import get_metric
from .inputs import Source
from .reading import read_block, read_matrices, spatial_means, trimmed


@dataclass(frozen=True)
class MapLeafRequest:
    """The map view's distances of one filter group over a group of sample chunks
    (:func:`map_leaf`), for the pairs of :func:`map_pairs` of the checkpoints ``ckpts`` (store
    indices)."""

    src: Source
    chunks: list[int]
    ckpts: list[int]
    #: position of the reference in ``ckpts``
    ref: int
    metrics: list[str]
    alpha: float
    filters: slice
    #: "all": every pair of checkpoints; otherwise the pairs with the reference
    mode: str
    #: "columns": the registry's metrics; "rows": the published code's row-centered ones
    center: str = "columns"


@dataclass(frozen=True)
class MapDistances:
    """Per-(image, filter) distances of the map view: {metric: (P pairs, images, filters)}."""

    distances: dict[str, np.ndarray]


def _map_function(metric: str, alpha: float, center: str):
    """The per-map distance: the registry's (columns centered) or, with ``center="rows"``,
    the published code's row-centered Procrustes/CKA (:mod:`ftdyn.metrics.paper_code`)."""
    if center == "rows" and metric in ROW_CENTERED:
        return ROW_CENTERED[metric]
    if metric == DEBIASED_CKA:
        return lambda X, Y: cka_distance(X, Y, debiased=True)
    info = get_metric(metric)
    kw = {"alpha": alpha} if "alpha" in info.params else {}
    return lambda X, Y: info.direct(X, Y, **kw)


@trimmed
def map_leaf(request: MapLeafRequest) -> MapDistances:
    """Per-(image, filter) distances of the map view for a group of chunks, for the pairs of
    :func:`map_pairs` (the images in chunk order)."""
    src, ckpts, ref, fsl = request.src, request.ckpts, request.ref, request.filters
    metrics, mode = request.metrics, request.mode
    pairs = map_pairs(len(ckpts), ref, mode)
    funcs = {m: _map_function(m, request.alpha, request.center) for m in metrics}
    out = {m: [] for m in metrics}
    for c in request.chunks:
        need = sorted({k for pair in pairs for k in pair})
        mats = {}
        if mode == "all":
            mats = {k: read_matrices(src, ckpts[k], c, fsl, "map") for k in need}
        else:
            mats[ref] = read_matrices(src, ckpts[ref], c, fsl, "map")
        rows = {m: [] for m in metrics}
        for a, b in pairs:
            if b not in mats:
                mats = {ref: mats[ref], b: read_matrices(src, ckpts[b], c, fsl, "map")}
            X, Y = mats[a], mats[b]
            for m in metrics:
                rows[m].append(np.asarray(funcs[m](X, Y), dtype=np.float64).reshape(X.shape[:2]))
        for m in metrics:
            out[m].append(np.stack(rows[m]))
    return MapDistances({m: np.concatenate(v, axis=1) for m, v in out.items()})


def map_pairs(T: int, ref: int, mode: str) -> list[tuple[int, int]]:
    """The checkpoint pairs (positions) of the map view: every pair with ``mode`` "all",
    otherwise the reference with each position."""
    if mode == "all":
        return [(a, b) for a in range(T) for b in range(a, T)]
    return [(ref, t) for t in range(T)]


def concat_map(*parts: MapDistances) -> MapDistances:
    """The distances of consecutive chunk groups, joined along the images."""
    return MapDistances(
        {m: np.concatenate([p.distances[m] for p in parts], axis=1) for m in parts[0].distances}
    )


def pooled_leaf(src: Source, ckpts: list[int]) -> np.ndarray:
    """(checkpoints, images, channels) float64 spatial means of every image (the linear probes'
    features) of a layer that no row-side job reads (:func:`ftdyn.analysis.plan.mark_pooled`),
    read block by block like the other tasks."""
    out = np.empty((len(ckpts), src.n, src.channels))
    for t, ckpt in enumerate(ckpts):
        for c in range(src.n_chunks):
            out[t, src.rows(c)] = spatial_means(read_block(src, ckpt, c))
    return out
