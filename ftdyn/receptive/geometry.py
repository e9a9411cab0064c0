"""The geometry state of a tensor during the propagation (a field per axis, or ended, unknown,
or independent of the image) and how each kind of op changes it: the receptive-field arithmetic
(``r_out = r_in + (k_eff - 1) * j_in``, ...) and the union of merged paths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .field import ReceptiveFieldError


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

    def layer(self, k: int, s: int, p: float, d: int = 1) -> _Axis:
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

    def with_(self, **kw) -> _Geo:
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
