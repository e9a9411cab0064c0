"""Bad flag values refused up front with one line: a cluster without its optional package,
more memory than the machine has, an --input-size other than the series'."""

from __future__ import annotations

import importlib.util

from typer.testing import CliRunner

from ftdyn.analysis import run as AR
from ftdyn.cli import app
from test_analysis import make_store


def _one_line(args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    return result.output


def test_scheduler_without_distributed_names_the_install(tmp_path, monkeypatch):
    path, _ = make_store(tmp_path / "s.zarr")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    line = _one_line(["analyze", path, "--out", tmp_path / "r", "--scheduler", "tcp://127.0.0.1:1", "--no-progress"])
    assert "--scheduler" in line and "pip install" in line
    assert not (tmp_path / "r").exists()


def test_memory_limit_above_the_machine_is_refused(tmp_path):
    path, _ = make_store(tmp_path / "s.zarr")
    total = AR.physical_memory()
    assert total is not None
    line = _one_line(["analyze", path, "--out", tmp_path / "r", "--memory-limit", f"{total * 2}", "--no-progress"])
    assert "--memory-limit" in line and "GB of memory" in line
    assert not (tmp_path / "r").exists()


def test_input_size_other_than_the_series_is_refused(tiny_series, image_folder, tmp_path):
    line = _one_line(["extract", tiny_series, "--data", image_folder / "val", "--out", tmp_path / "s.zarr",
                      "--input-size", "48", "--no-progress"])
    assert "--input-size 48" in line and "trained at" in line
    assert not (tmp_path / "s.zarr").exists()
