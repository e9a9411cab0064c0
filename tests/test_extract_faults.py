"""`ftdyn extract` stopped or disturbed at a named point: killed between two writes of the
store's attributes, racing another extract, a full disk or a kill while the store is created,
links and loops in the checkpoint folder. Each ends in one line or, re-run, in the store an
uninterrupted run writes; none leaves a stale attribute or a temporary behind."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import zarr
from helpers import run_cli
from zarr.storage import LocalStore

from ftdyn import checkpoints as ck
from ftdyn.errors import FtdynError, FtdynWarning
from ftdyn.extraction import execute, extract, make_plan
from ftdyn.outputs import file_lock
from ftdyn.store import completeness, open_store

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


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("ftdyn: error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _extract_cli(series: Path, data: Path, out: Path):
    return run_cli(
        "extract", series, "--data", data, "--out", out, "--layer", "layer1", "--no-progress"
    )


def test_a_second_run_creating_the_same_store_names_the_first(tiny_series, image_folder, tmp_path):
    """Two extracts race to create one new store: the one that is second to the creation lock
    says which run is creating it and what to do (it said "Directory not empty"), and leaves the
    first one's temporary folder alone."""
    out = tmp_path / "s.zarr"
    other = tmp_path / ".s.zarr.creating-0123abcd"  # the first run's store, being written
    other.mkdir()
    with file_lock(tmp_path / ".s.zarr.creating.lock", "--out", out):  # ... under its lock
        line = _one_line(_extract_cli(tiny_series, image_folder / "val", out))
    assert line == (
        f"ftdyn: error: --out {out}: another ftdyn run (PID {os.getpid()}) is creating this"
        " store; wait for it to finish or choose another --out."
    )
    assert other.is_dir() and not out.exists()


def test_a_store_created_meanwhile_is_resumed_not_a_directory_error(
    tiny_series, image_folder, tmp_path, monkeypatch
):
    """The other run finished creating the store after this one planned a new one: one line
    saying so and what to do; the same command then resumes that store."""
    out = tmp_path / "s.zarr"
    plan = make_plan(tiny_series, data=image_folder / "val", out=out, **OPTIONS)
    extract(tiny_series, data=image_folder / "val", out=out, **OPTIONS)  # the other run
    with pytest.raises(FtdynError, match="already exists \\(another run may have created it"):
        execute(plan)
    extract(tiny_series, data=image_folder / "val", out=out, **OPTIONS)
    assert completeness(out).all()


def test_full_disk_while_creating_the_store_names_it(
    tiny_series, image_folder, tmp_path, monkeypatch
):
    """The disk fills while the store's metadata and images are written (the system's error
    names no file): one line naming --out; no temporary folder and no store are left."""

    async def full_disk(store, key, value):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalStore, "set", full_disk)
    out = tmp_path / "s.zarr"
    line = _one_line(_extract_cli(tiny_series, image_folder / "val", out))
    assert line.startswith(f"ftdyn: error: --out {out}: cannot write a file in {out}")
    assert "No space left on device" in line and "free space" in line
    assert sorted(os.listdir(tmp_path)) == []


def test_temporaries_of_a_killed_creation_are_removed_by_the_next_run(
    tiny_series, image_folder, tmp_path
):
    """A creation killed before its rename leaves ``.NAME.creating-*`` (and its lock file): the
    next run that creates the store, or the next one that writes an existing store, removes them;
    another store's temporaries are not touched."""
    out = tmp_path / "s.zarr"

    def killed_creation(hex_id: str) -> Path:
        leftover = tmp_path / f".s.zarr.creating-{hex_id}"
        (leftover / "images").mkdir(parents=True)
        (leftover / "zarr.json").write_text("{}")
        (tmp_path / ".s.zarr.creating.lock").write_text("999999\n")  # its owner is gone
        return leftover

    neighbour = tmp_path / ".t.zarr.creating-00000000"
    neighbour.mkdir()
    killed_creation("deadbeef")
    result = _extract_cli(tiny_series, image_folder / "val", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [neighbour.name, "s.zarr"]

    killed_creation("feedface")  # e.g. a racing run killed after this store was created
    result = _extract_cli(tiny_series, image_folder / "val", out)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [neighbour.name, "s.zarr"]


def test_links_in_a_checkpoint_folder_are_named_not_dropped_silently(
    tiny_series, image_folder, tmp_path
):
    """A third-party series where ep2.pt links to /dev/zero, ep3.pt is a FIFO and ep4.pt/ep5.pt
    link to each other: none is opened (a FIFO would wait forever), and the warning names each
    one (extract used to write 2 of 6 checkpoints without a word)."""
    series = tmp_path / "series"
    series.mkdir()
    for epoch in (0, 1):
        shutil.copy2(tiny_series / ck.checkpoint_filename(epoch), series / f"ep{epoch}.pt")
    (series / "ep2.pt").symlink_to("/dev/zero")
    os.mkfifo(series / "ep3.pt")
    (series / "ep4.pt").symlink_to("ep5.pt")
    (series / "ep5.pt").symlink_to("ep4.pt")
    with pytest.warns(FtdynWarning) as caught:
        entries = ck.discover_series(series)
    assert [e.path.name for e in entries] == ["ep0.pt", "ep1.pt"]
    (message,) = [str(w.message) for w in caught if "without opening" in str(w.message)]
    assert message.startswith(f"{series}: ignored 4 entries without opening them")
    assert "2 not a regular file (FIFO, device or socket)" in message
    assert "2 a symlink loop" in message
    for name in ("ep2.pt", "ep3.pt", "ep4.pt", "ep5.pt"):
        assert str(series / name) in message

    result = run_cli(
        "extract", series, "--data", image_folder / "val", "--out", tmp_path / "s.zarr",
        "--arch", "resnet18", "--layer", "layer1", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and str(series / "ep3.pt") in result.output
