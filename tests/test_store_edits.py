"""Stores check themselves on open: every edit of a store's metadata, coordinates or small
arrays is one line naming the array and what differs; never a traceback, a huge allocation
or a silently analyzed wrong store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import make_planted_store
from typer.testing import CliRunner

from ftdyn.cli import app
from ftdyn.errors import FtdynError
from ftdyn.store import (
    StoreWriter,
    add_random_init,
    baseline_var,
    decoding,
    open_store,
    write_random_init,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_planted_store(tmp_path_factory.mktemp("edits") / "s.zarr")[0]


def _meta(path: Path, name: str | None, change) -> None:
    """Edit the zarr.json of array ``name`` (None: the root group) with ``change(meta)``."""
    file = path / (name or ".") / "zarr.json"
    meta = json.loads(file.read_text())
    change(meta)
    file.write_text(json.dumps(meta))


def _attrs(change):
    return lambda meta: change(meta["attributes"])


def _flip(path: Path, name: str) -> None:
    chunk = next(f for f in sorted((path / name / "c").rglob("*")) if f.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _strip_checksum(path: Path, name: str) -> None:
    """Remove the CRC-32C codec from array ``name`` (and from the chunks of its shards), then
    flip a byte of a chunk: without the contract's check the changed values read back."""

    def strip(codecs: list) -> list:
        for codec in codecs:
            if codec["name"] == "sharding_indexed":
                codec["configuration"]["codecs"] = strip(codec["configuration"]["codecs"])
        return [c for c in codecs if c["name"] != "crc32c"]

    _meta(path, name, lambda meta: meta.__setitem__("codecs", strip(meta["codecs"])))
    chunk = next(f for f in sorted((path / name / "c").rglob("*")) if f.is_file())
    data = bytearray(chunk.read_bytes())
    chunk.write_bytes(bytes(data[:-4]))  # the checksum's 4 bytes no longer belong to the chunk
    _flip(path, name)


def _swap_checkpoints(a):
    a["checkpoints"][1], a["checkpoints"][2] = a["checkpoints"][2], a["checkpoints"][1]


def _coord(path: Path, values) -> None:
    zarr.open_array(path / "checkpoint", mode="r+", zarr_format=3)[...] = np.asarray(values)


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _shape(index, value):
    return lambda meta: meta["shape"].__setitem__(index, value)


EDITS = {  # name: (edit of a copy, words the one-line error must hold)
    "checkpoints swapped": (
        lambda p: _meta(p, None, _attrs(_swap_checkpoints)),
        "not strictly increasing",
    ),
    "layer dtype int16": (
        lambda p: _meta(p, "features_3", _set("data_type", "int16")),
        "'features_3'",
    ),
    "layer x extent 6->5": (lambda p: _meta(p, "features_3", _shape(4, 5)), "regions"),
    "checkpoint coord [0,1,1,3]": (
        lambda p: _coord(p, [0, 1, 1, 3]),
        "coordinate 'checkpoint' is [0, 1, 1, 3]",
    ),
    "complete huge": (lambda p: _meta(p, "complete", _shape(1, 10**12)), "'complete'"),
    "label shorter": (lambda p: _meta(p, "label", _shape(0, 11)), "'label'"),
    "label deleted": (lambda p: shutil.rmtree(p / "label"), "label missing"),
    "fill value": (
        lambda p: _meta(p, "features_3", _set("fill_value", "not a number")),
        "unreadable metadata",
    ),
    "label flipped byte": (lambda p: _flip(p, "label"), "'label' cannot be decoded"),
    "complete flipped byte": (lambda p: _flip(p, "complete"), "'complete' cannot be decoded"),
    "checkpoint flipped byte": (lambda p: _flip(p, "checkpoint"), "'checkpoint' cannot be decoded"),
    "samples_per_chunk": (
        lambda p: _meta(p, None, _attrs(lambda a: a.__setitem__("samples_per_chunk", 4))),
        "regions",
    ),
    "layers renamed": (
        lambda p: _meta(p, None, _attrs(lambda a: a["layers"].reverse())),
        "'layers'",
    ),
    "dimension names": (
        lambda p: _meta(p, "features_3", _set("dimension_names", ["a", "b", "c", "d", "e"])),
        "dimensions",
    ),
    "label out of range": (
        lambda p: zarr.open_array(p / "label", mode="r+", zarr_format=3).__setitem__(0, 7),
        "outside the 3 classes",
    ),
    "layer checksum stripped": (
        lambda p: _strip_checksum(p, "features_3"),
        "array 'features_3' carries no CRC-32C checksum",
    ),
    "images checksum stripped": (
        lambda p: _strip_checksum(p, "images"),
        "array 'images' carries no CRC-32C checksum",
    ),
    "epoch entry dropped": (
        lambda p: _meta(p, None, _attrs(lambda a: a["checkpoints"].pop())),
        "run the same `ftdyn extract` again",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_each_store_edit_is_one_line(pristine, tmp_path, edit):
    damage, words = EDITS[edit]
    path = Path(shutil.copytree(pristine, tmp_path / "s.zarr"))
    damage(path)
    with pytest.raises(FtdynError) as err:
        open_store(path, allow_partial=True)
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(path),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--no-report",
            "--allow-partial",
        ],
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"ftdyn: error: {path}")
    assert not (tmp_path / "r").exists()  # nothing analyzed, nothing written
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_images_carry_a_checksum(pristine, tmp_path):
    path = Path(shutil.copytree(pristine, tmp_path / "s.zarr"))
    _flip(path, "images")
    ds = open_store(path)  # images are only read by the figures, in a decoding() block
    with pytest.raises(FtdynError, match="cannot be decoded"), decoding(path, "images"):
        _ = ds["images"].values


def test_extension_cut_short_is_named_and_undone_by_the_writer(pristine, tmp_path):
    """Arrays grown for new checkpoints but the root attribute not yet updated (extract killed
    inside append_checkpoints, or a reader arriving then): readers get one line; the next
    writer (the re-run extract) shrinks the arrays back and its extension is redone."""
    path = Path(shutil.copytree(pristine, tmp_path / "s.zarr"))
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    for name in ("features_3", "layer2_relu", "complete", "checkpoint"):
        group[name].resize((5, *group[name].shape[1:]))
    with pytest.raises(FtdynError, match="caught while `ftdyn extract` was adding checkpoints"):
        open_store(path, allow_partial=True)
    writer = StoreWriter(path)
    assert writer.arrays["features.3"].shape[0] == 4
    writer.append_checkpoints([{"epoch": 4, "file": "epoch_004.pt", "sha256": "4" * 64}])
    ds = open_store(path, allow_partial=True)  # the new checkpoint is not filled: left out
    assert list(ds["checkpoint"].values) == [0, 1, 2, 3]


def test_reader_waits_for_an_extension_in_progress(pristine, tmp_path):
    """`analyze --allow-partial` while extract adds checkpoints: the reader opens the store
    before or after the extension, never between (no 'conflicting sizes'), and gets the
    complete checkpoints."""
    import threading

    from ftdyn.store import metadata_lock

    path = Path(shutil.copytree(pristine, tmp_path / "s.zarr"))
    writer = StoreWriter(path)
    seen: list = []
    with metadata_lock(path, exclusive=True):  # the writer is inside append_checkpoints
        group = zarr.open_group(path, mode="r+", zarr_format=3)
        for name in ("features_3", "complete"):  # half of the arrays grown so far
            group[name].resize((5, *group[name].shape[1:]))
        reader = threading.Thread(target=lambda: seen.append(open_store(path, allow_partial=True)))
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and not seen  # waiting, not reading a half-extended store
        for name in ("layer2_relu", "checkpoint"):
            group[name].resize((5, *group[name].shape[1:]))
        group["checkpoint"][4] = 4
        group["complete"][4:] = 0
        group.attrs["checkpoints"] = [
            *writer.attrs["checkpoints"],
            {"epoch": 4, "file": "e4.pt", "sha256": "4" * 64},
        ]
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert list(seen[0]["checkpoint"].values) == [0, 1, 2, 3]  # epoch 4 is not filled yet: left out


@pytest.mark.parametrize(
    "edit",
    [_shape(2, 3), _set("data_type", "int16"), _set("dimension_names", ["a", "b", "c", "d", "e"])],
    ids=["channels", "dtype", "dimensions"],
)
def test_a_random_init_baseline_checks_itself_like_the_layers(pristine, tmp_path, edit):
    """A baseline whose array disagrees with its layer is one line naming it, before any read."""
    path = Path(shutil.copytree(pristine, tmp_path / "s.zarr"))
    add_random_init(path, seed=0, architecture="resnet18", init="test")
    writer = StoreWriter(path)
    layers = zarr.open_group(path, mode="r").attrs["layer_variables"]
    for c in range(writer.n_chunks):
        rows = writer.chunk_slice(c)
        arrays = {
            layer: zarr.open_array(path / var, mode="r")[0, rows] for layer, var in layers.items()
        }
        write_random_init(path, c, arrays)
    open_store(path)  # intact
    _meta(path, baseline_var("features_3"), edit)
    with pytest.raises(FtdynError) as err:
        open_store(path)
    assert "random_init__features_3" in str(err.value) and "\n" not in str(err.value)
