"""`ftdyn extract` stopped or disturbed at a named point: killed between two writes of the
store's attributes, racing another extract, a full disk or a kill while the store is created,
links and loops in the checkpoint folder. Each ends in one line or, re-run, in the store an
uninterrupted run writes; none leaves a stale attribute or a temporary behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zarr

from ftdyn import checkpoints as ck
from ftdyn.extraction import extract
from ftdyn.store import open_store

OPTIONS = dict(layers=["layer1"], samples_per_chunk=4, batch_size=4, progress=False)


class Killed(BaseException):
    """Stands for a SIGKILL at a named point: nothing of the run's own error handling runs."""


def _first_epochs(series: Path, folder: Path, n: int) -> Path:
    """A copy of ``series`` as it was while training: its first ``n`` epochs, not complete."""
    folder.mkdir()
    manifest = ck.read_manifest(series)
    manifest["epochs"] = manifest["epochs"][:n]
    manifest["complete"] = False
    for entry in manifest["epochs"]:
        shutil.copy2(series / entry["file"], folder / entry["file"])
    ck.write_manifest(folder, manifest)
    return folder


def test_kill_between_the_attribute_writes_of_an_extension_leaves_no_stale_manifest(
    tiny_series, image_folder, tmp_path, monkeypatch
):
    """Extract a series while it trains (2 of 3 epochs), then extend the store once it has
    finished, killed at the moment the store's training manifest is about to change: the re-run
    leaves the store's manifest equal to the series' (it kept saying 2 epochs, not complete)."""
    series = _first_epochs(tiny_series, tmp_path / "series", 2)
    out = tmp_path / "s.zarr"
    extract(series, data=image_folder / "val", out=out, **OPTIONS)
    for name in ("epoch_002.pt", "manifest.json"):
        shutil.copy2(tiny_series / name, series / name)

    update = zarr.Group.update_attributes

    def killed_before_the_manifest_changes(group, new):
        if "manifest" in new and new["manifest"] != group.attrs.get("manifest"):
            raise Killed
        return update(group, new)

    monkeypatch.setattr(zarr.Group, "update_attributes", killed_before_the_manifest_changes)
    with pytest.raises(Killed):
        extract(series, data=image_folder / "val", out=out, **OPTIONS)
    monkeypatch.undo()

    extract(series, data=image_folder / "val", out=out, **OPTIONS)
    ds = open_store(out)
    assert ds.attrs["manifest"] == ck.read_manifest(tiny_series)
    assert ds.attrs["manifest"]["complete"] is True
    assert [c["epoch"] for c in ds.attrs["checkpoints"]] == [0, 1, 2]
    assert list(ds["checkpoint"].values) == [0, 1, 2]
