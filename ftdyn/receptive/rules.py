"""Which geometry each op of a traced graph has: the tables of pointwise modules, functions and
tensor methods, and the rule of every module type, function and method the propagation knows
(an op in none of them makes what depends on the image unknown)."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional

from .geometry import (
    _adaptive_pool,
    _concat,
    _conv_like,
    _flatten,
    _getitem,
    _layer_norm,
    _linear_like,
    _merge,
    _permute,
    _reduce,
    _reshape,
    _spatial_norm,
    _split,
    _States,
    _transpose,
    _Unknown,
    _unsupported,
)

try:  # torchvision wraps it as an fx leaf function (EfficientNet, ConvNeXt)
    from torchvision.ops import stochastic_depth as _stochastic_depth
except ImportError:  # pragma: no cover
    _stochastic_depth = None


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
    functional.relu,
    functional.relu_,
    functional.relu6,
    functional.hardtanh,
    functional.hardtanh_,
    functional.elu,
    functional.selu,
    functional.celu,
    functional.gelu,
    functional.silu,
    functional.mish,
    functional.hardswish,
    functional.hardsigmoid,
    functional.sigmoid,
    functional.tanh,
    functional.leaky_relu,
    functional.softplus,
    functional.dropout,
    functional.dropout1d,
    functional.dropout2d,
    functional.alpha_dropout,
    functional.batch_norm,
    functional.threshold,
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
    """``functional.max_pool2d``'s arguments in the order :func:`_conv_like` takes them."""
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
        (functional.adaptive_avg_pool2d, functional.adaptive_max_pool2d),
        lambda env, node, args, kwargs: _adaptive_pool(env, node, args[0]),
    ),
    ((functional.max_pool2d,), _max_pool_function),
    ((functional.avg_pool2d,), _avg_pool_function),
    ((functional.conv2d,), _conv_function),
    ((functional.linear,), lambda env, node, args, kwargs: _linear_like(env, node, args[0])),
    (
        (functional.layer_norm,),
        lambda env, node, args, kwargs: _layer_norm(
            env,
            node,
            *_bind(
                lambda input, normalized_shape, *_, **__: (input, normalized_shape), args, kwargs
            ),
        ),
    ),
    (
        (functional.group_norm, functional.instance_norm),
        lambda env, node, args, kwargs: _spatial_norm(env, args[0]),
    ),
)


# the max-pool variants torch dispatches to, by name (``functional.max_pool2d`` may be any of them)
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
    functional.relu_,
    functional.hardtanh_,
}


def _is_inplace(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCS
    return False


def _bind(fn, args, kwargs):
    return fn(*args, **kwargs)
