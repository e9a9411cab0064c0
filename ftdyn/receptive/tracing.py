"""The entry point, :func:`receptive_fields`: the model traced with :mod:`torch.fx` (eval mode,
user hooks detached), one forward pass of a zero image for the feature-map sizes, and the walk
over the graph that gives each wanted layer's field."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .field import ReceptiveField, ReceptiveFieldError
from .geometry import _Axis, _Ended, _Geo, _meta_of, _States, _Unknown
from .rules import _is_inplace, _rule_result


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
    except Exception as exc:  # any tracing failure is reported the same way
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
    except Exception as exc:
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
