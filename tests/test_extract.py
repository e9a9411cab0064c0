"""The extract stage: checkpoint series -> activation store (values, formats, safety, resume)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import zarr
from helpers import hooked_forward, write_image_folder
from safetensors.torch import save_file
from typer.testing import CliRunner

from ftdyn import checkpoints as ck
from ftdyn.cli import app
from ftdyn.data import load_images, scan_image_folder, select_probe
from ftdyn.errors import FtdynError
from ftdyn.extraction import batch_plan, execute, extract, make_plan, recorded_identity
from ftdyn.models import IMAGENET_MEAN, IMAGENET_STD
from ftdyn.store import completeness, open_store

SIZE = 32
CLASSES = ["circle", "square", "stripes"]
NORM = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    """3 classes x 4 images of 40x40 (resized/cropped to 32 by the eval transform)."""
    return write_image_folder(tmp_path_factory.mktemp("probe") / "val", 4, size=40, seed=3)


def _model(arch: str, num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    with torch.no_grad():  # non-default BatchNorm statistics, so eval mode matters
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5) if name.endswith("running_var") else buf.uniform_(-0.2, 0.2)
    return model.eval()


def _state(model: torch.nn.Module) -> dict:
    """A copy of the model's state dict (later drifts do not change it)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def _drift(model: torch.nn.Module, seed: int, scale: float = 0.02) -> dict:
    """Perturb the weights like an epoch of fine-tuning; returns the new state (a copy)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen) * p.abs().mean())
    return _state(model)


def make_series(folder: Path, arch: str, epochs: int, *, seed: int = 0) -> list[dict]:
    """An ftdyn series (checkpoints + manifest) written directly; returns the state dicts."""
    folder.mkdir(parents=True, exist_ok=True)
    model = _model(arch, seed=seed)
    states, entries = [], []
    for epoch in range(epochs):
        if epoch:
            _drift(model, seed * 100 + epoch)
        name = ck.checkpoint_filename(epoch)
        sha = ck.save_checkpoint(folder / name, model.state_dict(), epoch=epoch)
        entries.append({"epoch": epoch, "file": name, "sha256": sha, "val_acc": 0.3 + 0.1 * epoch})
        states.append(_state(model))
    write_series_manifest(folder, arch, entries)
    return states


def write_series_manifest(folder: Path, arch: str, entries: list[dict]) -> None:
    ck.write_manifest(
        folder,
        {
            "format": "ftdyn-series",
            "format_version": 1,
            "architecture": arch,
            "num_classes": 3,
            "classes": CLASSES,
            "input_size": SIZE,
            "normalization": NORM,
            "epochs": entries,
            "ftdyn_version": "0.1.0",
            "torch_version": torch.__version__,
            "dataset": {"path": "/data/shapes"},
        },
    )


def add_epoch(folder: Path, arch: str, states: list[dict], epoch: int) -> None:
    model = _model(arch)
    model.load_state_dict(states[-1])
    states.append(_drift(model, 1000 + epoch))
    sha = ck.save_checkpoint(folder / ck.checkpoint_filename(epoch), states[-1], epoch=epoch)
    manifest = ck.read_manifest(folder)
    write_series_manifest(
        folder,
        arch,
        manifest["epochs"]
        + [{"epoch": epoch, "file": ck.checkpoint_filename(epoch), "sha256": sha}],
    )


def probe_images(probe_dir: Path, **kw) -> np.ndarray:
    return load_images(select_probe(scan_image_folder(probe_dir), **kw), SIZE)


def direct(
    arch: str, state: dict, images: np.ndarray, modules: list[str], num_classes: int = 3
) -> dict:
    """Reference: a plain forward pass with the test's own hooks (last call, cloned)."""
    with torch.device("meta"):  # no random init: every tensor comes from ``state``
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    model.load_state_dict(state, assign=True)
    return hooked_forward(model, images, modules, NORM)


def assert_close16(stored: np.ndarray, reference: np.ndarray) -> None:
    assert stored.shape == reference.shape
    scale = float(np.abs(reference).max()) or 1.0
    np.testing.assert_allclose(stored.astype(np.float32), reference, rtol=2e-3, atol=2e-3 * scale)


def layer(ds, name: str) -> np.ndarray:
    return ds[ds.attrs["layer_variables"][name]].values


# --------------------------------------------------------------------------- values


def test_batch_plan_aligns_with_chunks():
    plan = batch_plan(10, 3, 7)  # 2 whole chunks per batch
    assert [(b.start, b.stop, b.chunks) for b in plan] == [(0, 6, (0, 1)), (6, 10, (2, 3))]
    plan = batch_plan(10, 4, 3)  # chunks cut into batches
    assert [(b.start, b.stop, b.chunks) for b in plan] == [
        (0, 3, (0,)),
        (3, 4, (0,)),
        (4, 7, (1,)),
        (7, 8, (1,)),
        (8, 10, (2,)),
    ]


def test_resnet_default_layers_match_direct_forward(tmp_path, probe_dir, capsys, cli_console):
    states = make_series(tmp_path / "ckpts", "resnet18", 2)
    out = extract(
        tmp_path / "ckpts",
        data=probe_dir,
        out=tmp_path / "s.zarr",
        samples_per_chunk=5,
        batch_size=4,
        progress=False,
    )
    ds = open_store(out)
    defaults = ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert ds.attrs["layers"] == defaults
    images = probe_images(probe_dir)
    np.testing.assert_array_equal(ds["images"].values, images)
    assert (
        list(ds["class"].values) == CLASSES
        and list(ds["label"].values) == [0] * 4 + [1] * 4 + [2] * 4
    )
    assert list(ds["checkpoint"].values) == [0, 1]
    assert ds["layer1"].data.chunks[1] == (5, 5, 2) and ds["layer1"].data.chunks[0] == (1, 1)
    assert [c["sha256"] for c in ds.attrs["checkpoints"]] == [
        ck.sha256_file(tmp_path / "ckpts" / ck.checkpoint_filename(e)) for e in (0, 1)
    ]
    assert ds.attrs["manifest"]["epochs"][1]["val_acc"] == pytest.approx(0.4)
    assert (
        ds.attrs["num_classes"] == 3
        and ds.attrs["dataset"] == "shapes"
        and ds.attrs["dtype"] == "float16"
    )
    assert ds.attrs["probe"]["seed"] == 0 and len(ds.attrs["probe"]["fingerprint"]) == 64
    assert ds.attrs["receptive_fields"]["relu"]["size"] == [7.0, 7.0]
    assert ds["layer4"].attrs["receptive_field"]["jump"] == [32.0, 32.0]
    for i, state in enumerate(states):
        ref = direct("resnet18", state, images, defaults)
        for name in defaults:
            assert_close16(layer(ds, name)[i], ref[name])
    # the two checkpoints really differ, and float16 is what is stored
    assert ds["layer4"].dtype == np.float16
    assert not np.allclose(layer(ds, "layer4")[0], layer(ds, "layer4")[1])
    assert "2 checkpoint(s) written" in capsys.readouterr().err


def test_resnet_block_relu_is_the_block_output(tmp_path, probe_dir):
    states = make_series(tmp_path / "ckpts", "resnet18", 1)
    out = extract(
        tmp_path / "ckpts",
        data=probe_dir,
        out=tmp_path / "s.zarr",
        layers=["layer1.0.relu", "layer2.1.relu"],
        dtype="float32",
        batch_size=5,
        progress=False,
    )
    ds = open_store(out)
    images = probe_images(probe_dir)
    ref = direct("resnet18", states[0], images, ["layer1.0", "layer1.0.bn1", "layer2.1"])
    np.testing.assert_allclose(layer(ds, "layer1.0.relu")[0], ref["layer1.0"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(ds, "layer2.1.relu")[0], ref["layer2.1"], rtol=1e-5, atol=1e-5)
    first_relu = np.maximum(ref["layer1.0.bn1"], 0)  # what a hook keeping the FIRST call would give
    assert not np.allclose(layer(ds, "layer1.0.relu")[0], first_relu, atol=1e-3)


@pytest.mark.slow
def test_vgg_layers_match_direct_forward(tmp_path, probe_dir):
    states = make_series(tmp_path / "ckpts", "vgg11", 1)
    layers = ["features.1", "features.4", "features.9", "features.19"]
    out = extract(
        tmp_path / "ckpts",
        data=probe_dir,
        out=tmp_path / "s.zarr",
        layers=layers,
        max_samples=6,
        progress=False,
    )
    ds = open_store(out)
    images = probe_images(probe_dir, max_samples=6)
    assert ds.sizes["sample"] == 6 and list(ds["label"].values) == [0, 0, 1, 1, 2, 2]
    ref = direct("vgg11", states[0], images, layers)
    for name in layers:
        assert_close16(layer(ds, name)[0], ref[name])
    assert ds.attrs["receptive_fields"]["features.4"]["size"] == [8.0, 8.0]  # conv3, pool2, conv3


def test_densenet_layers_match_direct_forward(tmp_path, probe_dir):
    states = make_series(tmp_path / "ckpts", "densenet121", 2)
    out = extract(
        tmp_path / "ckpts",
        data=probe_dir,
        out=tmp_path / "s.zarr",
        per_class=2,
        batch_size=3,
        progress=False,
    )
    ds = open_store(out)
    layers = ds.attrs["layers"]
    assert (
        layers[:2] == ["features.denseblock1.denselayer6.relu2", "features.transition1.relu"]
        and len(layers) == 7
    )
    images = probe_images(probe_dir, per_class=2)
    for i, state in enumerate(states):
        ref = direct("densenet121", state, images, layers)
        for name in layers:
            assert_close16(layer(ds, name)[i], ref[name])


def test_channels_last_layers_are_stored_channel_first(tmp_path, probe_dir):
    """ConvNeXt's block MLPs compute in (batch, y, x, channel): the store still holds
    (channel, y, x), matching the receptive fields' map size."""
    states = make_series(tmp_path / "ckpts", "convnext_tiny", 1)
    out = extract(
        tmp_path / "ckpts", data=probe_dir, out=tmp_path / "s.zarr", max_samples=3, progress=False
    )
    ds = open_store(out)
    layers = ds.attrs["layers"]
    # the GELUs: channels-last modules
    assert layers and all(name.endswith("block.4") for name in layers)
    ref = direct("convnext_tiny", states[0], probe_images(probe_dir, max_samples=3), layers)
    for name in layers:
        assert_close16(layer(ds, name)[0], ref[name].transpose(0, 3, 1, 2))
        assert list(layer(ds, name).shape[-2:]) == ds.attrs["receptive_fields"][name]["map_size"]


# -------------------------------------------------------------- third-party series


class _Malicious:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.slow
def test_third_party_series_with_source(tmp_path, probe_dir):
    source = _model("resnet18", num_classes=1000, seed=5)
    torch.save(source.state_dict(), tmp_path / "imagenet_resnet18.pth")
    tuned = _model("resnet18", num_classes=3, seed=5)
    tuned.load_state_dict(
        {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, strict=False
    )
    folder = tmp_path / "lightning"
    folder.mkdir()
    states = []
    for epoch in range(3):  # Lightning counts from 0: epoch=0 is after the first epoch
        sd = _drift(tuned, 50 + epoch)
        states.append(sd)
        if epoch < 2:
            torch.save(
                {
                    "epoch": epoch,
                    "global_step": 10 * (epoch + 1),
                    "pytorch-lightning_version": "2.4.0",
                    "state_dict": _prefixed(sd, "model."),
                    "optimizer_states": [],
                    "lr_schedulers": [],
                },
                folder / f"epoch={epoch}-step={10 * (epoch + 1)}.ckpt",
            )
        else:
            save_file(
                _prefixed(sd, "module."), str(folder / "last.safetensors"), metadata={"epoch": "2"}
            )
    out = tmp_path / "tp.zarr"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            str(folder),
            "--data",
            str(probe_dir),
            "--out",
            str(out),
            "--arch",
            "ResNet18",
            "--source",
            str(tmp_path / "imagenet_resnet18.pth"),
            "--layer",
            "layer2",
            "--layer",
            "layer4",
            "--no-progress",
            "--model-name",
            "my-resnet",
            "--dataset-name",
            "shapes3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "the source's classifier head has another class count than the series' (source: 1000,"
        " series: 3 classes); each checkpoint is loaded with its own head (heads are not"
        " captured)." in " ".join(result.output.split())
    )
    ds = open_store(out)
    assert [(c["epoch"], c["file"]) for c in ds.attrs["checkpoints"]] == [
        (0, "imagenet_resnet18.pth"),
        (1, "epoch=0-step=10.ckpt"),
        (2, "epoch=1-step=20.ckpt"),
        (3, "last.safetensors"),
    ]
    assert ds.attrs["num_classes"] == 3 and ds.attrs["manifest"] is None
    assert ds.attrs["model"] == "my-resnet" and ds.attrs["dataset"] == "shapes3"
    assert ds.attrs["normalization"] == NORM and ds.attrs["input_size"] == 224
    images = ds["images"].values
    assert images.shape == (12, 224, 224, 3)
    ref0 = direct("resnet18", source.state_dict(), images, ["layer4"], num_classes=1000)
    assert_close16(layer(ds, "layer4")[0], ref0["layer4"])
    ref3 = direct("resnet18", states[2], images, ["layer2"])
    assert_close16(layer(ds, "layer2")[3], ref3["layer2"])


def test_source_head_note_only_when_its_class_count_is_not_the_series(tmp_path, caplog):
    """The note a head change inside the series gets, for a --source head of another class
    count (also when its keys are DataParallel's ``module.`` ones); none when the source has the
    series' class count."""
    from ftdyn.extraction.loading import _check_loadable, _Loading
    from ftdyn.models import build_model

    folder = tmp_path / "ck"
    folder.mkdir()
    for epoch in (1, 2):
        torch.save(
            {"epoch": epoch, "state_dict": _model("mobilenet_v3_small", 3, epoch).state_dict()},
            folder / f"epoch_{epoch}.pth",
        )
    loading = _Loading("mobilenet_v3_small", False, adapt_head=True, has_source=True)
    notes = []
    for classes, wrapper in ((10, ""), (10, "module."), (3, "")):
        source = tmp_path / f"src{classes}{wrapper}.pth"
        state = _model("mobilenet_v3_small", classes, 7).state_dict()
        torch.save({wrapper + k: v for k, v in state.items()}, source)
        entries = ck.discover_series(folder, source=source)
        caplog.clear()
        with caplog.at_level("INFO", logger="ftdyn"):
            _check_loadable(build_model("mobilenet_v3_small"), entries, range(3), {}, loading)
        notes.append([r.getMessage() for r in caplog.records])
    other = (
        "the source's classifier head has another class count than the series' (source: 10,"
        " series: 3 classes); each checkpoint is loaded with its own head (heads are not"
        " captured)."
    )
    assert notes == [[other], [other], []]


def test_ambiguous_order_is_refused(tmp_path, probe_dir):
    state = _model("resnet18").state_dict()
    folder = tmp_path / "ck"
    folder.mkdir()
    torch.save({"state_dict": state, "epoch": 1}, folder / "a.pt")
    torch.save({"state_dict": state, "epoch": 1}, folder / "b.pt")
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        app,
        ["extract", str(folder), "--data", str(probe_dir), "--out", str(out), "--arch", "resnet18"],
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "ambiguous order" in line and "a.pt" in line and "b.pt" in line
    assert not out.exists()


@pytest.mark.slow
def test_unfit_checkpoint_is_refused_before_the_store_exists(tmp_path, probe_dir, monkeypatch):
    """Every checkpoint is loaded once before the store is created: a file without weights in
    the middle of the series stops the run with nothing written. A file changed after the store
    was created but before any of its activations were written is taken as it is now."""
    from ftdyn.extraction import running

    model = _model("resnet18")
    folder = tmp_path / "ck"
    folder.mkdir()
    states = []
    for epoch in range(3):
        states.append(_drift(model, 70 + epoch))
        torch.save(states[-1], folder / f"epoch_{epoch}.pt")
    torch.save({"epoch": 1, "optimizer": {"lr": 0.1}}, folder / "epoch_1.pt")  # no weights in it
    out = tmp_path / "s.zarr"
    args = [
        "extract",
        str(folder),
        "--data",
        str(probe_dir),
        "--out",
        str(out),
        "--arch",
        "resnet18",
        "--layer",
        "layer3",
        "--input-size",
        "32",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert (
        result.exit_code == 2 and "Traceback" not in result.output and "epoch_1.pt" in result.output
    )
    assert not out.exists()
    torch.save(states[1], folder / "epoch_1.pt")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(running, "_run", interrupted)
    assert CliRunner().invoke(app, args).exit_code == 130 and not completeness(out).any()
    monkeypatch.undo()
    states[1] = _drift(model, 99)
    torch.save(states[1], folder / "epoch_1.pt")  # replaced before any of it was extracted
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "changed since the store was created" in result.output, (
        result.output
    )
    ds = open_store(out)
    assert completeness(out).all()
    for epoch in range(3):
        assert_close16(
            layer(ds, "layer3")[epoch],
            direct("resnet18", states[epoch], ds["images"].values, ["layer3"])["layer3"],
        )


@pytest.mark.slow
def test_state_prefix_picks_one_of_several_model_copies(tmp_path, probe_dir):
    """Lightning files holding the model and an EMA copy: refused in one line naming both
    prefixes, then --state-prefix chooses which copy every checkpoint loads."""
    model, ema = _model("resnet18"), _model("resnet18", seed=9)
    folder = tmp_path / "ck"
    folder.mkdir()
    states = []
    for epoch in range(2):
        states.append(_drift(model, 90 + epoch))
        torch.save(
            {
                "epoch": epoch,
                "state_dict": {
                    **_prefixed(states[-1], "model."),
                    **_prefixed(ema.state_dict(), "ema.module."),
                },
            },
            folder / f"epoch={epoch}-step={epoch + 1}.ckpt",
        )
    out = tmp_path / "s.zarr"
    args = [
        "extract",
        str(folder),
        "--data",
        str(probe_dir),
        "--out",
        str(out),
        "--arch",
        "resnet18",
        "--layer",
        "layer2",
        "--input-size",
        "32",
        "--no-progress",
    ]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output and not out.exists()
    assert "several complete copies" in refused.output and "'ema.module.'" in refused.output
    assert "'model.'" in refused.output
    result = CliRunner().invoke(app, [*args, "--state-prefix", "model."])
    assert result.exit_code == 0, result.output
    ds = open_store(out)
    for epoch in range(2):
        assert_close16(
            layer(ds, "layer2")[epoch],
            direct("resnet18", states[epoch], ds["images"].values, ["layer2"])["layer2"],
        )


@pytest.mark.slow
def test_lost_chunk_files_are_reported_and_rewritten(tmp_path, probe_dir):
    """A region file deleted after extraction: every reader says so in one line, and the same
    extract command writes it again; an altered file is caught by its checksum."""
    states = make_series(tmp_path / "ckpts", "resnet18", 2)
    args = [
        "extract",
        str(tmp_path / "ckpts"),
        "--data",
        str(probe_dir),
        "--out",
        str(tmp_path / "s.zarr"),
        "--layer",
        "layer1",
        "--layer",
        "layer3",
        "--no-progress",
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    store = tmp_path / "s.zarr"
    region = store / "layer3" / "c" / "1" / "0" / "0" / "0" / "0"
    intact = region.read_bytes()
    region.unlink()
    for cmd in (
        ["info", str(store)],
        ["visualize", str(store), "--layer", "layer3", "--out", str(tmp_path / "f")],
    ):
        result = CliRunner().invoke(app, cmd)
        assert result.exit_code == 2 and "region(s) are missing (checkpoints 1)" in result.output, (
            result.output
        )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and region.is_file(), result.output
    ds = open_store(store)
    assert_close16(
        layer(ds, "layer3")[1],
        direct("resnet18", states[1], ds["images"].values, ["layer3"])["layer3"],
    )
    altered = bytearray(intact)
    altered[len(altered) // 2] ^= 0xFF
    region.write_bytes(bytes(altered))
    result = CliRunner().invoke(
        app, ["visualize", str(store), "--layer", "layer3", "--out", str(tmp_path / "f")]
    )
    assert (
        result.exit_code == 2
        and "cannot be decoded" in result.output
        and "Traceback" not in result.output
    )
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").glob("*.png"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, probe_dir):
    state = _model("resnet18").state_dict()
    folder = tmp_path / "ck"
    folder.mkdir()
    target = tmp_path / "pwned"
    torch.save({"state_dict": state, "epoch": 0}, folder / "epoch_0.pt")
    torch.save(
        {"state_dict": state, "epoch": 1, "payload": _Malicious(target)}, folder / "epoch_1.pt"
    )
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        app,
        ["extract", str(folder), "--data", str(probe_dir), "--out", str(out), "--arch", "resnet18"],
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "epoch_1.pt" in line and "refusing to unpickle" in line
    assert "--trust-checkpoint" in line
    assert not target.exists() and not out.exists()


@pytest.mark.parametrize(
    "case",
    [
        "missing_data",
        "empty_folder",
        "no_arch",
        "unknown_layer",
        "bad_dtype",
        "wrong_arch",
        "not_a_store",
        "source_with_manifest",
        "dataset_root",
        "one_image",
        "out_in_data",
        "bad_seed",
        "out_in_store",
    ],
)
def test_bad_input_is_one_line(tmp_path, probe_dir, case):
    folder = tmp_path / "ck"
    folder.mkdir()
    args = ["extract", str(folder), "--data", str(probe_dir), "--out", str(tmp_path / "s.zarr")]
    if case in (
        "no_arch",
        "unknown_layer",
        "bad_dtype",
        "wrong_arch",
        "not_a_store",
        "dataset_root",
        "one_image",
        "out_in_data",
        "bad_seed",
        "out_in_store",
    ):
        torch.save(_model("resnet18").state_dict(), folder / "epoch_1.pt")
    expected = {
        "missing_data": "--data: folder",
        "empty_folder": "no checkpoint files",
        "no_arch": "--arch:",
        "unknown_layer": "--layer: 'layer9' is not a module",
        "bad_dtype": "--dtype",
        "wrong_arch": "does not fit resnet34",
        "not_a_store": "not an ftdyn activation store",
        "source_with_manifest": "--source",
        "dataset_root": "holds the splits val/, train/",
        "one_image": "the probe set has 1 image",
        "out_in_data": "is inside the input",
        "bad_seed": "--seed",
        "out_in_store": "inside the Zarr store",
    }[case]
    if case == "missing_data":
        args[3] = str(tmp_path / "nope")
    elif case in ("unknown_layer", "bad_dtype", "not_a_store"):
        args += ["--arch", "resnet18"]
        args += {
            "unknown_layer": ["--layer", "layer9"],
            "bad_dtype": ["--dtype", "float64"],
            "not_a_store": [],
        }[case]
        if case == "not_a_store":
            (tmp_path / "s.zarr").mkdir()
            (tmp_path / "s.zarr" / "notes.txt").write_text("mine")
    elif case == "wrong_arch":
        args += ["--arch", "resnet34"]
    elif case == "dataset_root":
        args[3] = str(write_image_folder(tmp_path / "root" / "train", 2).parent)
        (tmp_path / "root" / "val").mkdir()
        args += ["--arch", "resnet18"]
    elif case == "out_in_store":
        (tmp_path / "outer.zarr").mkdir()
        (tmp_path / "outer.zarr" / "zarr.json").write_text("{}")
        args[5] = str(tmp_path / "outer.zarr" / "s.zarr")
        args += ["--arch", "resnet18"]
    elif case == "bad_seed":
        args += ["--arch", "resnet18", "--seed", "-1"]
    elif case == "one_image":
        args += ["--arch", "resnet18", "--max-samples", "1"]
    elif case == "out_in_data":
        args[5] = str(probe_dir / "s.zarr")
        args += ["--arch", "resnet18"]
    elif case == "source_with_manifest":
        make_series(folder, "resnet18", 1)
        args += ["--source", "IMAGENET1K_V1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("ftdyn: error:") and "\n" not in line and expected in line, line
    if case != "not_a_store":
        assert not (tmp_path / "s.zarr").exists() and not (probe_dir / "s.zarr").exists()
    else:
        assert sorted(os.listdir(tmp_path / "s.zarr")) == ["notes.txt"]


# ------------------------------------------------------------------- resume, extend


_CHILD = textwrap.dedent("""
    import sys, time, torch, zarr
    torch.set_num_threads(1)
    original = zarr.Array.__setitem__
    def slow(self, key, value):  # make every array write slow so the kill lands mid-run
        time.sleep(0.04)
        original(self, key, value)
        time.sleep(0.04)
    zarr.Array.__setitem__ = slow
    from ftdyn.cli import app
    sys.argv = ["ftdyn"] + sys.argv[1:]
    app()
""")


def _marks(store: Path) -> int:
    folder = store / "complete" / "c"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _snapshot(store: Path) -> dict:
    return {
        str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_killed_run_resumes_to_identical_store_then_extends(tmp_path, probe_dir):
    series = tmp_path / "ckpts"
    states = make_series(series, "resnet18", 4)
    common = [
        "--data",
        str(probe_dir),
        "--chunk-samples",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    # the uninterrupted reference
    reference = extract(
        series,
        data=probe_dir,
        out=tmp_path / "ref.zarr",
        samples_per_chunk=2,
        batch_size=2,
        progress=False,
    )
    # a real process, killed with SIGKILL once some regions are marked
    out = tmp_path / "killed.zarr"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "extract", str(series), "--out", str(out), *common],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 90
    while _marks(out) < 5 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, child.stdout.read().decode()
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = completeness(out)
    assert 5 <= done.sum() < done.size  # killed mid-run
    text = CliRunner().invoke(app, ["info", str(out)]).output
    assert "complete:    no" in text and "regions" in text
    with pytest.raises(FtdynError, match="incomplete"):
        open_store(out)

    result = CliRunner().invoke(app, ["extract", str(series), "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    assert completeness(out).all()
    a, b = open_store(reference), open_store(out)
    for name, var in a.attrs["layer_variables"].items():
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=name)
    np.testing.assert_array_equal(a["images"].values, b["images"].values)
    assert a.attrs["checkpoints"] == b.attrs["checkpoints"]

    # complete: a re-run does nothing and touches nothing
    before = _snapshot(out)
    result = CliRunner().invoke(app, ["extract", str(series), "--out", str(out), *common])
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert _snapshot(out) == before
    result = CliRunner().invoke(
        app, ["extract", str(series), "--out", str(out), *common, "--codec", "lz4"]
    )
    assert (
        result.exit_code == 0
        and "--codec lz4 ignored" in result.output
        and "nothing to do" in result.output
    )
    # the resumed run's record; the killed run wrote none
    assert len(open_store(out).attrs["runs"]) == 1

    # incompatible calls are refused, naming what differs
    for extra, message in (
        (["--dtype", "float32"], "dtype float16, this call float32"),
        (["--per-class", "2"], "--per-class all, this call 2"),
        (["--layer", "layer1"], "existing store has layers relu, layer1"),
        (["--seed", "1"], "--seed 0, this call 1"),
    ):
        result = CliRunner().invoke(
            app, ["extract", str(series), "--out", str(out), *common, *extra]
        )
        assert result.exit_code == 2 and message in result.output and "--out" in result.output, (
            result.output
        )

    # a new, later checkpoint extends the store
    add_epoch(series, "resnet18", states, 4)
    result = CliRunner().invoke(app, ["extract", str(series), "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    assert "extending with 1 new checkpoint" in result.output
    ds = open_store(out)
    assert list(ds["checkpoint"].values) == [0, 1, 2, 3, 4] and completeness(out).all()
    assert ds.attrs["manifest"]["epochs"][-1]["epoch"] == 4
    ref = direct("resnet18", states[4], ds["images"].values, ["layer3"])
    assert_close16(layer(ds, "layer3")[4], ref["layer3"])
    np.testing.assert_array_equal(layer(ds, "layer3")[:4], layer(a, "layer3"))

    # a changed checkpoint is refused
    (series / ck.checkpoint_filename(1)).unlink()
    ck.save_checkpoint(series / ck.checkpoint_filename(1), states[0], epoch=1)
    manifest = ck.read_manifest(series)
    manifest["epochs"][1]["sha256"] = ck.sha256_file(series / ck.checkpoint_filename(1))
    ck.write_manifest(series, manifest)
    result = CliRunner().invoke(app, ["extract", str(series), "--out", str(out), *common])
    assert result.exit_code == 2 and "epoch 1 is epoch_001.pt" in result.output


def test_earlier_checkpoint_cannot_be_inserted(tmp_path, probe_dir):
    folder = tmp_path / "ck"
    folder.mkdir()
    model = _model("resnet18")
    for epoch in (1, 3):
        torch.save({"state_dict": model.state_dict(), "epoch": epoch}, folder / f"epoch_{epoch}.pt")
    args = [
        "extract",
        str(folder),
        "--data",
        str(probe_dir),
        "--out",
        str(tmp_path / "s.zarr"),
        "--arch",
        "resnet18",
        "--input-size",
        "32",
        "--layer",
        "layer4",
        "--no-progress",
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    torch.save({"state_dict": model.state_dict(), "epoch": 2}, folder / "epoch_2.pt")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert (
        "epoch 2 (epoch_2.pt) would have to be inserted before the store's last epoch 3"
        in result.output
    )


@pytest.mark.slow
def test_resume_plan_holds_only_the_missing_regions_and_writes_nothing(tmp_path, probe_dir):
    """make_plan reads series, probe and store without writing; on a store with regions unmarked
    (a killed run) and a newer checkpoint in the series it plans exactly those regions and the
    new epoch, appended after the store's checkpoints; execute then completes the store."""
    series = tmp_path / "ckpts"
    states = make_series(series, "resnet18", 3)
    out = tmp_path / "s.zarr"
    options = dict(
        data=probe_dir,
        out=out,
        layers=["layer3"],
        samples_per_chunk=4,
        batch_size=3,
        progress=False,
    )
    plan = make_plan(series, **options)
    # 12 images: 3 chunks
    assert not out.exists() and plan.spec is not None and plan.samples_per_chunk == 4
    assert [(r.position, r.index, r.chunks) for r in plan.replays] == [
        (i, i, (0, 1, 2)) for i in range(3)
    ]
    assert [(b.start, b.stop) for b in plan.batches] == [
        (0, 3),
        (3, 4),
        (4, 7),
        (7, 8),
        (8, 11),
        (11, 12),
    ]
    execute(plan)
    group = zarr.open_group(out, mode="r+", zarr_format=3)
    group["complete"][1, 0] = 0  # as a run killed before these regions were marked
    group["complete"][2, 1:] = 0
    add_epoch(series, "resnet18", states, 3)
    before = _snapshot(out)
    plan = make_plan(series, **options)
    assert _snapshot(out) == before and plan.spec is None
    assert [r["epoch"] for r in plan.stored] == [0, 1, 2] and [
        r["epoch"] for r in plan.new_records
    ] == [3]
    assert [(r.position, r.index, r.chunks) for r in plan.replays] == [
        (1, 1, (0,)),
        (2, 2, (1, 2)),
        (3, 3, (0, 1, 2)),
    ]
    assert plan.done.tolist() == [
        [True] * 3,
        [False, True, True],
        [True, False, False],
        [False] * 3,
    ]
    assert set(plan.states) <= {
        1,
        2,
        3,
    }  # weights read while planning are kept only where they are used
    assert plan.identity() == recorded_identity(dict(group.attrs))
    with pytest.raises(FtdynError, match="dtype float16, this call float32"):
        make_plan(series, **options, dtype="float32")
    execute(plan)
    assert completeness(out).all()
    ds = open_store(out)
    assert list(ds["checkpoint"].values) == [0, 1, 2, 3]
    assert_close16(
        layer(ds, "layer3")[3],
        direct("resnet18", states[3], ds["images"].values, ["layer3"])["layer3"],
    )


def test_info_output(tmp_path, probe_dir, monkeypatch):
    from ftdyn.store import schema

    # split even these small layers in 16 blocks
    monkeypatch.setattr(schema, "_MIN_INNER_CHUNK_BYTES", 0)
    make_series(tmp_path / "ckpts", "resnet18", 2)
    out = extract(
        tmp_path / "ckpts",
        data=probe_dir,
        out=tmp_path / "s.zarr",
        layers=["relu", "layer2"],
        progress=False,
    )
    result = CliRunner().invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "resnet18" in text and "12 images, 3 classes" in text and "float16" in text
    assert "relu    64x16x16      stored in 16 channel blocks" in text and "layer2  128x4x4" in text
    assert "epoch   0  epoch_000.pt" in text and "complete:    yes (2/2 regions)" in text
    assert "KiB on disk" in text or "MiB on disk" in text
    result = CliRunner().invoke(app, ["info", str(out), "--json"])
    details = json.loads(result.output)
    assert details["layers"][1] == {
        "layer": "layer2",
        "variable": "layer2",
        "shape": [128, 4, 4],
        "channel_block": 8,
    }
    assert details["complete"] and details["bytes_on_disk"] > 0 and len(details["checkpoints"]) == 2
    result = CliRunner().invoke(app, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 2 and "no such store" in result.output


def _series_of(folder: Path, states: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for epoch, state in enumerate(states):
        sha = ck.save_checkpoint(folder / ck.checkpoint_filename(epoch), state, epoch=epoch)
        entries.append({"epoch": epoch, "file": ck.checkpoint_filename(epoch), "sha256": sha})
    write_series_manifest(folder, "resnet18", entries)


@pytest.mark.slow
def test_float16_overflow_is_refused_never_stored(tmp_path, probe_dir):
    """A checkpoint whose layer3 exceeds float16's 65504 (a diverging run) stops float16 extraction
    in one line naming layer, epoch and the --dtype float32 fix; no region of it is marked complete,
    nothing stored is inf; float32 then stores the true values."""
    model = _model("resnet18")
    states = [_state(model), _drift(model, 1)]
    big = dict(states[1])
    # the block output grows past 65504
    big["layer3.1.bn2.weight"] = big["layer3.1.bn2.weight"] * 1e6
    states.append(big)
    _series_of(tmp_path / "ck", states)
    out = tmp_path / "s.zarr"
    args = [
        "extract",
        str(tmp_path / "ck"),
        "--data",
        str(probe_dir),
        "--layer",
        "layer2",
        "--layer",
        "layer3",
        "--no-progress",
        "--chunk-samples",
        "4",
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    lines = [l for l in result.output.splitlines() if "error" in l]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(lines) == 1, (
        result.output
    )
    assert (
        "layer layer3, epoch 2" in lines[0]
        and "65504" in lines[0]
        and "--dtype float32" in lines[0]
    ), lines[0]
    done = completeness(out)
    assert not done[2].any()
    ds = open_store(out, allow_partial=True)
    for name in ("layer2", "layer3"):
        assert np.isfinite(layer(ds, name)).all()  # every complete region is finite
    result = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "f32.zarr"), "--dtype", "float32"]
    )
    assert result.exit_code == 0, result.output
    values = layer(open_store(tmp_path / "f32.zarr"), "layer3")
    assert np.isfinite(values).all() and np.abs(values[2]).max() > 65504 > np.abs(values[:2]).max()
    import re

    first, last, peak = re.search(
        r"samples (\d+)-(\d+): .*largest magnitude ([0-9.e+]+), measured in float32", lines[0]
    ).groups()
    assert float(peak) == pytest.approx(
        np.abs(values[2, int(first) : int(last) + 1]).max(), rel=1e-3
    )


def test_nan_weight_checkpoint_is_refused_up_front(tmp_path, probe_dir):
    """A NaN weight in the middle of the series: refused with file and tensor name before the
    store exists."""
    model = _model("resnet18")
    states = [_state(model), _drift(model, 1), _drift(model, 2)]
    states[1]["layer1.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    _series_of(tmp_path / "ck", states)
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            str(tmp_path / "ck"),
            "--data",
            str(probe_dir),
            "--out",
            str(out),
            "--layer",
            "layer2",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (
        "epoch_001" in result.output
        and "'layer1.0.conv2.weight'" in result.output
        and "1 NaN/inf" in result.output
    )
    assert not out.exists()


def test_random_init_baseline_is_a_seeded_fresh_model_not_an_epoch(tmp_path, probe_dir, capsys):
    make_series(tmp_path / "ckpts", "resnet18", 2)
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            str(tmp_path / "ckpts"),
            "--data",
            str(probe_dir),
            "--out",
            str(out),
            "--layer",
            "layer1",
            "--layer",
            "layer4",
            "--no-progress",
            "--random-init-baseline",
            "--random-init-seed",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    ds = open_store(out)
    assert list(ds["checkpoint"].values) == [0, 1]  # not an epoch
    assert ds.attrs["random_init_baseline"]["seed"] == 7
    # the documented recipe: the seed, then the architecture's default constructor
    torch.manual_seed(7)
    fresh = torchvision.models.get_model("resnet18", weights=None)
    ref = direct(
        "resnet18",
        fresh.state_dict(),
        probe_images(probe_dir),
        ["layer1", "layer4"],
        num_classes=1000,
    )
    for name in ("layer1", "layer4"):
        assert_close16(ds["random_init__" + ds.attrs["layer_variables"][name]].values[0], ref[name])
    # the same command again: nothing to do, the baseline kept; another seed is refused
    again = CliRunner().invoke(
        app,
        [
            "extract",
            str(tmp_path / "ckpts"),
            "--data",
            str(probe_dir),
            "--out",
            str(out),
            "--layer",
            "layer1",
            "--layer",
            "layer4",
            "--no-progress",
            "--random-init-baseline",
            "--random-init-seed",
            "8",
        ],
    )
    assert again.exit_code == 2 and "seed 7" in again.output
    shown = CliRunner().invoke(app, ["info", str(out)])
    assert "random init: seed 7" in shown.output and "complete" in shown.output


@pytest.mark.slow
def test_full_disk_in_a_writer_thread_is_one_line_and_resumes(tmp_path, probe_dir, monkeypatch):
    """The disk fills while a writer thread stores a region's chunk (Zarr's file write fails):
    one line naming the file and the way on; the store keeps its finished regions and the
    same command then completes it, equal to an uninterrupted run."""
    import errno

    from zarr.storage import _local

    series = tmp_path / "ckpts"
    make_series(series, "resnet18", 2)
    args = [
        "extract",
        str(series),
        "--data",
        str(probe_dir),
        "--layer",
        "layer1",
        "--chunk-samples",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
        "--device",
        "cpu",
    ]
    reference = extract(
        series,
        data=probe_dir,
        out=tmp_path / "ref.zarr",
        layers=["layer1"],
        samples_per_chunk=4,
        batch_size=4,
        progress=False,
        device="cpu",
    )
    out, put, written = tmp_path / "s.zarr", _local._put, []

    def full_disk(path, value, *rest, **kwargs):
        if "/layer1/c/" in Path(path).as_posix():
            if len(written) >= 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            written.append(path)
        return put(path, value, *rest, **kwargs)

    monkeypatch.setattr(_local, "_put", full_disk)
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(lines) == 1, (
        result.output
    )
    assert (
        lines[0].startswith(f"ftdyn: error: --out {out}: cannot write {out}/layer1/c/")
        and "(No space left on device); free space" in lines[0]
        and "re-run the same command" in lines[0]
    ), lines[0]
    assert 0 < completeness(out).sum() < completeness(out).size
    monkeypatch.undo()
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        open_store(out)["layer1"].values, open_store(reference)["layer1"].values
    )
