"""Model registry and layer selection: the paper's hook points and the CLI listing."""

import os

import pytest
import torch
from typer.testing import CliRunner

from ftdyn.checkpoints import load_state_into_model
from ftdyn.cli import app
from ftdyn.errors import FtdynError
from ftdyn.models import (
    LayerCapture,
    build_model,
    canonical_arch,
    default_layers,
    head_name,
    layer_layouts,
    num_classes_of,
)
from ftdyn.runtime import TORCH_HUGE_PAGES


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("vgg19", ["features.3", "features.8", "features.17", "features.26", "features.35"]),
        ("resnet50", ["relu", "layer1", "layer2", "layer3", "layer4"]),
        (
            "densenet121",
            [
                "features.denseblock1.denselayer6.relu2",
                "features.transition1.relu",
                "features.denseblock2.denselayer12.relu2",
                "features.transition2.relu",
                "features.denseblock3.denselayer24.relu2",
                "features.transition3.relu",
                "features.denseblock4.denselayer16.relu2",
            ],
        ),
    ],
)
def test_paper_layers(arch, expected):
    model = build_model(arch, num_classes=7)
    assert default_layers(model, arch, 64) == expected
    assert model.get_submodule(head_name(model)).out_features == 7


def test_generic_rule_picks_last_activation_before_each_downsampling():
    model = build_model("mobilenet_v3_small")
    layers = default_layers(model, "mobilenet_v3_small", 224)
    with LayerCapture(model, layers) as capture:
        model.eval()(torch.zeros(1, 3, 224, 224))
        sizes = [t.shape[-1] for t in capture.pop().values()]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes) and min(sizes) > 1


def test_capture_keeps_block_output_of_a_reused_relu():
    model = build_model("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with LayerCapture(model, ["layer1.0.relu", "layer1.0"]) as capture:
        model(x)
        out = capture.pop()
    torch.testing.assert_close(out["layer1.0.relu"], out["layer1.0"])
    assert (out["layer1.0"] >= 0).all()


def test_unknown_names_are_one_line_errors():
    with pytest.raises(FtdynError, match="Did you mean resnet50"):
        canonical_arch("resnet5O")
    with pytest.raises(FtdynError, match=r"^layers: 'layer9' is not a module"):
        LayerCapture(build_model("resnet18"), ["layer9"])
    with pytest.raises(FtdynError, match="neither a file nor a weights name"):
        build_model("resnet18", weights="IMAGENET9K")


def test_layers_command_lists_defaults_with_shapes():
    result = CliRunner().invoke(app, ["layers", "resnet18", "--input-size", "64"])
    assert result.exit_code == 0
    assert "* layer4" in result.output and "512x2x2" in result.output
    # GoogLeNet's defaults are its top-level blocks (its ReLUs are functions, not modules): listed
    # too
    google = CliRunner().invoke(app, ["layers", "googlenet", "--input-size", "64"])
    assert (
        google.exit_code == 0 and "* inception5b" in google.output and "1024x2x2" in google.output
    )
    bad = CliRunner().invoke(app, ["layers", "nosuchnet"])
    assert (
        bad.exit_code == 2
        and "unknown architecture" in bad.output
        and "Traceback" not in bad.output
    )
    # too small for its poolings
    small = CliRunner().invoke(app, ["layers", "densenet121", "--input-size", "16"])
    assert small.exit_code == 2 and "Traceback" not in small.output
    assert small.output.startswith(
        "ftdyn: error: --input-size 16: DenseNet cannot run on 16x16 images"
    )


def test_cli_asks_torch_for_huge_pages_unless_the_environment_says_otherwise(monkeypatch):
    """Every command sets THP_MEM_ALLOC_ENABLE=1 before it imports torch (ftdyn.runtime), and
    keeps a value the user set."""
    monkeypatch.delenv(TORCH_HUGE_PAGES, raising=False)
    assert CliRunner().invoke(app, ["layers", "--list"]).exit_code == 0
    assert os.environ[TORCH_HUGE_PAGES] == "1"
    monkeypatch.setenv(TORCH_HUGE_PAGES, "0")
    assert CliRunner().invoke(app, ["layers", "--list"]).exit_code == 0
    assert os.environ[TORCH_HUGE_PAGES] == "0"


def test_convolutional_head_is_replaced_and_not_a_default_layer():
    """SqueezeNet classifies with a Conv2d + ReLU: that head gets the target's classes, adapts to a
    checkpoint's class count, and its ReLU is not among the feature layers."""
    model = build_model("squeezenet1_0", num_classes=3).eval()
    assert head_name(model) == "classifier.1" and model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert not [
        name for name in default_layers(model, "squeezenet1_0", 64) if name.startswith("classifier")
    ]
    five = build_model("squeezenet1_0", num_classes=5).state_dict()
    load_state_into_model(model, five, source="five.pt", adapt_head=True)
    assert num_classes_of(model) == 5


def test_channels_last_outputs_are_detected_and_transposed():
    model = build_model("convnext_tiny").eval()
    gelu, stage = "features.1.0.block.4", "features.1"
    layouts = layer_layouts(model, [gelu, stage], 64)
    assert layouts[gelu].channels_last and not layouts[stage].channels_last
    raw = {}
    model.get_submodule(gelu).register_forward_hook(
        lambda m, i, o: raw.setdefault("gelu", o.clone())
    )
    with LayerCapture(model, [gelu, stage], layouts=layouts) as capture:
        model(torch.randn(1, 3, 64, 64))
        out = capture.pop()
    torch.testing.assert_close(out[gelu], raw["gelu"].permute(0, 3, 1, 2))
    assert out[gelu].shape[-2:] == out[stage].shape[-2:] == (16, 16) and out[gelu].is_contiguous()


def test_closed_pipe_exits_quietly(monkeypatch):
    """`ftdyn layers --list | head`: the reader leaving is no error to report."""
    import ftdyn.models as models

    def closed():
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(models, "available_architectures", closed)
    result = CliRunner().invoke(app, ["layers", "--list"])
    assert result.exit_code == 141 and "error" not in result.output
