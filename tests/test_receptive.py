"""Receptive-field geometry: known values, empirical gradient support, conventions."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ftdyn.receptive import (
    ReceptiveField,
    ReceptiveFieldError,
    image_to_map,
    map_to_image,
    receptive_fields,
    upsample_to_image,
)

VGG19_LAYERS = ["features.3", "features.8", "features.17", "features.26", "features.35"]


def build(name, **kw):
    """A torchvision model on the meta device: no weights, no init cost (geometry needs none)."""
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None, num_classes=10, **kw)


# --------------------------------------------------------------------------- #
# Empirical gradient support
# --------------------------------------------------------------------------- #


def make_positive(model: nn.Module) -> nn.Module:
    """A CPU copy with the same geometry in which every path carries a strictly positive gradient.

    Convs get positive constant weights and no bias, BatchNorm becomes the
    identity, ReLU6 becomes ReLU (activations are positive for a positive input,
    so every ReLU passes), and MaxPool, which routes gradient to one location,
    becomes AvgPool of the same geometry. Other parameters are left
    uninitialised: the forward pass is cut before the classifier.
    """
    model = copy.deepcopy(model).to_empty(device="cpu")
    for name, m in list(model.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(m, nn.MaxPool2d):
            assert m.dilation in (1, (1, 1))
            setattr(
                parent,
                attr,
                nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode),
            )
        elif isinstance(m, (nn.ReLU6, nn.Hardtanh)):
            setattr(parent, attr, nn.ReLU())
        elif isinstance(m, nn.ReLU):
            m.inplace = False
        elif isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return model.eval()


class _Stop(Exception):
    pass


def gradient_supports(model, layers, size, units, stop_at, call=-1):
    """{(layer, (u, v)): (box, solid, map_shape)} from one forward pass cut short after ``stop_at``.

    ``box`` is the bounding box (y0, x0, y1, x1) of the input-gradient support of unit (u, v)
    of each layer's output on its ``call``-th call (default: last); ``solid`` says whether the
    support fills the box. Units may count from the end (negative) or be "centre".
    """
    outs = {layer: [] for layer in layers}
    handles = [
        model.get_submodule(layer).register_forward_hook(
            lambda m, i, o, layer=layer: outs[layer].append(o)
        )
        for layer in layers
    ]

    def stop(m, i, o):
        raise _Stop

    handles.append(model.get_submodule(stop_at).register_forward_hook(stop))
    x = torch.ones(1, 3, size, size, requires_grad=True)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    result = {}
    for layer in layers:
        out = outs[layer][call]
        h, w = out.shape[2:]
        for unit in units:
            u, v = (h // 2, w // 2) if unit == "centre" else (unit[0] % h, unit[1] % w)
            (g,) = torch.autograd.grad(out[0, :, u, v].sum(), x, retain_graph=True)
            nz = (g[0].abs().sum(0) > 0).numpy()
            rows, cols = np.flatnonzero(nz.any(1)), np.flatnonzero(nz.any(0))
            box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
            solid = bool(nz[box[0] : box[2], box[1] : box[3]].all())
            result[layer, (u, v)] = (box, solid, (h, w))
    return result


UNITS = [(0, 0), (-1, -2), "centre"]


def check_against_gradient(model, layers, size, stop_at=None, solid=True):
    """Analytic box (clipped to the image) == bounding box of the gradient support, which is solid.

    Checked for units at the first corner, near the last corner and at the centre of each layer's
    map.
    Where the field lies entirely inside the image this also checks its size and centre.
    """
    rfs = receptive_fields(model, list(layers), size)
    sup = gradient_supports(make_positive(model), layers, size, UNITS, stop_at or layers[-1])
    checked_inside = set()
    for (layer, (u, v)), (box, solid_, shape) in sup.items():
        rf = rfs[layer]
        assert shape == rf.map_size, layer
        assert solid_ or not solid, f"{layer} unit {(u, v)}: gradient support has holes"
        assert rf.box(u, v, clip=(size, size)) == box, (layer, (u, v), rf, box)
        y0, x0, y1, x1 = rf.box(u, v)
        if y0 >= 0 and x0 >= 0 and y1 <= size and x1 <= size:  # field entirely inside
            assert (box[2] - box[0], box[3] - box[1]) == rf.size
            assert ((box[0] + box[2] - 1) / 2, (box[1] + box[3] - 1) / 2) == rf.center(u, v)
            checked_inside.add(layer)
    return rfs, checked_inside


def test_gradient_support_vgg19():
    rfs, inside = check_against_gradient(build("vgg19"), VGG19_LAYERS[:4], 64)
    # relu3_4 (48 px) fits in 64 px: its size is checked exactly
    assert inside == set(VGG19_LAYERS[:3])
    # larger than the image: position checked via clipping
    assert rfs["features.26"].size == (
        116,
        116,
    )


def test_gradient_support_resnet18():
    layers = ["maxpool", "layer1.0.relu", "layer1", "layer2.0.relu", "layer2", "layer3"]
    rfs, inside = check_against_gradient(build("resnet18"), layers, 112)
    assert {"layer1", "layer2.0.relu", "layer2"} <= inside
    assert rfs["layer1.0.relu"].size == (27, 27) and rfs["layer1"].size == (43, 43)
    assert rfs["layer2"].size == (99, 99) and rfs["layer3"].size == (211, 211)


def test_gradient_support_resnet50_block_relu_is_block_output():
    model = build("resnet50")
    layers = ["layer1.0.relu", "layer1.2.relu", "layer1", "layer2.0.relu", "layer2"]
    rfs, inside = check_against_gradient(model, layers, 96)
    assert inside == set(layers)
    both = receptive_fields(model, ["layer1.0.relu", "layer1.0", "layer1.2.relu", "layer1"], 96)
    assert both["layer1.0.relu"] == both["layer1.0"]
    assert both["layer1.2.relu"] == both["layer1"] == rfs["layer1"]
    assert rfs["layer1.0.relu"].size == (19, 19) and rfs["layer1"].size == (35, 35)
    assert rfs["layer2.0.relu"].size == (43, 43) and rfs["layer2"].size == (91, 91)
    # The check is discriminative: the FIRST call of layer1.0.relu (after the block's 1x1
    # conv1) sees only the maxpool field, not the block output's.
    sup = gradient_supports(
        make_positive(model), ["layer1.0.relu"], 96, ["centre"], "layer1.0", call=0
    )
    (((_, unit), (first_box, _, _)),) = sup.items()
    assert first_box[2] - first_box[0] == 11 and first_box != rfs["layer1.0.relu"].box(*unit)


def test_gradient_support_densenet121():
    layers = [
        "features.relu0",
        "features.denseblock1.denselayer2.relu2",
        "features.denseblock1.denselayer6.relu2",
        "features.transition1.relu",
        "features.denseblock2.denselayer1.relu2",
    ]
    rfs, inside = check_against_gradient(build("densenet121"), layers, 80)
    assert inside == set(layers)
    assert [rfs[n].size[0] for n in layers] == [7, 19, 51, 59, 63]


def test_gradient_support_mobilenet_v2():
    layers = ["features.2.conv.1.2", "features.3"]  # depthwise 3x3/2, inverted residual block
    rfs, inside = check_against_gradient(build("mobilenet_v2"), layers, 48)
    assert "features.3" in inside
    assert not any(rf.global_context for rf in rfs.values())


class _TwoPaths(nn.Module):
    """Two non-nested paths: 3x3 conv (pixels u-1..u+1) and two 'same' 2x2 convs (u..u+2)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = nn.Conv2d(3, 4, 2, padding="same")
        self.b2 = nn.Conv2d(4, 4, 2, padding="same")
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.a(x) + self.b2(self.b1(x)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_merge_takes_union_of_paths():
    # the union of two offset boxes is not a box (the support is L-shaped): only its bounding box is
    # compared
    rfs, _ = check_against_gradient(_TwoPaths(), ["relu"], 16, solid=False)
    rf = rfs["relu"]
    assert rf.size == (4, 4) and rf.start == (0.5, 0.5) and rf.box(5, 5) == (4, 4, 8, 8)


# --------------------------------------------------------------------------- #
# Known values and conventions
# --------------------------------------------------------------------------- #


def test_vgg19_known_values():
    rfs = receptive_fields(build("vgg19"), VGG19_LAYERS, 224)
    assert [rfs[n].size for n in VGG19_LAYERS] == [(s, s) for s in (5, 14, 48, 116, 252)]
    assert [rfs[n].jump for n in VGG19_LAYERS] == [(j, j) for j in (1, 2, 4, 8, 16)]
    assert [rfs[n].start for n in VGG19_LAYERS] == [(s, s) for s in (0, 0.5, 1.5, 3.5, 7.5)]
    assert [rfs[n].map_size for n in VGG19_LAYERS] == [(s, s) for s in (224, 112, 56, 28, 14)]
    assert all(rf.input_size == (224, 224) and not rf.global_context for rf in rfs.values())


def test_resnet50_and_densenet121_default_layers():
    r = receptive_fields(build("resnet50"), ["relu", "layer1", "layer2", "layer3", "layer4"], 224)
    assert [r[n].size[0] for n in r] == [7, 35, 91, 267, 427]
    assert [r[n].jump[0] for n in r] == [2, 4, 8, 16, 32]
    assert all(rf.start == (0, 0) for rf in r.values())
    d = receptive_fields(
        build("densenet121"),
        [
            "features.denseblock1.denselayer6.relu2",
            "features.transition1.relu",
            "features.transition2.relu",
            "features.transition3.relu",
            "features.denseblock4.denselayer16.relu2",
        ],
        224,
    )
    assert [rf.size[0] for rf in d.values()] == [51, 59, 255, 1031, 2007]
    assert [rf.jump[0] for rf in d.values()] == [4, 4, 8, 16, 32]
    assert [rf.start[0] for rf in d.values()] == [0, 0, 2, 6, 14]


def test_box_extends_outside_and_clips_at_corners():
    rf = receptive_fields(build("vgg19"), ["features.35"], 224)["features.35"]
    assert rf.box(0, 0) == (-118, -118, 134, 134)
    assert rf.box(0, 0, clip=(224, 224)) == (0, 0, 134, 134)
    assert rf.box(13, 13) == (90, 90, 342, 342)
    assert rf.box(13, 13, clip=(224, 224)) == (90, 90, 224, 224)
    assert rf.box(0, 13, clip=(224, 200)) == (0, 90, 134, 200)
    y0, x0, y1, x1 = rf.box(5, 7)
    assert (y1 - y0, x1 - x0) == (252, 252)
    assert rf.center(5, 7) == (7.5 + 5 * 16, 7.5 + 7 * 16) == ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)
    rect = ReceptiveField(size=(3, 5), jump=(1, 2), start=(0, 1))
    assert rect.box(2, 3) == (1, 5, 4, 10)  # rows use y, columns use x


def test_to_dict_from_dict_round_trip():
    rfs = receptive_fields(build("resnet18"), ["layer2", "maxpool"], (96, 128))
    for rf in rfs.values():
        d = json.loads(json.dumps(rf.to_dict()))
        back = ReceptiveField.from_dict(d)
        assert back == rf
        assert back.input_size == (96, 128) and back.map_size == rf.map_size
    minimal = ReceptiveField.from_dict({"size": [5, 5], "jump": [1, 1], "start": [0, 0]})
    assert minimal.map_size is None and not minimal.global_context


def test_cell_centres_of_a_stride_two_layer():
    rf = receptive_fields(build("vgg19"), ["features.8"], 64)["features.8"]  # relu2_2: one 2x2 pool
    assert rf.jump == (2, 2) and rf.start == (0.5, 0.5) and rf.map_size == (32, 32)
    ys, xs = map_to_image(rf, *rf.map_size)
    np.testing.assert_array_equal(ys, 0.5 + 2 * np.arange(32))
    np.testing.assert_array_equal(xs, ys)
    assert (ys[7], xs[3]) == rf.center(7, 3)
    us, _vs = image_to_map(rf, 64, 64)
    np.testing.assert_allclose(np.interp(ys, np.arange(64), us), np.arange(32))
    # a plain resize (align_corners=False) puts cell u at 2u + 0.5: right for the 2x2 pool above,
    # half a pixel off for a strided conv with "same"-style padding:
    r = receptive_fields(build("resnet18"), ["relu"], 64)["relu"]  # conv 7x7/2 pad 3
    ys, _ = map_to_image(r, *r.map_size)
    np.testing.assert_array_equal(ys, 2 * np.arange(32))  # a resize would use 0.5 + 2u


def test_cell_centres_match_gradient_support_centres():
    model = build("resnet18")
    rf = receptive_fields(model, ["layer1"], 128)["layer1"]
    ys, xs = map_to_image(rf, *rf.map_size)
    sup = gradient_supports(make_positive(model), ["layer1"], 128, [(8, 10), (20, 12)], "layer1")
    for (_, (u, v)), (box, _, _) in sup.items():
        assert ((box[0] + box[2] - 1) / 2, (box[1] + box[3] - 1) / 2) == (ys[u], xs[v])


def test_upsample_places_cells_at_their_centres():
    rf = ReceptiveField(size=(7, 7), jump=(4, 4), start=(1.5, 1.5))
    fmap = np.zeros((2, 8, 8))
    fmap[0, 3, 5] = 1.0
    fmap[1] = np.arange(8)[:, None] * np.ones(8)  # a ramp in u
    up = upsample_to_image(fmap, rf, (32, 32))
    assert up.shape == (2, 32, 32)
    _cy, _cx = rf.center(3, 5)  # (13.5, 21.5): the peak spreads over the 4 pixels around the centre
    peak = np.argwhere(up[0] == up[0].max())
    assert {tuple(p) for p in peak} == {(13, 21), (13, 22), (14, 21), (14, 22)}
    np.testing.assert_allclose(up[1][:, 0], np.clip((np.arange(32) - 1.5) / 4, 0, 7))
    rf1 = ReceptiveField(size=(3, 3), jump=(2, 2), start=(0, 0))
    up1 = upsample_to_image(np.eye(4)[2:3].repeat(4, 0), rf1, 8)  # column 2 is hot -> pixel 4
    assert int(np.argmax(up1[0])) == 4


def test_global_context_flag_for_squeeze_excitation():
    model = build("mobilenet_v3_small")
    rfs = receptive_fields(
        model, ["features.0", "features.1.block.0", "features.1", "features.2"], 64
    )
    assert not rfs["features.0"].global_context and not rfs["features.1.block.0"].global_context
    # SE inside features.1
    assert rfs["features.1"].global_context and rfs["features.2"].global_context
    assert rfs["features.1"].size == (7, 7)  # local geometry still reported


def test_other_architectures_trace():
    r = receptive_fields(build("efficientnet_b0"), ["features.1", "features.2"], 64)
    assert r["features.2"].jump == (4, 4) and r["features.2"].global_context
    # NHWC LayerNorm/Linear
    c = receptive_fields(build("convnext_tiny"), ["features.0", "features.1"], 64)
    assert c["features.0"].size == (4, 4) and c["features.1"].size == (76, 76)


# --------------------------------------------------------------------------- #
# Errors, side effects
# --------------------------------------------------------------------------- #


def test_unknown_layer_and_non_spatial_layers_raise():
    model = build("resnet18")
    with pytest.raises(ValueError, match="nope"):
        receptive_fields(model, ["nope"], 64)
    with pytest.raises(ReceptiveFieldError, match="no spatial"):
        receptive_fields(model, ["avgpool"], 64)  # 2x2 -> 1x1
    with pytest.raises(ValueError, match="fc"):
        receptive_fields(model, ["fc"], 64)
    assert receptive_fields(model, [], 64) == {}


def test_vgg_adaptive_pool_is_identity_at_224_and_ends_otherwise():
    model = build("vgg11")
    assert (
        receptive_fields(model, ["avgpool"], 224)["avgpool"]
        == receptive_fields(model, ["features.20"], 224)["features.20"]
    )
    with pytest.raises(ValueError, match="avgpool"):
        receptive_fields(model, ["avgpool"], 80)  # 2x2 -> 7x7 is not a regular grid


class _Interp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.relu(self.conv(x))
        return self.conv2(F.interpolate(y, scale_factor=2.0))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_unsupported_op_and_untraceable_model_raise_clearly():
    model = _Interp()
    # before the unsupported op: fine
    assert receptive_fields(model, ["relu"], 32)["relu"].size == (
        3,
        3,
    )
    with pytest.raises(ValueError, match="interpolate"):
        receptive_fields(model, ["conv2"], 32)
    with pytest.raises(ValueError, match=r"_DataDependent.*torch.fx"):
        receptive_fields(_DataDependent(), ["conv"], 32)


def test_model_state_and_hooks_untouched():
    model = build("resnet18").train()
    calls = []
    model.layer1.register_forward_hook(lambda *a: calls.append(1))
    receptive_fields(model, ["layer1"], 64)
    assert calls == []
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    receptive_fields(model, ["layer1"], 64)
    assert not any(m.training for m in model.modules())


def test_capture_hooks_do_not_see_tracing():
    from ftdyn.models import LayerCapture

    model = build("resnet18")
    with LayerCapture(model, ["layer1"]) as cap:
        receptive_fields(model, ["layer1"], 64)
        assert cap.outputs == {}
        assert len(model.layer1._forward_hooks) == 1


class _InplaceMerge(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)
        self.out = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y.add_(self.b(x))  # mutates y without rebinding it
        return self.out(y)


def test_inplace_merge_updates_later_users():
    rf = receptive_fields(_InplaceMerge(), ["a", "out"], 16)
    assert rf["a"].size == (1, 1) and rf["out"].size == (5, 5)
    assert map_to_image(rf["out"])[0].shape == (16,)


class _AddInto(nn.Module):
    def forward(self, x, y):
        x.add_(y)  # returns its (mutated) input
        return x


class _InplaceModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.merge = _AddInto()

    def forward(self, x):
        return self.merge(self.a(x), self.b(x))


def test_module_returning_its_mutated_input():
    rf = receptive_fields(_InplaceModule(), ["a", "merge"], 16)
    assert rf["a"].size == (1, 1) and rf["merge"].size == (3, 3)
