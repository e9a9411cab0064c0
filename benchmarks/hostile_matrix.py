"""The hostile matrix: faults a new user (or a careless colleague) causes, tried one by one.

Each case runs ftdyn's CLI in a forked child under a deadline (so a hang is counted, not
waited for) and is classed as:

* clean      the documented outcome: success with verified outputs, or exit 2 with one
             ``ftdyn: error:`` line and nothing half-written;
* silent     exit 0 (or a refusal) but a wrong outcome: mixed or lost results accepted,
             a wrong sample count, a changed store analyzed;
* traceback  an exception other than FtdynError reached the user;
* hang       no answer within the deadline.

Usage::

    python benchmarks/hostile_matrix.py [--work DIR] [--deadline 120] [--json out.json]

Needs no GPU, no network; about 3-6 minutes on 2 CPU cores. Prints one line per case and
the counts (the README's reliability section quotes them).
"""

from __future__ import annotations

import os

# the cases run in forked children: OpenMP thread pools started in this process before a
# fork would deadlock the child, so one thread each (the tests do the same)
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import collections
import contextlib
import csv
import io
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import zarr
from _results import command_line, write_result
from PIL import Image
from typer.testing import CliRunner

import ftdyn
from ftdyn.cli import app
from ftdyn.store import LayerSpec, StoreSpec, StoreWriter, create_store

try:
    from ftdyn import outputs
    from ftdyn.outputs import SETS, current_set

    # found in an installed copy, not this one
    if Path(outputs.__file__).parent != Path(ftdyn.__file__).parent:
        raise ImportError
except ImportError:  # an ftdyn from before result sets (to count the matrix on older code)
    outputs, current_set, SETS = None, None, ".ftdyn-sets"


class NotApplicable(Exception):
    """The case needs a hook this version of ftdyn does not have (not counted)."""


def needs(obj) -> None:
    if obj is None:
        raise NotApplicable


CLASSES = ("circle", "square", "stripes")
CASES: list[tuple[str, object]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn

    return register


# ------------------------------------------------------------------------ fixtures
def make_store(path: Path, seed: int = 0) -> Path:
    """A small planted store: 12 samples, 2 layers, epochs 0-3 drifting away from epoch 0."""
    rng = np.random.default_rng(seed)
    layers = [LayerSpec("features.3", 4, 6, 6), LayerSpec("layer2.relu", 6, 3, 3)]
    n, epochs = 12, (0, 1, 2, 3)
    spec = StoreSpec(
        architecture="resnet18",
        layers=layers,
        checkpoints=[
            {"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": f"{e:064d}"} for e in epochs
        ],
        images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(n) % 3,
        class_names=list(CLASSES),
        image_paths=[f"img/{i}.png" for i in range(n)],
        input_size=8,
        normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
        probe={"seed": seed},
        dtype="float32",
        samples_per_chunk=5,
        model="resnet18",
        dataset="toy",
    )
    create_store(path, spec)
    writer = StoreWriter(path)
    base = {l.name: rng.normal(size=(n, l.channels, l.height, l.width)) + 0.5 for l in layers}
    for k, e in enumerate(epochs):
        acts = {
            name: np.maximum(b + 0.3 * e * rng.normal(size=b.shape), 0).astype(np.float32)
            for name, b in base.items()
        }
        for c in range(writer.n_chunks):
            rows = writer.chunk_slice(c)
            writer.write_region(k, c, {name: a[rows] for name, a in acts.items()})
    return path


def write_images(root: Path, per_class: int) -> Path:
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        for i in range(per_class):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            arr[..., k] = 220
            Image.fromarray(arr).save(root / name / f"{name}_{i:02d}.png")
    return root


class World:
    """The inputs every case starts from (copied before a case changes them)."""

    def __init__(self, work: Path):
        self.work = work
        self.store = make_store(work / "store.zarr")
        self.data = work / "data"
        write_images(self.data / "train", 6)
        write_images(self.data / "val", 4)
        self.series = work / "series"
        res = invoke(
            [
                "train",
                self.data,
                "--arch",
                "resnet18",
                "--epochs",
                "1",
                "--input-size",
                "32",
                "--batch-size",
                "8",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                self.series,
            ]
        )
        assert res["code"] == 0, res["output"]
        self.real_store = work / "real.zarr"  # extracted: has the receptive fields visualize needs
        res = invoke(
            [
                "extract",
                self.series,
                "--data",
                self.data / "val",
                "--out",
                self.real_store,
                "--layer",
                "layer4",
                "--layer",
                "layer1",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        assert res["code"] == 0, res["output"]
        self.results_a = work / "results_a"
        res = invoke(self.analyze_args(self.results_a, "pwsm"))
        assert res["code"] == 0, res["output"]

    def analyze_args(self, out: Path, metric: str, *extra) -> list:
        return [
            "analyze",
            self.store,
            "--out",
            out,
            "--metric",
            metric,
            "--layer",
            "layer2.relu",
            "--no-progress",
            "--no-report",
            *extra,
        ]

    def fresh(self, name: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        return folder


# ------------------------------------------------------------------- running one
def _after_fork() -> None:
    import dask.threaded

    dask.threaded.pools_lock = threading.Lock()
    dask.threaded.pools = collections.defaultdict(dict)
    dask.threaded.default_pool = None


def invoke(args, before=None) -> dict:
    """The CLI in this process: exit code, output, whether a traceback reached the user."""
    if before is not None:
        before()
    result = CliRunner().invoke(app, [str(a) for a in args])
    exc = result.exception
    tb = exc is not None and not isinstance(exc, SystemExit)
    text = result.output + ("".join(traceback.format_exception(exc)) if tb else "")
    return {
        "code": result.exit_code,
        "output": text,
        "traceback": tb or "Traceback" in result.output,
    }


def forked(args, before=None, deadline: float = 120.0) -> dict:
    """The CLI in a forked child under ``deadline`` seconds: the invoke() dict, or
    {"killed": signal} / {"hang": True}."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        payload = {"code": 1, "output": "", "traceback": True}
        try:
            _after_fork()
            payload = invoke(args, before)
        except BaseException as exc:  # anything that escapes is a traceback
            payload = {
                "code": 1,
                "output": "".join(traceback.format_exception(exc)),
                "traceback": True,
            }
        finally:
            with contextlib.suppress(Exception):
                os.write(write, json.dumps(payload).encode())
            os._exit(0)
    os.close(write)
    start, chunks = time.monotonic(), []
    os.set_blocking(read, False)
    while True:
        with contextlib.suppress(BlockingIOError):
            block = os.read(read, 1 << 16)
            if block:
                chunks.append(block)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            with contextlib.suppress(BlockingIOError):
                while block := os.read(read, 1 << 16):
                    chunks.append(block)
            os.close(read)
            if os.WIFSIGNALED(status):
                return {"killed": os.WTERMSIG(status)}
            return json.loads(b"".join(chunks) or b'{"code": 1, "output": "", "traceback": true}')
        if time.monotonic() - start > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return {"hang": True}
        time.sleep(0.02)


def one_line_error(res: dict) -> bool:
    lines = [ln for ln in res.get("output", "").splitlines() if ln.strip() and "warning" not in ln]
    return res.get("code") == 2 and len(lines) == 1 and lines[0].startswith("ftdyn: error:")


def verdict(res: dict, ok: bool) -> str:
    if res.get("hang"):
        return "hang"
    if res.get("traceback"):
        return "traceback"
    return "clean" if ok else "silent"


# ----------------------------------------------------------------- result checks
def metrics_in(out: Path) -> set[str] | None:
    try:
        with open(out / "distances.csv", newline="") as f:
            return {row["metric"] for row in csv.DictReader(f)}
    except OSError:
        return None


def whole_set(out: Path) -> str | None:
    """The metric of the one verified, self-consistent set current in ``out`` (None: none)."""
    if current_set is None:  # older layout: the CSV must at least agree with results.zarr
        try:
            metrics = [
                str(m) for m in zarr.open_group(out / "results.zarr", mode="r")["metric"][...]
            ]
        except Exception:  # unreadable: no set
            return None
        return metrics[0] if metrics_in(out) == set(metrics) else None
    manifest, problem = current_set(out)
    if manifest is None or problem is not None:
        return None
    metrics = manifest["arguments"]["metrics"]
    return metrics[0] if metrics_in(out) == set(metrics) else None


# ---------------------------------------------------------------------- the cases
def _swap_fault(world: World, step: str, how: str) -> str:
    needs(outputs)
    out = world.fresh(f"{how}-{step.replace(' ', '_')}") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)

    def fault() -> None:
        def hook(name: str) -> None:
            if name == step:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise KeyboardInterrupt

        outputs._step = hook

    res = forked(world.analyze_args(out, "cka", "--overwrite"), before=fault)
    if res.get("hang"):
        return "hang"
    stopped = res.get("killed") == signal.SIGKILL if how == "kill" else res.get("code") == 130
    first = whole_set(out)
    again = invoke(world.analyze_args(out, first or "pwsm", "--overwrite"))
    ok = (
        stopped
        and first in ("pwsm", "cka")
        and again["code"] == 0
        and "up to date" in again["output"]
    )
    return verdict(again, ok)


def _register_swap_cases() -> None:
    for step in ("fill", "manifest", "seal", "swap", "delete old"):
        for how in ("kill", "interrupt"):
            case(f"analyze {how} at swap step '{step}'")(
                lambda w, s=step, h=how: _swap_fault(w, s, h)
            )


_register_swap_cases()


@case("two concurrent analyzes of different arguments into one new --out")
def _concurrent(world: World) -> str:
    out = world.fresh("concurrent") / "r"

    # widen the window in which both runs write (older versions: no hook, no pause)
    def slow() -> None:
        if outputs is not None:
            outputs._step = lambda name: time.sleep(1.0) if name == "swap" else None

    results: list[dict] = [{}, {}]
    threads = [
        threading.Thread(
            target=lambda i=i, m=m: results.__setitem__(
                i, forked(world.analyze_args(out, m), before=slow)
            )
        )
        for i, m in enumerate(("pwsm", "cka"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.get("code") for r in results)
    winner = whole_set(out)
    ok = codes == [0, 2] and winner is not None and any(one_line_error(r) for r in results)
    worst = next((r for r in results if r.get("hang") or r.get("traceback")), results[0])
    return verdict(worst, ok)


@case("report while an analyze holds the folder")
def _report_locked(world: World) -> str:
    needs(outputs)
    out = world.fresh("locked") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    from ftdyn.outputs import folder_lock

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        with folder_lock(out):
            os.write(write, b"1")
            time.sleep(5)
        os._exit(0)
    os.read(read, 1)
    res = forked(["report", out])
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return verdict(res, one_line_error(res) and f"PID {pid}" in res["output"])


def _fault_hook(step: str, how: str):
    """Install (in the child) a hook that kills or interrupts the run at ``step`` of a swap."""

    def fault() -> None:
        def hook(name: str) -> None:
            if name == step:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise KeyboardInterrupt

        outputs._step = hook

    return fault


def _stopped(res: dict, how: str) -> bool:
    return res.get("killed") == signal.SIGKILL if how == "kill" else res.get("code") == 130


def _report_fault(world: World, step: str, how: str) -> str:
    """report (figures/ and report.html join analyze's set) stopped at ``step``: the set is whole,
    with or without them; analyze stays up to date; a second report completes."""
    needs(getattr(outputs, "update_result_set", None))
    out = world.fresh(f"report-{how}-{step.replace(' ', '_')}") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    res = forked(["report", out], before=_fault_hook(step, how))
    if res.get("hang") or res.get("traceback"):
        return verdict(res, False)
    manifest, problem = current_set(out)
    whole = problem is None and manifest is not None and whole_set(out) == "pwsm"
    report_in = manifest is not None and "report.html" in manifest["products"]
    consistent = report_in == (out / "report.html").is_file()
    again = invoke(world.analyze_args(out, "pwsm"))
    redo = invoke(["report", out])
    ok = (
        _stopped(res, how)
        and whole
        and consistent
        and "up to date" in again["output"]
        and redo["code"] == 0
        and current_set(out)[1] is None
        and (out / "figures" / "figures.json").is_file()
    )
    return verdict(redo if redo.get("traceback") else again, ok)


def _visualize_fault(world: World, step: str, how: str) -> str:
    """visualize into a folder that holds figures, stopped at ``step``: the old figures or all
    of them, every listed file present and verified."""
    needs(getattr(outputs, "update_result_set", None))
    out = world.fresh(f"viz-{how}-{step.replace(' ', '_')}") / "figs"
    args = ["visualize", world.real_store, "--out", out, "--filter", "0"]
    first = invoke([*args, "--layer", "0"])
    res = forked([*args, "--layer", "-1"], before=_fault_hook(step, how))
    if res.get("hang") or res.get("traceback") or first["code"] != 0:
        return verdict(res, False)
    from ftdyn.viz import read_index

    files = [e["file"] for e in read_index(out)]
    ok = (
        _stopped(res, how)
        and current_set(out)[1] is None
        and all((out / f).is_file() for f in files)
    )
    redo = invoke([*args, "--layer", "-1"])  # completes the job
    ok = (
        ok
        and redo["code"] == 0
        and current_set(out)[1] is None
        and len(read_index(out)) >= len(files)
    )
    return verdict(redo, ok)


def _register_figure_cases() -> None:
    for step in ("fill", "link figures", "swap", "delete old"):
        for how in ("kill", "interrupt"):
            case(f"report {how} at swap step '{step}'")(
                lambda w, s=step, h=how: _report_fault(w, s, h)
            )
    for step in ("fill", "swap"):
        for how in ("kill", "interrupt"):
            case(f"visualize {how} at swap step '{step}'")(
                lambda w, s=step, h=how: _visualize_fault(w, s, h)
            )


_register_figure_cases()


def _hold_lock(out: Path) -> tuple[int, object]:
    from ftdyn.outputs import folder_lock

    read, write = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        with folder_lock(out):
            os.write(write, b"1")
            os.read(go_r, 1)
        os._exit(0)
    os.read(read, 1)

    def release() -> None:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)

    return pid, release


def _locked_case(world: World, name: str, args_for) -> str:
    needs(getattr(outputs, "update_result_set", None))
    out = world.fresh(name) / "o"
    if name == "extract":
        shutil.copytree(world.real_store, out)
    pid, release = _hold_lock(out)
    try:
        res = forked(args_for(world, out), deadline=180)
    finally:
        release()
    return verdict(res, one_line_error(res) and f"PID {pid}" in res["output"])


for _name, _args_for in {
    "train": lambda w, o: [
        "train",
        w.data,
        "--arch",
        "resnet18",
        "--epochs",
        "1",
        "--input-size",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        o,
    ],
    "extract": lambda w, o: [
        "extract",
        w.series,
        "--data",
        w.data / "val",
        "--out",
        o,
        "--layer",
        "layer4",
        "--layer",
        "layer1",
        "--no-progress",
        "--device",
        "cpu",
    ],  # the copied store's layers
    "visualize": lambda w, o: ["visualize", w.real_store, "--layer", "0", "--out", o],
}.items():
    case(f"{_name} into a folder another run holds")(
        lambda w, n=_name, a=_args_for: _locked_case(w, n, a)
    )


def _disk_full(world: World, command: str) -> str:
    """The disk fills (a write() with no file name, as the system reports it) while the new set is
    written: one line naming the folder, the previous set still current."""
    needs(getattr(outputs, "update_result_set", None))
    import errno

    out = world.fresh(f"full-{command}") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)

    def full() -> None:
        def hook(name: str) -> None:
            if name == "manifest":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        outputs._step = hook

    args = {
        "analyze": world.analyze_args(out, "cka", "--overwrite"),
        "report": ["report", out],
        "visualize": ["visualize", world.real_store, "--layer", "0", "--out", out],
    }[command]
    res = forked(args, before=full)
    errors = [ln for ln in res.get("output", "").splitlines() if ln.startswith("ftdyn: error:")]
    ok = (
        res.get("code") == 2
        and len(errors) == 1
        and str(out.resolve()) in errors[0]
        and "No space left" in errors[0]
        and whole_set(out) == "pwsm"
        and not (out / "report.html").exists()
    )
    return verdict(res, ok)


for _command in ("analyze", "report", "visualize"):
    case(f"disk full while {_command} writes its set")(lambda w, c=_command: _disk_full(w, c))


@case("visualize --out into the figures/ of a result set")
def _into_set(world: World) -> str:
    needs(getattr(outputs, "update_result_set", None))
    out = world.fresh("into-set") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    assert invoke(["report", out])["code"] == 0
    before = current_set(out)
    res = forked(["visualize", world.real_store, "--layer", "0", "--out", out / "figures"])
    return verdict(res, one_line_error(res) and current_set(out) == before and before[1] is None)


@case("report after a file of the result set was edited")
def _report_tampered(world: World) -> str:
    needs(getattr(outputs, "update_result_set", None))
    out = world.fresh("report-tampered") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    (out / "distances.csv").write_text("experiment,metric\nx,pwsm\n")
    res = forked(["report", out])
    return verdict(res, one_line_error(res) and not (out / "report.html").exists())


def _tamper(world: World, name: str, spoil) -> str:
    if name == "manifest":
        needs(outputs)
    out = world.fresh(name) / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    spoil(out)
    res = forked(world.analyze_args(out, "pwsm"))
    ok = (
        res.get("code") == 0
        and "up to date" not in res.get("output", "")
        and whole_set(out) == "pwsm"
    )
    return verdict(res, ok)


for _name, _spoil in {
    "distances.csv edited": (
        lambda o: (o / "distances.csv").write_text("experiment,metric\nx,pwsm\n")
    ),
    "reusability.csv deleted": lambda o: (o / "reusability.csv").unlink(),
    "results.zarr chunk altered": (
        lambda o: next(p for p in (o / "results.zarr").rglob("c/*") if p.is_file()).write_bytes(
            b"x"
        )
    ),
    "manifest damaged": lambda o: (o / SETS / "current" / "manifest.json").write_text("{"),
}.items():
    case(f"analyze after: {_name}")(lambda w, n=_name, s=_spoil: _tamper(w, n.split()[0], s))


@case("analyze after a kill left an older ftdyn's temporaries and an unfinished set")
def _stale(world: World) -> str:
    out = world.fresh("stale") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    (out / ".analyze-1234abcd.old").mkdir()
    (out / SETS / ".20260101T000000-deadbeef.partial").mkdir(parents=True, exist_ok=True)
    res = forked(world.analyze_args(out, "pwsm"))
    left = list(out.glob(".analyze-*")) + list((out / SETS).glob(".*partial"))
    return verdict(
        res,
        res.get("code") == 0
        and "up to date" in res["output"]
        and not left
        and whole_set(out) == "pwsm",
    )


@case("analyze over an older ftdyn's layout (real files, no manifest)")
def _legacy(world: World) -> str:
    out = world.fresh("legacy") / "r"
    shutil.copytree(world.results_a, out, symlinks=True)
    needs(outputs)  # older versions write this layout themselves
    for p in (
        "distances.csv",
        "reusability.csv",
        "agreement.csv",
        "agreement_summary.csv",
        "results.zarr",
    ):
        target = (out / p).resolve()
        (out / p).unlink()
        (shutil.copytree if target.is_dir() else shutil.copy2)(target, out / p)
    shutil.rmtree(out / SETS)
    res = forked(world.analyze_args(out, "pwsm"))
    return verdict(res, res.get("code") == 0 and whole_set(out) == "pwsm")


# store edits: each must be one line from analyze and from info
def _meta(path: Path, name: str | None, change) -> None:
    file = path / (name or ".") / "zarr.json"
    meta = json.loads(file.read_text())
    change(meta)
    file.write_text(json.dumps(meta))


def _flip(path: Path, name: str) -> None:
    chunk = next(f for f in sorted((path / name / "c").rglob("*")) if f.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _strip_checksum(path: Path, name: str) -> None:
    """The CRC-32C codec removed from an array's metadata, then a byte of a chunk flipped."""
    _meta(
        path,
        name,
        lambda m: m.__setitem__("codecs", [c for c in m["codecs"] if c["name"] != "crc32c"]),
    )
    chunk = next(f for f in sorted((path / name / "c").rglob("*")) if f.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-4])  # the checksum no longer belongs to the chunk
    _flip(path, name)


def _swap_ckpts(meta) -> None:
    c = meta["attributes"]["checkpoints"]
    c[1], c[2] = c[2], c[1]


def _resize(names, k):
    def edit(p: Path) -> None:
        group = zarr.open_group(p, mode="r+", zarr_format=3)
        for name in names:
            group[name].resize((k, *group[name].shape[1:]))

    return edit


STORE_EDITS = {
    "root checkpoints swapped": lambda p: _meta(p, None, _swap_ckpts),
    "layer data_type int16": lambda p: _meta(
        p, "features_3", lambda m: m.__setitem__("data_type", "int16")
    ),
    "layer x extent 6 -> 5": lambda p: _meta(
        p, "features_3", lambda m: m["shape"].__setitem__(4, 5)
    ),
    "checkpoint coord [0,1,1,3]": (
        lambda p: zarr.open_array(p / "checkpoint", mode="r+", zarr_format=3).__setitem__(
            slice(None), np.array([0, 1, 1, 3])
        )
    ),
    "complete shape huge": lambda p: _meta(
        p, "complete", lambda m: m["shape"].__setitem__(1, 10**12)
    ),
    "label length 11": lambda p: _meta(p, "label", lambda m: m["shape"].__setitem__(0, 11)),
    "label coord deleted": lambda p: shutil.rmtree(p / "label"),
    "fill_value garbage": lambda p: _meta(
        p, "features_3", lambda m: m.__setitem__("fill_value", "zz")
    ),
    "label flipped byte": lambda p: _flip(p, "label"),
    "complete flipped byte": lambda p: _flip(p, "complete"),
    "checkpoint flipped byte": lambda p: _flip(p, "checkpoint"),
    "samples_per_chunk 4": lambda p: _meta(
        p, None, lambda m: m["attributes"].__setitem__("samples_per_chunk", 4)
    ),
    "layers reordered": lambda p: _meta(p, None, lambda m: m["attributes"]["layers"].reverse()),
    "dimension names": lambda p: _meta(
        p, "features_3", lambda m: m.__setitem__("dimension_names", list("abcde"))
    ),
    "label out of range": (
        lambda p: zarr.open_array(p / "label", mode="r+", zarr_format=3).__setitem__(0, 7)
    ),
    "layer checksum stripped, a byte flipped": lambda p: _strip_checksum(p, "features_3"),
    "caught mid-extension (--allow-partial)": _resize(
        ["features_3", "layer2_relu", "complete", "checkpoint"], 5
    ),
}


def _store_edit(world: World, name: str) -> str:
    path = world.fresh("edit") / "s.zarr"
    shutil.copytree(world.store, path)
    STORE_EDITS[name](path)
    res = forked(
        [
            "analyze",
            path,
            "--out",
            path.parent / "r",
            "--no-progress",
            "--no-report",
            "--allow-partial",
        ]
    )
    info = forked(["info", path])
    ok = one_line_error(res) and one_line_error(info) and not (path.parent / "r").exists()
    return verdict(res if res.get("traceback") or res.get("hang") else info, ok)


for _edit in STORE_EDITS:
    case(f"store edit: {_edit}")(lambda w, e=_edit: _store_edit(w, e))


@case("analyze --allow-partial while extract is adding checkpoints")
def _live_extension(world: World) -> str:
    from ftdyn import store

    metadata_lock = getattr(store, "metadata_lock", None)
    needs(metadata_lock)

    path = world.fresh("live") / "s.zarr"
    shutil.copytree(world.store, path)
    read, write = os.pipe()
    pid = os.fork()
    # an extension in progress: half the arrays grown, then the rest, then the attribute
    if pid == 0:
        with metadata_lock(path, exclusive=True):
            group = zarr.open_group(path, mode="r+", zarr_format=3)
            for name in ("features_3", "complete"):
                group[name].resize((5, *group[name].shape[1:]))
            os.write(write, b"1")
            time.sleep(1.5)
            for name in ("layer2_relu", "checkpoint"):
                group[name].resize((5, *group[name].shape[1:]))
            group["checkpoint"][4] = 4
            group.attrs["checkpoints"] = [
                *group.attrs["checkpoints"],
                {"epoch": 4, "file": "e4.pt", "sha256": "4"},
            ]
        os._exit(0)
    os.read(read, 1)
    res = forked(
        [
            "analyze",
            path,
            "--out",
            path.parent / "r",
            "--no-progress",
            "--no-report",
            "--allow-partial",
        ]
    )
    os.waitpid(pid, 0)
    epochs = (
        sorted(
            int(e)
            for e in zarr.open_group(path.parent / "r" / "results.zarr", mode="r")["epoch"][...]
        )
        if res.get("code") == 0
        else None
    )
    return verdict(res, res.get("code") == 0 and epochs == [0, 1, 2, 3])


# probe and training folders
def _probe_case(world: World, name: str, plant) -> str:
    data = world.fresh(name) / "val"
    shutil.copytree(world.data / "val", data)
    expected = sum(1 for _ in data.rglob("*.png"))
    plant(data)
    out = data.parent / "s.zarr"
    res = forked(_extract_args(world, world.series, out, data=data), deadline=180)
    n = zarr.open_group(out, mode="r").attrs["probe"]["n_samples"] if out.exists() else None
    return verdict(res, res.get("code") == 0 and n == expected)


def _sock(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))  # left bound: the file stays a socket


for _name, _plant in {
    "FIFO named zz.png in a class folder": lambda d: os.mkfifo(d / "circle" / "zz.png"),
    "symlink loop ln -s .. class/loop": lambda d: (d / "circle" / "loop").symlink_to(".."),
    "symlink to its own class folder": lambda d: (d / "square" / "self").symlink_to("."),
    "symlink to an image outside the folder": (
        lambda d: (d / "circle" / "x.png").symlink_to(
            next((d.parent.parent / "data" / "train" / "circle").iterdir()).resolve()
        )
    ),
    "broken symlink named .png": (
        lambda d: (d / "circle" / "gone.png").symlink_to(d / "nothing.png")
    ),
    "socket named s.png": lambda d: _sock(d / "stripes" / "s.png"),
    "class folder linking to its parent zz_loopclass -> .": (
        lambda d: (d / "zz_loopclass").symlink_to(".")
    ),
}.items():
    case(f"extract probe folder: {_name}")(
        lambda w, n=_name, p=_plant: _probe_case(w, n.split()[0], p)
    )


def _train(world: World, name: str, prepare, extra=()) -> dict:
    out = world.fresh(name) / "series"
    prepare(out)
    return forked(
        [
            "train",
            world.data,
            "--arch",
            "resnet18",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            out,
            *extra,
        ],
        deadline=180,
    )


@case("train --out inside its data folder")
def _train_inside(world: World) -> str:
    data = world.fresh("inside") / "data"
    shutil.copytree(world.data, data)
    res = forked(
        [
            "train",
            data,
            "--arch",
            "resnet18",
            "--epochs",
            "1",
            "--out",
            data / "train" / "series",
            "--no-progress",
        ]
    )
    return verdict(res, one_line_error(res) and not (data / "train" / "series").exists())


@case("train with a FIFO in its training folder")
def _train_fifo(world: World) -> str:
    data = world.fresh("fifo-train") / "data"
    shutil.copytree(world.data, data)
    os.mkfifo(data / "train" / "circle" / "zz.png")
    res = forked(
        [
            "train",
            data,
            "--arch",
            "resnet18",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            data.parent / "series",
        ],
        deadline=180,
    )
    return verdict(res, res.get("code") == 0)


@case("train after a kill while saving epoch 0 (a .tmp left)")
def _train_tmp(world: World) -> str:
    def prepare(out: Path) -> None:
        out.mkdir(parents=True)
        (out / ".epoch_000.pt.0123456789abcdef.tmp").write_bytes(b"\0" * 4096)

    res = _train(world, "tmp", prepare)
    return verdict(res, res.get("code") == 0)


@case("train --resume after a kill before the first manifest")
def _train_resume(world: World) -> str:
    def prepare(out: Path) -> None:
        out.mkdir(parents=True)
        shutil.copy2(world.series / "epoch_000.pt", out / "epoch_000.pt")

    res = _train(world, "resume", prepare, ["--resume"])
    return verdict(res, res.get("code") == 0)


# flags
_FLAG_CASES = {
    "analyze --memory-limit 1000TB": lambda w: w.analyze_args(
        w.fresh("mem") / "r", "pwsm", "--memory-limit", "1000TB"
    ),
    "analyze --workers 0": lambda w: w.analyze_args(w.fresh("wk") / "r", "pwsm", "--workers", "0"),
    "analyze --reference 9": lambda w: w.analyze_args(
        w.fresh("ref") / "r", "pwsm", "--reference", "9"
    ),
    "extract --input-size 48 on a series trained at 32": lambda w: [
        "extract",
        w.series,
        "--data",
        w.data / "val",
        "--out",
        w.fresh("size") / "s.zarr",
        "--input-size",
        "48",
        "--no-progress",
    ],
    "extract --layer fc (not a feature map)": lambda w: [
        "extract",
        w.series,
        "--data",
        w.data / "val",
        "--out",
        w.fresh("fc") / "s.zarr",
        "--layer",
        "fc",
        "--no-progress",
        "--device",
        "cpu",
    ],
    "extract --layer layer4:class (a CNN's output has no prefix token)": lambda w: [
        "extract",
        w.series,
        "--data",
        w.data / "val",
        "--out",
        w.fresh("cls") / "s.zarr",
        "--layer",
        "layer4:class",
        "--no-progress",
        "--device",
        "cpu",
    ],
    "train --epochs 99999999999999999999": lambda w: [
        "train",
        w.data,
        "--arch",
        "resnet18",
        "--epochs",
        "99999999999999999999",
        "--out",
        w.fresh("ep") / "s",
        "--no-progress",
    ],
    "train --epochs -1": lambda w: [
        "train",
        w.data,
        "--arch",
        "resnet18",
        "--epochs",
        "-1",
        "--out",
        w.fresh("ep") / "s",
        "--no-progress",
    ],
}
for _name, _args in _FLAG_CASES.items():
    case(_name)(lambda w, a=_args: (lambda res: verdict(res, one_line_error(res)))(forked(a(w))))


@case("analyze --scheduler without distributed installed")
def _scheduler(world: World) -> str:
    import importlib.util

    real = importlib.util.find_spec

    def hide() -> None:
        importlib.util.find_spec = lambda name, *a: (
            None if name == "distributed" else real(name, *a)
        )

    res = forked(
        world.analyze_args(world.fresh("sched") / "r", "pwsm", "--scheduler", "tcp://127.0.0.1:1"),
        before=hide,
    )
    return verdict(res, one_line_error(res) and "pip install" in res["output"])


@case("analyze --memory-limit 64MB (64MiB is the minimum)")
def _memory_units(world: World) -> str:
    res = forked(world.analyze_args(world.fresh("mb") / "r", "pwsm", "--memory-limit", "64MB"))
    line = res.get("output", "")
    return verdict(res, one_line_error(res) and "67108864 bytes" in line and "68MB" in line)


# extract: the store's creation and attributes, links in the series, damaged images
def _extract_args(world: World, series: Path, out: Path, *extra, data: Path | None = None) -> list:
    """``ftdyn extract`` of layer4 on the CPU, probing ``data`` (default: the world's val split)."""
    return [
        "extract",
        series,
        "--data",
        data or world.data / "val",
        "--out",
        out,
        "--layer",
        "layer4",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def _kill_when(condition) -> None:
    """SIGKILL this (forked) run at the moment ``condition()`` holds."""
    if condition():
        os.kill(os.getpid(), signal.SIGKILL)


@case("extract killed between the store's attribute writes of an extension")
def _stale_manifest(world: World) -> str:
    """A store extracted while the series trained (epoch 0 of 0-1), extended once it finished,
    killed when the training manifest attribute is about to change: the re-run's store must
    carry the series' manifest."""
    from ftdyn import checkpoints as ck

    series = world.fresh("partial") / "series"
    series.mkdir()
    full = ck.read_manifest(world.series)
    partial = {**full, "epochs": full["epochs"][:1], "complete": False}
    shutil.copy2(world.series / partial["epochs"][0]["file"], series)
    ck.write_manifest(series, partial)
    out = series.parent / "s.zarr"
    assert invoke(_extract_args(world, series, out))["code"] == 0
    for entry in full["epochs"][1:]:
        shutil.copy2(world.series / entry["file"], series)
    ck.write_manifest(series, full)

    def kill_at_manifest() -> None:
        update = zarr.Group.update_attributes

        def hooked(group, new):
            _kill_when(lambda: "manifest" in new and new["manifest"] != group.attrs.get("manifest"))
            return update(group, new)

        zarr.Group.update_attributes = hooked

    res = forked(_extract_args(world, series, out), before=kill_at_manifest, deadline=180)
    if res.get("hang") or res.get("traceback"):
        return verdict(res, False)
    again = invoke(_extract_args(world, series, out))
    stored = zarr.open_group(out, mode="r").attrs.get("manifest")
    return verdict(again, res.get("killed") == signal.SIGKILL and stored == full)


@case("extract a series with links to /dev/zero, a FIFO and a link loop")
def _series_links(world: World) -> str:
    series = world.fresh("links") / "series"
    series.mkdir()
    for k, entry in enumerate(json.loads((world.series / "manifest.json").read_text())["epochs"]):
        shutil.copy2(world.series / entry["file"], series / f"ep{k}.pt")
    (series / "ep2.pt").symlink_to("/dev/zero")
    os.mkfifo(series / "ep3.pt")
    (series / "ep4.pt").symlink_to("ep5.pt")
    (series / "ep5.pt").symlink_to("ep4.pt")
    out = series.parent / "s.zarr"
    res = forked(_extract_args(world, series, out, "--arch", "resnet18"), deadline=180)
    named = all(str(series / f"ep{k}.pt") in res.get("output", "") for k in (2, 3, 4, 5))
    return verdict(res, res.get("code") == 0 and "warning:" in res.get("output", "") and named)


@case("two extracts creating one new store at once")
def _racing_creation(world: World) -> str:
    out = world.fresh("race") / "s.zarr"

    def slow_creation() -> None:  # widen the window in which both create the store
        import xarray

        to_zarr = xarray.Dataset.to_zarr

        def slow(ds, *args, **kwargs):
            time.sleep(1.0)
            return to_zarr(ds, *args, **kwargs)

        xarray.Dataset.to_zarr = slow

    results: list[dict] = [{}, {}]
    threads = [
        threading.Thread(
            target=lambda i=i: results.__setitem__(
                i, forked(_extract_args(world, world.series, out), slow_creation, deadline=180)
            )
        )
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worst = next((r for r in results if r.get("hang") or r.get("traceback")), None)
    if worst is not None:
        return verdict(worst, False)
    again = invoke(_extract_args(world, world.series, out))
    loser = next((r for r in results if r.get("code") != 0), None)
    ok = (
        loser is not None
        and one_line_error(loser)
        and str(out) in loser["output"]
        and "Directory not empty" not in loser["output"]
        and again["code"] == 0
        and "nothing to do" in again["output"]
    )
    return verdict(again, ok)


@case("disk full while extract creates its store")
def _creation_disk_full(world: World) -> str:
    import errno

    out = world.fresh("full-store") / "s.zarr"

    def full() -> None:
        from zarr.storage import LocalStore

        async def no_space(store, key, value):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        LocalStore.set = no_space

    res = forked(_extract_args(world, world.series, out), before=full, deadline=180)
    ok = (
        one_line_error(res)
        and f"--out {out}" in res["output"]
        and "No space left" in res["output"]
        and not list(out.parent.iterdir())
    )
    return verdict(res, ok)


@case("extract killed while creating its store, then re-run")
def _killed_creation(world: World) -> str:
    out = world.fresh("killed-creation") / "s.zarr"

    def kill_at_rename() -> None:
        rename = Path.rename

        def hooked(src, dst):
            _kill_when(lambda: ".creating-" in Path(src).name)
            return rename(src, dst)

        Path.rename = hooked

    res = forked(_extract_args(world, world.series, out), before=kill_at_rename, deadline=180)
    if res.get("hang") or res.get("traceback"):
        return verdict(res, False)
    left = list(out.parent.glob(".s.zarr.creating-*"))
    again = invoke(_extract_args(world, world.series, out))
    ok = (
        res.get("killed") == signal.SIGKILL
        and left
        and again["code"] == 0
        and not list(out.parent.glob(".s.zarr.creating-*"))
    )
    return verdict(again, ok)


@case("visualize a store whose images array is damaged")
def _damaged_images(world: World) -> str:
    path = world.fresh("images") / "s.zarr"
    shutil.copytree(world.real_store, path)
    _flip(path, "images")
    res = forked(["visualize", path, "--layer", "0", "--out", path.parent / "figs"])
    return verdict(res, one_line_error(res) and "array 'images'" in res["output"])


@case("train with the disk full inside torch.save")
def _train_full_disk(world: World) -> str:
    import errno

    def full() -> None:
        import torch

        save = torch.save

        class FullDisk:
            def __init__(self, fh):
                self.fh = fh

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self.fh, name)

        torch.save = lambda obj, fh, **kw: save(obj, FullDisk(fh), **kw)

    out = world.fresh("full-train") / "series"
    res = forked(
        ["train", world.data, "--arch", "resnet18", "--epochs", "1", "--input-size", "32",
         "--device", "cpu", "--no-progress", "--out", out],
        before=full,
        deadline=180,
    )  # fmt: skip
    errors = [ln for ln in res.get("output", "").splitlines() if ln.startswith("ftdyn: error:")]
    ok = (
        res.get("code") == 2
        and len(errors) == 1  # after the note that epoch 0 is randomly initialized
        and str(out) in errors[0]
        and "No space left" in errors[0]
        and "inline_container" not in res["output"]
    )
    return verdict(res, ok)


# -------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the per-case outcomes here"
    )
    opts = parser.parse_args()
    work = opts.work or Path(tempfile.mkdtemp(prefix="ftdyn-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        world = World(work)
    outcomes = []
    for name, fn in CASES:
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                outcome = fn(world)
        except NotApplicable:
            outcome = "n/a"
        except Exception as exc:  # a broken case is reported, not hidden
            outcome = f"case error: {type(exc).__name__}: {exc}"
        outcomes.append(
            {"case": name, "outcome": outcome, "seconds": round(time.perf_counter() - t0, 1)}
        )
        print(f"{outcome:<10} {time.perf_counter() - t0:6.1f} s  {name}", flush=True)
    counts = collections.Counter(o["outcome"] for o in outcomes)
    tried = [o for o in outcomes if o["outcome"] != "n/a"]
    summary = {
        "tried": len(tried),
        "not applicable": len(outcomes) - len(tried),
        **{k: counts.get(k, 0) for k in ("clean", "silent", "traceback", "hang")},
        "case errors": sum(v for k, v in counts.items() if k.startswith("case error")),
        "seconds": round(time.perf_counter() - started),
    }
    print(json.dumps(summary))
    write_result("hostile_matrix", summary, command_line())
    if opts.json:
        opts.json.write_text(json.dumps({"summary": summary, "cases": outcomes}, indent=1))
    if opts.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["clean"] == summary["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
