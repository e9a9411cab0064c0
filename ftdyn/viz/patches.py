"""Class-based visualization (paper Figs. 5–6): what a filter looks at for a class.

For a filter f, a class c and a checkpoint: for every probe image of class c,
find the unit (u, v) where the filter's map is largest (decoded with the map's
real (h, w): ``unravel_index(argmax, (h, w))``), cut out the input region of that
unit's receptive field (``ReceptiveField.box(u, v)``), and average the crops,
each weighted by its activation at (u, v). Parts of a field outside the image
are padded, never stretched: the average is taken per pixel over the images whose
field covers that pixel, and a pixel no field covers stays NaN (drawn as a
checkerboard).

Pure functions (:func:`argmax_locations`, :func:`crop_padded`,
:func:`average_crops`, :func:`average_crops_at`) return arrays; :func:`class_based`
reads only the needed slices of a store (argmax and max are reduced by Dask
before anything is loaded); :func:`plot_class_grid` draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import FtdynError
from ..store import read_images
from .curves import experiment_layers
from .figure import epoch_label, grid_figure, save_figure

# ----------------------------------------------------------------------------- pure computation


def argmax_locations(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ``u``, column ``v`` and value of each map's maximum; ``maps`` is ``(..., h, w)``.

    The flat argmax is decoded with the map's own (h, w) — maps need not be square.
    Non-finite values count as 0.
    """
    a = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    h, w = a.shape[-2:]
    flat = a.reshape(*a.shape[:-2], h * w)
    idx = flat.argmax(axis=-1)
    u, v = np.unravel_index(idx, (h, w))
    value = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    return u, v, value


def crop_shape(rf) -> tuple[int, int]:
    """(height, width) of a unit's receptive-field crop in pixels."""
    y0, x0, y1, x1 = rf.box(0, 0)
    return y1 - y0, x1 - x0


def crop_padded(
    image: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``image[y0:y1, x0:x1]`` where the box may leave the image.

    Returns ``(crop, mask)``: crop ``(bh, bw, C)`` float64 with 0 outside the image,
    mask ``(bh, bw)`` bool, True where the crop shows image pixels. ``shape``
    overrides the box's (height, width) (the box's top-left corner is kept).
    """
    H, W = image.shape[:2]
    y0, x0, y1, x1 = box
    bh, bw = shape if shape is not None else (y1 - y0, x1 - x0)
    y1, x1 = y0 + bh, x0 + bw
    crop = np.zeros((bh, bw, *image.shape[2:]), dtype=np.float64)
    mask = np.zeros((bh, bw), dtype=bool)
    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
    if iy0 < iy1 and ix0 < ix1:
        crop[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image[iy0:iy1, ix0:ix1]
        mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = True
    return crop, mask


@dataclass
class CropAverage:
    """Result of :func:`average_crops`: ``mean`` (bh, bw, 3) float64, NaN where no
    image's field covers the pixel; ``coverage`` (bh, bw) sum of the weights of the
    crops covering each pixel; ``total_weight``; per image ``u``, ``v``, ``weight``."""

    mean: np.ndarray
    coverage: np.ndarray
    total_weight: float
    u: np.ndarray
    v: np.ndarray
    weight: np.ndarray


def average_crops_at(
    images: np.ndarray, u: np.ndarray, v: np.ndarray, weights: np.ndarray, rf
) -> CropAverage:
    """Activation-weighted average of the receptive-field crops of units (u[i], v[i]) of images[i].

    ``images`` (n, H, W, 3); weights <= 0 or non-finite are ignored. Per pixel:
    ``sum_i w_i crop_i / sum_i w_i`` over the images whose crop covers the pixel.
    """
    images = np.asarray(images)
    u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
    weights = _finite(weights)
    shape = crop_shape(rf)
    acc = np.zeros((*shape, *images.shape[3:]), dtype=np.float64)
    cov = np.zeros(shape, dtype=np.float64)
    mean = np.full(acc.shape, np.nan)
    used = np.flatnonzero(weights > 0)
    y0, x0 = _box_origins(rf, u[used], v[used])
    crops = _Crops(images[used], y0, x0, shape)
    if crops.window is not None:
        window = crops.window
        acc[window], cov[window] = crops.sums(np.arange(len(used)), y0, x0, weights[used])
        mean[window] = _ratio(acc[window], cov[window])
    return CropAverage(mean, cov, float(np.clip(weights, 0, None).sum()), u, v, weights)


def _finite(values) -> np.ndarray:
    """float64, non-finite values set to 0."""
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _ratio(acc: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``acc / cov`` per pixel, NaN where nothing covers it."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cov[..., None] > 0, acc / cov[..., None], np.nan)


def _box_origins(rf, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(y0, x0)`` of ``rf.box(u[i], v[i])`` for arrays of units; a box's row
    depends on ``u`` alone and its column on ``v`` alone, so each distinct one is computed once."""
    rows, row_of = np.unique(u, return_inverse=True)
    cols, col_of = np.unique(v, return_inverse=True)
    y0 = np.array([rf.box(int(r), 0)[0] for r in rows], dtype=np.int64)
    x0 = np.array([rf.box(0, int(c))[1] for c in cols], dtype=np.int64)
    return y0[row_of.reshape(u.shape)], x0[col_of.reshape(v.shape)]


class _Crops:
    """Weighted sums of crops of ``shape`` with corners (``y0``, ``x0``) (any arrays) from
    ``images`` (n, H, W, ...), restricted to ``window``: the rows and columns of the crop that
    some of these corners bring over the image (None: none does). A deep layer's field is several
    times the image, and outside the window every crop is padding. The images are padded once so
    that every crop's window lies inside, and all the windows are taken in one indexing step."""

    def __init__(self, images: np.ndarray, y0: np.ndarray, x0: np.ndarray, shape: tuple[int, int]):
        self.H, self.W = images.shape[1:3]
        self.window = None
        if y0.size == 0:
            return
        r0, r1 = max(0, -int(y0.max())), min(shape[0], self.H - int(y0.min()))
        c0, c1 = max(0, -int(x0.max())), min(shape[1], self.W - int(x0.min()))
        if r0 >= r1 or c0 >= c1:
            return
        self.window = (slice(r0, r1), slice(c0, c1))
        self.size = (r1 - r0, c1 - c0)
        pad_y = (max(0, -(int(y0.min()) + r0)), max(0, int(y0.max()) + r1 - self.H))
        pad_x = (max(0, -(int(x0.min()) + c0)), max(0, int(x0.max()) + c1 - self.W))
        framed = np.pad(images, [(0, 0), pad_y, pad_x] + [(0, 0)] * (images.ndim - 3))
        self.windows = sliding_window_view(framed, self.size, axis=(1, 2))  # (n, y, x, ..., R, C)
        # a crop at corner (y0, x0) starts its window at (y0 + dy, x0 + dx) of the padded images
        self.dy, self.dx = r0 + pad_y[0], c0 + pad_x[0]

    def sums(
        self, images: np.ndarray, y0: np.ndarray, x0: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(sum_i w_i crop_i, sum_i w_i [crop_i shows the image])`` in the window, ``(R, C, ...)``
        and ``(R, C)``, over the crops of ``images`` (positions in the images given) at the
        corners ``y0``, ``x0`` (among those given) with ``weights``."""
        R, C = self.size
        crops = self.windows[images, y0 + self.dy, x0 + self.dx]
        rows = y0[:, None] + self.window[0].start + np.arange(R)  # image rows of each crop
        cols = x0[:, None] + self.window[1].start + np.arange(C)
        in_rows, in_cols = (rows >= 0) & (rows < self.H), (cols >= 0) & (cols < self.W)
        acc = np.moveaxis(np.einsum("m,m...->...", weights, crops), (-2, -1), (0, 1))
        return acc, np.einsum("m,mr,mc->rc", weights, in_rows, in_cols)


def average_crops(images: np.ndarray, maps: np.ndarray, rf) -> CropAverage:
    """The class-based average of one filter at one epoch.

    ``images`` (n, H, W, 3) and ``maps`` (n, h, w) — the filter's map on each image.
    Each image contributes the crop of the field of its map's argmax unit, weighted
    by the activation there.
    """
    u, v, value = argmax_locations(maps)
    return average_crops_at(images, u, v, value, rf)


# ----------------------------------------------------------------------------- filter choice


@dataclass(frozen=True)
class FilterRanking:
    """Every filter of a layer, most changed first: the first ``n_ranked`` of ``order`` ranked by
    ``criterion`` (how, completing "the N ..."), the rest (dead at either end) after them; filters
    without a value (undefined per-filter distance) are left out."""

    order: list[int]
    n_ranked: int
    criterion: str

    def most_changed(self, n: int) -> list[int]:
        return self.order[:n]

    def most_stable(self, n: int) -> list[int]:
        """The ``n`` ranked filters that changed least, least first."""
        return self.order[: self.n_ranked][::-1][:n]

    def why(self, n: int) -> str:
        """How ``n`` filters were chosen, for captions."""
        return f"auto-chosen: the {n} {self.criterion}"


def choose_filters(ds, var: str, layer: str, n: int, **ranking) -> tuple[list[int], str]:
    """The ``n`` filters whose distance changed most, and a sentence saying how they were chosen
    (``ranking``: the keyword arguments of :func:`rank_filters`)."""
    ranked = rank_filters(ds, var, layer, **ranking)
    chosen = ranked.most_changed(min(int(n), int(ds.sizes[f"{var}_channel"])))
    return chosen, ranked.why(len(chosen))


def rank_filters(
    ds,
    var: str,
    layer: str,
    *,
    results=None,
    experiment: str | None = None,
    sample_positions=None,
    epoch_positions=None,
) -> FilterRanking:
    """Rank the filters of ``layer`` by how much they changed.

    With ``results`` covering this store (``experiment``) and layer, the per-filter
    distances ``filter_distance`` at the last epoch that has them (first metric
    that has them) rank the filters. Otherwise the activations do: the relative L2
    change ``|m1 - m0| / (|m0| + |m1|)`` of each filter's mean map (over the given
    samples) between the first and last of ``epoch_positions``; filters that are
    all zero at either end are ranked last.
    """
    if results is not None and experiment is not None:
        found = _rank_by_results(results, experiment, layer, int(ds.sizes[f"{var}_channel"]))
        if found is not None:
            return found
    return _rank_by_activations(ds, var, sample_positions, epoch_positions)


def filter_distances(results, experiment: str, layer: str):
    """(metric, row of the epoch, (epoch, filter) distances) of the first metric with per-filter
    distances for ``layer`` of ``experiment``, at the last epoch that has them; None when no
    metric has them (no per-filter view)."""
    li = next((i for i, name in experiment_layers(results, experiment) if name == layer), None)
    if li is None:
        return None
    fd = results["filter_distance"].sel(experiment=experiment, layer_index=li)
    for metric in [str(m) for m in results["metric"].values]:
        values = np.asarray(fd.sel(metric=metric).values, dtype=np.float64)  # (epoch, filter)
        has = np.flatnonzero(np.isfinite(values).any(axis=1))
        if len(has):
            return metric, int(has[-1]), values
    return None


def _rank_by_results(results, experiment: str, layer: str, n_channels: int):
    found = filter_distances(results, experiment, layer)
    if found is None:
        return None
    metric, row, values = found
    last = values[row, :n_channels]
    order = [
        int(f)
        for f in np.argsort(-np.nan_to_num(last, nan=-np.inf), kind="stable")
        if np.isfinite(last[f])
    ]
    view = str(results["view"].sel(metric=metric).values)
    ref = results.attrs.get("reference_epoch", 0)
    epoch = int(results["epoch"].values[row])
    return FilterRanking(
        order,
        len(order),
        f"filters with the largest per-filter {metric} distance (view '{view}') between epoch"
        f" {ref} and epoch {epoch}, from the results",
    )


def _rank_by_activations(ds, var: str, sample_positions, epoch_positions) -> FilterRanking:
    n_channels = int(ds.sizes[f"{var}_channel"])
    positions = (
        np.arange(ds.sizes["sample"]) if sample_positions is None else np.asarray(sample_positions)
    )
    epoch_positions = (
        list(range(ds.sizes["checkpoint"])) if not epoch_positions else list(epoch_positions)
    )
    p0, p1 = epoch_positions[0], epoch_positions[-1]
    e0, e1 = int(ds["checkpoint"].values[p0]), int(ds["checkpoint"].values[p1])
    if p0 == p1:
        return FilterRanking(
            list(range(n_channels)),
            0,
            "first filters (only one epoch shown, so no change to rank by)",
        )
    arr = ds[var].isel(checkpoint=[p0, p1], sample=positions).data.astype(np.float32)
    m0, m1 = dask.compute(arr[0].mean(axis=0), arr[1].mean(axis=0))
    m0 = np.nan_to_num(m0.reshape(n_channels, -1).astype(np.float64))
    m1 = np.nan_to_num(m1.reshape(n_channels, -1).astype(np.float64))
    n0, n1 = np.linalg.norm(m0, axis=1), np.linalg.norm(m1, axis=1)
    alive = (n0 > 0) & (n1 > 0)
    change = np.where(alive, np.linalg.norm(m1 - m0, axis=1) / np.where(alive, n0 + n1, 1.0), -1.0)
    return FilterRanking(
        [int(f) for f in np.argsort(-change, kind="stable")],
        int(alive.sum()),
        f"filters whose mean activation map over the shown classes' images changed most between"
        f" epoch {e0} and epoch {e1} (relative L2 change |m1-m0|/(|m0|+|m1|); no per-filter"
        " distances were available from results)",
    )


# ----------------------------------------------------------------------------- store -> grid


@dataclass
class ClassGrid:
    """Class-based averages for a layer: ``crops`` (C, F, E, bh, bw, 3) float32 in
    0..255 (NaN = outside every field), ``coverage`` (C, F, E, bh, bw), ``weight``
    (C, F, E) total activation weight, ``n_images`` (C,), ``peak`` (E, N, F) max of
    each map of the N read samples, ``sample_positions`` (N,), ``sample_labels`` (N,)."""

    layer: str
    var: str
    classes: list[int]
    class_names: list[str]
    filters: list[int]
    epochs: list[int]
    map_size: tuple[int, int]
    image_size: tuple[int, int]
    crops: np.ndarray
    coverage: np.ndarray
    weight: np.ndarray
    n_images: np.ndarray
    peak: np.ndarray
    sample_positions: np.ndarray
    sample_labels: np.ndarray


def class_based(ds, var: str, layer: str, rf, *, filters, classes, epoch_positions) -> ClassGrid:
    """Compute the class-based grid from a store, reading only the needed slices.

    The argmax and max of each (epoch, sample, filter) map are reduced by Dask, so
    only those numbers and the probe images of the classes are loaded.
    """
    labels = np.asarray(ds["label"].values)
    positions = np.flatnonzero(np.isin(labels, classes))
    if len(positions) == 0:
        raise FtdynError("no probe image of the chosen classes in the store.")
    arr = (
        ds[var]
        .isel(
            {
                "checkpoint": list(epoch_positions),
                "sample": positions,
                f"{var}_channel": list(filters),
            }
        )
        .data
    )
    E, N, F, h, w = arr.shape
    flat = arr.reshape(E, N, F, h * w)
    idx, peak = dask.compute(flat.argmax(axis=-1), flat.max(axis=-1))
    peak = _finite(peak)
    u, v = np.unravel_index(np.asarray(idx), (h, w))
    images = read_images(ds, positions)
    bh, bw = crop_shape(rf)
    C = len(classes)
    crops = np.full((C, F, E, bh, bw, 3), np.nan, dtype=np.float32)
    coverage = np.zeros((C, F, E, bh, bw), dtype=np.float32)
    weight = np.zeros((C, F, E), dtype=np.float64)
    sample_labels = labels[positions]
    y0, x0 = _box_origins(rf, u, v)  # (E, N, F) corners of the fields
    # average_crops_at for each (class, filter, epoch), the images of a class padded once and
    # each average written only into the window of the field that the class's crops reach
    for ci, c in enumerate(classes):
        rows = np.flatnonzero(sample_labels == c)
        act, cy, cx = peak[:, rows], y0[:, rows], x0[:, rows]
        sums = _Crops(images[rows], cy[act > 0], cx[act > 0], (bh, bw))
        weight[ci] = np.clip(act, 0, None).sum(axis=1).T
        for fi in range(F):
            for ei in range(E):
                i = np.flatnonzero(act[ei, :, fi] > 0)
                if sums.window is None or len(i) == 0:
                    continue
                acc, cov = sums.sums(i, cy[ei, i, fi], cx[ei, i, fi], act[ei, i, fi])
                crops[ci, fi, ei][sums.window] = _ratio(acc, cov)
                coverage[ci, fi, ei][sums.window] = cov
    names = [str(x) for x in ds["class"].values]
    return ClassGrid(
        layer=layer,
        var=var,
        classes=list(classes),
        class_names=[names[c] for c in classes],
        filters=list(filters),
        epochs=[int(ds["checkpoint"].values[p]) for p in epoch_positions],
        map_size=(h, w),
        image_size=tuple(images.shape[1:3]),
        crops=crops,
        coverage=coverage,
        weight=weight,
        n_images=np.array([np.sum(sample_labels == c) for c in classes]),
        peak=peak,
        sample_positions=positions,
        sample_labels=sample_labels,
    )


def strongest_samples(grid: ClassGrid, per_class: int = 1) -> list[int]:
    """Store positions of, per class, the samples where the grid's filters respond most at the
    last epoch."""
    score = grid.peak[-1].sum(axis=-1)  # (N,)
    out = []
    for c in grid.classes:
        rows = np.flatnonzero(grid.sample_labels == c)
        best = rows[np.argsort(-score[rows], kind="stable")[:per_class]]
        out += [int(grid.sample_positions[r]) for r in best]
    return out


# ----------------------------------------------------------------------------- drawing


def checkerboard(shape: tuple[int, int], square: int | None = None) -> np.ndarray:
    """Light grey checkerboard (h, w, 3) in 0..1 marking 'outside the image'."""
    h, w = shape
    square = square or max(1, min(h, w) // 8)
    yy, xx = np.indices((h, w)) // square
    value = np.where((yy + xx) % 2 == 0, 0.93, 0.80)
    return np.repeat(value[..., None], 3, axis=-1)


def crop_to_rgb(crop: np.ndarray) -> np.ndarray:
    """A (h, w, 3) 0..255 crop with NaN holes -> displayable 0..1 RGB with a checkerboard in
    the holes."""
    board = checkerboard(crop.shape[:2])
    rgb = np.clip(np.nan_to_num(crop, nan=0.0) / 255.0, 0.0, 1.0)
    return np.where(np.isnan(crop), board, rgb)


def display_window(coverage: np.ndarray, margin: float = 0.04) -> tuple[slice, slice]:
    """Rows and columns of the crops to draw: the bounding box (plus a small margin)
    of the pixels that some crop of the grid covers. Fields much larger than the
    image (deep layers, small inputs) would otherwise show a speck of image in a sea
    of padding; one window for the whole grid keeps every cell aligned and undistorted."""
    covered = np.asarray(coverage).reshape(-1, *coverage.shape[-2:]).max(axis=0) > 0
    bh, bw = covered.shape
    if not covered.any():
        return slice(0, bh), slice(0, bw)
    ys, xs = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    my, mx = round(margin * bh), round(margin * bw)
    return slice(max(ys[0] - my, 0), min(ys[-1] + 1 + my, bh)), slice(
        max(xs[0] - mx, 0), min(xs[-1] + 1 + mx, bw)
    )


def plot_class_grid(grid: ClassGrid, path: str | Path, *, title: str | None = None) -> Path:
    """Draw rows = (class, filter), columns = epochs; returns the PNG path.

    Every cell shows the same window of the field (:func:`display_window`)."""
    rows_w, cols_w = display_window(grid.coverage)
    C, F, E = grid.crops.shape[:3]
    rows = C * F
    cell = 1.35 if max(rows_w.stop - rows_w.start, cols_w.stop - cols_w.start) > 16 else 1.05
    fig = grid_figure((cell * E, cell * rows), (1.3, 0.1, 0.1), title)  # row labels left
    axes = fig.subplots(rows, E, squeeze=False)
    for ci in range(C):
        for fi in range(F):
            r = ci * F + fi
            for ei in range(E):
                ax = axes[r, ei]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_linewidth(0.5)
                ax.imshow(
                    crop_to_rgb(grid.crops[ci, fi, ei][rows_w, cols_w]), interpolation="nearest"
                )
                if grid.weight[ci, fi, ei] <= 0:
                    ax.text(
                        0.5,
                        0.5,
                        "no\nresponse",
                        transform=ax.transAxes,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="0.2",
                    )
                if r == 0:
                    ax.set_title(epoch_label(grid.epochs[ei]), fontsize=8)
            axes[r, 0].set_ylabel(
                f"{grid.class_names[ci]}\nfilter {grid.filters[fi]}",
                fontsize=8,
                rotation=0,
                ha="right",
                va="center",
                labelpad=4,
            )
    return save_figure(fig, Path(path))


_WHOLE_IMAGE = (
    " Every unit of this layer sees the whole image (a transformer's tokens after attention, or"
    " globally pooled context), so each crop is the whole image placed around the unit with the"
    " largest value: the view shows where in the image that unit sits, not what it alone sees."
)


def caption(grid: ClassGrid, rf, *, why: str, label: str) -> str:
    bh, bw = grid.crops.shape[3:5]
    h, w = grid.map_size
    counts = ", ".join(
        f"{n}: {k} images" for n, k in zip(grid.class_names, grid.n_images, strict=True)
    )
    rows_w, cols_w = display_window(grid.coverage)
    shown = (rows_w.stop - rows_w.start, cols_w.stop - cols_w.start)
    trimmed = (
        ""
        if shown == (bh, bw)
        else (
            f" The cells show the {shown[0]}x{shown[1]} px window of the field that holds image"
            " pixels in some cell (the rest of the field lies outside the image in every cell)."
        )
    )
    return (
        f"Class-based view of layer {grid.layer} of {label}. For every probe image of a class, the"
        f" unit with the largest value of the filter's {h}x{w} map (rows x columns) at that epoch"
        f" is found; the input region of that unit's receptive field ({bh}x{bw} px, jump"
        f" {rf.jump[0]:g}x{rf.jump[1]:g} px, unit (0,0) centred at pixel ({rf.start[0]:g},"
        f" {rf.start[1]:g})) is cropped from the {grid.image_size[0]}x{grid.image_size[1]} px probe"
        " image, and the crops are averaged, each weighted by the activation at its maximum. Parts"
        f" of a field outside the image are padded (checkerboard), never stretched.{trimmed}"
        f"{_WHOLE_IMAGE if rf.global_context else ''} Rows:"
        f" (class, filter); columns: epochs {', '.join(map(str, grid.epochs))} (epoch 0 = source"
        f" model). Classes ({counts}). Filters {', '.join(map(str, grid.filters))}: {why}."
    )
