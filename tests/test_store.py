"""The activation-store contract: create, fill by region, completeness, validation."""

import json
import warnings

import numpy as np
import pytest
import zarr

from ftdyn.errors import FtdynError
from ftdyn.outputs import LOCK_FILE, folder_lock
from ftdyn.store import (
    LayerSpec,
    StoreSpec,
    StoreWriter,
    completeness,
    create_store,
    info,
    layer_dims,
    open_store,
    store_layers,
)


def make_spec(n=5, epochs=(0, 1, 2), spc=2, dtype="float16"):
    rng = np.random.default_rng(0)
    return StoreSpec(
        architecture="resnet18",
        layers=[
            LayerSpec("layer1.0.relu", 4, 6, 6, {"size": [3, 3], "jump": [1, 1], "start": [0, 0]}),
            LayerSpec("features.3", 8, 3, 3, None),
        ],
        checkpoints=[{"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": "0" * 64} for e in epochs],
        images=rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8),
        labels=np.arange(n) % 2,
        class_names=["cat", "dog"],
        image_paths=[f"img/{i}.png" for i in range(n)],
        input_size=12,
        normalization={"mean": [0.5] * 3, "std": [0.5] * 3},
        probe={"seed": 0, "per_class": None},
        dtype=dtype,
        samples_per_chunk=spc,
    )


def fill(writer, spec, checkpoint_index, seed):
    rng = np.random.default_rng(seed)
    written = {}
    for chunk in range(writer.n_chunks):
        rows = writer.chunk_slice(chunk)
        region = {
            l.name: (
                rng.random((rows.stop - rows.start, l.channels, l.height, l.width)).astype(
                    spec.dtype
                )
            )
            for l in spec.layers
        }
        writer.write_region(checkpoint_index, chunk, region)
        for k, v in region.items():
            written.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in written.items()}


def test_create_fill_open_roundtrip(tmp_path):
    spec = make_spec()
    path = create_store(tmp_path / "s.zarr", spec)
    writer = StoreWriter(path)
    assert writer.n_chunks == 3
    expected = [fill(writer, spec, i, seed=i) for i in range(3)]
    ds = open_store(path)
    assert list(ds["checkpoint"].values) == [0, 1, 2]
    assert [layer for layer, _ in store_layers(ds)] == ["layer1.0.relu", "features.3"]
    assert ds["layer1_0_relu"].dims == layer_dims("layer1_0_relu")
    assert ds["layer1_0_relu"].data.chunks[1] == (2, 2, 1)  # chunked along samples
    for i in range(3):
        np.testing.assert_array_equal(
            ds["features_3"].isel(checkpoint=i).values, expected[i]["features.3"]
        )
    np.testing.assert_array_equal(ds["images"].values, spec.images)
    assert list(ds["class"].values) == ["cat", "dog"]
    assert list(ds["label"].values) == [0, 1, 0, 1, 0]
    assert ds["layer1_0_relu"].attrs["receptive_field"]["size"] == [3, 3]
    assert ds.attrs["checkpoints"][2]["epoch"] == 2


def test_the_lock_file_of_a_running_extract_raises_no_warning(tmp_path):
    """extract holds its store folder's lock (outputs.folder_lock), whose file is in the store while
    it runs (and after a killed run); Zarr would warn about it on every open, a line the user of
    analyze/visualize must not see. A finished run removes it."""
    spec = make_spec(epochs=(0,))
    path = create_store(tmp_path / "s.zarr", spec)
    fill(StoreWriter(path), spec, 0, seed=0)
    with folder_lock(path):
        assert (path / LOCK_FILE).is_file()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert list(open_store(path)["checkpoint"].values) == [0]
    assert not (path / LOCK_FILE).exists()
    (path / "notes.txt").write_text("a file the user put there")
    with pytest.warns(UserWarning, match="notes.txt"):  # any other stray file is still reported
        open_store(path)


def test_incomplete_store_is_refused_then_partial(tmp_path):
    spec = make_spec()
    path = create_store(tmp_path / "s.zarr", spec)
    writer = StoreWriter(path)
    fill(writer, spec, 0, seed=0)
    writer.write_region(
        1, 0, {l.name: np.zeros((2, l.channels, l.height, l.width)) for l in spec.layers}
    )
    assert completeness(path).tolist() == [[True] * 3, [True, False, False], [False] * 3]
    with pytest.raises(
        FtdynError, match=r"checkpoints 1, 2 are not fully extracted.*allow_partial"
    ):
        open_store(path)
    assert list(open_store(path, allow_partial=True)["checkpoint"].values) == [0]


def test_append_checkpoints_extends_store(tmp_path):
    spec = make_spec(epochs=(0, 1))
    path = create_store(tmp_path / "s.zarr", spec)
    writer = StoreWriter(path)
    first = [fill(writer, spec, i, seed=i) for i in range(2)]
    writer.append_checkpoints([{"epoch": 5, "file": "epoch_005.pt", "sha256": "1" * 64}])
    leftover = next(f for f in (path / "layer1_0_relu").rglob("*") if f.is_file())
    # a chunk write killed before its rename
    leftover = leftover.with_name(leftover.name + ".5f3a9c.partial")
    leftover.write_bytes(b"\0" * 64)
    writer = StoreWriter(path)  # a later run reopens it
    assert not leftover.exists()
    assert writer.done().tolist() == [[True] * 3, [True] * 3, [False] * 3]
    new = fill(writer, spec, 2, seed=9)
    ds = open_store(path)
    assert list(ds["checkpoint"].values) == [0, 1, 5]
    np.testing.assert_array_equal(
        ds["layer1_0_relu"].isel(checkpoint=1).values, first[1]["layer1.0.relu"]
    )
    np.testing.assert_array_equal(
        ds["layer1_0_relu"].isel(checkpoint=2).values, new["layer1.0.relu"]
    )
    with pytest.raises(FtdynError, match="must come after epoch 5"):
        writer.append_checkpoints([{"epoch": 3, "file": "x", "sha256": "2" * 64}])


def test_bad_paths_and_versions(tmp_path):
    with pytest.raises(FtdynError, match="not an ftdyn activation store"):
        open_store(tmp_path)
    plain = tmp_path / "plain.zarr"
    zarr.open_group(plain, mode="w", zarr_format=3)
    with pytest.raises(FtdynError, match="not an ftdyn activation store"):
        open_store(plain)
    path = create_store(tmp_path / "s.zarr", make_spec())
    with pytest.raises(FtdynError, match="already exists"):
        create_store(path, make_spec())
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ftdyn_store_format"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FtdynError, match=r"store format 99.*Re-extract"):
        open_store(path)


def test_info_reports_shapes_and_progress(tmp_path):
    spec = make_spec()
    path = create_store(tmp_path / "s.zarr", spec)
    fill(StoreWriter(path), spec, 0, seed=0)
    summary = info(path)
    assert summary["layers"][0] == {
        "layer": "layer1.0.relu",
        "variable": "layer1_0_relu",
        "shape": [4, 6, 6],
        "channel_block": 4,
    }
    assert [c["complete"] for c in summary["checkpoints"]] == [True, False, False]
    assert summary["complete"] is False and summary["bytes_on_disk"] > 0
    assert not list(tmp_path.glob(".s.zarr.creating-*"))


def test_all_finite_reads_the_exponent_bits():
    """inf, -inf and NaN anywhere are found in float16/32/64; the extremes and subnormals
    are finite."""
    from ftdyn.store import all_finite

    for dt in (np.float16, np.float32, np.float64):
        a = np.ones((3, 4), dt)
        assert all_finite(a) and all_finite(a[:, ::2]) and all_finite(a[:0])
        for v in (np.inf, -np.inf, np.nan):
            b = a.copy()
            b[1, 2] = v
            assert not all_finite(b) and not all_finite(b[:, ::2])
        b = a.copy()
        b[0, 0], b[0, 1], b[0, 2] = np.finfo(dt).max, -np.finfo(dt).max, np.finfo(dt).tiny / 4
        assert all_finite(b)
