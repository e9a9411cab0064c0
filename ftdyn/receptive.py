"""Receptive-field geometry of torchvision CNNs (pure geometry, no I/O).

For every named layer, :func:`receptive_fields` returns the receptive-field
**size**, **jump** (stride between adjacent units, in input pixels) and
**start** (centre of unit (0, 0)) per axis, following Araujo et al., "Computing
Receptive Fields of Convolutional Neural Networks" (Distill, 2019)::

    k_eff     = d * (k - 1) + 1                 (dilation d)
    r_out     = r_in + (k_eff - 1) * j_in
    j_out     = j_in * s
    start_out = start_in + ((k_eff - 1) / 2 - p) * j_in

Pooling counts like convolution. The model is traced with :mod:`torch.fx`, so any
graph works, sequential or multi-path (VGG, ResNet, DenseNet, MobileNet,
EfficientNet, RegNet, ConvNeXt, ...).

Conventions
-----------
* **Axes**: every pair is ``(y, x)``; a unit ``(u, v)`` is row ``u``, column ``v``
  of the feature map.
* **Pixel coordinates**: integer coordinate ``i`` is the *centre* of input pixel
  ``i`` (pixel-index convention; the input pixel (0, 0) has centre (0.0, 0.0)).
  ``start`` and :meth:`ReceptiveField.center` use these coordinates, so a
  half-integer means "between two pixels" (e.g. after a 2x2 pooling).
* **Boxes**: :meth:`ReceptiveField.box` returns the half-open integer box
  ``(y0, x0, y1, x1)``: the field covers pixel rows ``y0 .. y1-1`` and columns
  ``x0 .. x1-1``, i.e. ``image[y0:y1, x0:x1]`` when it lies inside the image.
  ``y1 - y0 == size[0]``. The box may extend outside the image (negative or
  ``>= H``); pass ``clip=(H, W)`` to intersect it with the image.
* **Merges** (``add``, ``mul``, ``cat`` of several paths, e.g. residual and dense
  connections): the field is the **union** of the paths' fields, i.e. the
  smallest box containing all of them (computed from the unit-0 box edges, which
  are integers); ``size`` and ``start`` are that box's size and centre. When the
  paths are concentric, as in every torchvision CNN, this is simply the largest
  field and its start. The jumps of merged paths must agree, else an error is
  raised.
* **Global context**: an operand that was pooled to 1x1 (squeeze-and-excitation
  in MobileNetV3/EfficientNet/RegNetY) or normalised over space (GroupNorm,
  LayerNorm over spatial dims) and then broadcast back makes every unit depend on
  the whole image. The *local* geometry is still reported, with
  ``global_context=True``; the empirical gradient support of such a unit is the
  whole image.
* **Eval mode**: geometry of the model in eval mode (BatchNorm uses running
  statistics, dropout/stochastic depth are identities). The model's train/eval
  flags are restored afterwards.
* **Modules called several times**: a layer is a module name from
  ``model.named_modules()`` and means that module's output on its **last** call
  in one forward pass. ResNet blocks call their single ``relu`` module several
  times; the last call is the block output, so ``layer1.0.relu`` has the same
  field as ``layer1.0``, and ``layer1`` that of its last block.

Adaptive pooling is exact when the input size is a multiple of the output size
(kernel = stride = ratio; identity when equal); otherwise, and after
flatten/linear/global reductions, the tensor has no spatial geometry and asking
for such a layer raises :class:`ReceptiveFieldError` (a ``ValueError``). Any op
the propagation does not know makes the tensors downstream of it unknown, and
asking for a layer there raises too: values are never guessed.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import FtdynError

try:  # torchvision wraps it as an fx leaf function (EfficientNet, ConvNeXt)
    from torchvision.ops import stochastic_depth as _stochastic_depth
except ImportError:  # pragma: no cover
    _stochastic_depth = None

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "receptive_fields",
    "map_to_image",
    "image_to_map",
    "upsample_to_image",
]


class ReceptiveFieldError(FtdynError, ValueError):
    """Receptive field cannot be computed (unknown layer, untraceable model, unsupported op)."""


# --------------------------------------------------------------------------- #
# Public result type
# --------------------------------------------------------------------------- #


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return (float(v), float(v))
    a, b = v
    return (float(a), float(b))


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive-field geometry of one layer; all pairs are ``(y, x)`` in input pixels.

    ``size``: extent of one unit's field (may exceed the input). ``jump``: distance
    between the centres of adjacent units. ``start``: centre of unit (0, 0) in
    pixel-index coordinates (pixel ``i`` has centre ``i``). ``map_size``: the
    feature map's (h, w) at ``input_size`` (informational; ``None`` if unknown).
    ``global_context``: units also see globally pooled context (SE blocks etc.),
    so their true dependence is the whole image.
    """

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]
    map_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    global_context: bool = False

    def __post_init__(self):
        object.__setattr__(self, "size", _pair(self.size))
        object.__setattr__(self, "jump", _pair(self.jump))
        object.__setattr__(self, "start", _pair(self.start))
        for name in ("map_size", "input_size"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (int(v[0]), int(v[1])))
        object.__setattr__(self, "global_context", bool(self.global_context))

    # -- geometry of single units ------------------------------------------------
    def center(self, u: float, v: float) -> tuple[float, float]:
        """Centre of unit (row ``u``, column ``v``) in input pixel-index coordinates."""
        return (self.start[0] + u * self.jump[0], self.start[1] + v * self.jump[1])

    def box(self, u: int, v: int, clip: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """Half-open input box ``(y0, x0, y1, x1)`` of unit (``u``, ``v``).

        The field covers ``image[y0:y1, x0:x1]``; without ``clip`` the box may
        extend outside the image. With ``clip=(H, W)`` it is intersected with the
        image (possibly empty: ``y0 == y1``).
        """
        cy, cx = self.center(u, v)
        y0 = math.floor(cy - (self.size[0] - 1) / 2 + 1e-9)
        x0 = math.floor(cx - (self.size[1] - 1) / 2 + 1e-9)
        y1 = math.ceil(cy + (self.size[0] - 1) / 2 - 1e-9) + 1
        x1 = math.ceil(cx + (self.size[1] - 1) / 2 - 1e-9) + 1
        if clip is not None:
            h, w = int(clip[0]), int(clip[1])
            y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
            x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
        return (y0, x0, y1, x1)

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists, floats, ints, bools); inverse of :meth:`from_dict`."""
        return {
            "size": list(self.size),
            "jump": list(self.jump),
            "start": list(self.start),
            "map_size": None if self.map_size is None else list(self.map_size),
            "input_size": None if self.input_size is None else list(self.input_size),
            "global_context": self.global_context,
            "convention": "pixel-index centres; box half-open; union at merges",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReceptiveField":
        return cls(
            size=tuple(d["size"]),
            jump=tuple(d["jump"]),
            start=tuple(d["start"]),
            map_size=None if d.get("map_size") is None else tuple(d["map_size"]),
            input_size=None if d.get("input_size") is None else tuple(d["input_size"]),
            global_context=bool(d.get("global_context", False)),
        )


# --------------------------------------------------------------------------- #
# Feature map <-> image coordinates
# --------------------------------------------------------------------------- #


def map_to_image(
    rf: ReceptiveField, h: int | None = None, w: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Input pixel-index coordinates of the centres of an ``h x w`` map's cells.

    Returns ``(ys, xs)``: ``ys[u] = start_y + u * jump_y`` (length ``h``) and
    ``xs[v] = start_x + v * jump_x`` (length ``w``), float64. ``h``/``w`` default
    to ``rf.map_size``. Independent of the map size the field was computed at.
    """
    if h is None or w is None:
        if rf.map_size is None:
            raise ReceptiveFieldError(
                "map_to_image: give h and w (this ReceptiveField has no map_size)"
            )
        h = rf.map_size[0] if h is None else h
        w = rf.map_size[1] if w is None else w
    ys = rf.start[0] + np.arange(int(h), dtype=np.float64) * rf.jump[0]
    xs = rf.start[1] + np.arange(int(w), dtype=np.float64) * rf.jump[1]
    return ys, xs


def image_to_map(rf: ReceptiveField, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional map coordinates of every image pixel centre (inverse of :func:`map_to_image`).

    Returns ``(us, vs)`` with ``us[i] = (i - start_y) / jump_y`` for ``i < height``
    and ``vs[k] = (k - start_x) / jump_x`` for ``k < width``. Values outside
    ``[0, h-1]`` lie beyond the outermost cell centres.
    """
    us = (np.arange(int(height), dtype=np.float64) - rf.start[0]) / rf.jump[0]
    vs = (np.arange(int(width), dtype=np.float64) - rf.start[1]) / rf.jump[1]
    return us, vs


def _interp_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    if n == 1:
        return np.repeat(a, len(coords), axis=axis)
    c = np.clip(coords, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(c).astype(np.int64), n - 2)
    t = c - i0
    shape = [1] * a.ndim
    shape[axis] = len(coords)
    t = t.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - t) + np.take(a, i0 + 1, axis=axis) * t


def upsample_to_image(fmap, rf: ReceptiveField, image_size: tuple[int, int] | int) -> np.ndarray:
    """Bilinearly resample feature map(s) ``(..., h, w)`` onto the image pixel grid.

    Each cell's value is placed at its receptive-field centre (not at a plain
    resize position) and interpolated linearly in between; pixels beyond the
    outermost centres take the edge value. Returns ``(..., H, W)`` float64.
    """
    a = np.asarray(fmap, dtype=np.float64)
    if a.ndim < 2:
        raise ReceptiveFieldError("upsample_to_image: the map needs at least 2 dims (..., h, w).")
    H, W = (
        (int(image_size), int(image_size))
        if isinstance(image_size, (int, np.integer))
        else map(int, image_size)
    )
    us, vs = image_to_map(rf, H, W)
    out = _interp_axis(a, us, a.ndim - 2)
    return _interp_axis(out, vs, a.ndim - 1)


# --------------------------------------------------------------------------- #
# Internal geometry states
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Axis:
    r: float  # size
    j: float  # jump
    s: float  # start (centre of unit 0)

    @property
    def lo(self) -> float:  # centre of the first input pixel in unit 0's field
        return self.s - (self.r - 1) / 2

    @property
    def hi(self) -> float:  # centre of the last input pixel in unit 0's field
        return self.s + (self.r - 1) / 2

    def layer(self, k: int, s: int, p: float, d: int = 1) -> "_Axis":
        keff = d * (k - 1) + 1
        return _Axis(
            self.r + (keff - 1) * self.j, self.j * s, self.s + ((keff - 1) / 2 - p) * self.j
        )


@dataclass(frozen=True)
class _Geo:
    """A tensor with spatial geometry; ``dims`` are its (y, x) tensor dimensions."""

    y: _Axis
    x: _Axis
    dims: tuple[int, int]
    ctx: bool = False

    def with_(self, **kw) -> "_Geo":
        d = dict(y=self.y, x=self.x, dims=self.dims, ctx=self.ctx)
        d.update(kw)
        return _Geo(**d)


@dataclass(frozen=True)
class _Ended:
    """Depends on the input but has no spatial geometry (after flatten, global pooling, ...)."""

    why: str


@dataclass(frozen=True)
class _Unknown:
    """Geometry not computable here (unsupported op); ``why`` names the first culprit."""

    why: str


# None = does not depend on the input image (parameters, constants, shapes).


@dataclass(frozen=True)
class _TMeta:
    shape: tuple[int, ...]


def _meta_of(value):
    if isinstance(value, torch.Tensor):
        return _TMeta(tuple(value.shape))
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, list):
        return [_meta_of(v) for v in value]
    if isinstance(value, tuple):  # includes namedtuples
        return tuple(_meta_of(v) for v in value)
    if isinstance(value, (int, float, bool, str, type(None), slice, torch.dtype, torch.device)):
        return value
    return None


class _Tracer(fx.Tracer):
    """fx tracer that records the output node of every module call (last call wins)."""

    def __init__(self):
        super().__init__()
        self.module_outputs: dict[str, Any] = {}

    def call_module(self, m, forward, args, kwargs):
        out = super().call_module(m, forward, args, kwargs)
        try:
            name = self.path_of_module(m)
        except NameError:
            return out
        # the last graph node at return time: the output's geometry is read right after it
        # (later in-place ops on the same tensor do not change what a hook copied)
        self.module_outputs[name] = (out, next(iter(reversed(self.graph.nodes)), None))
        return out


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once (hooks bypassed) and records output shapes/values."""

    def __init__(self, gm):
        super().__init__(gm)
        self.meta: dict[fx.Node, Any] = {}

    def run_node(self, n):
        result = super().run_node(n)
        self.meta[n] = _meta_of(result)
        return result

    def call_module(self, target, args, kwargs):
        # .forward bypasses user hooks (e.g. capture hooks registered by extract)
        return self.fetch_attr(target).forward(*args, **kwargs)


# --------------------------------------------------------------------------- #
# Op tables
# --------------------------------------------------------------------------- #

_POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.Threshold,
)
_F = torch.nn.functional
_POINTWISE_FUNCS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.neg,
    operator.pos,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.pow,
    torch.add,
    torch.sub,
    torch.subtract,
    torch.mul,
    torch.multiply,
    torch.div,
    torch.divide,
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clip,
    torch.exp,
    torch.abs,
    torch.neg,
    torch.sqrt,
    torch.rsqrt,
    torch.pow,
    torch.maximum,
    torch.minimum,
    torch.where,
    _F.relu,
    _F.relu_,
    _F.relu6,
    _F.hardtanh,
    _F.hardtanh_,
    _F.elu,
    _F.selu,
    _F.celu,
    _F.gelu,
    _F.silu,
    _F.mish,
    _F.hardswish,
    _F.hardsigmoid,
    _F.sigmoid,
    _F.tanh,
    _F.leaky_relu,
    _F.softplus,
    _F.dropout,
    _F.dropout1d,
    _F.dropout2d,
    _F.alpha_dropout,
    _F.batch_norm,
    _F.threshold,
}
_POINTWISE_METHODS = {
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "clamp_max",
    "clamp_max_",
    "neg",
    "abs",
    "exp",
    "sqrt",
    "rsqrt",
    "pow",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "requires_grad_",
    "__add__",
    "__mul__",
    "__radd__",
    "__rmul__",
    "__sub__",
    "__truediv__",
}
_NON_TENSOR_METHODS = {"size", "dim", "numel", "ndimension", "__len__", "get_device"}


class _States:
    """What the propagation knows about the graph's nodes: ``state`` (the geometry state of each
    node visited so far) and ``meta`` (values and shapes recorded by :class:`_ShapeRecorder`)."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.state: dict[fx.Node, Any] = {}

    def st(self, a):
        """State of an argument (node, nested container, or constant)."""
        if isinstance(a, fx.Node):
            return self.state.get(a)
        if isinstance(a, (list, tuple)):
            return (
                type(a)(self.st(x) for x in a)
                if not hasattr(a, "_fields")
                else tuple(self.st(x) for x in a)
            )
        return None

    def val(self, a):
        """Concrete value/metadata of an argument, as recorded during the shape run."""
        if isinstance(a, fx.Node):
            return self.meta.get(a)
        if isinstance(a, (list, tuple)):
            return (
                type(a)(self.val(x) for x in a)
                if not hasattr(a, "_fields")
                else tuple(self.val(x) for x in a)
            )
        return a

    def shape(self, a):
        v = self.val(a)
        return v.shape if isinstance(v, _TMeta) else None

    def operand(self, a) -> tuple[Any, Any]:
        """(state, shape) of an operand, as :func:`_merge` takes them."""
        return self.st(a), self.shape(a)

    def out_spatial(self, node, geo: _Geo):
        sh = self.shape(node)
        if sh is None or max(geo.dims) >= len(sh):
            return None
        return (sh[geo.dims[0]], sh[geo.dims[1]])


def _flat_states(s):
    if isinstance(s, (list, tuple)):
        for x in s:
            yield from _flat_states(x)
    elif isinstance(s, dict):
        for x in s.values():
            yield from _flat_states(x)
    elif s is not None:
        yield s


def _first_unknown(states):
    return next((s for s in states if isinstance(s, _Unknown)), None)


def _unsupported(node, desc, inputs):
    """State after an op no rule knows: unknown if it touches the image, None on constants only."""
    states = list(_flat_states(inputs))
    bad = _first_unknown(states)
    if bad is not None:
        return bad
    if not states:
        return None  # computation on constants only
    return _Unknown(f"unsupported operation {desc} (fx node '{node.name}')")


# --------------------------------------------------------------------------- #
# Geometry of each kind of op
# --------------------------------------------------------------------------- #


def _merge(node, operands: list, out_shape) -> Any:
    """Combine states of operands of an elementwise op / concatenation."""
    flat = []
    for s, sh in operands:
        if isinstance(s, (list, tuple)):
            return _Unknown(f"container operand in '{node.name}'")
        if s is not None:
            flat.append((s, sh))
    if not flat:
        return None
    bad = _first_unknown([s for s, _ in flat])
    if bad is not None:
        return bad
    if not any(isinstance(s, _Geo) for s, _ in flat):
        return flat[0][0]  # only _Ended operands
    full, ctx = _full_size_operands(node, flat, out_shape)
    if isinstance(full, _Unknown):
        return full
    if not full:
        return _Ended(f"only broadcast operands in '{node.name}'")
    if len({g.dims for g in full}) > 1:
        return _Unknown(f"operands with different spatial dims in '{node.name}'")
    y, x = full[0].y, full[0].x
    for g in full[1:]:
        for a, b in ((y, g.y), (x, g.x)):
            if not math.isclose(a.j, b.j):
                raise ReceptiveFieldError(
                    f"paths merged in '{node.name}' have different jumps "
                    f"({a.j} vs {b.j}); cannot combine fields"
                )
        y = _union(y, g.y)
        x = _union(x, g.x)
    return _Geo(y, x, full[0].dims, ctx)


def _full_size_operands(node, flat: list, out_shape) -> tuple[list[_Geo] | _Unknown, bool]:
    """The spatial operands of a merge that are not broadcast, and whether the result sees
    global context (an _Ended or context operand, or a 1x1 operand broadcast over space as in
    SE gating)."""
    ctx = any(isinstance(s, _Ended) for s, _ in flat)
    full = []
    for g, sh in flat:
        if not isinstance(g, _Geo):
            continue
        ctx = ctx or g.ctx
        if out_shape is not None and sh is not None and len(sh) == len(out_shape):
            gs = (sh[g.dims[0]], sh[g.dims[1]])
            os_ = (out_shape[g.dims[0]], out_shape[g.dims[1]])
            if gs != os_:
                if gs == (1, 1):
                    ctx = True  # broadcast global context (SE gating)
                    continue
                return _Unknown(f"spatial broadcast {gs}->{os_} in '{node.name}'"), ctx
        elif out_shape is not None and sh is not None and len(sh) != len(out_shape):
            return _Unknown(f"rank-changing broadcast in '{node.name}'"), ctx
        full.append(g)
    return full, ctx


def _spatial_input(env: _States, node, inp, what: str):
    """(geometry, None) when ``inp`` has spatial geometry, else (None, the state to return)."""
    g = env.st(inp)
    if isinstance(g, _Geo):
        return g, None
    return None, g if not isinstance(g, (list, tuple)) else _Unknown(f"{what} '{node.name}'")


def _conv_like(env: _States, node, inp, k, s, p, d, what):
    g, other = _spatial_input(env, node, inp, f"{what} on a container in")
    if g is None:
        return other
    sh = env.shape(inp)
    if sh is None or g.dims != (len(sh) - 2, len(sh) - 1):
        return _Unknown(f"{what} '{node.name}' applied to non-trailing spatial dims")
    k, s, d = _pair_int(k), _pair_int(s), _pair_int(d)
    if isinstance(p, str):
        if p == "valid":
            p = (0, 0)
        elif p == "same":
            p = tuple((d[i] * (k[i] - 1)) // 2 for i in range(2))
        else:
            return _Unknown(f"padding={p!r} in '{node.name}'")
    p = _pair_int(p)
    return g.with_(y=g.y.layer(k[0], s[0], p[0], d[0]), x=g.x.layer(k[1], s[1], p[1], d[1]))


def _adaptive_pool(env: _States, node, inp):
    g, other = _spatial_input(env, node, inp, "pool on a container in")
    if g is None:
        return other
    isz, osz = env.shape(inp), env.shape(node)
    if isz is None or osz is None:
        return _Unknown(f"no shape for '{node.name}'")
    hin, win = isz[-2], isz[-1]
    hout, wout = osz[-2], osz[-1]
    if (hin, win) == (hout, wout):
        return g
    if (hout, wout) == (1, 1):
        return _Ended(f"global pooling '{node.name}'")
    if hin % hout == 0 and win % wout == 0:
        ky, kx = hin // hout, win // wout
        return g.with_(y=g.y.layer(ky, ky, 0), x=g.x.layer(kx, kx, 0))
    return _Ended(
        f"adaptive pooling {hin}x{win}->{hout}x{wout} in '{node.name}' is not a regular grid"
    )


def _flatten(env: _States, node, inp, start, end):
    g, other = _spatial_input(env, node, inp, "flatten of a container in")
    if g is None:
        return other
    sh = env.shape(inp)
    n = len(sh)
    start, end = start % n, end % n
    if start <= g.dims[0] <= end or start <= g.dims[1] <= end:
        if sh[g.dims[0]] == 1 and sh[g.dims[1]] == 1:
            return _Ended(f"flatten '{node.name}'")
        return _Ended(f"flatten of spatial dims '{node.name}'")
    if end < g.dims[0]:
        shift = end - start
        return g.with_(dims=(g.dims[0] - shift, g.dims[1] - shift))
    return g


def _reshape(env: _States, node, inp):
    g, other = _spatial_input(env, node, inp, "reshape of a container in")
    if g is None:
        return other
    isz, osz = env.shape(inp), env.shape(node)
    if isz is None or osz is None:
        return _Unknown(f"no shape for '{node.name}'")
    n = len(isz)
    if (
        g.dims == (n - 2, n - 1)
        and len(osz) >= 2
        and tuple(osz[-2:]) == tuple(isz[-2:])
        and math.prod(osz[:-2]) == math.prod(isz[:-2])
    ):
        return g.with_(dims=(len(osz) - 2, len(osz) - 1))
    return _Ended(f"reshape {tuple(isz)}->{tuple(osz)} mixes spatial dims in '{node.name}'")


def _reduce(env: _States, node, inp, dims, keepdim):
    g, other = _spatial_input(env, node, inp, "reduction of a container in")
    if g is None:
        return other
    n = len(env.shape(inp))
    if dims is None:
        return _Ended(f"full reduction '{node.name}'")
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {d % n for d in dims}
    if g.dims[0] in dims or g.dims[1] in dims:
        return _Ended(f"spatial reduction '{node.name}'")
    if keepdim:
        return g
    return g.with_(dims=tuple(d - sum(1 for r in dims if r < d) for d in g.dims))


def _permute(env: _States, node, inp, order):
    g, other = _spatial_input(env, node, inp, "permute of a container in")
    if g is None:
        return other
    n = len(env.shape(inp))
    order = [o % n for o in order]
    return g.with_(dims=(order.index(g.dims[0]), order.index(g.dims[1])))


def _transpose(env: _States, node, inp, a, b):
    g, other = _spatial_input(env, node, inp, "transpose of a container in")
    if g is None:
        return other
    n = len(env.shape(inp))
    a, b = a % n, b % n
    swap = {a: b, b: a}
    return g.with_(dims=(swap.get(g.dims[0], g.dims[0]), swap.get(g.dims[1], g.dims[1])))


def _split(env: _States, node, inp, dim):
    g = env.st(inp)
    out = env.val(node)
    if not isinstance(g, _Geo) or not isinstance(out, (list, tuple)):
        return g if not isinstance(g, _Geo) else _Unknown(f"split '{node.name}'")
    n = len(env.shape(inp))
    if dim % n in g.dims:
        return _Unknown(f"split along a spatial dim in '{node.name}'")
    return tuple(g for _ in out)


def _linear_like(env: _States, node, inp):
    g, other = _spatial_input(env, node, inp, "linear on a container in")
    if g is None:
        return other
    n = len(env.shape(inp))
    if (n - 1) in g.dims:
        return _Ended(f"linear over a spatial dim in '{node.name}'")
    return g


def _layer_norm(env: _States, node, inp, normalized_shape):
    g, other = _spatial_input(env, node, inp, "layer_norm on a container in")
    if g is None:
        return other
    n = len(env.shape(inp))
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    normed = set(range(n - k, n))
    if g.dims[0] in normed or g.dims[1] in normed:
        return g.with_(ctx=True)
    return g


def _spatial_norm(env: _States, inp):
    """GroupNorm / InstanceNorm: statistics over space, so every unit sees global context."""
    s = env.st(inp)
    return s.with_(ctx=True) if isinstance(s, _Geo) else s


def _getitem(env: _States, node, obj, idx):
    s = env.st(obj)
    if isinstance(s, (list, tuple)):
        if isinstance(idx, int):
            return s[idx]
        if isinstance(idx, slice):
            return type(s)(s[idx])
        return _Unknown(f"getitem '{node.name}'")
    if not isinstance(s, _Geo):
        return s
    # tensor indexing: allow only full slices on spatial dims
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis or i is None or isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
        return _Unknown(f"tensor indexing '{node.name}'")
    removed = 0
    for pos, i in enumerate(idx):
        if pos in s.dims:
            if not (isinstance(i, slice) and i == slice(None)):
                return _Unknown(f"indexing a spatial dim in '{node.name}'")
        elif isinstance(i, int) and pos < s.dims[0]:
            removed += 1
    return s.with_(dims=(s.dims[0] - removed, s.dims[1] - removed))


def _concat(env: _States, node, args, kwargs):
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    ops = [env.operand(t) for t in tensors]
    out = env.shape(node)
    for s, _ in ops:
        if isinstance(s, _Geo) and out is not None and dim % len(out) in s.dims:
            return _Unknown(f"concatenation along a spatial dim in '{node.name}'")
    return _merge(node, ops, out)


# --------------------------------------------------------------------------- #
# Rule tables: which geometry each module, function and method has
# --------------------------------------------------------------------------- #


def _pointwise(env: _States, node, args, kwargs):
    """Elementwise op: the merge of all its tensor operands."""
    operands = [
        env.operand(a) for a in list(args) + list(kwargs.values()) if isinstance(a, fx.Node)
    ]
    return _merge(node, operands, env.shape(node))


def _first_operand_only(env: _States, node, args, kwargs):
    return _merge(node, [env.operand(args[0])], env.shape(node))


def _max_pool_module(env: _States, node, m, x):
    if m.return_indices:
        return _Unknown(f"max pool with indices '{node.name}'")
    return _conv_like(env, node, x, m.kernel_size, m.stride, m.padding, m.dilation, "pool")


def _norm_module(env: _States, node, m, x):
    if isinstance(m, nn.LocalResponseNorm):  # over channels only
        return env.st(x)
    return _spatial_norm(env, x)


# (module types, rule(env, node, module, input)); the first matching entry applies
_MODULE_RULES = (
    (_POINTWISE_MODULES, lambda env, node, m, x: _merge(node, [env.operand(x)], env.shape(node))),
    (
        nn.Conv2d,
        lambda env, node, m, x: _conv_like(
            env, node, x, m.kernel_size, m.stride, m.padding, m.dilation, "conv"
        ),
    ),
    (nn.MaxPool2d, _max_pool_module),
    (
        nn.AvgPool2d,
        lambda env, node, m, x: _conv_like(
            env, node, x, m.kernel_size, m.stride or m.kernel_size, m.padding, 1, "pool"
        ),
    ),
    (
        (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
        lambda env, node, m, x: _adaptive_pool(env, node, x),
    ),
    (nn.Flatten, lambda env, node, m, x: _flatten(env, node, x, m.start_dim, m.end_dim)),
    (nn.Linear, lambda env, node, m, x: _linear_like(env, node, x)),
    (nn.LayerNorm, lambda env, node, m, x: _layer_norm(env, node, x, m.normalized_shape)),
    ((nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm), _norm_module),
)


def _max_pool_arguments(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """``F.max_pool2d``'s arguments in the order :func:`_conv_like` takes them."""
    return input, kernel_size, stride or kernel_size, padding, dilation, return_indices


def _max_pool_function(env: _States, node, args, kwargs):
    b = _bind(_max_pool_arguments, args, kwargs)
    if b[5]:
        return _Unknown(f"max pool with indices '{node.name}'")
    return _conv_like(env, node, b[0], b[1], b[2], b[3], b[4], "pool")


def _avg_pool_function(env: _States, node, args, kwargs):
    b = _bind(
        lambda input, kernel_size, stride=None, padding=0, *_, **__: (
            input,
            kernel_size,
            stride or kernel_size,
            padding,
        ),
        args,
        kwargs,
    )
    return _conv_like(env, node, b[0], b[1], b[2], b[3], 1, "pool")


def _conv_function(env: _States, node, args, kwargs):
    b = _bind(
        lambda input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1: (
            input,
            weight,
            stride,
            padding,
            dilation,
        ),
        args,
        kwargs,
    )
    wsh = env.shape(b[1])
    if wsh is None or env.st(b[1]) is not None:
        return _Unknown(f"conv2d with a computed weight '{node.name}'")
    return _conv_like(env, node, b[0], tuple(wsh[-2:]), b[2], b[3], b[4], "conv")


# torch.flatten(input, ...), input.flatten(...)
def _flatten_call(env: _States, node, args, kwargs):
    bound = _bind(lambda input, start_dim=0, end_dim=-1: (input, start_dim, end_dim), args, kwargs)
    return _flatten(env, node, *bound)


def _reduce_call(env: _States, node, args, kwargs):  # torch.mean(input, ...) and input.mean(...)
    bound = _bind(lambda input, dim=None, keepdim=False, **_: (input, dim, keepdim), args, kwargs)
    return _reduce(env, node, *bound)


def _split_call(env: _States, node, args, kwargs):  # torch.chunk(input, ...) and input.chunk(...)
    return _split(env, node, *_bind(lambda input, x, dim=0: (input, dim), args, kwargs))


def _transpose_call(env: _States, node, args, kwargs):
    return _transpose(env, node, args[0], args[1], args[2])


def _permute_method(env: _States, node, args, kwargs):
    order = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
    return _permute(env, node, args[0], list(env.val(order)))


def _rules(*groups) -> dict:
    """{op: rule} from (ops, rule) pairs; an op listed twice is a mistake in the tables."""
    table: dict = {}
    for ops, rule in groups:
        for op in ops:
            assert op not in table, op
            table[op] = rule
    return table


def _no_image(env: _States, node, args, kwargs):  # sizes, counts, attributes
    return None


# rule(env, node, args, kwargs) of each function, by identity
_FUNCTION_RULES = _rules(
    ((getattr, len), _no_image),
    ((operator.getitem,), lambda env, node, args, kwargs: _getitem(env, node, args[0], args[1])),
    # stochastic depth: identity in eval, per-sample scaling in training
    ((_stochastic_depth,) if _stochastic_depth is not None else (), _first_operand_only),
    (_POINTWISE_FUNCS, _pointwise),
    ((torch.cat, torch.concat, torch.concatenate), _concat),
    ((torch.flatten,), _flatten_call),
    ((torch.reshape,), lambda env, node, args, kwargs: _reshape(env, node, args[0])),
    ((torch.mean, torch.sum, torch.amax, torch.amin), _reduce_call),
    (
        (torch.permute,),
        lambda env, node, args, kwargs: _permute(
            env, node, *_bind(lambda input, dims: (input, dims), args, kwargs)
        ),
    ),
    ((torch.transpose, torch.swapaxes), _transpose_call),
    ((torch.chunk, torch.split, torch.tensor_split), _split_call),
    (
        (F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
        lambda env, node, args, kwargs: _adaptive_pool(env, node, args[0]),
    ),
    ((F.max_pool2d,), _max_pool_function),
    ((F.avg_pool2d,), _avg_pool_function),
    ((F.conv2d,), _conv_function),
    ((F.linear,), lambda env, node, args, kwargs: _linear_like(env, node, args[0])),
    (
        (F.layer_norm,),
        lambda env, node, args, kwargs: _layer_norm(
            env,
            node,
            *_bind(
                lambda input, normalized_shape, *_, **__: (input, normalized_shape), args, kwargs
            ),
        ),
    ),
    ((F.group_norm, F.instance_norm), lambda env, node, args, kwargs: _spatial_norm(env, args[0])),
)
# the max-pool variants torch dispatches to, by name (``F.max_pool2d`` may be any of them)
_FUNCTION_RULES_BY_NAME = {
    name: _max_pool_function for name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices")
}

# rule(env, node, args, kwargs) of each tensor method, by name
_METHOD_RULES = _rules(
    (_NON_TENSOR_METHODS, _no_image),
    (_POINTWISE_METHODS, _pointwise),
    # expand depends on self only; broadcasting 1x1 -> HxW ends geometry
    (("expand", "expand_as"), _first_operand_only),
    (("view", "reshape"), lambda env, node, args, kwargs: _reshape(env, node, args[0])),
    (("flatten",), _flatten_call),
    (("mean", "sum", "amax", "amin"), _reduce_call),
    (("permute",), _permute_method),
    (("transpose", "swapaxes"), _transpose_call),
    (("chunk", "split", "tensor_split"), _split_call),
)


def _rule_result(env: _States, modules: dict, node: fx.Node):
    """State of a call node's output, from the rule tables (unknown when no rule applies)."""
    args, kwargs = node.args, node.kwargs
    if node.op == "call_module":
        m = modules[node.target]
        x = args[0] if args else next(iter(kwargs.values()), None)
        rule = next((rule for types, rule in _MODULE_RULES if isinstance(m, types)), None)
        if rule is not None:
            return rule(env, node, m, x)
        desc = f"module {type(m).__name__} '{node.target}'"
        return _unsupported(node, desc, [env.st(a) for a in args])
    if node.op == "call_function":
        name = getattr(node.target, "__name__", repr(node.target))
        rule = _FUNCTION_RULES.get(node.target) or _FUNCTION_RULES_BY_NAME.get(name)
        desc = f"function {name}"
    else:
        rule, desc = _METHOD_RULES.get(node.target), f"method .{node.target}()"
    if rule is None:
        return _unsupported(node, desc, [env.st(a) for a in list(args) + list(kwargs.values())])
    return rule(env, node, args, kwargs)


_INPLACE_FUNCS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.relu_,
    _F.relu_,
    _F.hardtanh_,
}


def _is_inplace(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCS
    return False


def _bind(fn, args, kwargs):
    return fn(*args, **kwargs)


def _pair_int(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    return (int(v[0]), int(v[1]))


def _union(a: _Axis, b: _Axis) -> _Axis:
    lo, hi = min(a.lo, b.lo), max(a.hi, b.hi)
    return _Axis(hi - lo + 1, a.j, (lo + hi) / 2)


# --------------------------------------------------------------------------- #
# Graph walk
# --------------------------------------------------------------------------- #


def _propagate(
    gm: fx.GraphModule, env: _States, wanted: dict[fx.Node, list[tuple[str, fx.Node]]]
) -> dict[str, Any]:
    """Visit the graph in order, filling ``env.state``; returns the state of each wanted layer's
    output right after its node in ``wanted`` (its module's return: later in-place ops do not
    change what a hook copied)."""
    modules = dict(gm.named_modules())
    # the first 4-d input is the image
    image = next(
        (
            n
            for n in gm.graph.nodes
            if n.op == "placeholder" and env.shape(n) is not None and len(env.shape(n)) == 4
        ),
        None,
    )
    at_return: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            unit = _Axis(1.0, 1.0, 0.0)  # one pixel
            env.state[node] = _Geo(unit, unit, (2, 3)) if node is image else None
        elif node.op in ("call_module", "call_function", "call_method"):
            env.state[node] = _rule_result(env, modules, node)
        else:  # get_attr, output
            env.state[node] = None
        if _is_inplace(node) and node.args and isinstance(node.args[0], fx.Node):
            # x.add_(y) mutates x: users of x after this point see the merged geometry
            env.state[node.args[0]] = env.state[node]
        for layer, output in wanted.get(node, ()):
            at_return[layer] = env.state.get(output)
    return at_return


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def _first_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def receptive_fields(
    model: nn.Module,
    layers: list[str],
    input_size: tuple[int, int] | int = 224,
    in_channels: int | None = None,
) -> dict[str, ReceptiveField]:
    """Receptive-field geometry of each named layer of ``model``, keyed by layer name.

    ``layers`` are module names from ``model.named_modules()``; a module's output on
    its last call in the forward pass is meant (see the module docstring).
    ``input_size`` ((H, W) or an int) is used for one forward pass of a zero image
    (batch 1, no grad, hooks bypassed) that records the feature-map sizes; it only
    matters for adaptive pooling and for ``map_size``. The model is traced with
    ``torch.fx`` in eval mode; its train/eval flags are restored.

    Works on CPU, GPU and ``meta``-device models (the shape pass runs on the device
    and dtype of the first parameter; on ``meta`` it costs nothing). ``in_channels``
    defaults to the first ``nn.Conv2d``'s. User forward hooks are detached while
    tracing and bypassed in the shape pass, so capture hooks see nothing.

    Raises :class:`ReceptiveFieldError` (a ``ValueError``) when a name is not a
    module, the model cannot be traced, the module is not called in forward, or its
    output has no spatial geometry / passes through an unsupported op.
    """
    arch = type(model).__name__
    layers = list(layers)
    if isinstance(input_size, (int, np.integer)):
        input_size = (int(input_size), int(input_size))
    input_size = (int(input_size[0]), int(input_size[1]))
    names = dict(model.named_modules())
    for layer in layers:
        if layer not in names or layer == "":
            raise ReceptiveFieldError(f"{arch}: '{layer}' is not a module name of the model")
    if not layers:
        return {}
    with _traceable(model):
        outputs, gm = _trace(model, arch, layers)
        env = _States(_feature_map_sizes(gm, model, arch, input_size, in_channels))
    wanted: dict[fx.Node, list[tuple[str, fx.Node]]] = {}
    for layer in layers:
        if layer in outputs and isinstance(outputs[layer][0], fx.Proxy):
            wanted.setdefault(outputs[layer][1], []).append((layer, outputs[layer][0].node))
    at_return = _propagate(gm, env, wanted)
    return {
        layer: _field(arch, layer, outputs, at_return.get(layer), env, input_size)
        for layer in layers
    }


@contextmanager
def _traceable(model: nn.Module):
    """The model in eval mode, without user forward hooks and DenseNet's memory-efficient
    checkpointing; its hooks, flags and train/eval modes are restored on exit."""
    flags = {m: m.training for m in model.modules()}
    mem_eff = [m for m in model.modules() if getattr(m, "memory_efficient", False) is True]
    # fx tracing calls modules through Module.__call__, which would run user hooks (e.g.
    # capture hooks) on Proxy objects: detach them while tracing, restore afterwards.
    hooks = {m: (m._forward_hooks, m._forward_pre_hooks) for m in model.modules()}
    try:
        for m in hooks:
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
        model.eval()
        for m in mem_eff:  # DenseNet checkpointing branches on requires_grad; same geometry
            m.memory_efficient = False
        yield
    finally:
        for m, (fwd, pre) in hooks.items():
            m._forward_hooks, m._forward_pre_hooks = fwd, pre
        for m in mem_eff:
            m.memory_efficient = True
        for m, t in flags.items():
            m.training = t


def _trace(model: nn.Module, arch: str, layers: list[str]) -> tuple[dict[str, Any], fx.GraphModule]:
    """The traced graph and, per module name, (output proxy, graph node at its last return)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
        raise ReceptiveFieldError(
            f"{arch}: torch.fx cannot trace the model, so receptive fields of {layers} cannot be"
            f" computed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return tracer.module_outputs, fx.GraphModule(tracer.root, graph)


def _feature_map_sizes(
    gm: fx.GraphModule,
    model: nn.Module,
    arch: str,
    input_size: tuple[int, int],
    in_channels: int | None,
) -> dict:
    """Per graph node, the shapes/values of one forward pass of a zero image (batch 1) on the
    device and dtype of the model's first parameter."""
    try:
        p = next(model.parameters())
        dtype, device = p.dtype, p.device
    except StopIteration:
        dtype, device = torch.float32, torch.device("cpu")
    c = in_channels if in_channels is not None else _first_in_channels(model)
    x = torch.zeros(1, c, *input_size, dtype=dtype, device=device)
    rec = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            rec.run(x)
    except Exception as exc:  # noqa: BLE001
        raise ReceptiveFieldError(
            f"{arch}: forward pass at input size {input_size} failed while measuring feature maps "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return rec.meta


def _field(
    arch: str, layer: str, outputs: dict[str, Any], s, env: _States, input_size: tuple[int, int]
) -> ReceptiveField:
    """``layer``'s field from ``s``, the state of its output; an error when it has none."""
    if layer not in outputs:
        raise ReceptiveFieldError(
            f"{arch}: module '{layer}' is not called in the traced forward pass (or lies inside a"
            " leaf module)"
        )
    proxy = outputs[layer][0]
    if not isinstance(proxy, fx.Proxy):
        raise ReceptiveFieldError(f"{arch}: module '{layer}' does not return a single tensor")
    if isinstance(s, _Unknown):
        raise ReceptiveFieldError(
            f"{arch}: receptive field of '{layer}' cannot be computed: {s.why}"
        )
    if isinstance(s, _Ended):
        raise ReceptiveFieldError(f"{arch}: '{layer}' has no spatial receptive field ({s.why})")
    if not isinstance(s, _Geo):
        raise ReceptiveFieldError(f"{arch}: '{layer}' does not depend on the input image spatially")
    return ReceptiveField(
        size=(s.y.r, s.x.r),
        jump=(s.y.j, s.x.j),
        start=(s.y.s, s.x.s),
        map_size=env.out_spatial(proxy.node, s),
        input_size=input_size,
        global_context=s.ctx,
    )
