"""Fault injection into analyze's output folder: kills and interrupts at every write and
rename of the swap, concurrent runs, tampered and stale result sets.

Every run that could hang runs in a forked child under a deadline (pytest-timeout is not
installed), so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ftdyn
from ftdyn import outputs
from ftdyn.cli import app
from ftdyn.errors import FtdynError
from ftdyn.outputs import SETS, current_set, folder_lock
from ftdyn.results import open_results
from test_analysis import make_store

DEADLINE = 120  # seconds for one forked run; a tiny analysis takes about one
A = {"metrics": ["pwsm"], "layers": ["layer2.relu"]}
B = {"metrics": ["cka"], "layers": ["layer2.relu"], "overwrite": True}
PRODUCTS = ("distances.csv", "reusability.csv", "agreement.csv", "agreement_summary.csv", "relative_distances.csv",
            "probes.csv", "layer_order.csv", "convergence.csv", "results.zarr")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("outputs") / "s.zarr")[0]


def _to_legacy(out: Path) -> None:
    """Turn a results folder into the layout of an older ftdyn: real files, no sets."""
    for p in PRODUCTS:
        target = (out / p).resolve()
        (out / p).unlink()
        (shutil.copytree if target.is_dir() else shutil.copy2)(target, out / p)
    shutil.rmtree(out / SETS)


def _steps(store, out: Path) -> list[str]:
    """The steps a run of arguments B goes through in ``out`` (run on a copy)."""
    copy = out.parent / f"{out.name}-steps"
    shutil.copytree(out, copy, symlinks=True)
    steps: list[str] = []
    original = outputs._step
    outputs._step = steps.append
    try:
        ftdyn.analyze(store, out=copy, progress=False, **B)
    finally:
        outputs._step = original
    return steps


@pytest.fixture(scope="module")
def with_a(store, tmp_path_factory):
    """Folders holding the results of arguments A (as sets, and in the older layout) and the
    steps a run of other arguments goes through in each."""
    out = tmp_path_factory.mktemp("a") / "r"
    ftdyn.analyze(store, out=out, progress=False, **A)
    legacy = out.parent / "legacy"
    shutil.copytree(out, legacy, symlinks=True)
    _to_legacy(legacy)
    return {"set": (out, _steps(store, out)), "legacy": (legacy, _steps(store, legacy))}


def _metrics_in_csv(out: Path) -> set[str]:
    with open(out / "distances.csv", newline="") as f:
        return {row["metric"] for row in csv.DictReader(f)}


def _assert_one_whole_set(out: Path) -> str:
    """Either A's or B's complete set is current and verifies; its CSVs and results.zarr
    agree. Returns which."""
    manifest, problem = current_set(out)
    assert manifest is not None and problem is None, problem
    metrics = manifest["arguments"]["metrics"]
    assert metrics in (["pwsm"], ["cka"])
    assert list(open_results(out)["metric"].values) == metrics
    assert _metrics_in_csv(out) == set(metrics)
    assert all((out / p).exists() for p in PRODUCTS)
    return metrics[0]


def _after_fork() -> None:
    """A forked child has none of its parent's threads: start dask's thread pools afresh
    (it would hand tasks to the parent's pool, whose threads do not exist here)."""
    import collections
    import threading

    import dask.threaded

    dask.threaded.pools_lock = threading.Lock()
    dask.threaded.pools = collections.defaultdict(dict)
    dask.threaded.default_pool = None


def _run_forked(target) -> int:
    """Run ``target()`` in a forked child; its exit status (-signal when killed). A child
    still running after DEADLINE seconds is killed and fails the test (a hang)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            _after_fork()
            target()
            code = 0
        except FtdynError:
            code = 2
        finally:
            os._exit(code)
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"hang: the run did not end within {DEADLINE} s")


def _fault_at(step: str, action):
    def hook(name: str) -> None:
        if name == step:
            action()
    return hook


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _interrupt() -> None:
    raise KeyboardInterrupt


def test_swap_steps_cover_every_write_and_rename(with_a):
    _, steps = with_a["set"]
    assert steps == ["fill", "manifest", "seal", "swap", "delete old"]
    _, steps = with_a["legacy"]
    assert steps[:3] == ["fill", "manifest", "seal"] and steps[-2:] == ["swap", "delete old"]
    assert steps[3:-2] == [f"{what} {p}" for p in PRODUCTS for what in ("move aside", "link")]


@pytest.mark.parametrize("mode", ["kill", "interrupt"])
def test_fault_at_each_step_leaves_one_whole_set(store, with_a, tmp_path, monkeypatch, mode):
    """A run of other arguments killed or interrupted at any write or rename of the swap:
    the folder holds A's set or B's, never a mix; a re-run with the current set's arguments
    is up to date (or, from an older layout, recomputes); the next run removes leftovers."""
    for layout, (base, steps) in with_a.items():
        for step in steps:
            out = tmp_path / layout / step.replace(" ", "_") / "r"
            shutil.copytree(base, out, symlinks=True)
            action = _sigkill if mode == "kill" else _interrupt
            monkeypatch.setattr(outputs, "_step", _fault_at(step, action))
            if mode == "kill":
                status = _run_forked(lambda: ftdyn.analyze(store, out=out, progress=False, **B))
                assert status == -signal.SIGKILL, (step, status)
            else:
                with pytest.raises(KeyboardInterrupt):
                    ftdyn.analyze(store, out=out, progress=False, **B)
            seen: list[str] = []
            monkeypatch.setattr(outputs, "_step", seen.append)
            swapped = steps.index(step) > steps.index("swap")
            if swapped:
                assert _assert_one_whole_set(out) == "cka", (layout, step)
            elif layout == "set":
                assert _assert_one_whole_set(out) == "pwsm", (layout, step)
            else:  # the older layout was being replaced: no set is current, nothing verifies
                assert current_set(out) == (None, None), (layout, step)
            if swapped or layout == "set":
                ftdyn.analyze(store, out=out, progress=False, **(B if swapped else A))
                assert seen == [], (layout, step, "the current set must be reused as up to date")
            ftdyn.analyze(store, out=out, progress=False, **B)  # finishes the job, cleans the leftovers
            assert _assert_one_whole_set(out) == "cka"
            assert len(list((out / SETS).iterdir())) == 2, list((out / SETS).iterdir())  # current + one set
            assert not list(out.glob(".*.link-*")) and not list(out.glob(".analyze-*"))


def test_tampered_or_missing_file_is_never_up_to_date(store, with_a, tmp_path, capsys, cli_console):
    base, _ = with_a["set"]
    damage = {
        "edited": lambda out: (out / "distances.csv").write_text("experiment,metric\nx,pwsm\n"),
        "removed": lambda out: (out / "reusability.csv").unlink(),
        "chunk": lambda out: next(p for p in (out / "results.zarr").rglob("c/*") if p.is_file()).write_bytes(b"x"),
        "added": lambda out: (out / "results.zarr" / "extra").write_text("x"),
        "manifest": lambda out: (out / SETS / "current" / "manifest.json").write_text("{"),
    }
    for name, spoil in damage.items():
        out = tmp_path / name
        shutil.copytree(base, out, symlinks=True)
        spoil(out)
        assert current_set(out)[1] is not None, name
        capsys.readouterr()
        ftdyn.analyze(store, out=out, progress=False, **A)
        err = capsys.readouterr().err
        assert "cannot be reused" in err and "up to date" not in err, (name, err)
        assert _assert_one_whole_set(out) == "pwsm"


def test_stale_temporaries_of_older_versions_are_removed(store, with_a, tmp_path):
    base, _ = with_a["set"]
    out = tmp_path / "r"
    shutil.copytree(base, out, symlinks=True)
    for leftover in (".analyze-1234abcd.tmp", ".analyze-1234abcd.old"):
        (out / leftover).mkdir()
        (out / leftover / "distances.csv").write_text("old")
    (out / SETS / ".20260101T000000-deadbeef.partial").mkdir()
    ftdyn.analyze(store, out=out, progress=False, **B)
    assert not list(out.glob(".analyze-*"))
    assert len(list((out / SETS).iterdir())) == 2


def test_second_run_into_a_locked_folder_is_refused_naming_the_pid(store, tmp_path):
    out = tmp_path / "r"
    ftdyn.analyze(store, out=out, progress=False, **A)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def hold() -> None:  # an analyze of other arguments, paused just before its swap
        def pause(name: str) -> None:
            if name == "swap":
                os.write(ready_w, b"1")
                os.read(go_r, 1)
        outputs._step = pause
        ftdyn.analyze(store, out=out, progress=False, **B)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _after_fork()
            hold()
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        for cmd in (["analyze", str(store), "--out", str(out), "--metric", "procrustes", "--overwrite",
                     "--no-progress", "--no-report"], ["report", str(out)]):
            result = CliRunner().invoke(app, cmd)
            assert result.exit_code == 2, result.output
            assert result.output.count("\n") == 1 and f"(PID {pid})" in result.output, result.output
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert _assert_one_whole_set(out) == "cka"  # the first run's results, untouched by the refused ones


def test_two_concurrent_analyzes_one_wins_the_other_is_refused(store, tmp_path):
    out = tmp_path / "r"
    with folder_lock(out):  # re-entrant in one process: analyze then report in one command
        with folder_lock(out):
            pass
    statuses = []
    pids = []
    for args in (A, {**B, "overwrite": False}):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                _after_fork()
                ftdyn.analyze(store, out=out, progress=False, **args)
                code = 0
            except FtdynError:
                code = 2
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        statuses.append(os.WEXITSTATUS(status))
    # both may finish (one after the other: the second is then refused as "other arguments")
    # or one is refused by the lock; never two exit 0 with one set silently replaced
    assert sorted(statuses) == [0, 2], statuses
    which = _assert_one_whole_set(out)
    assert which == ("pwsm" if statuses[0] == 0 else "cka")


def test_a_copy_without_links_is_recomputed_not_trusted(store, with_a, tmp_path, capsys, cli_console):
    """shutil.copytree (and some sync tools) turn the links into folders and files: nothing
    verifies, the same arguments recompute, and the copy becomes a proper set again."""
    base, _ = with_a["set"]
    out = tmp_path / "copy"
    shutil.copytree(base, out)  # symlinks=False: links become real files and folders
    assert not (out / SETS / "current").is_symlink()
    capsys.readouterr()
    ftdyn.analyze(store, out=out, progress=False, **A)
    assert "cannot be reused" in capsys.readouterr().err
    assert _assert_one_whole_set(out) == "pwsm"
    assert (out / SETS / "current").is_symlink() and len(list((out / SETS).iterdir())) == 2
