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
from helpers import make_figure_store, make_planted_store
from typer.testing import CliRunner

import ftdyn
from ftdyn import outputs
from ftdyn.cli import app
from ftdyn.errors import FtdynError
from ftdyn.outputs import SETS, current_set, folder_lock
from ftdyn.results import TABLE_NAMES, open_results

DEADLINE = 120  # seconds for one forked run; a tiny analysis takes about one
A = {"metrics": ["pwsm"], "layers": ["layer2.relu"]}
B = {"metrics": ["cka"], "layers": ["layer2.relu"], "overwrite": True}
PRODUCTS = (*TABLE_NAMES, "results.zarr")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_planted_store(tmp_path_factory.mktemp("outputs") / "s.zarr")[0]


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


@pytest.mark.slow
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
                status = _run_forked(
                    lambda out=out: ftdyn.analyze(store, out=out, progress=False, **B)
                )
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
            # finishes the job, cleans the leftovers
            ftdyn.analyze(store, out=out, progress=False, **B)
            assert _assert_one_whole_set(out) == "cka"
            # current + one set
            assert len(list((out / SETS).iterdir())) == 2, list((out / SETS).iterdir())
            assert not list(out.glob(".*.link-*")) and not list(out.glob(".analyze-*"))


def test_tampered_or_missing_file_is_never_up_to_date(store, with_a, tmp_path, capsys, cli_console):
    base, _ = with_a["set"]
    damage = {
        "edited": lambda out: (out / "distances.csv").write_text("experiment,metric\nx,pwsm\n"),
        "removed": lambda out: (out / "reusability.csv").unlink(),
        "chunk": (
            lambda out: next(
                p for p in (out / "results.zarr").rglob("c/*") if p.is_file()
            ).write_bytes(b"x")
        ),
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


@pytest.mark.slow
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
        for cmd in (
            [
                "analyze",
                str(store),
                "--out",
                str(out),
                "--metric",
                "procrustes",
                "--overwrite",
                "--no-progress",
                "--no-report",
            ],
            ["report", str(out)],
        ):
            result = CliRunner().invoke(app, cmd)
            assert result.exit_code == 2, result.output
            assert result.output.count("\n") == 1 and f"(PID {pid})" in result.output, result.output
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # the first run's results, untouched by the refused ones
    assert _assert_one_whole_set(out) == "cka"


@pytest.mark.slow
def test_two_concurrent_analyzes_one_wins_the_other_is_refused(store, tmp_path):
    out = tmp_path / "r"
    # re-entrant in one process: analyze then report in one command
    with folder_lock(out), folder_lock(out):
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


def test_a_copy_without_links_is_recomputed_not_trusted(
    store, with_a, tmp_path, capsys, cli_console
):
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


# ------------------------------------------------------- figures and report.html in the set
def _steps_of(run, out: Path, scratch: Path) -> list[str]:
    """The steps ``run(copy)`` goes through in a copy of ``out`` (made in ``scratch``)."""
    copy = scratch / "steps" / out.name
    shutil.copytree(out, copy, symlinks=True)
    steps: list[str] = []
    original = outputs._step
    outputs._step = steps.append
    try:
        run(copy)
    finally:
        outputs._step = original
    return steps


def _fault_each_step(base: Path, steps: list[str], run, tmp_path: Path, monkeypatch, mode: str):
    """Yield (step, out, swapped) after ``run(out)`` was killed or interrupted at ``step``
    in a fresh copy ``out`` of ``base``."""
    for step in steps:
        out = tmp_path / step.replace(" ", "_") / "r"
        shutil.copytree(base, out, symlinks=True)
        monkeypatch.setattr(
            outputs, "_step", _fault_at(step, _sigkill if mode == "kill" else _interrupt)
        )
        if mode == "kill":
            assert _run_forked(lambda out=out: run(out)) == -signal.SIGKILL, step
        else:
            with pytest.raises(KeyboardInterrupt):
                run(out)
        monkeypatch.setattr(outputs, "_step", lambda name: None)
        yield step, out, steps.index(step) > steps.index("swap")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kill", "interrupt"])
def test_report_fault_at_each_step_leaves_one_whole_set(store, with_a, tmp_path, monkeypatch, mode):
    """report adds figures/ and report.html to analyze's set as its new version: killed or
    interrupted anywhere, the folder holds the set without them or with all of them, verified;
    analyze with the same arguments stays up to date; the next report cleans the leftovers."""
    base, _ = with_a["set"]
    run = lambda out: ftdyn.report(out, stores=[])  # curves only: fast
    steps = _steps_of(run, base, tmp_path)
    assert steps == [
        "fill",
        "manifest",
        "seal",
        "link figures",
        "link report.html",
        "link explore.html",
        "swap",
        "delete old",
    ]
    for step, out, swapped in _fault_each_step(base, steps, run, tmp_path, monkeypatch, mode):
        manifest, problem = current_set(out)
        assert problem is None and manifest is not None, (step, problem)
        has_report = {"figures", "report.html", "explore.html"} <= set(manifest["products"])
        assert has_report == swapped, step
        assert (out / "report.html").is_file() == swapped and (
            out / "figures"
        ).exists() == swapped, step
        assert _assert_one_whole_set(out) == "pwsm"
        seen: list[str] = []
        monkeypatch.setattr(outputs, "_step", seen.append)
        ftdyn.analyze(store, out=out, progress=False, **A)
        assert seen == [], (step, "the current set must be reused as up to date")
        monkeypatch.setattr(outputs, "_step", lambda name: None)
        ftdyn.report(out, stores=[])
        assert current_set(out)[1] is None and (out / "figures" / "figures.json").is_file()
        assert len(list((out / SETS).iterdir())) == 2 and not list(out.glob(".*.link-*"))


@pytest.fixture(scope="module")
def viz_store(tmp_path_factory):

    return make_figure_store(tmp_path_factory.mktemp("viz") / "toy.zarr")[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kill", "interrupt"])
def test_visualize_fault_at_each_step_keeps_the_old_figures_or_all_new(
    viz_store, tmp_path, monkeypatch, mode
):
    from ftdyn.viz import read_index

    base = tmp_path / "base"
    ftdyn.visualize(viz_store, layer=0, filters=[1], samples=[0], out=base)
    old = sorted(e["file"] for e in read_index(base))
    run = lambda out: ftdyn.visualize(viz_store, layer=1, filters=[0], samples=[1], out=out)
    steps = _steps_of(run, base, tmp_path)
    assert steps[:3] == ["fill", "manifest", "seal"] and steps[-2:] == ["swap", "delete old"]
    assert steps[3:-2] == ["link class_toy_features_8.png", "link sample_toy_features_8_s1.png"]
    for step, out, swapped in _fault_each_step(base, steps, run, tmp_path, monkeypatch, mode):
        _manifest, problem = current_set(out)
        assert problem is None, (step, problem)
        files = sorted(e["file"] for e in read_index(out))
        new = [s.removeprefix("link ") for s in steps[3:-2]]
        assert files == (sorted([*old, *new]) if swapped else old), (step, files)
        assert all((out / f).is_file() for f in files)
        visible = [p for p in out.iterdir() if not p.name.startswith(".")]
        assert sorted(p.name for p in visible if p.exists()) == sorted([*files, "figures.json"])
        if mode == "interrupt":  # a killed run's dangling links are removed by the next run
            assert all(p.exists() for p in visible), step
        run(out)  # finishes the job, cleans the leftovers
        assert current_set(out)[1] is None and len(read_index(out)) == len(old) + 2
        assert len(list((out / SETS).iterdir())) == 2 and not list(out.glob(".*.link-*"))


def test_report_refuses_to_reseal_a_tampered_set(with_a, tmp_path):
    """A changed file of the current set is never copied into a new version with fresh checksums."""
    base, _ = with_a["set"]
    out = tmp_path / "r"
    shutil.copytree(base, out, symlinks=True)
    (out / "distances.csv").write_text("experiment,metric\nx,pwsm\n")
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert (
        "distances.csv of the current result set was changed" in result.output
        and "nothing was written" in result.output
    )
    assert not (out / "report.html").exists() and current_set(out)[1] is not None


def test_visualize_into_the_figures_of_a_result_set_is_refused(with_a, viz_store, tmp_path):
    """figures/ of a result set is a link into the checksummed set: visualize refuses it up front
    (one line) and the set stays current and unchanged."""
    base, _ = with_a["set"]
    out = tmp_path / "r"
    shutil.copytree(base, out, symlinks=True)
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    before = current_set(out)
    assert before[1] is None and (out / "figures").is_symlink()
    result = CliRunner().invoke(
        app, ["visualize", str(viz_store), "--layer", "0", "--out", str(out / "figures")]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"inside the result set of {out.resolve()}" in result.output, result.output
    assert current_set(out) == before


# ------------------------------------------------------------------- one lock, disk errors
def _hold_lock(out: Path):
    """A forked child holding ``out``'s lock until the returned release() is called; (pid,
    release)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            with folder_lock(out):
                os.write(ready_w, b"1")
                os.read(go_r, 1)
        finally:
            os._exit(0)
    assert os.read(ready_r, 1) == b"1"

    def release() -> None:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)

    return pid, release


@pytest.mark.slow
def test_train_and_visualize_into_a_locked_folder_are_refused_naming_the_pid(viz_store, tmp_path):
    series, figs = tmp_path / "series", tmp_path / "figs"
    for out, cmd in (
        (series, ["train", str(tmp_path / "data"), "--arch", "resnet18", "--out", str(series)]),
        (figs, ["visualize", str(viz_store), "--layer", "0", "--out", str(figs)]),
    ):
        pid, release = _hold_lock(out)
        try:
            result = CliRunner().invoke(app, cmd)
        finally:
            release()
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert f"another ftdyn run (PID {pid}) is writing to this folder" in result.output, (
            result.output
        )


def test_disk_errors_name_the_folder_and_keep_the_old_set(
    store, with_a, viz_store, tmp_path, monkeypatch
):
    """A write that fails for lack of space, quota or a read-only mount (no file name given by
    the system, as a failing write() reports it) is one line naming the folder; the previous
    set stays current and no unfinished set is left."""
    import errno

    base, _ = with_a["set"]
    out = tmp_path / "r"
    shutil.copytree(base, out, symlinks=True)
    runner = CliRunner()
    for code, cmd in (
        ("ENOSPC", ["report", str(out)]),
        (
            "EDQUOT",
            [
                "analyze",
                str(store),
                "--out",
                str(out),
                "--metric",
                "cka",
                "--layer",
                "layer2.relu",
                "--overwrite",
                "--no-progress",
                "--no-report",
            ],
        ),
        ("EROFS", ["visualize", str(viz_store), "--layer", "0", "--out", str(out)]),
    ):
        number = getattr(errno, code)
        monkeypatch.setattr(
            outputs,
            "_step",
            _fault_at(
                "manifest",
                lambda number=number: (_ for _ in ()).throw(OSError(number, os.strerror(number))),
            ),
        )
        result = runner.invoke(app, cmd)
        errors = [line for line in result.output.splitlines() if line.startswith("ftdyn: error:")]
        assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, (
            cmd,
            result.output,
        )
        assert (
            f"--out {out.resolve()}: cannot write a file in {out.resolve()} ({os.strerror(number)})"
            in result.output
        ), result.output
        assert _assert_one_whole_set(out) == "pwsm" and not (out / "report.html").exists()
        assert not list((out / SETS).glob(".*"))
