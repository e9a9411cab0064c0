"""`ftdyn train` stopped before its first epoch was recorded: a resume starts over instead of
refusing, the temporaries of a killed save are removed, and the result equals an
uninterrupted run."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
from helpers import FAST_TRAIN, assert_same_state, kill_cli_when, run_cli, state_of

from ftdyn import checkpoints as ckpt

COMMON = ["--arch", "resnet18", "--epochs", 1, "--seed", 3, "--lr", 1e-3, *FAST_TRAIN]


@pytest.fixture(scope="module")
def reference(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "series"
    result = run_cli("train", image_folder, *COMMON, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def _same_run(out: Path, reference: Path) -> None:
    manifest, ref = ckpt.read_manifest(out), ckpt.read_manifest(reference)
    assert manifest["complete"] is True and [e["epoch"] for e in manifest["epochs"]] == [0, 1]
    for a, b in zip(manifest["epochs"], ref["epochs"], strict=True):
        assert_same_state(state_of(out / a["file"]), state_of(reference / b["file"]))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_killed_while_saving_epoch_0_leaves_nothing_that_blocks(image_folder, reference, tmp_path):
    out = tmp_path / "series"
    out.mkdir()
    (out / ".epoch_000.pt.0123456789abcdef.tmp").write_bytes(b"\0" * 4096)  # a save cut short
    result = run_cli("train", image_folder, *COMMON, "--out", out)
    assert result.exit_code == 0, result.output
    _same_run(out, reference)


def test_resume_with_no_finished_epoch_starts_over(image_folder, reference, tmp_path):
    out = tmp_path / "series"
    out.mkdir()
    # killed before the manifest
    (out / "epoch_000.pt").write_bytes((reference / "epoch_000.pt").read_bytes())
    (out / ".manifest.json.0123.tmp").write_text("{")
    result = run_cli("train", image_folder, *COMMON, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "no epoch of" in result.output and "starting the run over" in result.output
    _same_run(out, reference)


@pytest.mark.slow
def test_real_kill_during_the_first_epoch_then_resume(image_folder, reference, tmp_path):
    out = tmp_path / "series"

    def started() -> bool:  # the first file of epoch 0 (its temporary, or it)
        return out.is_dir() and any(out.iterdir())

    assert (
        kill_cli_when(["train", image_folder, *COMMON, "--out", out], started, "a file of epoch 0")
        == -signal.SIGKILL
    )
    result = run_cli("train", image_folder, *COMMON, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    _same_run(out, reference)


@pytest.mark.parametrize("victim", ["epoch_001.pt", "manifest.json"])
def test_full_disk_after_epoch_0_is_one_line_and_resumes(
    image_folder, reference, tmp_path, monkeypatch, victim
):
    """The disk fills when epoch 1's checkpoint, or the manifest listing it, is made final
    (the rename of its finished temporary): one line naming the file and the way on;
    --resume then ends as an uninterrupted run."""
    out, rename = tmp_path / "series", os.replace

    def full_disk(src, dst, *args, **kwargs):
        if Path(dst).name == victim and (
            victim != "manifest.json" or (out / "epoch_001.pt").exists()
        ):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    result = run_cli("train", image_folder, *COMMON, "--out", out)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith(
        f"ftdyn: error: cannot write {out / victim}: [Errno {errno.ENOSPC}]"
    ) and lines[-1].endswith("continues with --resume)."), result.output
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    result = run_cli("train", image_folder, *COMMON, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    _same_run(out, reference)


def test_full_disk_inside_torch_save_names_the_file_not_torch(image_folder, tmp_path, monkeypatch):
    """The disk fills while torch's zip writer writes epoch 0: torch reports it as "enforce fail
    at inline_container.cc"; the line gives the system's reason and the checkpoint's path."""
    import torch

    out, save = tmp_path / "series", torch.save

    class FullDisk:
        """The checkpoint's file, on a disk that fills after its first kilobytes."""

        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(torch, "save", lambda obj, fh, **kw: save(obj, FullDisk(fh), **kw))
    result = run_cli("train", image_folder, *COMMON, "--out", out)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith(
        f"ftdyn: error: cannot write {out / 'epoch_000.pt'}: [Errno {errno.ENOSPC}]"
    ), result.output
    assert "inline_container" not in result.output and "enforce fail" not in result.output
    assert not out.exists()  # the run made the folder and left nothing in it: it is gone
