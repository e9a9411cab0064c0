"""Extraction on a Dask cluster (``ftdyn extract --scheduler``): the store equals a serial
extraction bit for bit, a worker killed mid-run leaves a store the next run finishes (no region
marked without its data), a worker's error is the local run's one line, and an unreachable
scheduler or a missing ``distributed`` is one line naming ``--scheduler``."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import shutil
import signal
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from helpers import write_image_folder
from test_extract import _model, _series_of, _state, make_series
from typer.testing import CliRunner

from ftdyn import runtime
from ftdyn.cli import app
from ftdyn.extraction import NonFiniteActivations, extract
from ftdyn.store import StoreWriter, chunk_on_disk, completeness

distributed = pytest.importorskip("distributed")

#: 12 probe images in chunks of 2, batches of 4: 6 regions per checkpoint
COMMON = ["--chunk-samples", "2", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("probe") / "val", 4, size=40, seed=3)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("series") / "ckpts"
    make_series(folder, "resnet18", 3)
    return folder


@pytest.fixture(scope="module")
def serial(series, probe, tmp_path_factory) -> Path:
    """The same series extracted without a cluster (one torch thread, as the workers)."""
    out = tmp_path_factory.mktemp("serial") / "serial.zarr"
    return extract(series, data=probe, out=out, samples_per_chunk=2, batch_size=4, progress=False)


@contextlib.contextmanager
def local_cluster(**config):
    """Two worker processes of one thread each (one torch thread: bit-identical to the serial
    run), closed whatever happens; ``config``: dask settings while it runs."""
    with dask.config.set(config):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"OMP_NUM_THREADS": "1"},
        )
        try:
            yield cluster
        finally:
            cluster.close(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as running:
        yield running


def _extract(*args):
    return CliRunner().invoke(app, ["extract", *map(str, args)])


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    return result.output.strip()


def assert_same_store(a: Path, b: Path) -> None:
    """Every array of the two stores equal bit for bit, and every attribute but the runs'
    provenance."""
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    attrs = [{k: v for k, v in dict(g.attrs).items() if k != "runs"} for g in (ga, gb)]
    assert attrs[0] == attrs[1]
    assert sorted(ga.array_keys()) == sorted(gb.array_keys())
    for name in ga.array_keys():
        x, y = ga[name], gb[name]
        assert (x.dtype, x.shape, dict(x.attrs)) == (y.dtype, y.shape, dict(y.attrs)), name
        xv, yv = x[...], y[...]
        if xv.dtype.kind in "fiub":
            assert xv.tobytes() == yv.tobytes(), name
        else:
            np.testing.assert_array_equal(xv, yv, err_msg=name)


@pytest.mark.slow
def test_cluster_extraction_equals_serial_bit_for_bit(series, probe, serial, cluster, tmp_path):
    out = tmp_path / "cluster.zarr"
    address = cluster.scheduler_address
    result = _extract(series, "--data", probe, "--out", out, *COMMON, "--scheduler", address)
    assert result.exit_code == 0, result.output
    assert f"worker(s) of {address}" in result.output
    assert_same_store(serial, out)
    StoreWriter(out).check_region_chunks()  # what let the workers write it side by side
    (run,) = zarr.open_group(out, mode="r").attrs["runs"]
    assert run["scheduler"] == address and run["device"] == "cpu"
    assert sum(w["regions"] for w in run["workers"]) == 18
    assert all(w["device"] == "cpu" for w in run["workers"])
    # complete: a re-run on the cluster does nothing
    again = _extract(series, "--data", probe, "--out", out, *COMMON, "--scheduler", address)
    assert again.exit_code == 0 and "nothing to do" in again.output


class KillAfterFirstRegion(distributed.WorkerPlugin):
    """Test only: the worker that writes the first region of checkpoint 1 is killed (SIGKILL)
    right after its activations are on disk, before the driver could mark it."""

    def setup(self, worker):
        from ftdyn.store import StoreWriter

        write = StoreWriter.write_region

        def write_then_die(writer, ci, chunk, activations, *, mark=True):
            write(writer, ci, chunk, activations, mark=mark)
            if ci == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        StoreWriter.write_region = write_then_die


@pytest.mark.slow
def test_killed_worker_leaves_a_store_the_next_run_finishes(series, probe, serial, tmp_path):
    out = tmp_path / "killed.zarr"
    # no second try of a task whose worker died, one task per worker at a time
    with local_cluster(
        **{
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.worker-saturation": 1,
        }
    ) as killing:
        with distributed.Client(killing) as client:
            client.register_plugin(KillAfterFirstRegion())
        result = _extract(
            series, "--data", probe, "--out", out, *COMMON, "--scheduler", killing.scheduler_address
        )
    line = _one_line(result)
    assert "--scheduler" in line and "epoch 1" in line and "re-run the same command" in line
    marks = completeness(out)
    variables = zarr.open_group(out, mode="r").attrs["layer_variables"].values()
    # the killed worker's region: on disk, not marked
    written = [c for c in range(marks.shape[1]) if chunk_on_disk(out, next(iter(variables)), 1, c)]
    assert not marks[1].any() and written
    for k, c in np.argwhere(marks):  # no region marked without its data
        assert all(chunk_on_disk(out, v, k, c) for v in variables)
    assert not zarr.open_group(out, mode="r").attrs["runs"]  # the failed run recorded none

    # the same command without the cluster finishes it
    result = _extract(series, "--data", probe, "--out", out, *COMMON)
    assert result.exit_code == 0, result.output
    assert completeness(out).all()
    assert_same_store(serial, out)


@pytest.mark.slow
def test_worker_error_is_the_local_runs_one_line(probe, cluster, tmp_path):
    """A checkpoint whose layer3 overflows float16: the cluster's worker refuses the region as a
    local run does, and the user sees the same line (with its float32 peak); none of that
    checkpoint's regions is marked (the other tasks stop at their next batch)."""
    model = _model("resnet18")
    big = _state(model)
    big["layer3.1.bn2.weight"] = big["layer3.1.bn2.weight"] * 1e6
    _series_of(tmp_path / "ck", [_state(model), big])
    out = tmp_path / "s.zarr"
    # one writer thread: the first region refused is the first one, here and there
    args = [tmp_path / "ck", "--data", probe, "--out", out, "--layer", "layer3", "--writers", "1"]
    args += COMMON
    on_cluster = _one_line(_extract(*args, "--scheduler", cluster.scheduler_address))
    assert not completeness(out)[1].any()
    shutil.rmtree(out)
    local = _one_line(_extract(*args))
    assert on_cluster == local and "epoch 1" in local and "65504" in local


def test_unreachable_scheduler_is_one_line(series, probe, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CONNECT_TIMEOUT", "1s")
    out = tmp_path / "s.zarr"
    line = _one_line(
        _extract(series, "--data", probe, "--out", out, *COMMON, "--scheduler", "tcp://127.0.0.1:1")
    )
    assert line.startswith("ftdyn: error: --scheduler: cannot connect to tcp://127.0.0.1:1")
    assert not out.exists()


def test_scheduler_without_distributed_names_the_install(series, probe, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "distributed" else real(name, *a),
    )
    out = tmp_path / "s.zarr"
    line = _one_line(
        _extract(series, "--data", probe, "--out", out, *COMMON, "--scheduler", "tcp://127.0.0.1:1")
    )
    assert "--scheduler" in line and "pip install" in line and not out.exists()


def test_non_finite_activations_cross_processes_whole():
    """A worker's refusal reaches the driver with what its message and the float32 peak need."""
    exc = NonFiniteActivations("out x.zarr: layer l", "l", 2, slice(4, 6), 3, 7.5, True)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is NonFiniteActivations and str(back) == str(exc)
    assert (back.ci, back.rows, back.overflow, back.text(1e6)) == (
        2,
        slice(4, 6),
        True,
        exc.text(1e6),
    )
