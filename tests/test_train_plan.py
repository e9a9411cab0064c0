"""ftdyn.training: the plan of a run, inspected before (and without) training."""

from __future__ import annotations

import json
import shutil

import pytest

from ftdyn import training
from ftdyn.config import TrainConfig
from ftdyn.errors import FtdynError


def test_plan_of_a_new_run_writes_nothing(image_folder, tmp_path):
    out = tmp_path / "run"
    plan = training.make_plan(
        image_folder,
        out=out,
        arch="ResNet18",
        epochs=3,
        batch_size=7,
        input_size=32,
        device="cpu",
        progress=False,
    )
    assert not out.exists()  # planning wrote nothing
    assert plan.mode == "new" and plan.delete == () and plan.resumed is None
    # arch canonical
    assert plan.config == TrainConfig(
        arch="resnet18", epochs=3, batch_size=7, input_size=32, device="cpu", progress=False
    )
    assert plan.classes == sorted(plan.classes) and len(plan.classes) == 3
    assert (len(plan.train_data), len(plan.val_data)) == (24, 12)
    assert plan.drop_last is False  # 24 % 7 == 3
    assert (
        training.make_plan(image_folder, out=out, config=plan.config, batch_size=23).drop_last
        is True
    )


def test_plan_of_resume_and_overwrite(tiny_series, image_folder, tmp_path):
    series = shutil.copytree(tiny_series, tmp_path / "series")
    manifest = json.loads((series / "manifest.json").read_text())
    base = TrainConfig(
        arch="resnet18", epochs=2, batch_size=8, input_size=32, seed=0, device="cpu", progress=False
    )
    resumed = training.make_plan(image_folder, out=series, config=base, resume=True, epochs=4)
    assert resumed.mode == "resume" and resumed.resumed == manifest
    assert training.recorded_identity(manifest) == resumed.config.identity()
    replaced = training.make_plan(image_folder, out=series, config=base, overwrite=True)
    assert replaced.mode == "new"
    assert sorted(p.name for p in replaced.delete) == [
        "epoch_000.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "manifest.json",
    ]
    kept = [
        p.name for p in series.iterdir() if p.name != ".ftdyn.lock"
    ]  # the lock file of the run that wrote it
    assert sorted(kept) == sorted(p.name for p in replaced.delete)  # untouched
    with pytest.raises(FtdynError, match=r"^lr: "):
        training.make_plan(image_folder, out=series, config=base, resume=True, lr=1e-3)
