"""The timm half of the model zoo (``--arch timm/NAME``); timm is optional (``pip install
'ftdyn[timm]'``).

timm is imported on first use only: it takes seconds to import and most runs use
torchvision models. Names follow timm's own hub ids (``timm/convnext_atto``); a
pretrained tag (``a1_in1k``, ``DEFAULT``) needs the Hugging Face hub, so offline the
weights are given as a local file (``--weights FILE`` / ``--source FILE``).
"""

from __future__ import annotations

import difflib
import math
from types import ModuleType

import torch
from torch import nn

from .config import arg
from .errors import FtdynError

PREFIX = "timm/"
_INSTALL = (
    "timm is not installed; pip install 'ftdyn[timm]' (or timm>=1.0) to use timm/ architectures."
)


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise FtdynError(_INSTALL) from None
    return timm


def installed() -> bool:
    try:
        _timm()
    except FtdynError:
        return False
    return True


def names() -> list[str]:
    """All timm architectures as ``timm/NAME`` (empty when timm is not installed)."""
    if not installed():
        return []
    return [PREFIX + n for n in _timm().list_models()]


def canonical(name: str, param: str) -> str:
    """``timm/NAME`` for ``NAME`` (case-insensitive, a pretrained tag ``.tag`` is dropped) or a
    one-line error."""
    timm = _timm()
    base = name.strip().split(".")[0]
    known = timm.list_models()
    lower = {n.lower(): n for n in known}
    if base.lower() in lower:
        return PREFIX + lower[base.lower()]
    close = difflib.get_close_matches(base.lower(), list(lower), n=3)
    hint = (
        f" Did you mean {', '.join(PREFIX + lower[c] for c in close)}?"
        if close
        else " Run `ftdyn layers --list` to see all."
    )
    raise FtdynError(f"{arg(param)}: unknown timm architecture '{name}'.{hint}")


def suggest(name: str) -> str | None:
    """``timm/NAME`` when ``name`` is a timm architecture (for errors about a torchvision name)."""
    if not installed():
        return None
    base = name.strip().lower()
    return PREFIX + base if base in set(_timm().list_models()) else None


def create(arch: str, tag: str | None = None, param: str = "weights") -> nn.Module:
    """A timm model: random init (``tag`` None), or timm's pretrained weights ``tag`` from the hub
    (errors name parameter ``param``)."""
    timm = _timm()
    name = arch[len(PREFIX) :]
    if tag is None:
        return _with_head(
            _any_input_size(lambda **size: timm.create_model(name, pretrained=False, **size))
        )
    full = name if tag.upper() == "DEFAULT" else f"{name}.{tag}"
    try:
        return _with_head(
            _any_input_size(lambda **size: timm.create_model(full, pretrained=True, **size))
        )
    except (
        Exception
    ) as exc:  # unknown tag, no hub access offline, broken cache: all need a local file
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise FtdynError(
            f"{arg(param, tag)}: timm's pretrained weights for {arch} come from the Hugging Face"
            f" hub and could not be loaded ({type(exc).__name__}: {reason}); offline, pass a local"
            f" weights file with {arg(param)} FILE."
        ) from None


#: the class count of the head given to a model timm builds without one
PLACEHOLDER_CLASSES = 1


def _with_head(model: nn.Module) -> nn.Module:
    """``model`` with a classifier head: a model whose pretrained config has none (EVA-02's
    masked-image-modelling weights: ``num_classes`` 0, an ``Identity`` head) gets a
    :data:`PLACEHOLDER_CLASSES` head made timm's way, which fine-tuning and loading replace by
    one of the target's classes; without it the last ``nn.Linear`` (an MLP layer of the last
    block) would be taken for the head."""
    if getattr(model, "num_classes", None) == 0 and hasattr(model, "reset_classifier"):
        model.reset_classifier(PLACEHOLDER_CLASSES)
    return model


def _any_input_size(build) -> nn.Module:
    """``build()``, or for a token model built for one input size only (ViT, DeiT, EVA, Swin:
    ``dynamic_img_size`` False) ``build(dynamic_img_size=True)``: the same weights and state dict,
    the same outputs at the size it was built for, and any other input size too (position
    embeddings resampled, Swin's windows padded), as fine-tuning at another size needs. Both
    builds start from the same random state, so a seeded random init is unchanged."""
    state = torch.random.get_rng_state()
    model = build()
    if getattr(model, "dynamic_img_size", None) is not False:
        return model
    torch.random.set_rng_state(state)
    return build(dynamic_img_size=True)


def normalization(model: nn.Module) -> dict[str, list[float]] | None:
    """mean/std of the model's pretrained config (what its weights were trained with), if it
    names them."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return None
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


#: at most this many blocks of an isotropic network (ViT) are default layers
ISOTROPIC_LAYERS = 4


def stage_layers(model: nn.Module) -> list[str] | None:
    """timm's ``feature_info`` modules: the stem activation and each stage's output, i.e. the last
    activation before each downsampling (for ResNets and ConvNeXts the stage outputs; for Swin
    the stage outputs). An isotropic network (ViT, DeiT, BEiT, EVA: every block on one grid)
    lists every block there: then evenly spaced blocks up to the last, at most
    :data:`ISOTROPIC_LAYERS`."""
    info = getattr(model, "feature_info", None)
    if not info:
        return None
    modules = dict(model.named_modules())
    try:
        layers = [str(d["module"]) for d in info]
        isotropic = len({int(d["reduction"]) for d in info}) == 1
    except (TypeError, KeyError, ValueError):
        return None
    if not layers or not all(name in modules for name in layers):
        return None
    if isotropic and len(layers) > ISOTROPIC_LAYERS:
        step = math.ceil(len(layers) / ISOTROPIC_LAYERS)
        return layers[::-1][::step][::-1]
    return layers
