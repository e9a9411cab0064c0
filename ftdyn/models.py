"""The model zoo: architectures by name, classifier-head replacement, and layer selection/capture.

One interface for two zoos: every torchvision classification model (``resnet50``)
and, when timm is installed, every timm model (``timm/convnext_atto``, see
:mod:`ftdyn.zoo_timm`). :func:`build_model` makes a model from its name and a zoo
weights name; local weights files are read by :mod:`ftdyn.checkpoints`, the
loading layer above this one (this module imports nothing from it).
``default_layers`` returns the paper's hook points for VGG19/ResNet/DenseNet, timm's
stage outputs, and "the last activation before each downsampling" for any other
CNN. ``LayerCapture`` records the outputs of named modules during a forward pass.
"""

from __future__ import annotations

import difflib
import itertools
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from . import zoo_timm
from .config import arg
from .errors import FtdynError
from .tokens import PREFIX_TOKEN_SEPARATOR, MapLayout, split_layer, token_field, token_grid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The published code's hook points (README, "Walk-through on your own data", **Layers**);
# ResNet block outputs are the final ReLU of each stage, DenseNet the last bottleneck
# ReLU of each block and each transition ReLU.
_PAPER_LAYERS = {
    "vgg19": ["features.3", "features.8", "features.17", "features.26", "features.35"],
    "vgg19_bn": ["features.5", "features.12", "features.25", "features.38", "features.51"],
}
_ACTIVATION_NAMES = {"ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "Mish", "LeakyReLU"}
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.LeakyReLU)


def torchvision_architectures() -> list[str]:
    """Names of all torchvision classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_architectures() -> list[str]:
    """Every architecture name: torchvision's, then timm's as ``timm/NAME`` (when timm is
    installed)."""
    return torchvision_architectures() + zoo_timm.names()


def is_timm(arch: str) -> bool:
    """Whether a canonical architecture name is timm's (``timm/NAME``)."""
    return arch.startswith(zoo_timm.PREFIX)


def canonical_arch(name: str, param: str = "arch") -> str:
    """The canonical name for ``name``: a torchvision name (case-insensitive) or ``timm/NAME``;
    else a one-line FtdynError naming parameter ``param``."""
    if name.strip().lower().startswith(zoo_timm.PREFIX):
        return zoo_timm.canonical(name.strip()[len(zoo_timm.PREFIX) :], param)
    names = torchvision_architectures()
    key = name.strip().lower()
    if key in names:
        return key
    timm_name = zoo_timm.suggest(key)
    if timm_name is not None:
        raise FtdynError(
            f"{arg(param)}: '{name}' is not a torchvision architecture but a timm one; pass"
            f" {arg(param, timm_name)}."
        )
    close = difflib.get_close_matches(key, names, n=3)
    hint = (
        f" Did you mean {', '.join(close)}?" if close else " Run `ftdyn layers --list` to see all."
    )
    raise FtdynError(f"{arg(param)}: unknown architecture '{name}'.{hint}")


def zoo_twin(arch: str) -> str | None:
    """The other zoo's architecture of the same name: ``timm/NAME`` for torchvision's ``NAME``
    when timm has one, torchvision's ``NAME`` for ``timm/NAME`` when torchvision has one, else
    None. A twin may be a different network with other key names, or the same keys (ResNet):
    :func:`~ftdyn.checkpoints.matching.load_state_into_model` suggests it only when it accepts
    the file."""
    if is_timm(arch):
        name = arch[len(zoo_timm.PREFIX) :].lower()
        return name if name in torchvision_architectures() else None
    return zoo_timm.suggest(arch)


def build_random(arch: str, seed: int = 0) -> nn.Module:
    """``arch`` (canonical) with random weights drawn from ``seed``; the global RNG is left as it
    was. No download."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _random_init(arch)


def default_normalization(model: nn.Module, arch: str, *, origin: bool = False):
    """mean/std the model's source weights expect: a timm model's pretrained config, else
    ImageNet's;
    with ``origin`` a pair ``(normalization, where it came from)``."""
    norm = zoo_timm.normalization(model) if is_timm(arch) else None
    found = (
        (norm, "timm pretrained config")
        if norm
        else ({"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, "ImageNet (default)")
    )
    return found if origin else found[0]


def head_name(model: nn.Module) -> str:
    """Module name of the classifier head: the last ``nn.Linear``, or in a fully convolutional
    classifier without one (SqueezeNet) the last ``nn.Conv2d``."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [name for name, m in model.named_modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    raise FtdynError(
        f"{type(model).__name__}: no nn.Linear or nn.Conv2d classifier head found; "
        "ftdyn supports CNN classifiers."
    )


def num_classes_of(model: nn.Module) -> int:
    return int(model.get_submodule(head_name(model)).weight.shape[0])


def fits_head(model: nn.Module, weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a classifier-head weight for ``model`` (any class count): same
    inputs per class (and kernel, for a convolutional head)."""
    own = model.get_submodule(head_name(model)).weight
    return weight.dim() == own.dim() and tuple(weight.shape[1:]) == tuple(own.shape[1:])


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the classifier head by a fresh layer of the same kind with ``num_classes``
    outputs."""
    name = head_name(model)
    old = model.get_submodule(name)
    if num_classes_of(model) == num_classes:
        return model
    if isinstance(getattr(model, "get_classifier", lambda: None)(), tuple):
        # several heads (DeiT's class and distillation heads), all replaced the model's own way
        model.reset_classifier(num_classes)
        return model
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels,
            num_classes,
            old.kernel_size,
            old.stride,
            old.padding,
            bias=old.bias is not None,
        )
    setattr(parent, attr, new)
    return model


def _random_init(arch: str) -> nn.Module:
    if is_timm(arch):
        return zoo_timm.create(arch)
    with warnings.catch_warnings():
        # GoogLeNet/Inception announce a future change of their default init on every build
        warnings.filterwarnings(
            "ignore", message="The default weight initialization", category=FutureWarning
        )
        return torchvision.models.get_model(arch, weights=None)


#: Suffixes recognised (in any case) as weights/checkpoint files.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".pth.tar", ".bin", ".ckpt", ".safetensors")


def looks_like_file(weights: str) -> bool:
    """Whether a ``--weights``/``--source`` value names a file rather than a zoo weights name."""
    text = str(weights)
    return (
        Path(text).exists()
        or "/" in text
        or os.sep in text
        or any(text.lower().endswith(suffix) for suffix in WEIGHTS_SUFFIXES)
    )


def build_model(arch: str, num_classes: int | None = None, weights: str | None = None) -> nn.Module:
    """Build ``arch`` with zoo ``weights`` and (optionally) a new head for ``num_classes``.

    ``weights`` is ``None``/``"none"`` (random init), a torchvision weights name such
    as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded the usual torchvision way), or
    for timm a pretrained tag (``"a1_in1k"``, ``"DEFAULT"``; from the hub). Local
    weights files are loaded into the built model by :mod:`ftdyn.checkpoints`.
    """
    arch = canonical_arch(arch)
    if weights is None or str(weights).lower() == "none":
        model = _random_init(arch)
    elif looks_like_file(str(weights)):
        raise FtdynError(
            f"{arg('weights')}: file {weights} does not exist."
            if not Path(weights).exists()
            else (
                f"{arg('weights', weights)}: a weights file is loaded with"
                " ftdyn.checkpoints.load_into_model."
            )
        )
    elif is_timm(arch):
        model = zoo_timm.create(arch, str(weights))
    else:
        resolved = resolve_weights(arch, str(weights))
        try:
            model = torchvision.models.get_model(arch, weights=resolved)
        except (OSError, RuntimeError) as exc:  # no internet, corrupt download cache
            raise FtdynError(
                f"{arg('weights', weights)}: could not download or read the torchvision weights "
                f"({type(exc).__name__}: {exc}); pass a local file with {arg('weights')} PATH."
            ) from None
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


def zoo_state_dict(arch: str, name: str, param: str = "source") -> dict[str, torch.Tensor]:
    """The state dict of the zoo weights ``name`` of ``arch`` (a torchvision weights name or a
    timm tag)."""
    arch = canonical_arch(arch)
    if is_timm(arch):
        return zoo_timm.create(arch, name, param).state_dict()
    weights = resolve_weights(arch, name, param)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise FtdynError(
            f"{arg(param, name)}: could not download or read the torchvision weights "
            f"({reason}); pass a local file with {arg(param)} PATH."
        ) from None


def check_weights_name(arch: str, name: str, param: str = "source") -> None:
    """Refuse a name that is no weights name of ``arch`` (torchvision); timm tags are checked
    when loaded."""
    arch = canonical_arch(arch)
    if not is_timm(arch):
        resolve_weights(arch, name, param)


def resolve_weights(arch: str, name: str, param: str = "weights") -> torchvision.models.WeightsEnum:
    """A torchvision weights enum member from ``IMAGENET1K_V1``, ``DEFAULT`` or
    ``ResNet50_Weights.IMAGENET1K_V2``."""
    enum = torchvision.models.get_model_weights(arch)
    member = name.rpartition(".")[2]
    try:
        return enum.DEFAULT if member == "DEFAULT" else enum[member]
    except KeyError:
        valid = ", ".join(w.name for w in enum)
        raise FtdynError(
            f"{arg(param)}: '{name}' is neither a file nor a weights name of {arch} ({valid},"
            " DEFAULT, none)."
        ) from None


def _blocks_output_layers(model: nn.Module) -> list[str] | None:
    """ResNet-style models: stem ReLU and each stage's output."""
    names = dict(model.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)) and "relu" in names:
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    return None


def _densenet_layers(model: nn.Module) -> list[str] | None:
    features = getattr(model, "features", None)
    if features is None or not any(
        n.startswith("denseblock") for n, _ in features.named_children()
    ):
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
    # how the output becomes (batch, channel, y, x) when captured
    layout: MapLayout = field(default_factory=MapLayout)


def _output_shapes(model: nn.Module, names, input_size: int) -> dict[str, tuple[int, ...]]:
    """Per-image shapes of the tensor outputs of the named modules in one forward pass of a
    blank image, in the order the modules first ran (the last call's shape is kept); outputs
    that are not one row per image (Swin's attention windows) are left out."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() >= 2 and output.shape[0] == 1:
                shapes[name] = tuple(output.shape[1:])

        return record

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        blank_forward(model, input_size)
    finally:
        for h in handles:
            h.remove()
    return shapes


def blank_forward(model: nn.Module, input_size: int) -> torch.Tensor:
    """One eval-mode forward pass of a blank ``input_size`` image (for shapes and hooks), or a
    one-line error when the model cannot take that size (too small for its poolings, or a model
    with a fixed input size such as BEiT)."""
    return image_forward(model, torch.zeros(1, 3, input_size, input_size))


def image_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One eval-mode forward pass without gradients of ``images`` (n, 3, size, size), or the
    one-line error of :func:`blank_forward`."""
    input_size = int(images.shape[-1])
    if input_size < 1:
        raise FtdynError(
            f"{arg('input_size', input_size)}: give the image size in pixels (e.g. 224)."
        )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(images)
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FtdynError(
            f"{arg('input_size', input_size)}: {type(model).__name__} cannot run on"
            f" {input_size}x{input_size} images ({reason}); choose another {arg('input_size')} (224"
            " fits every torchvision model)."
        ) from None
    finally:
        model.train(was_training)


def _layouts(
    model: nn.Module, names, input_size: int
) -> dict[str, tuple[tuple[int, int, int], MapLayout]]:
    """name -> ((channel, y, x), layout) for the modules whose outputs are maps: (channel, y, x),
    (y, x, channel), or a token model's tokens (:mod:`ftdyn.tokens`, from the model's own
    metadata).

    Other outputs that are (y, x, channel) (ConvNeXt's block MLPs, MaxViT), which one output
    shape cannot tell apart from (channel, y, x), are told by a second pass 32 pixels larger:
    the spatial axes grow with the input (any stride up to 32), the channel axis does not. A
    model that takes only one input size cannot tell either way: channels first.
    """
    small = _output_shapes(model, names, input_size)
    tokens = token_grid(model, input_size)
    out: dict[str, tuple[tuple[int, int, int], MapLayout]] = {}
    large: dict[str, tuple[int, ...]] | None = None
    for name, shape in small.items():
        layout = tokens.layout(shape) if tokens is not None else None
        if layout is None and len(shape) == 3:
            if large is None:
                try:
                    large = _output_shapes(model, names, input_size + 32)
                except FtdynError:
                    large = {}
            wider = large.get(name)
            layout = MapLayout(
                channels_last=wider is not None
                and len(wider) == 3
                and wider[2] == shape[2]
                and wider[0] != shape[0]
            )
        if layout is not None:
            out[name] = (map_shape(layout, shape), layout)
    return out


def layer_layouts(
    model: nn.Module, layers: list[str], input_size: int = 224
) -> dict[str, MapLayout]:
    """The layout of each of ``layers`` (:func:`_layouts`); layers whose outputs are no maps (a
    pooled vector, a class token) keep theirs as they are, and are refused when captured. A
    ``MODULE:KIND`` layer keeps the one prefix token of that kind of the module's tokens
    (:meth:`~ftdyn.tokens.MapLayout.keeping`); a kind the output does not have once is refused."""
    found = _layouts(model, dict.fromkeys(split_layer(n)[0] for n in layers), input_size)
    layouts = {}
    for name in layers:
        module, kind = split_layer(name)
        layout = found[module][1] if module in found else MapLayout()
        layouts[name] = layout if kind is None else _keeping(layout, name, kind)
    return layouts


def _keeping(layout: MapLayout, name: str, kind: str) -> MapLayout:
    """``layout`` keeping its prefix token ``kind`` as layer ``name``, or a one-line error."""
    kinds = layout.single_prefix_kinds()
    if kind in kinds:
        return layout.keeping(kind)
    module = split_layer(name)[0]
    has = (
        f"its prefix tokens are {', '.join(layout.prefix)} (one of each kind can be kept:"
        f" {', '.join(kinds) or 'none'})"
        if layout.prefix
        else "its output carries no prefix token (not a class, register or distillation token"
        " before the patch tokens)"
    )
    raise FtdynError(
        f"{arg('layers', name)}: {module} has no single '{kind}' token to keep: {has}; see"
        " `ftdyn layers ARCH --all`."
    )


def map_shape(layout: MapLayout, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The (channel, y, x) shape of an output of per-image ``shape`` laid out by ``layout``."""
    if layout.sequence:
        return (int(shape[1]), *layout.grid)
    a, b, c = shape
    return (c, a, b) if layout.channels_last else (a, b, c)


def candidate_layers(
    model: nn.Module,
    input_size: int = 224,
    *,
    top_level: bool = False,
    include: tuple[str, ...] = (),
) -> list[LayerInfo]:
    """Activation modules and residual stages (or, with ``top_level``, the model's direct
    children), plus the modules named in ``include`` and the prefix tokens of their outputs
    (``MODULE:KIND``), with their (channel, y, x) output shapes, in forward order."""
    if top_level:
        wanted = {name for name, _ in model.named_children()}
    else:
        wanted = {
            name
            for name, m in model.named_modules()
            if name and (isinstance(m, _ACTIVATIONS) or _is_block(name, m))
        }
    modules = dict(model.named_modules())
    wanted |= {name for name in include if name in modules}
    found = []
    for n, (shape, layout) in _layouts(model, wanted, input_size).items():
        found.append(LayerInfo(n, type(modules[n]).__name__, shape, layout))
        found += [  # an included module's prefix tokens, each a layer of its own
            LayerInfo(
                f"{n}{PREFIX_TOKEN_SEPARATOR}{kind}",
                f"{kind} token",
                (shape[0], 1, 1),
                layout.keeping(kind),
            )
            for kind in (layout.single_prefix_kinds() if n in include else [])
        ]
    return found


def token_fields(
    model: nn.Module, layouts: Mapping[str, MapLayout], input_size: int
) -> dict[str, dict]:
    """The receptive fields (:func:`ftdyn.tokens.token_field`) of a token model's token layers
    among ``layouts`` (others are left out).

    Whether a layer's tokens have attended to each other is measured, not guessed from names:
    the first patch of a blank image is changed, and a layer whose other tokens change has mixed
    tokens (it runs after an attention, or is one); one whose other tokens stay as they were
    sees only its patch.
    """
    tokens = token_grid(model, input_size)
    wanted = [name for name, layout in layouts.items() if layout.grid is not None]
    if tokens is None or not wanted:
        return {}
    blank = torch.zeros(1, 3, input_size, input_size)
    changed = blank.clone()
    patch = changed[:, :, : tokens.patch[0], : tokens.patch[1]]
    patch.copy_(torch.randn(patch.shape, generator=torch.Generator().manual_seed(0)))
    with LayerCapture(model, wanted, dtype=torch.float32, layouts=layouts) as capture:
        # one image per pass: the other tokens' arithmetic is then the same in both, bit for bit
        image_forward(model, blank)
        before = capture.pop()
        image_forward(model, changed)
        after = capture.pop()
    fields = {}
    for name in wanted:
        change = (after[name] - before[name]).abs()
        if layouts[name].token is None:  # a prefix token has no cell of its own patch
            change[:, :, 0, 0] = 0  # the changed patch's own cell
        # a block whose attention is scaled down (LayerScale 1e-5 at init) still mixes tokens
        mixed = bool(change.amax() > 1e-7 * (float(before[name].abs().amax()) or 1.0))
        if mixed or tokens.patchwise:
            fields[name] = token_field(tokens, layouts[name].grid, input_size, mixed=mixed)
    return fields


def _is_block(name: str, module: nn.Module) -> bool:
    return type(module).__name__ in {"BasicBlock", "Bottleneck"} or (
        name.startswith("layer") and "." not in name and isinstance(module, nn.Sequential)
    )


def default_layers(model: nn.Module, arch: str, input_size: int = 224) -> list[str]:
    """The paper's hook points where it defines them, else the last activation before each
    downsampling."""
    arch = canonical_arch(arch)
    if arch in _PAPER_LAYERS:
        return list(_PAPER_LAYERS[arch])
    for rule in (_blocks_output_layers, _densenet_layers, zoo_timm.stage_layers):
        layers = rule(model)
        if layers:
            return layers
    acts = [info for info in candidate_layers(model, input_size) if info.kind in _ACTIVATION_NAMES]
    if not acts:  # activations called as functions (GoogLeNet, Inception): use the top-level blocks
        acts = candidate_layers(model, input_size, top_level=True)
    # the classifier's own modules (SqueezeNet's head is a Conv2d + ReLU) are replaced by
    # fine-tuning
    classifier = head_name(model).rpartition(".")[0]
    if classifier:
        acts = [info for info in acts if not info.name.startswith(classifier + ".")]
    # 1x1 outputs are pooled context (squeeze-and-excitation, global pooling), not feature maps
    acts = [info for info in acts if info.shape[1] * info.shape[2] > 1]
    if not acts:
        raise FtdynError(
            f"{arg('arch', arch)}: no activation layers with spatial output found; name layers with"
            f" {arg('layers')}."
        )
    chosen = [a.name for a, b in itertools.pairwise(acts) if b.shape[1] < a.shape[1]]
    return [*chosen, acts[-1].name]


def validate_layers(model: nn.Module, layers: list[str]) -> list[str]:
    """Check that every name is a module of ``model`` (or ``MODULE:KIND``, a prefix token of a
    module's output, whose kind :func:`layer_layouts` checks); raise a one-line FtdynError
    otherwise."""
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for layer in layers:
        module = split_layer(layer)[0]
        if module not in known:
            close = difflib.get_close_matches(module, names, n=3)
            hint = (
                f" Did you mean {', '.join(close)}?"
                if close
                else " Run `ftdyn layers ARCH` to list them."
            )
            raise FtdynError(
                f"{arg('layers')}: '{module}' is not a module of {type(model).__name__}.{hint}"
            )
    if len(set(layers)) != len(layers):
        raise FtdynError(f"{arg('layers')}: a layer is named twice.")
    return list(layers)


class LayerCapture:
    """Record the outputs of named modules during forward passes.

    Outputs are (batch, channel, y, x): each layer's output is laid out by its
    :class:`~ftdyn.tokens.MapLayout` in ``layouts`` (:func:`layer_layouts`; (batch, y, x,
    channel) outputs transposed, a token model's patch tokens put on their grid without the
    prefix tokens, or for a ``MODULE:KIND`` layer the module's one prefix token of that kind as a
    1 x 1 map); a layer without one is kept as it is. A module called several times in one
    forward (ResNet's block ``relu`` is called three times) keeps its *last* call, which for a
    residual block is the block output. Tensors are copied inside the hook because later
    in-place operations (``inplace=True`` ReLUs, ``out += identity``) would otherwise change
    what was captured.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        dtype: torch.dtype | None = None,
        layouts: Mapping[str, MapLayout] | None = None,
    ):
        self.layers = validate_layers(model, layers)
        self.dtype = dtype
        self.layouts = dict(layouts or {})
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            model.get_submodule(split_layer(name)[0]).register_forward_hook(self._hook(name))
            for name in self.layers
        ]

    def _hook(self, name: str):
        layout = self.layouts.get(name, MapLayout())

        def record(_module, _inputs, output):
            out = layout.to_map(output.detach())
            self.outputs[name] = out.to(
                dtype=self.dtype or output.dtype, memory_format=torch.contiguous_format, copy=True
            )

        return record

    def pop(self) -> dict[str, torch.Tensor]:
        """The outputs of the last forward pass, in layer order; clears the buffer."""
        missing = [n for n in self.layers if n not in self.outputs]
        if missing:
            raise FtdynError(
                f"{arg('layers')}: {', '.join(missing)} produced no output in the forward pass"
                " (module not used by forward)."
            )
        outputs = {n: self.outputs[n] for n in self.layers}
        self.outputs = {}
        return outputs

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
