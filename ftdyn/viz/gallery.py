"""Filter galleries for the interactive report (:mod:`ftdyn.reporting`).

For one layer of a store: the filters that changed most and those that changed least (ranked by
:func:`.patches.rank_filters`: the results' per-filter distances, else the activations), each
with its class-based averages (:func:`.patches.class_based`) and its sample heatmaps
(:func:`.heatmaps.sample_based`) at every shown epoch, the classes, samples and epochs chosen as
``ftdyn visualize`` chooses them by default. Every cell is a small compressed thumbnail (WebP, at
most :data:`THUMBNAIL_PX` pixels a side), so a report's size grows with the number of filters
rendered, which the report caps (:class:`ftdyn.config.ReportConfig`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..config import DEFAULT_SAMPLES
from . import heatmaps, patches, receptive_field_of, resolve_classes, resolve_epochs, resolve_layer

#: The longest side of a thumbnail in pixels: a receptive-field crop or a probe image of the
#: demo (64 px) keeps its own pixels; larger ones (224 px ImageNet inputs) are shrunk to it.
THUMBNAIL_PX = 64
#: WebP quality: at 80 a 64 px thumbnail takes about 1 kB, and the blocks of lossy coding stay
#: below what a 64 px cell shows.
THUMBNAIL_QUALITY = 80


@dataclass(frozen=True)
class GalleryRequest:
    """One layer's gallery: the opened store ``ds``, the ``layer`` (module name, variable or
    index), the results ranking its filters (or None) with the store's ``experiment`` in them,
    and ``per_gallery`` filters for each of the most-changed and most-stable galleries."""

    ds: Any
    layer: str | int
    results: Any
    experiment: str | None
    per_gallery: int


@dataclass
class ThumbnailRow:
    """One row of a filter's card: ``label`` (a class, or a sample and its class) and one
    encoded thumbnail per epoch of the gallery."""

    label: str
    kind: str  # "class" or "sample"
    frames: list[bytes]


@dataclass
class FilterCard:
    filter: int
    rows: list[ThumbnailRow]


@dataclass
class LayerGallery:
    """The galleries of a layer: ``epochs`` shown, the ``changed`` and ``stable`` filters'
    cards, ``why`` the filters were chosen, and the ``samples`` (id, class, thumbnail of the
    probe image) whose heatmaps the cards show."""

    layer: str
    epochs: list[int]
    changed: list[FilterCard]
    stable: list[FilterCard]
    why: str
    samples: list[tuple[int, str, bytes]]


def thumbnail(rgb: np.ndarray) -> bytes:
    """An (h, w, 3) RGB array in 0..1 as WebP bytes, shrunk to :data:`THUMBNAIL_PX` when larger."""
    image = Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8))
    if max(image.size) > THUMBNAIL_PX:
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def layer_gallery(request: GalleryRequest) -> LayerGallery:
    """Rank the layer's filters, compute the class-based grid and the sample grids of the chosen
    ones (only the slices they need are read) and encode every cell."""
    ds = request.ds
    name, var, _ = resolve_layer(ds, request.layer)
    rf = receptive_field_of(ds, var, name)
    classes, epochs = resolve_classes(ds, None), resolve_epochs(ds, None)
    ranking = patches.rank_filters(
        ds,
        var,
        name,
        results=request.results,
        experiment=request.experiment,
        sample_positions=np.flatnonzero(np.isin(np.asarray(ds["label"].values), classes)),
        epoch_positions=epochs,
    )
    # a layer with fewer ranked filters than both galleries ask for: half each
    half = -(-ranking.n_ranked // 2)
    changed = ranking.most_changed(min(request.per_gallery, half or request.per_gallery))
    stable = [f for f in ranking.most_stable(request.per_gallery) if f not in changed]
    filters = changed + stable
    grid = patches.class_based(
        ds, var, name, rf, filters=filters, classes=classes, epoch_positions=epochs
    )
    samples = [
        heatmaps.sample_based(
            ds, var, name, rf, sample_position=p, filters=filters, epoch_positions=epochs
        )
        for p in patches.strongest_samples(grid, per_class=1)[:DEFAULT_SAMPLES]
    ]
    window = patches.display_window(grid.coverage)  # one scan of the (large) coverage per grid
    cards = [_card(grid, window, samples, i) for i in range(len(filters))]
    return LayerGallery(
        layer=name,
        epochs=grid.epochs,
        changed=cards[: len(changed)],
        stable=cards[len(changed) :],
        why=ranking.criterion,
        samples=[(s.sample_id, s.class_name, thumbnail(s.image / 255.0)) for s in samples],
    )


def _card(
    grid: patches.ClassGrid,
    window: tuple[slice, slice],
    samples: list[heatmaps.SampleGrid],
    fi: int,
) -> FilterCard:
    """The thumbnails of the ``fi``-th filter of ``grid``: one row per class (its class-based
    average in ``window``, the grid's common window of the field), one per sample (its
    heatmap)."""
    rows_w, cols_w = window
    epochs = range(len(grid.epochs))
    rows = [
        ThumbnailRow(
            name,
            "class",
            [thumbnail(patches.crop_to_rgb(grid.crops[ci, fi, e][rows_w, cols_w])) for e in epochs],
        )
        for ci, name in enumerate(grid.class_names)
    ]
    rows += [
        ThumbnailRow(
            f"sample {s.sample_id} ({s.class_name})",
            "sample",
            [thumbnail(heatmaps.overlay_rgb(s.image, s.heat[fi, e], s.vmax[fi])) for e in epochs],
        )
        for s in samples
    ]
    return FilterCard(grid.filters[fi], rows)
