"""The scripts in examples/ at toy size: real runs, real outputs.

* paper_setup.py: resnet18 x two tiny datasets, 1 epoch at 32 px, random init; then
  the same command again must skip every stage;
* third_party_series.py (as a subprocess, like a user runs it): Lightning-like
  ``.ckpt`` files built here, a ``--source`` file as epoch 0;
* custom_figure.py on the paper-setup results.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_image_folder

from ftdyn.store import open_store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOY = [
    "--weights",
    "none",
    "--input-size",
    "32",
    "--epochs",
    "1",
    "--per-class",
    "2",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--quiet",
]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy_datasets(tmp_path_factory) -> dict[str, Path]:
    """Two ImageFolders with train/ (3 classes x 4) and val/ (3 x 2), 32 px."""
    root = tmp_path_factory.mktemp("example_data")
    out = {}
    for name, seed in (("alpha", 0), ("beta", 7)):
        write_image_folder(root / name / "train", 4, seed=seed)
        write_image_folder(root / name / "val", 2, seed=seed + 1)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def paper_run(toy_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "run"
    argv = [
        "--out",
        str(out),
        "--arch",
        "resnet18",
        "--dataset",
        *(f"{k}={v}" for k, v in toy_datasets.items()),
        "--lr-for",
        "beta=1e-3",
        *TOY,
    ]
    assert load_example("paper_setup").main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_paper_setup_runs_the_grid(paper_run, capsys):
    out, argv = paper_run
    results = out / "results"
    assert (results / "report.html").stat().st_size > 10_000
    for tag in ("resnet18_alpha", "resnet18_beta"):
        assert (out / "series" / tag / "manifest.json").is_file()
        assert (out / "stores" / f"{tag}.zarr").is_dir()
    import json

    lr = {
        t: json.loads((out / "series" / f"resnet18_{t}" / "manifest.json").read_text())[
            "hyperparameters"
        ]["lr"]
        for t in ("alpha", "beta")
    }
    assert lr == {"alpha": 1e-4, "beta": 1e-3}  # --lr-for overrides one dataset

    rows = read_csv(results / "distances.csv")
    seen = {(r["experiment"], int(r["epoch"])) for r in rows}
    assert seen == {(e, k) for e in ("resnet18/alpha", "resnet18/beta") for k in (0, 1)}
    layers = {r["layer"] for r in rows}
    assert len(layers) >= 4  # the default layers of resnet18
    degenerate = {
        (r["experiment"], r["layer"]) for r in rows if r["metric"] == "pwsm" and r["value"] == ""
    }
    # toy sizes: PWSM undefined deep
    # a NaN value: a degenerate whole-layer value, or every filter constant over the few images
    odd = [r for r in rows if r["value"] == "" and r["n_nan"] not in ("1", r["n_filters"])]
    assert degenerate and not odd, odd
    for r in (r for r in rows if r["value"] != ""):  # epoch 0 is the reference itself
        if r["epoch"] == "0":
            assert float(r["value"]) == pytest.approx(0, abs=1e-6)
        else:
            assert float(r["value"]) >= 0
    reuse = read_csv(results / "reusability.csv")
    assert {r["experiment"] for r in reuse} == {"resnet18/alpha", "resnet18/beta"}

    # the same command again: every stage is skipped, nothing is rewritten
    stamps = {
        p: p.stat().st_mtime_ns for p in [*(out / "series").rglob("*.pt"), results / "report.html"]
    }
    capsys.readouterr()
    assert load_example("paper_setup").main(argv) == 0
    text = capsys.readouterr()
    assert "up to date" in text.out + text.err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_paper_setup_refuses_bad_datasets(tmp_path, toy_datasets, capsys):
    main = load_example("paper_setup").main
    assert main(["--out", str(tmp_path / "o"), "--dataset", f"x={tmp_path}"]) == 2
    assert "no train/ and no val/" in capsys.readouterr().err
    good = f"a={toy_datasets['alpha']}"
    assert main(["--out", str(tmp_path / "o"), "--dataset", good, "--lr-for", "b=1e-3"]) == 2
    assert "not one of the --dataset names" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o"), "--dataset", good, good]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.slow
def test_custom_figure(paper_run, tmp_path, capsys):
    from PIL import Image

    out, _ = paper_run
    main = load_example("custom_figure").main
    png = tmp_path / "figs" / "drift.png"
    assert (
        main(["--results", str(out / "results"), "--out", str(png), "--metric", "procrustes"]) == 0
    )
    assert png.stat().st_size > 20_000
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape[1] > 1000 and img.std() > 10  # two panels, not blank
    printed = capsys.readouterr().out
    assert "resnet18/alpha: procrustes at epoch 1" in printed
    # pwsm is computed on the channels view: no per-filter values for a histogram
    assert (
        main(["--results", str(out / "results"), "--out", str(png), "--hist-metric", "pwsm"]) == 2
    )
    assert "no per-filter values" in capsys.readouterr().err


def _lightning_series(folder: Path, source_file: Path) -> None:
    """Two Lightning-like checkpoints of a resnet18 that drifts away from ``source_file``."""
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10)  # other head than the fine-tuned model
    torch.save(source.state_dict(), source_file)
    tuned = torchvision.models.resnet18(num_classes=3)
    base = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    base.update({k: v for k, v in tuned.state_dict().items() if k.startswith("fc.")})
    gen = torch.Generator().manual_seed(1)
    noise = {
        k: torch.randn(v.shape, generator=gen) * v.std()
        for k, v in base.items()
        if v.is_floating_point() and v.dim() == 4
    }  # conv weights
    folder.mkdir()
    for epoch in (0, 1):  # Lightning counts from 0: epoch=0 is the state after the first epoch
        state = {
            f"model.{k}": (v + 0.1 * (epoch + 1) * noise[k]) if k in noise else v.clone()
            for k, v in base.items()
        }
        # a loss module's buffer: outside the model, dropped
        state["criterion.weight"] = torch.ones(3)
        torch.save(
            {
                "epoch": epoch,
                "global_step": 3 * (epoch + 1),
                "pytorch-lightning_version": "2.4.0",
                "state_dict": state,
                "optimizer_states": [],
                "lr_schedulers": [],
                "hyper_parameters": {"lr": 1e-4, "arch": "resnet18"},
            },
            folder / f"epoch={epoch}-step={3 * (epoch + 1)}.ckpt",
        )


@pytest.mark.slow
def test_third_party_series_as_a_script(tmp_path, toy_datasets):
    ckpts, source = tmp_path / "checkpoints", tmp_path / "source.pt"
    _lightning_series(ckpts, source)
    out = tmp_path / "tp"
    cmd = [
        sys.executable,
        str(EXAMPLES / "third_party_series.py"),
        "--ckpts",
        str(ckpts),
        "--arch",
        "resnet18",
        "--source",
        str(source),
        "--data",
        str(toy_datasets["alpha"] / "val"),
        "--out",
        str(out),
        "--input-size",
        "32",
        "--per-class",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch   0  source.pt" in proc.stdout and "epoch   2  epoch=1-step=6.ckpt" in proc.stdout
    assert (out / "results" / "report.html").is_file() and (out / "store.zarr").is_dir()

    rows = read_csv(out / "results" / "distances.csv")
    assert {int(r["epoch"]) for r in rows} == {0, 1, 2}  # source + the two shifted Lightning epochs
    for metric in ("procrustes", "cka"):
        mean = {
            k: np.mean(
                # a layer whose every filter is constant over the few images has no value
                [
                    float(r["value"])
                    for r in rows
                    if r["metric"] == metric and int(r["epoch"]) == k and r["value"] != ""
                ]
            )
            for k in (0, 1, 2)
        }
        assert mean[0] == pytest.approx(0, abs=1e-6)
        assert 0 < mean[1] < mean[2]  # the perturbation grows with the epoch, so does the distance


def test_third_party_refuses_pickled_objects_without_trust(tmp_path, toy_datasets, capsys):
    import torchvision

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    state = {
        f"model.{k}": v for k, v in torchvision.models.resnet18(num_classes=3).state_dict().items()
    }
    # argparse.Namespace (timm's and torchvision's args) is allowed; any other object is not
    torch.save(
        {
            "epoch": 0,
            "state_dict": state,
            "hyper_parameters": argparse.Namespace(lr=1e-4),
            "started": datetime.datetime(2024, 1, 1),
        },
        ckpts / "epoch=0.ckpt",
    )
    main = load_example("third_party_series").main
    argv = [
        "--ckpts",
        str(ckpts),
        "--arch",
        "resnet18",
        "--data",
        str(toy_datasets["alpha"] / "val"),
        "--out",
        str(tmp_path / "o"),
        "--input-size",
        "32",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trust_checkpoint" in err and "datetime" in err and "Namespace" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_vit_class_token(toy_datasets, tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "vit"
    argv = ["--data", str(toy_datasets["alpha"]), "--out", str(out)]
    argv += ["--arch", "timm/vit_tiny_patch16_224", *TOY]
    assert load_example("vit_class_token").main(argv) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("epoch"))
    layers = header.split()[1:]
    assert layers[-2:] == ["blocks.11", "blocks.11:class"] and len(layers) == 8
    rows = {int(line.split()[0]): line.split()[1:] for line in printed.splitlines()[-3:-1]}
    assert all(float(v) == 0 for v in rows[0])  # the source against itself
    assert all(float(v) > 0 for v in rows[1])  # one epoch of training moved every layer
    tokens = open_store(out / "store.zarr").attrs["token_layers"]
    assert tokens["blocks.11:class"]["prefix_token"] == "class"
    assert (out / "results" / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["paper_setup", "third_party_series", "custom_figure", "vit_class_token"]
)
def test_help(name):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--out" in proc.stdout


@pytest.mark.slow
def test_paper_setup_extends_a_finished_run(paper_run, tmp_path):
    """--epochs 2 on a finished 1-epoch run: training resumes, stores grow, results and report
    are redone."""
    import shutil

    src, argv = paper_run
    out = Path(shutil.copytree(src, tmp_path / "run"))
    argv = [*argv, "--epochs", "2"]  # argparse: the last --epochs wins
    argv[argv.index("--out") + 1] = str(out)
    before = (out / "results" / "report.html").stat().st_mtime_ns
    first = (out / "series" / "resnet18_alpha" / "epoch_001.pt").read_bytes()
    assert load_example("paper_setup").main(argv) == 0
    assert (
        out / "series" / "resnet18_alpha" / "epoch_001.pt"
    ).read_bytes() == first  # kept, not retrained
    rows = read_csv(out / "results" / "distances.csv")
    assert {(r["experiment"], int(r["epoch"])) for r in rows} == {
        (e, k) for e in ("resnet18/alpha", "resnet18/beta") for k in (0, 1, 2)
    }
    assert (out / "results" / "report.html").stat().st_mtime_ns != before
