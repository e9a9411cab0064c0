"""Bad flag values refused up front with one line: a cluster without its optional package,
more memory than the machine has, an --input-size other than the series'."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import make_planted_store
from typer.testing import CliRunner

import ftdyn
from ftdyn import FtdynError
from ftdyn.analysis import run as AR
from ftdyn.cli import app


def _one_line(args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    return result.output


def test_scheduler_without_distributed_names_the_install(tmp_path, monkeypatch):
    path, _ = make_planted_store(tmp_path / "s.zarr")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "distributed" else real(name, *a),
    )
    line = _one_line(
        [
            "analyze",
            path,
            "--out",
            tmp_path / "r",
            "--scheduler",
            "tcp://127.0.0.1:1",
            "--no-progress",
        ]
    )
    assert "--scheduler" in line and "pip install" in line
    assert not (tmp_path / "r").exists()


def test_memory_limit_above_the_machine_is_refused(tmp_path):
    path, _ = make_planted_store(tmp_path / "s.zarr")
    total = AR.physical_memory()
    assert total is not None
    line = _one_line(
        [
            "analyze",
            path,
            "--out",
            tmp_path / "r",
            "--memory-limit",
            f"{total * 2}",
            "--no-progress",
        ]
    )
    assert "--memory-limit" in line and "GB of memory" in line
    assert not (tmp_path / "r").exists()


def test_input_size_other_than_the_series_is_refused(tiny_series, image_folder, tmp_path):
    line = _one_line(
        [
            "extract",
            tiny_series,
            "--data",
            image_folder / "val",
            "--out",
            tmp_path / "s.zarr",
            "--input-size",
            "48",
            "--no-progress",
        ]
    )
    assert "--input-size 48" in line and "trained at" in line
    assert not (tmp_path / "s.zarr").exists()


def _same_error_two_ways(cli_args, call) -> tuple[str, str]:
    """The error line of ``ftdyn CLI_ARGS`` (without its prefix) and the message of the same call
    made from Python."""
    line = _one_line(cli_args).removeprefix("ftdyn: error: ").strip()
    with pytest.raises(FtdynError) as info:
        call()
    return line, str(info.value)


def test_each_command_names_flags_on_the_command_line_and_parameters_in_python(
    image_folder, tmp_path
):
    """The same bad value: the CLI's line names the flag, the Python API's message the
    parameter; the rest of the message is the same."""
    data, series = image_folder / "val", tmp_path / "series"
    cases = {
        "train": (
            ["train", data, "--arch", "resnet18", "--out", series, "--workers", "-1"],
            lambda: ftdyn.train(data, arch="resnet18", out=series, num_workers=-1),
            "--workers: must be 0 or more",
            "num_workers: must be 0 or more",
        ),
        "extract": (
            ["extract", series, "--data", data, "--out", tmp_path / "s.zarr", "--seed", "-1"],
            lambda: ftdyn.extract(series, data=data, out=tmp_path / "s.zarr", probe_seed=-1),
            "--seed: -1 is out of range",
            "probe_seed: -1 is out of range",
        ),
        "analyze": (
            ["analyze", tmp_path / "s.zarr", "--out", tmp_path / "r", "--memory-limit", "lots"],
            lambda: ftdyn.analyze(tmp_path / "s.zarr", out=tmp_path / "r", memory_limit="lots"),
            "--memory-limit: cannot read 'lots'",
            "memory_limit: cannot read 'lots'",
        ),
        "visualize": (
            [
                "visualize",
                tmp_path / "s.zarr",
                "--layer",
                "0",
                "--out",
                tmp_path / "f",
                "--n-filters",
                "0",
            ],
            lambda: ftdyn.visualize(tmp_path / "s.zarr", layer=0, out=tmp_path / "f", n_filters=0),
            "--n-filters 0: must be at least 1",
            "n_filters=0: must be at least 1",
        ),
    }
    for command, (cli_args, call, flag_text, param_text) in cases.items():
        line, message = _same_error_two_ways(cli_args, call)
        assert line.startswith(flag_text) and message.startswith(param_text), (
            command,
            line,
            message,
        )
        assert line.removeprefix(flag_text) == message.removeprefix(param_text), command


def test_report_names_out_as_a_flag_or_a_parameter(tmp_path):
    path, _ = make_planted_store(tmp_path / "s.zarr")
    results = tmp_path / "r"
    ftdyn.analyze(path, out=results, metrics=["cka"], progress=False)
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    line, message = _same_error_two_ways(
        ["report", results, "--out", blocked], lambda: ftdyn.report(results, out=blocked)
    )
    assert line.startswith(f"--out {blocked}: ") and message.startswith(f"out={blocked}: "), (
        line,
        message,
    )
    assert line.removeprefix(f"--out {blocked}") == message.removeprefix(f"out={blocked}")
