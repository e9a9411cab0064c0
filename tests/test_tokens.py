"""Token models (timm's ViT, DeiT, BEiT, EVA, Swin): their layers stored as (channel, y, x) maps.

The layouts are checked against the test's own hooks on a model timm builds directly: token i
of a block output (after the prefix tokens) is cell (i // W, i % W), and a patch planted in the
image changes the patch embedding's map at its own cell only. A trained ViT series goes through
extract, analyze and visualize with the plain documented commands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ftdyn.cli import app
from ftdyn.errors import FtdynError
from ftdyn.models import (
    LayerCapture,
    build_model,
    default_layers,
    head_name,
    layer_layouts,
    token_fields,
)
from ftdyn.store import open_store
from ftdyn.tokens import token_grid

timm = pytest.importorskip("timm")


def _raw_outputs(model: torch.nn.Module, images: torch.Tensor, names: list[str]) -> dict:
    """The test's own hooks: each module's output as the model returns it."""
    outs, handles = {}, []
    for name in names:
        hook = lambda _m, _i, o, name=name: outs.__setitem__(name, o.detach().clone())
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(images)
    for h in handles:
        h.remove()
    return outs


def _captured(model: torch.nn.Module, images: torch.Tensor, names: list[str], size: int) -> dict:
    with LayerCapture(model, names, layouts=layer_layouts(model, names, size)) as capture:
        with torch.no_grad():
            model.eval()(images)
        return capture.pop()


# each family at a small size: (timm name, build options, input size, block, prefix-token kinds)
FAMILIES = [
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, 48, "blocks.11", ("class",)),
    (
        "deit_tiny_distilled_patch16_224",
        {"dynamic_img_size": True},
        48,
        "blocks.3",
        ("class", "distillation"),
    ),
    ("test_vit2", {}, 48, "blocks.7", ("register",)),
    ("eva02_tiny_patch14_224", {"dynamic_img_size": True}, 42, "blocks.5", ("class",)),
    # BEiT takes its built size only: built small
    (
        "beit_base_patch16_224",
        {"img_size": 48, "embed_dim": 64, "depth": 2, "num_heads": 2},
        48,
        "blocks.1",
        ("class",),
    ),
]


@pytest.mark.parametrize("name, options, size, block, prefix", FAMILIES)
def test_block_tokens_land_on_their_grid_cells(name, options, size, block, prefix):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **options)
    images = torch.randn(2, 3, size, size)
    raw = _raw_outputs(model, images, [block])[block]  # (batch, tokens, channel)
    stored = _captured(model, images, [block], size)[block]  # (batch, channel, y, x)
    grid = token_grid(model, size)
    h, w = grid.grid
    assert grid.prefix == prefix and stored.shape == (2, raw.shape[2], h, w)
    assert raw.shape[1] == len(prefix) + h * w  # the prefix tokens are not in the map
    for i in range(h * w):
        torch.testing.assert_close(stored[:, :, i // w, i % w], raw[:, len(prefix) + i, :])


def test_swin_stages_are_channels_last_grids_from_its_metadata():
    torch.manual_seed(0)
    model = build_model("timm/swin_tiny_patch4_window7_224", num_classes=3)
    layers = default_layers(model, "timm/swin_tiny_patch4_window7_224", 64)
    assert layers == ["layers.0", "layers.1", "layers.2", "layers.3"]
    images = torch.randn(1, 3, 64, 64)
    raw = _raw_outputs(model, images, layers)
    stored = _captured(model, images, layers, 64)
    for name, side in zip(layers, (16, 8, 4, 2), strict=True):
        assert raw[name].shape[1:3] == (side, side)  # (batch, y, x, channel)
        torch.testing.assert_close(stored[name], raw[name].permute(0, 3, 1, 2))
    fields = token_fields(model, layer_layouts(model, ["patch_embed", "layers.2"], 64), 64)
    assert (
        fields["patch_embed"]["size"] == [4.0, 4.0] and not fields["patch_embed"]["global_context"]
    )
    assert fields["layers.2"]["jump"] == [16.0, 16.0] and fields["layers.2"]["global_context"]


def test_a_planted_patch_moves_only_its_own_cell_of_the_patch_embedding():
    torch.manual_seed(0)
    model = build_model("timm/vit_tiny_patch16_224", num_classes=3)
    blank = torch.zeros(1, 3, 64, 64)
    planted = blank.clone()
    planted[:, :, 32:48, 16:32] = torch.randn(1, 3, 16, 16)  # the patch in row 2, column 1
    names = ["patch_embed", "blocks.0"]
    before, after = (_captured(model, x, names, 64) for x in (blank, planted))
    moved = (after["patch_embed"] - before["patch_embed"]).abs().amax(dim=(0, 1))
    assert moved.nonzero().tolist() == [[2, 1]]
    assert (after["blocks.0"] - before["blocks.0"]).abs().amax(dim=(0, 1)).min() > 0  # mixed


def test_default_layers_are_evenly_spaced_blocks_up_to_the_last():
    assert default_layers(
        build_model("timm/vit_tiny_patch16_224"), "timm/vit_tiny_patch16_224", 32
    ) == [
        "blocks.2",
        "blocks.5",
        "blocks.8",
        "blocks.11",
    ]
    assert default_layers(build_model("timm/test_vit"), "timm/test_vit", 32) == [
        "blocks.1",
        "blocks.3",
        "blocks.5",
    ]


def test_token_models_run_at_any_size_and_keep_their_seeded_init():
    torch.manual_seed(0)
    ours = build_model("timm/vit_tiny_patch16_224")
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    assert ours.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
    beit = build_model("timm/beit_base_patch16_224")  # no dynamic size in timm: its own size only
    with pytest.raises(FtdynError, match="cannot run on 32x32 images"):
        layer_layouts(beit, ["blocks.0"], 32)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def vit_series(image_folder, tmp_path_factory) -> Path:
    """A ViT-tiny series trained one epoch at 32 px (2 x 2 patches) from a seeded random init."""
    import ftdyn

    return ftdyn.train(
        image_folder,
        arch="timm/vit_tiny_patch16_224",
        out=tmp_path_factory.mktemp("vit") / "ckpts",
        epochs=1,
        batch_size=8,
        input_size=32,
        seed=0,
        device="cpu",
        progress=False,
    )


def _run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def vit_store(vit_series, image_folder, tmp_path_factory) -> Path:
    """The series extracted at the patch embedding, the first and the last block, and the last
    block's class token."""
    out = tmp_path_factory.mktemp("vit_store") / "vit.zarr"
    layers = ["patch_embed", "blocks.0", "blocks.11", "blocks.11:class"]
    flags = [a for layer in layers for a in ("--layer", layer)]
    _run(
        "extract", vit_series, "--data", image_folder / "val", "--out", out, "--no-progress", *flags
    )
    return out


def test_vit_store_holds_patch_tokens_on_their_grid(vit_series, vit_store):
    from helpers import hooked_forward

    ds = open_store(vit_store)
    assert ds.attrs["token_layers"] == {
        "patch_embed": {"grid": [2, 2], "prefix_tokens": []},
        "blocks.0": {"grid": [2, 2], "prefix_tokens": ["class"]},
        "blocks.11": {"grid": [2, 2], "prefix_tokens": ["class"]},
        "blocks.11:class": {"grid": [1, 1], "prefix_tokens": ["class"], "prefix_token": "class"},
    }
    assert ds["blocks_11"].attrs["tokens"] == {"grid": [2, 2], "prefix_tokens": ["class"]}
    assert ds["blocks_11_class"].shape[2:] == (192, 1, 1)
    fields = ds.attrs["receptive_fields"]
    assert fields["patch_embed"]["size"] == [16.0, 16.0]  # its own patch
    assert fields["blocks.0"]["global_context"] and fields["blocks.0"]["size"] == [48.0, 48.0]
    # the class token has attended to every patch: its one cell sees the whole image
    assert fields["blocks.11:class"]["global_context"]
    assert fields["blocks.11:class"]["size"] == [32.0, 32.0]

    # the store equals an independent forward pass: timm's own model, the test's own reshape
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, dynamic_img_size=True)
    model.load_state_dict(torch.load(vit_series / "epoch_001.pt", weights_only=True)["state_dict"])
    raw = hooked_forward(model, ds["images"].values, ["blocks.11"], ds.attrs["normalization"])
    expected = raw["blocks.11"][:, 1:, :].transpose(0, 2, 1).reshape(-1, 192, 2, 2)
    stored = ds["blocks_11"].values[1].astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    token = raw["blocks.11"][:, 0, :]  # the class token, before the patch tokens
    stored = ds["blocks_11_class"].values[1, :, :, 0, 0].astype(np.float32)
    np.testing.assert_allclose(stored, token, rtol=2e-3, atol=2e-3 * np.abs(token).max())


@pytest.mark.slow
def test_vit_store_analyze_and_visualize(vit_store, tmp_path):
    _run("analyze", vit_store, "--out", tmp_path / "res", "--no-progress")
    assert any((tmp_path / "res").iterdir())
    for layer in ("patch_embed", "blocks.11", "blocks.11:class"):
        _run("visualize", vit_store, "--layer", layer, "--out", tmp_path / f"figs_{layer}")
        assert any((tmp_path / f"figs_{layer}").rglob("*.png"))


@pytest.mark.parametrize(
    "layer, says",
    [
        ("fc_norm", "neither a (batch, channel, y, x) map nor a token model's patch tokens"),
        ("blocks.11:register", "blocks.11 has no single 'register' token to keep: its prefix"),
        ("patch_embed:class", "patch_embed has no single 'class' token to keep: its output"),
    ],
)
def test_a_class_token_or_pooled_layer_is_refused_in_one_line(
    vit_series, image_folder, tmp_path, layer, says
):
    result = CliRunner().invoke(
        app,
        [
            "extract",
            str(vit_series),
            "--data",
            str(image_folder / "val"),
            "--out",
            str(tmp_path / "s.zarr"),
            "--layer",
            layer,
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert says in result.output and not (tmp_path / "s.zarr").exists()


def test_layers_lists_a_default_blocks_class_token_beside_it():
    listed = _run("layers", "timm/vit_tiny_patch16_224", "--input-size", "32").output.splitlines()
    block = next(i for i, line in enumerate(listed) if line.split()[1] == "blocks.11")
    assert listed[block + 1].split() == ["blocks.11:class", "class", "token", "192x1x1"]


@pytest.mark.parametrize(
    "layer, record, says",
    [
        (
            "blocks.0",
            {"grid": [3, 3], "prefix_tokens": ["class"]},
            r"the grid \[3, 3\], its map is",
        ),
        (
            "blocks.11:class",
            {"grid": [1, 1], "prefix_tokens": ["class"], "prefix_token": "register"},
            r"the prefix token 'register', not one of its prefix tokens \['class'\]",
        ),
    ],
)
def test_a_token_record_that_disagrees_with_the_map_is_a_damaged_store(
    vit_store, tmp_path, layer, record, says
):
    import shutil

    import zarr

    copy = Path(shutil.copytree(vit_store, tmp_path / "copy.zarr"))
    group = zarr.open_group(copy, mode="r+", zarr_format=3)
    tokens = dict(group.attrs["token_layers"])
    tokens[layer] = record
    group.attrs["token_layers"] = tokens
    with pytest.raises(FtdynError, match=f"gives layer {layer} {says}"):
        open_store(copy)


@pytest.mark.slow
def test_swin_series_extract_and_analyze(image_folder, tmp_path):
    """Two Swin checkpoints saved as plain state dicts (the source and a perturbed copy)."""
    from helpers import hooked_forward

    folder = tmp_path / "swin"
    folder.mkdir()
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, dynamic_img_size=True)
    states = []
    for epoch in (0, 1):
        if epoch:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p) * (p.abs().mean() + 1e-3))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        torch.save(states[-1], folder / f"epoch_{epoch}.pth")
    out = tmp_path / "swin.zarr"
    arch = ("--arch", "timm/swin_tiny_patch4_window7_224", "--input-size", "64")
    _run("extract", folder, "--data", image_folder / "val", "--out", out, "--no-progress", *arch)
    ds = open_store(out)
    assert ds.attrs["layers"] == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert ds.attrs["token_layers"]["layers.2"] == {"grid": [4, 4], "prefix_tokens": []}
    model.load_state_dict(states[1])
    raw = hooked_forward(model, ds["images"].values, ["layers.2"], ds.attrs["normalization"])
    expected = raw["layers.2"].transpose(0, 3, 1, 2)
    stored = ds["layers_2"].values[1].astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    # a third-party series counts from 1 (ftdyn cannot know file 0 is the source)
    _run("analyze", out, "--out", tmp_path / "res", "--reference", "1", "--no-progress")


def test_a_headless_eva02_gets_a_head_and_its_headless_weights_load(image_folder, tmp_path):
    """timm builds EVA-02 (masked-image-modelling weights) without a head: ftdyn gives it one
    (not the last block's MLP layer), and a weights file without a head loads as the source of
    a third-party series, with one note."""
    arch = "timm/eva02_tiny_patch14_224"
    model = build_model(arch, num_classes=3)
    assert head_name(model) == "head"
    assert model.eval()(torch.zeros(1, 3, 42, 42)).shape == (1, 3)

    torch.manual_seed(0)
    backbone = timm.create_model("eva02_tiny_patch14_224", num_classes=0, dynamic_img_size=True)
    torch.save(backbone.state_dict(), tmp_path / "source.pth")
    series = tmp_path / "series"
    series.mkdir()
    head = {"head.weight": torch.randn(3, 192), "head.bias": torch.zeros(3)}
    torch.save({**backbone.state_dict(), **head}, series / "epoch_1.pth")
    out = tmp_path / "s.zarr"
    flags = ("--arch", arch, "--source", tmp_path / "source.pth", "--input-size", "42")
    result = _run(
        "extract", series, *flags, "--data", image_folder / "val", "--out", out,
        "--layer", "blocks.11", "--no-progress",
    )  # fmt: skip
    assert result.output.count("holds no classifier head ('head')") == 1, result.output
    assert "another class count" not in result.output
    # the same backbone in both files: the source's weights were loaded, not left at random
    stored = open_store(out)["blocks_11"].values
    assert stored.shape[0] == 2 and np.array_equal(stored[0], stored[1])

    # fine-tuning starts from the headless file too, with the target's head
    trained = _run(
        "train", image_folder, "--arch", arch, "--weights", tmp_path / "source.pth",
        "--epochs", "1", "--input-size", "42", "--batch-size", "8", "--out", tmp_path / "ft",
        "--no-progress",
    )  # fmt: skip
    assert trained.output.count("holds no classifier head ('head')") == 1, trained.output
    assert (tmp_path / "ft" / "epoch_001.pt").is_file()
