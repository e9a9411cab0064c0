"""Checkpoint folders as the training tools write them, and timm architectures.

Each layout is written by the real tool where it is installable offline (timm's
CheckpointSaver, Lightning's ModelCheckpoint, accelerate's save_state; torchvision's
reference scripts by their documented dict), at tiny sizes, then extracted with the
plain documented command; the stored activations are compared with an independent
forward pass of the same weights (the model built directly by timm/torchvision, the
test's own hooks and normalization).
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import hooked_forward, write_image_folder
from typer.testing import CliRunner

from ftdyn import checkpoints as ck
from ftdyn.cli import app
from ftdyn.errors import FtdynError
from ftdyn.extraction import parse_normalize
from ftdyn.models import build_model, canonical_arch, default_layers, layer_layouts
from ftdyn.store import open_store

timm = pytest.importorskip("timm")

SIZE = 32
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    """3 classes x 2 images of 40x40 (resized/cropped to 32)."""
    return write_image_folder(tmp_path_factory.mktemp("probe") / "val", 2, size=40, seed=4)


def _timm_model(name: str, seed: int, num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    with torch.no_grad():  # non-default BatchNorm statistics, so eval mode matters
        for key, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5) if key.endswith("running_var") else buf.uniform_(-0.2, 0.2)
    return model


def _perturb(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen) * (p.abs().mean() + 1e-3))


def _copy(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def forward(
    build, state: dict, images: np.ndarray, modules: list[str], norm=IMAGENET
) -> dict[str, np.ndarray]:
    """Independent reference: ``build()`` gives the bare model, the test's own hooks record the
    modules."""
    model = build()
    model.load_state_dict(state)
    return hooked_forward(model, images, modules, norm)


def assert_stored(ds, epoch_index: int, reference: dict[str, np.ndarray]) -> None:
    for name, ref in reference.items():
        stored = ds[ds.attrs["layer_variables"][name]].values[epoch_index].astype(np.float32)
        assert stored.shape == ref.shape
        scale = float(np.abs(ref).max()) or 1.0
        np.testing.assert_allclose(stored, ref, rtol=2e-3, atol=2e-3 * scale)


def run_extract(folder: Path, probe_dir: Path, out: Path, *args: str):
    return CliRunner().invoke(
        app,
        [
            "extract",
            str(folder),
            "--data",
            str(probe_dir),
            "--out",
            str(out),
            "--input-size",
            str(SIZE),
            "--no-progress",
            *args,
        ],
    )


# ----------------------------------------------------------------------------- the zoo


def test_timm_names_one_interface():
    assert canonical_arch("timm/ConvNeXt_Atto") == "timm/convnext_atto"
    assert canonical_arch("timm/resnet50.a1_in1k") == "timm/resnet50"  # a hub id with its tag
    with pytest.raises(
        FtdynError,
        match="not a torchvision architecture but a timm one; pass arch=timm/convnext_atto",
    ):
        canonical_arch("convnext_atto")
    with pytest.raises(
        FtdynError, match=r"unknown timm architecture 'convnxt_atto'.*timm/convnext_atto"
    ):
        canonical_arch("timm/convnxt_atto")
    assert canonical_arch("resnet50") == "resnet50"  # torchvision's stays torchvision's
    model = build_model("timm/resnet26d", num_classes=5)
    assert model.fc.out_features == 5
    # default layers: the stem activation and the stage outputs (the last activation before each
    # downsampling)
    assert default_layers(model, "timm/resnet26d") == [
        "act1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert default_layers(build_model("timm/convnext_atto"), "timm/convnext_atto") == [
        "stages.0",
        "stages.1",
        "stages.2",
        "stages.3",
    ]
    assert default_layers(build_model("timm/efficientnet_b0"), "timm/efficientnet_b0") == [
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "blocks.6",
    ]


def test_layers_command_lists_both_zoos():
    result = CliRunner().invoke(app, ["layers", "--list"])
    names = result.output.split()
    assert result.exit_code == 0 and "resnet50" in names and "timm/resnet50" in names
    assert "timm/convnext_atto" in names and names.index("resnet50") < names.index("timm/resnet50")
    result = CliRunner().invoke(app, ["layers", "timm/regnetx_002", "--input-size", "64"])
    assert result.exit_code == 0, result.output
    marked = [line.split()[1] for line in result.output.splitlines() if line.startswith("*")]
    assert marked == ["stem", "s1", "s2", "s3", "s4"]
    assert "368x2x2" in result.output  # s4: 368 channels, 64 / 32 = 2


def test_timm_weights_under_a_torchvision_name_get_a_hint(tmp_path):
    path = tmp_path / "effnet_timm.pth"
    torch.save(timm.create_model("efficientnet_b0", num_classes=3).state_dict(), path)
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(
            torchvision.models.efficientnet_b0(num_classes=3), path, arch="efficientnet_b0"
        )
    text = str(info.value)
    assert text.startswith(f"{path}: does not fit efficientnet_b0: missing keys 360 (")
    assert text.endswith(
        "; timm weights: they load with arch=timm/efficientnet_b0, not torchvision's"
        " efficientnet_b0."
    )
    model = build_model("timm/efficientnet_b0", num_classes=3)
    # the same file under the timm name loads
    ck.load_into_model(model, path, arch="timm/efficientnet_b0")


def test_other_zoo_hint_also_after_prefix_and_head_handling_and_the_other_way():
    """The hint's model is tried as the real load is: a Lightning ``model.`` prefix stripped, a
    head of another class count adapted (a third-party series); torchvision weights under a timm
    name get the torchvision name."""
    state = {f"model.{k}": v for k, v in _timm_model("efficientnet_b0", 1).state_dict().items()}
    with pytest.raises(FtdynError) as info:
        ck.load_state_into_model(
            build_model("efficientnet_b0"),
            state,
            source="f.ckpt",
            arch="efficientnet_b0",
            adapt_head=True,
        )
    assert str(info.value).endswith(
        "timm weights: they load with arch=timm/efficientnet_b0, not torchvision's efficientnet_b0."
    )
    torch.manual_seed(2)
    state = torchvision.models.efficientnet_b0(num_classes=3).state_dict()
    with pytest.raises(FtdynError) as info:
        ck.load_state_into_model(
            build_model("timm/efficientnet_b0"),
            state,
            source="f.pth",
            arch="timm/efficientnet_b0",
            adapt_head=True,
        )
    assert str(info.value).endswith(
        "; torchvision weights: they load with arch=efficientnet_b0, not timm/efficientnet_b0."
    )
    # timm's and torchvision's ResNets share their key names: timm weights simply load
    ck.load_state_into_model(
        build_model("resnet18"),
        _timm_model("resnet18", 3).state_dict(),
        source="f.pth",
        arch="resnet18",
        adapt_head=True,
    )


def _hf_resnet_state() -> dict[str, torch.Tensor]:
    """Keys as transformers' ResNetForImageClassification names them (a few, tiny)."""
    names = [
        "resnet.embedder.embedder.convolution.weight",
        "resnet.embedder.embedder.normalization.weight",
        "resnet.embedder.embedder.normalization.bias",
        "resnet.encoder.stages.0.layers.0.layer.0.convolution.weight",
        "classifier.1.weight",
        "classifier.1.bias",
    ]
    return {name: torch.zeros(2, 2) for name in names}


@pytest.mark.parametrize(
    ("arch", "state", "expected"),
    [
        (
            "resnet50",
            lambda: _timm_model("resnet26d", 4).state_dict(),
            "f.pth: does not fit resnet50: missing keys 165 (conv1.weight,"
            " layer1.0.downsample.0.weight, layer1.0.downsample.1.bias, ...); unexpected keys 33"
            " (conv1.0.weight, conv1.1.weight, conv1.1.bias, ...); shape mismatches 4"
            " (layer1.0.downsample.1.weight: file [256, 64, 1, 1] vs model [256],"
            " layer2.0.downsample.1.weight: file [512, 256, 1, 1] vs model [512], ...); the file"
            " names 155 of the model's 320 keys; check arch or the file.",
        ),
        (
            "resnet18",
            lambda: {
                k: v
                for k, v in torchvision.models.resnet18(num_classes=3).state_dict().items()
                if k != "layer4.1.bn2.running_var"
            },
            "f.pth: does not fit resnet18: missing keys 1 (layer4.1.bn2.running_var); the file"
            " names 121 of the model's 122 keys; check arch or the file.",
        ),
        (
            "resnet18",
            _hf_resnet_state,
            "f.pth: does not fit resnet18: missing keys 122 (conv1.weight, bn1.weight, bn1.bias,"
            " ...); unexpected keys 6 (resnet.embedder.embedder.convolution.weight,"
            " resnet.embedder.embedder.normalization.weight,"
            " resnet.embedder.embedder.normalization.bias, ...); the file names 0 of the model's"
            " 122 keys; check arch or the file.",
        ),
    ],
    ids=["timm-resnet26d-as-resnet50", "one-key-missing", "hf-resnet-keys"],
)
def test_no_other_zoo_hint_when_its_model_refuses_the_keys_too(arch, state, expected):
    """timm has resnet50 and resnet18 too, but timm/resnet50 does not take resnet26d's keys and
    timm/resnet18 lacks the same key: the error lists what is missing and unexpected instead."""
    with pytest.raises(FtdynError) as info:
        ck.load_state_into_model(
            build_model(arch), state(), source="f.pth", arch=arch, adapt_head=True
        )
    assert str(info.value) == expected


def _hf_folder(folder: Path, config: dict, state: dict, weights: str = "model.safetensors"):
    """A folder as transformers' save_pretrained (or a Trainer checkpoint) writes it: config.json
    beside the weights."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if weights.endswith(".safetensors"):
        save_file(state, str(folder / weights), metadata={"format": "pt"})
    else:
        torch.save(state, folder / weights)


HF_RESNET = {
    "architectures": ["ResNetForImageClassification"],
    "model_type": "resnet",
    "depths": [2, 2, 2, 2],
    "num_channels": 3,
    "transformers_version": "4.46.0",
}


def _transformers_refusal(where: str, said: str, arch: str = "--arch") -> str:
    return (
        f"ftdyn: error: {where}: a Hugging Face transformers model (config.json: {said}), which"
        " ftdyn does not load (it replays torchvision and timm models); export its weights to a"
        f" torchvision or timm state dict and pass that model's {arch}, or fine-tune a timm model"
        " through transformers' TimmWrapperForImageClassification, whose files load with"
        f" {arch} timm/NAME."
    )


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("ftdyn: error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_transformers_model_folders_are_refused_in_one_line(tmp_path, probe_dir):
    """save_pretrained output, Trainer checkpoints of a transformers model and a --source file
    beside a transformers config.json: refused by config.json, before --arch is asked for."""
    saved = tmp_path / "hf_resnet"
    _hf_folder(saved, HF_RESNET, _hf_resnet_state())
    out = tmp_path / "s.zarr"
    line = _one_error_line(run_extract(saved, probe_dir, out))
    assert line == _transformers_refusal(
        str(saved), "architectures ResNetForImageClassification; model_type resnet"
    )
    vit = {"architectures": ["ViTForImageClassification"], "model_type": "vit"}
    trainer = tmp_path / "trainer_out"
    for step in (2, 4):
        _hf_folder(
            trainer / f"checkpoint-{step}",
            vit,
            {
                "vit.embeddings.cls_token": torch.zeros(1, 1, 4),
                "classifier.weight": torch.zeros(3, 4),
            },
        )
        (trainer / f"checkpoint-{step}" / "trainer_state.json").write_text(
            f'{{"epoch": {step / 2}, "global_step": {step}}}'
        )
    line = _one_error_line(
        run_extract(trainer, probe_dir, out, "--arch", "timm/vit_tiny_patch16_224")
    )
    assert line == _transformers_refusal(
        str(trainer / "checkpoint-2"), "architectures ViTForImageClassification; model_type vit"
    )
    series = tmp_path / "series"
    series.mkdir()
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), series / "epoch_1.pth")
    source = tmp_path / "hf_source"
    _hf_folder(source, {"model_type": "resnet"}, _hf_resnet_state(), "pytorch_model.bin")
    line = _one_error_line(
        run_extract(
            series,
            probe_dir,
            out,
            "--arch",
            "resnet18",
            "--source",
            str(source / "pytorch_model.bin"),
        )
    )
    assert line == _transformers_refusal(
        f"--source {source / 'pytorch_model.bin'}", "model_type resnet"
    )
    assert not out.exists()


def test_timm_configs_beside_the_weights_are_no_transformers_model(tmp_path):
    """transformers' TimmWrapper saves timm's keys (config.json model_type timm_wrapper) and timm's
    hub folders have their own config.json ("architecture"): both load as timm models."""
    states = {n: _timm_model("resnet18", n).state_dict() for n in (0, 2, 4)}
    wrapper = {
        "architectures": ["TimmWrapperForImageClassification"],
        "model_type": "timm_wrapper",
        "architecture": "resnet18",
        "num_labels": 3,
    }
    for step in (2, 4):
        _hf_folder(tmp_path / "wrapped" / f"checkpoint-{step}", wrapper, states[step])
    _hf_folder(tmp_path / "hub", {"architecture": "resnet18", "num_classes": 3}, states[0])
    source = tmp_path / "hub" / "model.safetensors"  # a timm hub download as the source
    entries = ck.discover_series(tmp_path / "wrapped", source=source)
    assert [(e.epoch, e.label) for e in entries] == [
        (0, "model.safetensors"),
        (2, "checkpoint-2/model.safetensors"),
        (4, "checkpoint-4/model.safetensors"),
    ]
    for entry in entries:
        model = build_model("timm/resnet18", num_classes=3)
        ck.load_into_model(model, entry.path, arch="timm/resnet18")
        assert torch.equal(model.state_dict()["fc.weight"], states[entry.epoch]["fc.weight"])


def test_timm_pretrained_tags_need_the_hub(monkeypatch):
    from huggingface_hub import constants

    # as HF_HUB_OFFLINE=1 would: no waiting on the network
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FtdynError) as info:
        build_model("timm/resnet18", weights="a1_in1k")
    text = str(info.value)
    assert "\n" not in text and "Hugging Face hub" in text and "weights FILE" in text


def test_receptive_fields_where_fx_traces_else_not_available(capsys, cli_console):
    from ftdyn.extraction.plan import _receptive_fields

    model = build_model("timm/convnext_atto")
    fields = _receptive_fields(model, layer_layouts(model, ["stages.0", "stages.3"], 64), 64)
    assert fields["stages.0"]["jump"] == [4.0, 4.0] and fields["stages.3"]["jump"] == [32.0, 32.0]
    # split attention: a softmax the receptive-field trace cannot follow
    model = build_model("timm/resnest14d")
    layouts = layer_layouts(model, ["layer1", "layer4"], 64)
    assert _receptive_fields(model, layouts, 64) == {"layer1": None, "layer4": None}
    err = capsys.readouterr().err
    assert (
        "receptive fields are not available for this model" in err
        and len(err.strip().splitlines()) == 1
    )


def test_parse_normalize():
    assert parse_normalize("0.5,0.25") == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert parse_normalize("0.1,0.2,0.3,1,2,3") == {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}
    for bad in ("0.5", "a,b", "0.5,0", "1,2,3,4"):
        with pytest.raises(FtdynError, match=r"^normalize="):
            parse_normalize(bad)


# ------------------------------------------------------------------ timm CheckpointSaver


def _timm_saver_folder(folder: Path, name: str, epochs: int) -> tuple[list[dict], list[dict]]:
    """timm's CheckpointSaver with an EMA model and argparse args, ranked by a metric (so it
    writes last / model_best as hard links); returns the (main, EMA) state per epoch."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    folder.mkdir(parents=True)
    model = _timm_model(name, seed=1)
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(
        model=name, lr=0.1, epochs=epochs, input_size=(3, SIZE, SIZE), mean=None
    )
    saver = CheckpointSaver(
        model, opt, args=args, model_ema=ema, checkpoint_dir=str(folder), max_history=10
    )
    mains, emas = [], []
    for epoch in range(epochs):  # timm counts epochs from 0
        _perturb(model, 10 + epoch)
        ema.update(model)
        saver.save_checkpoint(epoch, metric=float([0.5, 0.7, 0.6][epoch]))
        mains.append(_copy(model.state_dict()))
        emas.append(_copy(ema.module.state_dict()))
    return mains, emas


@pytest.mark.slow
def test_timm_checkpoint_saver_folder(tmp_path, probe_dir):
    folder = tmp_path / "output" / "train"
    mains, emas = _timm_saver_folder(folder, "convnext_atto", 3)
    assert sorted(os.listdir(folder)) == [
        "checkpoint-0.pth.tar",
        "checkpoint-1.pth.tar",
        "checkpoint-2.pth.tar",
        "last.pth.tar",
        "model_best.pth.tar",
    ]
    # hard links
    assert os.path.samefile(folder / "model_best.pth.tar", folder / "checkpoint-1.pth.tar")

    out = tmp_path / "main.zarr"
    result = run_extract(folder, probe_dir, out, "--arch", "timm/convnext_atto")
    assert result.exit_code == 0, result.output
    assert (
        "skipping model_best.pth.tar (the same file as checkpoint-1.pth.tar), last.pth.tar (the"
        " same file as checkpoint-2.pth.tar)." in result.output.replace("\n", "")
    )
    # checkpoint-0 is after one epoch: no source in this series
    assert "epochs count from 0" in result.output
    ds = open_store(out)
    records = ds.attrs["checkpoints"]
    assert [(c["epoch"], c["file"], c["weights"]) for c in records] == [
        (1, "checkpoint-0.pth.tar", "state_dict"),
        (2, "checkpoint-1.pth.tar", "state_dict"),
        (3, "checkpoint-2.pth.tar", "state_dict"),
    ]
    assert ds.attrs["layers"] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert (
        ds.attrs["normalization"] == IMAGENET
        and ds.attrs["normalization_from"] == "timm pretrained config"
    )
    images = ds["images"].values
    build = lambda: timm.create_model("convnext_atto", num_classes=3)
    for i in (0, 2):
        assert_stored(ds, i, forward(build, mains[i], images, ["stages.1", "stages.3"]))

    # the default reference (epoch 0, the source) does not exist: analyze says how to get one
    result = CliRunner().invoke(app, ["analyze", str(out), "--out", str(tmp_path / "res")])
    assert result.exit_code == 2 and "--reference" in result.output and "--source" in result.output

    # the EMA copy, by --weights-copy or by its top-level key, recorded per file
    for i, flags in enumerate((["--weights-copy", "ema"], ["--state-prefix", "state_dict_ema"])):
        out = tmp_path / f"ema{i}.zarr"
        result = run_extract(
            folder, probe_dir, out, "--arch", "timm/convnext_atto", "--layer", "stages.3", *flags
        )
        assert result.exit_code == 0, result.output
        ds = open_store(out)
        assert [c["weights"] for c in ds.attrs["checkpoints"]] == ["state_dict_ema"] * 3
        assert_stored(ds, 2, forward(build, emas[2], images, ["stages.3"]))
        assert ds.attrs["weights_copy"] == flags[1].replace("state_dict_ema", "main")

    # a copy that is not there is a one-line error, never the main weights in its place
    for flags, expected in (
        (["--state-prefix", "teacher"], "no key starts with --state-prefix 'teacher'"),
        (["--weights-copy", "avg"], "--weights-copy: 'avg' is not one of main, ema"),
    ):
        result = run_extract(
            folder, probe_dir, tmp_path / "bad.zarr", "--arch", "timm/convnext_atto", *flags
        )
        assert result.exit_code == 2 and expected in result.output
        # 2 notes + error
        assert len(result.output.strip().splitlines()) == 3 and "Traceback" not in result.output
        assert not (tmp_path / "bad.zarr").exists()


def test_timm_args_namespace_needs_no_trust_but_other_objects_do(tmp_path):
    path = tmp_path / "checkpoint-0.pth.tar"
    state = timm.create_model("resnet10t", num_classes=3).state_dict()
    torch.save(
        {"epoch": 0, "state_dict": state, "args": argparse.Namespace(model="resnet10t", lr=0.1)},
        path,
    )
    assert ck.read_weights(path).key == "state_dict"
    torch.save(
        {
            "epoch": 0,
            "state_dict": state,
            "args": argparse.Namespace(when=datetime.date(2024, 1, 1)),
        },
        path,
    )
    with pytest.raises(
        FtdynError, match=r"refusing to unpickle; it needs datetime.date. If you trust"
    ):
        ck.read_weights(path)


# ------------------------------------------------------------- torchvision reference scripts


@pytest.mark.slow
def test_torchvision_reference_folder_with_model_ema(tmp_path, probe_dir):
    """references/classification/train.py: model_{epoch}.pth and checkpoint.pth (the same dict),
    args a
    Namespace, model_ema an ExponentialMovingAverage (AveragedModel: module. keys and n_averaged).
    """
    folder = tmp_path / "ref"
    folder.mkdir()
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=3)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5), use_buffers=True
    )
    args = argparse.Namespace(model="resnet18", lr=0.1, output_dir=str(folder), model_ema=True)
    mains, emas = [], []
    for epoch in range(2):
        _perturb(model, 20 + epoch)
        ema.update_parameters(model)
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": {},
            "lr_scheduler": {},
            "epoch": epoch,
            "args": args,
            "model_ema": ema.state_dict(),
        }
        torch.save(checkpoint, folder / f"model_{epoch}.pth")
        torch.save(checkpoint, folder / "checkpoint.pth")
        mains.append(_copy(model.state_dict()))
        emas.append(_copy(ema.module.state_dict()))
    assert "n_averaged" in ema.state_dict() and "module.conv1.weight" in ema.state_dict()
    # the flag, or the top-level key by name
    for how in (
        {"copy": "ema"},
        {"state_prefix": "model_ema"},
    ):
        weights = ck.read_weights(folder / "model_1.pth", **how)
        assert weights.key == "model_ema" and "n_averaged" in weights.state
        model = torchvision.models.resnet18(num_classes=3)
        assert (
            ck.load_state_into_model(
                model, weights.state, source="model_1.pth", state_prefix=weights.prefix
            )
            == ""
        )
        torch.testing.assert_close(
            model.state_dict()["layer4.1.conv2.weight"], emas[1]["layer4.1.conv2.weight"]
        )

    out = tmp_path / "s.zarr"
    result = run_extract(
        folder, probe_dir, out, "--arch", "resnet18", "--layer", "layer2", "--layer", "layer4"
    )
    assert result.exit_code == 0, result.output
    assert "skipping checkpoint.pth (a copy of epoch 1, model_1.pth)" in result.output
    ds = open_store(out)
    assert [(c["epoch"], c["file"], c["weights"]) for c in ds.attrs["checkpoints"]] == [
        (1, "model_0.pth", "model"),
        (2, "model_1.pth", "model"),
    ]
    build = lambda: torchvision.models.resnet18(num_classes=3)
    assert_stored(ds, 1, forward(build, mains[1], ds["images"].values, ["layer2", "layer4"]))

    out = tmp_path / "ema.zarr"
    result = run_extract(
        folder, probe_dir, out, "--arch", "resnet18", "--layer", "layer4", "--weights-copy", "ema"
    )
    assert result.exit_code == 0, result.output
    ds = open_store(out)
    assert [c["weights"] for c in ds.attrs["checkpoints"]] == ["model_ema", "model_ema"]
    assert_stored(ds, 0, forward(build, emas[0], ds["images"].values, ["layer4"]))
    assert_stored(ds, 1, forward(build, emas[1], ds["images"].values, ["layer4"]))


def test_ftdyn_epoch_0_without_its_manifest_stays_the_source(tmp_path, capsys, cli_console):
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    for epoch in (0, 1):
        ck.save_checkpoint(tmp_path / ck.checkpoint_filename(epoch), state, epoch=epoch)
    assert [e.epoch for e in ck.discover_series(tmp_path)] == [0, 1]
    assert "epochs count from 0" not in capsys.readouterr().err


def test_ema_prefix_inside_the_state_dict_and_missing_ema(tmp_path):
    model = torchvision.models.resnet18(num_classes=3)
    live, ema = (
        _copy(model.state_dict()),
        {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()},
    )
    path = tmp_path / "epoch=1.ckpt"
    torch.save(
        {
            "epoch": 1,
            "state_dict": {
                **{f"model.{k}": v for k, v in live.items()},
                **{f"ema.module.{k}": v for k, v in ema.items()},
                "ema.n_averaged": torch.tensor(3),
            },
        },
        path,
    )
    weights = ck.read_weights(path, copy="ema")
    assert (weights.key, weights.prefix) == ("state_dict", "ema.module.")
    ck.load_into_model(model, path, copy="ema")
    torch.testing.assert_close(model.conv1.weight, ema["conv1.weight"])
    plain = tmp_path / "plain.pth"
    torch.save(live, plain)
    with pytest.raises(FtdynError, match=r"^weights_copy ema: .*plain.pth holds no EMA copy"):
        ck.read_weights(plain, copy="ema")


# ---------------------------------------------------------------- Lightning and accelerate


@pytest.mark.slow
def test_lightning_model_checkpoint_folder(tmp_path, probe_dir):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters()
            self.model = _timm_model("regnetx_002", seed=3)
            self.seen = []

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def on_train_epoch_end(self):
            self.seen.append(_copy(self.model.state_dict()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = TensorDataset(torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0]))
    folder = tmp_path / "lightning"
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[saver],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    module = Module()
    trainer.fit(module, DataLoader(data, batch_size=2))
    assert sorted(os.listdir(folder)) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]

    out = tmp_path / "s.zarr"
    result = run_extract(folder, probe_dir, out, "--arch", "timm/regnetx_002")
    assert result.exit_code == 0, result.output
    ds = open_store(out)
    assert [
        (c["epoch"], c["file"], c["weights"], c["key_prefix"]) for c in ds.attrs["checkpoints"]
    ] == [
        (1, "epoch=0-step=2.ckpt", "state_dict", "model."),
        (2, "epoch=1-step=4.ckpt", "state_dict", "model."),
    ]
    build = lambda: timm.create_model("regnetx_002", num_classes=3)
    assert_stored(ds, 1, forward(build, module.seen[1], ds["images"].values, ["s2", "s4"]))


@pytest.mark.slow
def test_accelerate_save_state_folder(tmp_path, probe_dir):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    project = tmp_path / "project"
    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(
            project_dir=str(project), automatic_checkpoint_naming=True
        ),
    )
    model = _timm_model("efficientnet_b0", seed=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    states = []
    for epoch in range(2):
        _perturb(model, 30 + epoch)
        accelerator.save_state()
        states.append(_copy(model.state_dict()))
    assert sorted(os.listdir(project / "checkpoints")) == ["checkpoint_0", "checkpoint_1"]

    result = run_extract(project, probe_dir, tmp_path / "x.zarr", "--arch", "timm/efficientnet_b0")
    assert result.exit_code == 2 and f"pass {project / 'checkpoints'}" in result.output.replace(
        "\n", ""
    )

    out = tmp_path / "s.zarr"
    result = run_extract(
        project / "checkpoints",
        probe_dir,
        out,
        "--arch",
        "timm/efficientnet_b0",
        "--normalize",
        "0.5,0.5",
    )
    assert result.exit_code == 0, result.output
    ds = open_store(out)
    assert [(c["epoch"], c["file"]) for c in ds.attrs["checkpoints"]] == [
        (1, "checkpoint_0/model.safetensors"),
        (2, "checkpoint_1/model.safetensors"),
    ]
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert ds.attrs["normalization"] == norm and ds.attrs["normalization_from"] == "--normalize"
    assert ds.attrs["layers"] == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    build = lambda: timm.create_model("efficientnet_b0", num_classes=3)
    assert_stored(
        ds, 1, forward(build, states[1], ds["images"].values, ["blocks.2", "blocks.6"], norm)
    )


@pytest.mark.slow
def test_timm_resnet50_with_source_and_head_change_note(tmp_path, probe_dir):
    """A timm resnet50 source (1000 classes) fine-tuned to 3 classes, one file as safetensors."""
    from safetensors.torch import save_file

    source = _timm_model("resnet50", seed=5, num_classes=10)
    src = tmp_path / "resnet50_src.pth"
    torch.save(source.state_dict(), src)
    folder = tmp_path / "ft"
    folder.mkdir()
    tuned = _timm_model("resnet50", seed=5)
    tuned.load_state_dict(
        {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, strict=False
    )
    states = []
    for epoch in (1, 2):
        _perturb(tuned, 40 + epoch)
        states.append(_copy(tuned.state_dict()))
        torch.save(
            {"epoch": epoch, "state_dict": tuned.state_dict()}, folder / f"epoch_{epoch}.pth"
        )
    other_head = _timm_model("resnet50", seed=6, num_classes=4)
    save_file(other_head.state_dict(), str(folder / "epoch_3.safetensors"), metadata={"epoch": "3"})
    out = tmp_path / "s.zarr"
    result = run_extract(
        folder,
        probe_dir,
        out,
        "--arch",
        "timm/resnet50",
        "--source",
        str(src),
        "--layer",
        "layer3",
        "--layer",
        "layer4",
    )
    assert result.exit_code == 0, result.output
    assert (
        "classifier head changes its class count inside the series (epoch 1: 3, epoch 2: 3, epoch"
        " 3: 4" in result.output.replace("\n", " ")
    )
    ds = open_store(out)
    assert [c["epoch"] for c in ds.attrs["checkpoints"]] == [0, 1, 2, 3]
    images = ds["images"].values
    assert_stored(
        ds,
        0,
        forward(
            lambda: timm.create_model("resnet50", num_classes=10),
            source.state_dict(),
            images,
            ["layer3", "layer4"],
        ),
    )
    assert_stored(
        ds,
        2,
        forward(
            lambda: timm.create_model("resnet50", num_classes=3), states[1], images, ["layer4"]
        ),
    )
