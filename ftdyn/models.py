"""Architectures by name, classifier-head replacement, and layer selection/capture.

Any torchvision classification model can be built by name. ``default_layers``
returns the paper's hook points for VGG19/ResNet/DenseNet and "the last
activation before each downsampling" for any other CNN. ``LayerCapture`` records
the outputs of named modules during a forward pass.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from .errors import FtdynError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The published code's hook points (design.md §1); ResNet block outputs are the
# final ReLU of each stage, DenseNet the last bottleneck ReLU of each block and
# each transition ReLU.
_PAPER_LAYERS = {
    "vgg19": ["features.3", "features.8", "features.17", "features.26", "features.35"],
    "vgg19_bn": ["features.5", "features.12", "features.25", "features.38", "features.51"],
}
_ACTIVATION_NAMES = {"ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "Mish", "LeakyReLU"}
_WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.LeakyReLU)


def available_architectures() -> list[str]:
    """Names of all torchvision classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def canonical_arch(name: str) -> str:
    """Return the torchvision name for ``name`` (case-insensitive) or raise FtdynError."""
    names = available_architectures()
    key = name.strip().lower()
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " Run `ftdyn layers --list` to see all."
    raise FtdynError(f"--arch: unknown architecture '{name}'.{hint}")


def head_name(model: nn.Module) -> str:
    """Module name of the classifier head: the last ``nn.Linear`` in the model."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise FtdynError(f"{type(model).__name__}: no nn.Linear classifier head found; ftdyn supports CNNs with a linear head.")
    return linear[-1]


def num_classes_of(model: nn.Module) -> int:
    return model.get_submodule(head_name(model)).out_features


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the classifier head by a fresh ``nn.Linear`` with ``num_classes`` outputs."""
    name = head_name(model)
    old = model.get_submodule(name)
    if old.out_features == num_classes:
        return model
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def build_model(arch: str, num_classes: int | None = None, weights: str | Path | None = None, *,
                trust: bool = False) -> nn.Module:
    """Build ``arch`` with source ``weights`` and (optionally) a new head for ``num_classes``.

    ``weights`` is ``None``/``"none"`` (random init), a torchvision weights name such
    as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded the usual torchvision way),
    or a path to a local weights/checkpoint file in any format ftdyn reads
    (pickles that need more than tensors are refused unless ``trust``).
    """
    arch = canonical_arch(arch)
    if weights is None or str(weights).lower() == "none":
        model = torchvision.models.get_model(arch, weights=None)
    elif Path(weights).exists() or Path(weights).suffix.lower() in _WEIGHT_FILE_SUFFIXES:
        from .checkpoints import load_into_model

        if not Path(weights).is_file():
            raise FtdynError(f"--weights: file {weights} does not exist.")
        model = torchvision.models.get_model(arch, weights=None)
        load_into_model(model, Path(weights), trust=trust, adapt_head=True, arch=arch)
    else:
        resolved = resolve_weights(arch, str(weights))
        try:
            model = torchvision.models.get_model(arch, weights=resolved)
        except (OSError, RuntimeError) as exc:  # no internet, corrupt download cache
            raise FtdynError(f"--weights {weights}: could not download or read the torchvision weights "
                             f"({type(exc).__name__}: {exc}); pass a local file with --weights PATH.") from None
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


def resolve_weights(arch: str, name: str) -> torchvision.models.WeightsEnum:
    """A torchvision weights enum member from ``IMAGENET1K_V1``, ``DEFAULT`` or ``ResNet50_Weights.IMAGENET1K_V2``."""
    enum = torchvision.models.get_model_weights(arch)
    member = name.rpartition(".")[2]
    try:
        return enum.DEFAULT if member == "DEFAULT" else enum[member]
    except KeyError:
        valid = ", ".join(w.name for w in enum)
        raise FtdynError(f"--weights: '{name}' is neither a file nor a weights name of {arch} ({valid}, DEFAULT, none).") from None


def _blocks_output_layers(model: nn.Module) -> list[str] | None:
    """ResNet-style models: stem ReLU and each stage's output."""
    names = dict(model.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)) and "relu" in names:
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    return None


def _densenet_layers(model: nn.Module) -> list[str] | None:
    features = getattr(model, "features", None)
    if features is None or not any(n.startswith("denseblock") for n, _ in features.named_children()):
        return None
    layers = []
    for name, child in features.named_children():
        if name.startswith("denseblock"):
            last = list(child.named_children())[-1][0]
            layers.append(f"features.{name}.{last}.relu2")
        elif name.startswith("transition"):
            layers.append(f"features.{name}.relu")
    return layers


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    shape: tuple[int, ...]  # (channels, height, width) for a single image


def candidate_layers(model: nn.Module, input_size: int = 224, *, top_level: bool = False) -> list[LayerInfo]:
    """Activation modules and residual stages (or, with ``top_level``, the model's direct
    children) with their spatial output shapes, in forward order."""
    if top_level:
        wanted = {name for name, _ in model.named_children()}
    else:
        wanted = {name for name, m in model.named_modules()
                  if name and (isinstance(m, _ACTIVATIONS) or _is_block(name, m))}
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                if name not in shapes:
                    order.append(name)
                shapes[name] = tuple(output.shape[1:])
        return record

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in wanted]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [LayerInfo(n, type(modules[n]).__name__, shapes[n]) for n in order]


def _is_block(name: str, module: nn.Module) -> bool:
    return type(module).__name__ in {"BasicBlock", "Bottleneck"} or (
        name.startswith("layer") and "." not in name and isinstance(module, nn.Sequential))


def default_layers(model: nn.Module, arch: str, input_size: int = 224) -> list[str]:
    """The paper's hook points where it defines them, else the last activation before each downsampling."""
    arch = canonical_arch(arch)
    if arch in _PAPER_LAYERS:
        return list(_PAPER_LAYERS[arch])
    for rule in (_blocks_output_layers, _densenet_layers):
        layers = rule(model)
        if layers:
            return layers
    acts = [info for info in candidate_layers(model, input_size) if info.kind in _ACTIVATION_NAMES]
    if not acts:  # activations called as functions (GoogLeNet, Inception): use the top-level blocks
        acts = candidate_layers(model, input_size, top_level=True)
    # 1x1 outputs are pooled context (squeeze-and-excitation, global pooling), not feature maps
    acts = [info for info in acts if info.shape[1] * info.shape[2] > 1]
    if not acts:
        raise FtdynError(f"--arch {arch}: no activation layers with spatial output found; name layers with --layer.")
    chosen = [a.name for a, b in zip(acts, acts[1:]) if b.shape[1] < a.shape[1]]
    return chosen + [acts[-1].name]


def validate_layers(model: nn.Module, layers: list[str]) -> list[str]:
    """Check that every name is a module of ``model``; raise a one-line FtdynError otherwise."""
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else " Run `ftdyn layers ARCH` to list them."
            raise FtdynError(f"--layer: '{layer}' is not a module of {type(model).__name__}.{hint}")
    if len(set(layers)) != len(layers):
        raise FtdynError("--layer: a layer is named twice.")
    return list(layers)


class LayerCapture:
    """Record the outputs of named modules during forward passes.

    A module called several times in one forward (ResNet's block ``relu`` is
    called three times) keeps its *last* call, which for a residual block is the
    block output. Tensors are copied inside the hook because later in-place
    operations (``inplace=True`` ReLUs, ``out += identity``) would otherwise change
    what was captured.
    """

    def __init__(self, model: nn.Module, layers: list[str], dtype: torch.dtype | None = None):
        self.layers = validate_layers(model, layers)
        self.dtype = dtype
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [model.get_submodule(name).register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            self.outputs[name] = output.detach().to(dtype=self.dtype or output.dtype, copy=True)
        return record

    def pop(self) -> dict[str, torch.Tensor]:
        """The outputs of the last forward pass, in layer order; clears the buffer."""
        missing = [n for n in self.layers if n not in self.outputs]
        if missing:
            raise FtdynError(f"--layer: {', '.join(missing)} produced no output in the forward pass (module not used by forward).")
        outputs = {n: self.outputs[n] for n in self.layers}
        self.outputs = {}
        return outputs

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "LayerCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
