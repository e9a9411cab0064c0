"""Token models (timm's ViT, DeiT, BEiT, EVA, Swin, MLP-Mixer, ...): their layers as (channel, y, x)
maps.

A vision transformer cuts the image into patches and carries one token per patch through its
blocks, in row-major order after a few *prefix* tokens (class, register, distillation) that
belong to no patch. A block's output (batch, tokens, channel) is therefore a feature map once
the prefix tokens are dropped and the patch tokens are laid out on their grid: token ``i`` is
cell ``(i // W, i % W)``. Swin keeps its tokens on the grid already, channels last
(batch, y, x, channel), and halves the grid at each stage.

A prefix token can be kept as a layer of its own: ``blocks.11:class`` is the class token of
``blocks.11``'s output as a (channel, 1, 1) map (:meth:`MapLayout.keeping`), the embedding a
ViT's head reads.

The grid, the patch size and the prefix tokens come from the model's own metadata (its patch
embedding's ``patch_size``/``grid_size``/``dynamic_feat_size``, ``num_prefix_tokens`` and the
class/register/distillation token parameters, timm's ``feature_info``), never from an output
shape alone: :func:`token_grid` reads them, :meth:`TokenGrid.layout` says how one output becomes
a map (:class:`MapLayout`), and :func:`token_field` gives a token layer's receptive field: its
own patch up to the first attention, the whole image after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .receptive import ReceptiveField

#: separates a token layer's module from the kind of the one prefix token kept as its own layer
#: (``blocks.11:class``); no module name of torchvision or timm contains it
PREFIX_TOKEN_SEPARATOR = ":"


def split_layer(name: str) -> tuple[str, str | None]:
    """The module of a layer name and the prefix-token kind it keeps (None: the module's map)."""
    module, separator, kind = name.partition(PREFIX_TOKEN_SEPARATOR)
    return module, (kind if separator else None)


#: the prefix-token parameters of timm's token models, in the order their forward puts them
#: before the patch tokens (ViT/EVA: class, registers; DeiT: class, distillation)
_PREFIX_PARAMETERS = (
    ("cls_token", "class"),
    ("reg_token", "register"),
    ("dist_token", "distillation"),
)


@dataclass(frozen=True)
class MapLayout:
    """How one layer's output becomes (batch, channel, y, x).

    ``channels_last``: the output is (batch, y, x, channel) (ConvNeXt's block MLPs, Swin) and is
    transposed. ``grid``: a token model's layer: the rows and columns of its patch tokens.
    ``sequence``: the output is (batch, tokens, channel); its ``prefix`` tokens (their kinds,
    e.g. ``("class", "distillation")``) are dropped and the rest laid out on ``grid``.
    ``token``: instead, the prefix token at this position is the map, (channel, 1, 1).
    """

    channels_last: bool = False
    grid: tuple[int, int] | None = None
    prefix: tuple[str, ...] = ()
    sequence: bool = False
    token: int | None = None

    def to_map(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` as (batch, channel, y, x) (a view where possible)."""
        if self.token is not None:
            return out[:, self.token, :, None, None]
        if self.sequence:
            patches = out[:, len(self.prefix) :]
            return patches.transpose(1, 2).reshape(out.shape[0], out.shape[2], *self.grid)
        return out.permute(0, 3, 1, 2) if self.channels_last else out

    def single_prefix_kinds(self) -> list[str]:
        """The kinds of prefix token this sequence layout has exactly one of: those a layer can
        keep (:meth:`keeping`)."""
        if not self.sequence or self.token is not None:
            return []
        return [kind for kind in dict.fromkeys(self.prefix) if self.prefix.count(kind) == 1]

    def keeping(self, kind: str) -> MapLayout:
        """The layout of the same output that keeps its one prefix token of ``kind`` (one of
        :meth:`single_prefix_kinds`) as a (channel, 1, 1) map."""
        return MapLayout(
            grid=(1, 1), prefix=self.prefix, sequence=True, token=self.prefix.index(kind)
        )

    def tokens_record(self) -> dict | None:
        """What the store records of a token layer (None for a convolutional one): its grid and
        the kinds of the module's prefix tokens, and for a kept prefix token its kind."""
        if self.grid is None:
            return None
        record = {"grid": list(self.grid), "prefix_tokens": list(self.prefix)}
        if self.token is not None:
            record["prefix_token"] = self.prefix[self.token]
        return record


@dataclass(frozen=True)
class TokenGrid:
    """A token model's patch geometry at one input size.

    ``patch``: patch size in pixels (y, x); ``grid``: the patch tokens' rows and columns after
    the patch embedding; ``grids``: every grid a layer may be on (Swin's stages halve it);
    ``prefix``: the kinds of the prefix tokens; ``channels_last``: the patch embedding keeps
    tokens on the grid channels last, so 4-D outputs on a grid are (batch, y, x, channel);
    ``patchwise``: the patch embedding sees exactly its patch (a convolution whose kernel is its
    stride), so the patch is that layer's receptive field (a hybrid's CNN stem sees more).
    """

    patch: tuple[int, int]
    grid: tuple[int, int]
    grids: tuple[tuple[int, int], ...]
    prefix: tuple[str, ...]
    channels_last: bool
    patchwise: bool

    def layout(self, shape: tuple[int, ...]) -> MapLayout | None:
        """The layout of an output of per-image ``shape`` (no batch axis), or None when it is no
        token layer of this model (a convolution's (channel, y, x) output, a pooled vector)."""
        if len(shape) == 2:  # (tokens, channel): with or without the prefix tokens
            for prefix in (self.prefix, ()):
                grid = next((g for g in self.grids if g[0] * g[1] == shape[0] - len(prefix)), None)
                if grid is not None:
                    return MapLayout(grid=grid, prefix=prefix, sequence=True)
        if len(shape) == 3 and self.channels_last and tuple(shape[:2]) in self.grids:
            return MapLayout(channels_last=True, grid=(int(shape[0]), int(shape[1])))
        return None


def patch_embedding(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The name and module of a token model's patch embedding (timm: ``patch_embed``, MLP-Mixer's
    ``stem``): a module with ``patch_size`` and ``grid_size``; None for other models."""
    for name in ("patch_embed", "stem"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and all(
            hasattr(module, a) for a in ("patch_size", "grid_size")
        ):
            return name, module
    return None


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _prefix_tokens(model: nn.Module) -> tuple[str, ...]:
    """The kinds of the model's prefix tokens, from its token parameters; their count must be the
    model's ``num_prefix_tokens`` (else they are named ``prefix``)."""
    count = int(getattr(model, "num_prefix_tokens", 0) or 0)
    kinds = []
    for attr, kind in _PREFIX_PARAMETERS:
        param = getattr(model, attr, None)
        if isinstance(param, torch.Tensor):
            kinds += [kind] * int(param.shape[1])
    return tuple(kinds) if len(kinds) == count else ("prefix",) * count


def token_grid(model: nn.Module, input_size: int) -> TokenGrid | None:
    """The token geometry of ``model`` at ``input_size`` px (square images), or None when the
    model has no patch embedding (a CNN)."""
    found = patch_embedding(model)
    if found is None:
        return None
    embed = found[1]
    patch = _pair(embed.patch_size)
    size = (int(input_size), int(input_size))
    dynamic = bool(getattr(model, "dynamic_img_size", False)) and hasattr(
        embed, "dynamic_feat_size"
    )
    grid = _pair(embed.dynamic_feat_size(size) if dynamic else embed.grid_size)
    # stages that merge patches (Swin) put their tokens on coarser grids: timm's feature_info
    # gives each stage's reduction in pixels
    reductions = {int(d["reduction"]) for d in (getattr(model, "feature_info", None) or [])}
    grids = {grid} | {
        (math.ceil(grid[0] * patch[0] / r), math.ceil(grid[1] * patch[1] / r))
        for r in reductions
        if r % patch[0] == 0 and r % patch[1] == 0
    }
    proj = getattr(embed, "proj", None)
    patchwise = (
        isinstance(proj, nn.Conv2d) and _pair(proj.kernel_size) == _pair(proj.stride) == patch
    )
    return TokenGrid(
        patch=patch,
        grid=grid,
        grids=tuple(sorted(grids, reverse=True)),
        prefix=_prefix_tokens(model),
        channels_last=str(getattr(embed, "output_fmt", "")).upper().endswith("NHWC"),
        patchwise=patchwise,
    )


def token_field(tokens: TokenGrid, grid: tuple[int, int], input_size: int, *, mixed: bool) -> dict:
    """The receptive field (:meth:`~ftdyn.receptive.ReceptiveField.to_dict`) of a token layer
    on ``grid``.

    Cell ``(u, v)`` sits on its patch: ``jump`` is the patch size times the grid's reduction,
    ``start`` the first patch's centre. Before any token has attended to another (``mixed``
    False: the patch embedding, a first block's first norm) a cell sees its own patch; after
    the first attention every token has seen every other, so the field is the whole image: its
    size is chosen so that every cell's box covers the image (``global_context`` True).
    """
    size, jump, start = [], [], []
    for axis in (0, 1):
        step = tokens.patch[axis] * tokens.grid[axis] / grid[axis]
        extent = max(int(input_size), math.ceil(step * grid[axis]))
        jump.append(step)
        start.append((step - 1) / 2)
        size.append(2 * extent - step if mixed else step)
    return ReceptiveField(
        size=tuple(size),
        jump=tuple(jump),
        start=tuple(start),
        map_size=grid,
        input_size=(int(input_size), int(input_size)),
        global_context=mixed,
    ).to_dict()
