"""Sample-based visualization (paper Figs. 7–8): a filter's map on one image, per epoch.

The map is placed on the image with the receptive-field geometry: cell (u, v) sits
at its field centre ``start + (u, v) * jump`` in input pixels, and pixels between
centres are interpolated bilinearly (:func:`ftdyn.receptive.upsample_to_image`;
pixels beyond the outermost centres take the edge value). A plain resize would
shift the map by the layers' padding and stride offsets. One colour scale per
filter (row), shared by all epochs, from 0 to the largest value of that filter's
maps; a perceptually uniform colormap (inferno) over the grey-scale image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..receptive import upsample_to_image
from ..store import read_images
from .figure import epoch_label, grid_figure, save_figure

CMAP = "inferno"
ALPHA = 0.6


def upsample_maps(maps: np.ndarray, rf, image_size: tuple[int, int] | int) -> np.ndarray:
    """Feature maps ``(..., h, w)`` -> ``(..., H, W)`` on the image pixel grid (see module
    docstring)."""
    return upsample_to_image(np.nan_to_num(np.asarray(maps, dtype=np.float64)), rf, image_size)


def shared_scale(maps: np.ndarray) -> np.ndarray:
    """Per filter the colour-scale maximum shared by all epochs: ``maps`` (F, E, h, w) -> (F,).

    The largest value over the filter's maps at every epoch (1.0 for a filter that
    is zero everywhere, so its row shows as zero instead of dividing by 0).
    """
    vmax = np.nan_to_num(np.asarray(maps, dtype=np.float64)).reshape(maps.shape[0], -1).max(axis=1)
    return np.where(vmax > 0, vmax, 1.0)


@dataclass
class SampleGrid:
    """One probe image with its filters' maps: ``maps`` (F, E, h, w), ``heat`` (F, E, H, W)
    on the image grid, ``vmax`` (F,) the shared colour-scale maximum per filter."""

    layer: str
    var: str
    sample_id: int
    class_name: str
    image: np.ndarray
    filters: list[int]
    epochs: list[int]
    maps: np.ndarray
    heat: np.ndarray
    vmax: np.ndarray


def sample_based(
    ds, var: str, layer: str, rf, *, sample_position: int, filters, epoch_positions
) -> SampleGrid:
    """Read one sample's maps of ``filters`` at the chosen epochs and place them on the image."""
    # (E, F, h, w)
    arr = (
        ds[var]
        .isel(
            {
                "checkpoint": list(epoch_positions),
                "sample": int(sample_position),
                f"{var}_channel": list(filters),
            }
        )
        .values
    )
    maps = np.nan_to_num(np.asarray(arr, dtype=np.float32)).transpose(1, 0, 2, 3)  # (F, E, h, w)
    image = read_images(ds, int(sample_position))
    heat = upsample_maps(maps, rf, image.shape[:2]).astype(np.float32)
    label = int(ds["label"].values[int(sample_position)])
    return SampleGrid(
        layer=layer,
        var=var,
        sample_id=int(ds["sample"].values[int(sample_position)]),
        class_name=str(ds["class"].values[label]),
        image=image,
        filters=list(filters),
        epochs=[int(ds["checkpoint"].values[p]) for p in epoch_positions],
        maps=maps,
        heat=heat,
        vmax=shared_scale(maps),
    )


def grey(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> luminance in 0..1 (Rec. 601 weights)."""
    return (np.asarray(image, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0


def overlay_rgb(image: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """One cell of :func:`plot_sample_grid` as an (H, W, 3) RGB array in 0..1: ``heat`` (H, W) in
    the colormap from 0 to ``vmax``, laid with opacity :data:`ALPHA` over the grey-scale image, as
    the figure composes its two layers."""
    import matplotlib

    colored = matplotlib.colormaps[CMAP](np.clip(np.asarray(heat) / vmax, 0.0, 1.0))[..., :3]
    return ALPHA * colored + (1 - ALPHA) * grey(image)[..., None]


def plot_sample_grid(grid: SampleGrid, path: str | Path, *, title: str | None = None) -> Path:
    """Rows = filters, columns = the image + epochs, one colour bar per row."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cmap = matplotlib.colormaps[CMAP]
    F, E = grid.heat.shape[:2]
    H, W = grid.image.shape[:2]
    cell_h, cell_w = 1.7, 1.7 * max(W / H, 0.5)
    # labels left, one narrow colour-bar column per row, its ticks and label right
    bar = 0.12
    fig = grid_figure(
        (cell_w * (E + 1) + bar, cell_h * F), (0.75, 0.75, 0.1), title, space=(0.04, 0.06)
    )
    axes = fig.subplots(
        F, E + 2, squeeze=False, gridspec_kw={"width_ratios": [cell_w] * (E + 1) + [bar]}
    )
    base = grey(grid.image)
    for fi in range(F):
        norm = Normalize(vmin=0.0, vmax=float(grid.vmax[fi]))
        ax = axes[fi, 0]
        ax.imshow(grid.image, interpolation="antialiased")
        dead = not np.any(grid.maps[fi] > 0)
        ax.set_ylabel(
            f"filter {grid.filters[fi]}" + ("\n(zero at every\nshown epoch)" if dead else ""),
            fontsize=9,
        )
        if fi == 0:
            ax.set_title("image", fontsize=9)
        for ei in range(E):
            ax = axes[fi, ei + 1]
            ax.imshow(base, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
            ax.imshow(
                grid.heat[fi, ei], cmap=cmap, norm=norm, alpha=ALPHA, interpolation="antialiased"
            )
            if fi == 0:
                ax.set_title(epoch_label(grid.epochs[ei]), fontsize=9)
        for ax in axes[fi, :-1]:
            ax.set_xticks([])
            ax.set_yticks([])
        # the bar shows the colormap itself (opaque), not the blended overlay
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=axes[fi, -1])
        cb.ax.tick_params(labelsize=7)
        cb.set_label("activation", fontsize=7)
    return save_figure(fig, Path(path))


def caption(grid: SampleGrid, rf, *, why: str, sample_why: str, label: str) -> str:
    h, w = grid.maps.shape[2:]
    H, W = grid.image.shape[:2]
    return (
        f"Sample-based view of layer {grid.layer} of {label} on probe image {grid.sample_id} (class"
        f" {grid.class_name}). Each filter's {h}x{w} map is placed on the {H}x{W} px image with its"
        f" receptive-field geometry (cell centres at pixel ({rf.start[0]:g}, {rf.start[1]:g}) + (u,"
        f" v) x ({rf.jump[0]:g}, {rf.jump[1]:g}); not a plain resize), interpolated bilinearly and"
        f" overlaid ({CMAP}, opacity {ALPHA}) on the grey-scale image. One colour scale per filter"
        " row, shared by all epochs (0 to the row's largest activation), so epochs are comparable."
        f" Rows: filters {', '.join(map(str, grid.filters))} ({why}); columns: the image, then"
        f" epochs {', '.join(map(str, grid.epochs))} (epoch 0 = source model). Sample:"
        f" {sample_why}."
    )
