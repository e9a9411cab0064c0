"""Figures: class-based crops, sample heatmaps, curves, filter choice, the visualize CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    IMAGE_HW,
    MAP_HW,
    METRICS,
    PLANTED,
    RF,
    make_figure_store,
    make_results,
    png_shape,
)
from typer.testing import CliRunner

from ftdyn.errors import FtdynError
from ftdyn.receptive import ReceptiveField
from ftdyn.store import (
    open_store,
    store_fingerprint,
)
from ftdyn.viz import curves, default_figures, heatmaps, patches, read_index, visualize


def expected_crop(images, labels, cls, epoch_index, weight_scale=1.0):
    """The weighted average of the planted units' fields, computed independently of ftdyn."""
    rf = RF
    rows = np.flatnonzero(labels == cls)
    (h_size, w_size), H, W = rf["size"], *IMAGE_HW
    acc = np.zeros((h_size, w_size, 3))
    cov = np.zeros((h_size, w_size))
    u, v = PLANTED[cls][epoch_index]
    cy, cx = rf["start"][0] + u * rf["jump"][0], rf["start"][1] + v * rf["jump"][1]
    y0, x0 = cy - (h_size - 1) // 2, cx - (w_size - 1) // 2
    for i in rows:
        wgt = (1.0 + 0.25 * i) * weight_scale
        for dy in range(h_size):
            for dx in range(w_size):
                y, x = y0 + dy, x0 + dx
                if 0 <= y < H and 0 <= x < W:
                    acc[dy, dx] += wgt * images[i, y, x]
                    cov[dy, dx] += wgt
    with np.errstate(invalid="ignore"):
        return np.where(cov[..., None] > 0, acc / cov[..., None], np.nan)


# ----------------------------------------------------------------------------- pure functions


def test_argmax_decodes_non_square_maps():
    maps = np.zeros((2, 6, 15))
    maps[0, 3, 10] = 5
    maps[1, 5, 0] = 2
    u, v, value = patches.argmax_locations(maps)
    assert u.tolist() == [3, 5] and v.tolist() == [10, 0] and value.tolist() == [5, 2]


def test_average_crops_is_exactly_the_planted_region():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, *IMAGE_HW, 3), dtype=np.uint8)
    maps = np.zeros((3, *MAP_HW))
    weights = [1.0, 2.0, 5.0]
    for i, wgt in enumerate(weights):
        maps[i, 3, 10] = wgt
    rf = ReceptiveField.from_dict(RF)
    avg = patches.average_crops(images, maps, rf)
    # unit (3, 10): centre (14, 21), field 9 x 5 -> rows 10..18, columns 19..23
    region = images[:, 10:19, 19:24].astype(float)
    expected = np.tensordot(weights, region, axes=1) / sum(weights)
    assert avg.mean.shape == (9, 5, 3)
    np.testing.assert_allclose(avg.mean, expected, rtol=1e-12)
    assert avg.total_weight == pytest.approx(8.0)


def test_average_crops_pads_where_the_field_leaves_the_image():
    images = np.full((1, *IMAGE_HW, 3), 200, dtype=np.uint8)
    maps = np.zeros((1, *MAP_HW))
    maps[0, 0, 14] = 1.0  # centre (2, 29): rows -2..6, columns 27..31 of a 24 x 30 image
    avg = patches.average_crops(images, maps, ReceptiveField.from_dict(RF))
    assert avg.mean.shape == (9, 5, 3)  # the crop keeps the field's shape: padded, not resized
    assert np.isnan(avg.mean[:2]).all() and np.isnan(avg.mean[:, 3:]).all()
    np.testing.assert_array_equal(avg.mean[2:, :3], 200.0)


def _average_crops_one_by_one(images, u, v, weights, rf):
    """average_crops_at's definition, one padded crop per image."""
    shape = patches.crop_shape(rf)
    acc, cov = np.zeros((*shape, 3)), np.zeros(shape)
    for i, w in enumerate(weights):
        if np.isfinite(w) and w > 0:
            crop, mask = patches.crop_padded(images[i], rf.box(int(u[i]), int(v[i])), shape)
            acc += w * crop
            cov += w * mask
    with np.errstate(invalid="ignore"):
        return np.where(cov[..., None] > 0, acc / cov[..., None], np.nan), cov


@pytest.mark.parametrize(
    ("field", "holes"),
    [
        (RF, False),  # boxes at the border leave the image on one side
        ({"size": [7, 4], "jump": [3, 2], "start": [1.5, 0]}, False),  # half-pixel centres
        ({"size": [61, 75], "jump": [8, 8], "start": [3.5, 3.5]}, True),  # fields over the image
    ],
)
def test_average_crops_at_equals_the_per_image_definition(field, holes):
    rng = np.random.default_rng(7)
    rf = ReceptiveField.from_dict(field)
    n = 40
    images = rng.integers(0, 256, size=(n, *IMAGE_HW, 3), dtype=np.uint8)
    u, v = rng.integers(0, MAP_HW[0], n), rng.integers(0, MAP_HW[1], n)
    u[:4], v[:4] = [0, 0, MAP_HW[0] - 1, MAP_HW[0] - 1], [0, MAP_HW[1] - 1, 0, MAP_HW[1] - 1]
    weights = rng.uniform(0.1, 3.0, n)
    weights[4:8] = [0.0, -1.0, np.nan, np.inf]  # ignored
    avg = patches.average_crops_at(images, u, v, weights, rf)
    mean, cov = _average_crops_one_by_one(images, u, v, weights, rf)
    np.testing.assert_allclose(avg.coverage, cov, rtol=1e-12)
    np.testing.assert_allclose(avg.mean, mean, rtol=1e-12)  # NaN exactly where no crop covers
    assert np.isnan(avg.mean).any() == holes and np.isfinite(avg.mean).any()
    none = patches.average_crops_at(images, u, v, np.zeros(n), rf)
    assert np.isnan(none.mean).all() and not none.coverage.any() and none.total_weight == 0


def test_upsampling_keeps_the_argmax_location():
    rf = ReceptiveField(size=(11, 11), jump=(4, 4), start=(3, 1))
    fmap = np.zeros((8, 8))
    fmap[2, 5] = 1.0
    fmap[6, 1] = 0.5
    heat = heatmaps.upsample_maps(fmap, rf, (32, 32))
    assert heat.shape == (32, 32)
    assert np.unravel_index(heat.argmax(), heat.shape) == rf.center(2, 5) == (11.0, 21.0)
    assert heat[int(rf.center(6, 1)[0]), int(rf.center(6, 1)[1])] == pytest.approx(0.5)
    # a plain resize (cell centres at (u + 0.5) * 4 - 0.5) would put the peak at (9.5, 21.5)
    assert heat[9, 21] < heat[11, 21]


def test_shared_scale_is_per_filter_across_epochs():
    maps = np.zeros((2, 3, 4, 4))
    maps[0, 1, 0, 0] = 7.0
    maps[0, 2, 1, 1] = 3.0
    assert heatmaps.shared_scale(maps).tolist() == [7.0, 1.0]  # filter 1 dead -> 1, no divide by 0


# ----------------------------------------------------------------------------- from a store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_figure_store(tmp_path_factory.mktemp("store") / "toy.zarr")


def test_class_based_grid_from_store_matches_planted_regions(store):
    path, images, labels = store
    ds = open_store(path)
    rf = ReceptiveField.from_dict(RF)
    grid = patches.class_based(
        ds, "features_3", "features.3", rf, filters=[1], classes=[0, 1], epoch_positions=[0, 1, 2]
    )
    assert grid.crops.shape == (2, 1, 3, 9, 5, 3)
    assert grid.map_size == MAP_HW and grid.image_size == IMAGE_HW
    for cls in (0, 1):
        for e in range(3):
            np.testing.assert_allclose(
                grid.crops[cls, 0, e], expected_crop(images, labels, cls, e), rtol=1e-5
            )
    # the deeper layer has maps x2: same crops (weights scale out)
    grid2 = patches.class_based(
        ds, "features_8", "features.8", rf, filters=[1], classes=[1], epoch_positions=[1]
    )
    np.testing.assert_allclose(grid2.crops[0, 0, 0], expected_crop(images, labels, 1, 1), rtol=1e-5)


def test_class_based_grid_is_average_crops_at_per_class_filter_and_epoch(store):
    path, images, labels = store
    ds = open_store(path)
    rf = ReceptiveField.from_dict({"size": [21, 17], "jump": [4, 2], "start": [2, 1]})
    filters, classes, epochs = [0, 1, 2, 3], [1, 0], [2, 0, 1]
    grid = patches.class_based(
        ds, "features_3", "features.3", rf, filters=filters, classes=classes, epoch_positions=epochs
    )
    maps = ds["features_3"].values.astype(np.float64)  # (epoch, sample, filter, h, w)
    for ci, cls in enumerate(classes):
        rows = np.flatnonzero(labels == cls)
        for fi, f in enumerate(filters):
            for ei, e in enumerate(epochs):
                u, v, value = patches.argmax_locations(maps[e, rows, f])
                avg = patches.average_crops_at(images[rows], u, v, value, rf)
                np.testing.assert_allclose(grid.crops[ci, fi, ei], avg.mean, rtol=1e-5)
                np.testing.assert_allclose(grid.coverage[ci, fi, ei], avg.coverage, rtol=1e-5)
                assert grid.weight[ci, fi, ei] == pytest.approx(avg.total_weight)


def test_filters_chosen_from_activations_and_from_results(store, tmp_path):
    path, _, _ = store
    ds = open_store(path)
    chosen, why = patches.choose_filters(
        ds, "features_3", "features.3", 3, sample_positions=np.arange(8), epoch_positions=[0, 2]
    )
    # dead filter 3 last
    assert chosen == [1, 2, 0] and "changed most between epoch 0 and epoch 2" in why
    res = make_results(store_paths=(path, ""))
    chosen, why = patches.choose_filters(
        ds, "features_3", "features.3", 4, results=res, experiment="toynet/shapes"
    )
    assert chosen == [2, 1, 0]  # filter_distance 0.9, 0.2, 0.1, NaN (dead)
    assert "cka" in why and "epoch 3" in why


def test_sample_based_places_the_argmax_with_the_receptive_field(store):
    path, images, _labels = store
    ds = open_store(path)
    rf = ReceptiveField.from_dict(RF)
    grid = heatmaps.sample_based(
        ds,
        "features_3",
        "features.3",
        rf,
        sample_position=2,
        filters=[1, 3],
        epoch_positions=[0, 1, 2],
    )
    assert grid.heat.shape == (2, 3, *IMAGE_HW) and grid.class_name == "circle"
    np.testing.assert_array_equal(grid.image, images[2])
    for e in range(3):
        peak = np.unravel_index(grid.heat[0, e].argmax(), IMAGE_HW)
        assert peak == tuple(int(c) for c in rf.center(*PLANTED[0][e]))
    # shared over epochs; dead filter -> 1
    assert grid.vmax[0] == pytest.approx(1.5) and grid.vmax[1] == 1.0


def test_visualize_writes_grids_with_captions(store, tmp_path):
    path, _, _ = store
    out = tmp_path / "figs"
    written = visualize(path, layer="features.3", out=out, n_filters=2)
    names = [p.name for p in written]
    assert names[0] == "class_toy_features_3.png"
    assert len(names) == 3 and all(n.startswith("sample_toy_features_3_s") for n in names[1:])
    for p in written:
        assert p.stat().st_size > 2000
    # rows = 2 classes x 2 filters, columns = 3 epochs: taller than wide
    h, w, _ = png_shape(written[0])
    assert h > w
    index = {e["file"]: e for e in read_index(out)}
    cap = index[names[0]]["caption"]
    assert "auto-chosen" in cap and "Filters 1, 2" in cap and "padded" in cap
    assert (
        index[names[1]]["kind"] == "sample" and "shared by all epochs" in index[names[1]]["caption"]
    )
    # explicit choices, by variable name / negative index
    written = visualize(
        path, layer=-1, filters=[0], classes=["square"], samples=[0, 5], epochs=[0, 2], out=out
    )
    assert [p.name for p in written] == [
        "class_toy_features_8.png",
        "sample_toy_features_8_s0.png",
        "sample_toy_features_8_s5.png",
    ]
    assert (
        "chosen by the user"
        in {e["file"]: e for e in read_index(out)}["class_toy_features_8.png"]["caption"]
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layer": "nope"}, "not a layer of this store"),
        ({"layer": 5}, "has 2 layers"),
        ({"layer": 0, "filters": [9]}, "has 4 filters"),
        ({"layer": 0, "classes": ["dog"]}, "not a class"),
        ({"layer": 0, "epochs": [7]}, "available epochs: 0, 1, 2"),
        ({"layer": 0, "samples": [99]}, "no such sample"),
    ],
)
def test_visualize_user_errors(store, tmp_path, kwargs, match):
    with pytest.raises(FtdynError, match=match):
        visualize(store[0], out=tmp_path, **kwargs)


def test_visualize_checks_every_flag_before_drawing(store, tmp_path):
    from ftdyn.cli import app

    out = tmp_path / "figs" / "h"
    result = CliRunner().invoke(
        app,
        ["visualize", str(store[0]), "--layer", "features.3", "--sample", "999", "--out", str(out)],
    )
    assert (
        result.exit_code == 2 and "ftdyn: error: --sample 999: no such sample id" in result.output
    )
    assert list(tmp_path.iterdir()) == []  # no figure, no folder


def test_visualize_interrupted_while_drawing_leaves_no_partial_set(store, tmp_path, monkeypatch):
    out = tmp_path / "figs"
    visualize(store[0], layer=0, filters=[1], samples=[0], out=out)

    def files():  # the figures, the index and the lock; the result sets' folder by its listing
        return {
            p.name: p.read_bytes() if not p.is_dir() else sorted(q.name for q in p.iterdir())
            for p in out.iterdir()
        }

    before = files()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(heatmaps, "plot_sample_grid", interrupted)  # after the class grid is drawn
    with pytest.raises(KeyboardInterrupt):
        visualize(store[0], layer=1, filters=[1], samples=[0], out=out)
    assert files() == before  # nothing new, nothing left behind
    with pytest.raises(KeyboardInterrupt):
        visualize(store[0], layer=1, filters=[1], samples=[0], out=tmp_path / "new" / "figs")
    assert not (tmp_path / "new").exists()


def test_figure_size_is_bounded(store, tmp_path, monkeypatch):
    from ftdyn import viz
    from ftdyn.cli import app

    runner = CliRunner()
    args = [
        "visualize",
        str(store[0]),
        "--layer",
        "0",
        "--sample",
        "0",
        "--out",
        str(tmp_path / "figs"),
    ]
    result = runner.invoke(app, [*args, "--n-filters", "10000"])
    assert result.exit_code == 0, result.output
    assert (
        "ftdyn: note: --n-filters 10000 capped at 4: layer features.3 has 4 filters"
        in result.output
    )
    assert "Filters 1, 2, 0, 3" in read_index(tmp_path / "figs")[0]["caption"]
    monkeypatch.setattr(viz, "MAX_GRID_ROWS", 4)  # 2 classes: at most 2 filters
    monkeypatch.setattr(viz, "MAX_EPOCHS", 2)
    result = runner.invoke(app, [*args, "--n-filters", "3"])
    assert result.exit_code == 0 and "capped at 2" in result.output
    for extra, says in [
        (["--filter", "0", "--filter", "1", "--filter", "2"], "--filter: 3 filters with 2 classes"),
        (["--epoch", "0", "--epoch", "1", "--epoch", "2"], "--epoch: 3 epochs"),
        (["--n-filters", "0"], "--n-filters 0: must be at least 1"),
    ]:
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2 and result.output.startswith(f"ftdyn: error: {says}"), (
            result.output
        )
    monkeypatch.setattr(viz, "MAX_GRID_ROWS", 1)
    result = runner.invoke(app, [*args, "--class", "0", "--class", "1"])
    assert result.exit_code == 2 and result.output.startswith("ftdyn: error: --class: 2 classes"), (
        result.output
    )


def test_visualize_uses_only_results_of_this_store(store, tmp_path):
    """--results of another store is refused; a moved copy of the analyzed store is found by its
    fingerprint."""
    import shutil

    from ftdyn.cli import app
    from ftdyn.results import save_results_store

    other, _, _ = make_figure_store(tmp_path / "other.zarr", epochs=(0, 1))
    save_results_store(make_results(store_paths=(other, "")), tmp_path / "r_other" / "results.zarr")
    result = CliRunner().invoke(
        app,
        [
            "visualize",
            str(store[0]),
            "--layer",
            "0",
            "--results",
            str(tmp_path / "r_other"),
            "--out",
            str(tmp_path / "figs"),
        ],
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(
        f"ftdyn: error: --results {tmp_path / 'r_other'}: the store {store[0]} is not "
        f"among its experiments [toynet/shapes ({other}), toynet/fruits (no store"
    )
    assert not (tmp_path / "figs").exists()

    moved = shutil.copytree(store[0], tmp_path / "moved.zarr")
    res = make_results(store_paths=(tmp_path / "gone.zarr", other))
    res.attrs["store_fingerprints"] = json.dumps(
        [
            {
                **store_fingerprint(store[0], open_store(store[0])),
                "path": str(tmp_path / "gone.zarr"),
            },
            store_fingerprint(other, open_store(other)),
        ]
    )
    visualize(moved, layer=0, results=res, samples=[0], out=tmp_path / "figs")
    entry = read_index(tmp_path / "figs")[0]
    assert entry["experiment"] == "toynet/shapes" and "from the results" in entry["caption"]


def test_store_without_receptive_field_fails_clearly(tmp_path):
    path, _, _ = make_figure_store(tmp_path / "norf.zarr", rf=None)
    with pytest.raises(FtdynError, match="no receptive-field geometry"):
        visualize(path, layer=0, out=tmp_path / "o")
    # default_figures skips it with a note instead of failing the whole run
    assert default_figures(None, [path], tmp_path / "o") == []
    assert "no receptive-field geometry" in read_index(tmp_path / "o")[0]["caption"]


# ----------------------------------------------------------------------------- curves


def test_curves_by_layer_and_trajectories_are_written(tmp_path):
    res = make_results()
    written = curves.plot_all(res, tmp_path)
    names = sorted(p.name for p in written)
    assert {
        "distance_curves.png",
        "distance_curves.svg",
        "distance_by_layer.png",
        "distance_by_layer.svg",
    } <= set(names)
    # 2 experiments x 3 metrics
    assert sum(n.startswith("trajectory_") and n.endswith(".png") for n in names) == 6
    for p in written:
        assert p.stat().st_size > 3000
    h, w, _ = png_shape(tmp_path / "distance_curves.png")
    assert w > h  # 2 rows (experiments) x 3 metric panels
    svg = (tmp_path / "distance_curves.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    mats, layers, epochs = curves.trajectory_matrices(res, "toynet/fruits", "pwsm")
    assert (
        mats.shape == (1, 4, 4)
        and [n for _, n in layers] == ["features.3"]
        and epochs.tolist() == [0, 1, 2, 3]
    )
    np.testing.assert_array_equal(np.diagonal(mats[0]), 0.0)
    entries = {e["file"]: e for e in read_index(tmp_path)}
    assert "bootstrap intervals" in entries["distance_curves.png"]["caption"]
    assert "pwsm (alpha=0, view channels)" in entries["distance_curves.png"]["caption"]
    assert entries["trajectory_toynet_shapes_cka.png"]["kind"] == "trajectory"


def test_curves_without_bootstrap_or_with_missing_values(tmp_path):
    res = make_results(bootstrap=0, metrics=METRICS[:1])
    res["distance"][0, 0, 1] = np.nan  # a layer never computed
    res["trajectory"][1] = np.nan  # no trajectories for one experiment
    assert [p.suffix for p in curves.plot_curves(res, tmp_path)] == [".png", ".svg"]
    assert curves.plot_trajectory(res, "toynet/fruits", "procrustes", tmp_path) == []
    assert "no bootstrap" in curves._settings(res)


# ----------------------------------------------------------------------------- CLI


def test_cli_visualize(store, tmp_path):
    from ftdyn.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "visualize",
            str(store[0]),
            "--layer",
            "features.3",
            "--filter",
            "1",
            "--filter",
            "2",
            "--class",
            "circle",
            "--sample",
            "1",
            "--epoch",
            "0",
            "--epoch",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "class_toy_features_3.png").is_file() and (
        out / "sample_toy_features_3_s1.png"
    ).is_file()
    assert str(out / "class_toy_features_3.png") in result.output
    result = runner.invoke(
        app, ["visualize", str(store[0]), "--layer", "features.99", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert (
        result.output.strip().count("\n") == 0
        and "ftdyn: error: --layer features.99" in result.output
    )


def test_cli_visualize_out_must_be_a_folder_outside_zarr_stores(store, tmp_path):
    from ftdyn.cli import app

    afile = tmp_path / "afile"
    afile.write_text("x")
    in_store = sorted(store[0].rglob("*"))
    runner = CliRunner()
    for out, says in [
        (afile, f"{afile} is a file, not a folder"),
        (afile / "figs", f"{afile} is a file"),
        (store[0], f"is inside the input {store[0]}"),
        (store[0] / "figs", f"is inside the input {store[0]}"),
    ]:
        result = runner.invoke(app, ["visualize", str(store[0]), "--layer", "0", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith(
            f"ftdyn: error: --out {out}: "
        )
        assert says in result.output
    assert afile.read_text() == "x" and sorted(store[0].rglob("*")) == in_store


def test_display_window_trims_only_never_covered_padding():
    cov = np.zeros((2, 3, 100, 80))
    cov[0, 1, 40:60, 30:50] = 1.0
    cov[1, 2, 45:70, 20:40] = 2.0
    rows, cols = patches.display_window(cov, margin=0.0)
    assert (rows, cols) == (slice(40, 70), slice(20, 50))
    rows, cols = patches.display_window(np.ones((1, 9, 5)))
    assert (rows, cols) == (slice(0, 9), slice(0, 5))


def test_damaged_images_are_blamed_not_the_layer(store, tmp_path):
    """A chunk of the ``images`` array fails its checksum: visualize's one line names that array,
    not the intact layer it was drawing."""
    from ftdyn.cli import app

    path = Path(shutil.copytree(store[0], tmp_path / "toy.zarr"))
    chunk = next(f for f in sorted((path / "images" / "c").rglob("*")) if f.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    result = CliRunner().invoke(
        app, ["visualize", str(path), "--layer", "features.3", "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{path}: array 'images' cannot be decoded" in result.output, result.output
    assert "features.3" not in result.output
