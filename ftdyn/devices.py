"""Which torch device a command runs on (``--device``), shared by train, extract and analyze."""

from __future__ import annotations

import torch

from .config import arg
from .errors import FtdynError


def resolve_device(device: str, *, float64: bool = False) -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device (checked).

    ``float64``: the caller computes in float64 (analyze), which Apple's MPS lacks, so
    ``mps`` is refused there instead of failing deep inside a task.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise FtdynError(
            f"{arg('device')}: '{device}' is not a device (use auto, cpu, cuda, cuda:1"
            f"{'' if float64 else ', mps'})."
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FtdynError(
                f"{arg('device', device)}: CUDA is not available on this machine; use"
                f" {arg('device')} cpu or auto."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FtdynError(
                f"{arg('device', device)}: only {torch.cuda.device_count()} CUDA device(s) present."
            )
    elif dev.type == "mps":
        if float64:
            raise FtdynError(
                f"{arg('device', device)}: the analysis computes in float64, which MPS does not"
                f" support; use {arg('device')} cpu."
            )
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise FtdynError(
                f"{arg('device', device)}: MPS is not available on this machine; use"
                f" {arg('device')} cpu or auto."
            )
    elif dev.type != "cpu":
        raise FtdynError(
            f"{arg('device')}: '{device}' is not supported (use auto, cpu, cuda, cuda:N"
            f"{'' if float64 else ', mps'})."
        )
    return dev


def fastest_memory_format(
    model: torch.nn.Module, device: torch.device | str
) -> torch.memory_format:
    """The memory format in which ``model`` trains and runs fastest on ``device``.

    On CPU, ``channels_last`` pays off for networks with depthwise convolutions (MobileNet,
    EfficientNet, MNASNet, ConvNeXt): a MobileNetV2 training step at 64 px took 0.19 s instead of
    0.25 s, its forward pass 0.022 s instead of 0.029 s; for ResNet18/50, VGG and DenseNet it was
    slower or no better (VGG11 and DenseNet121 training steps 3x slower), so they stay contiguous
    (``benchmarks/bench_memory_format.py``, README "Benchmarks"). Other devices keep the default.
    """
    if torch.device(device).type != "cpu":
        return torch.contiguous_format
    depthwise = any(
        isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        for m in model.modules()
    )
    return torch.channels_last if depthwise else torch.contiguous_format


#: The accelerator simulated on the CPU, in bytes of its memory (None: none). With it, the
#: analysis plans and computes on the CPU as it would on a CUDA device: the statistics in a memory
#: pool of their own beside --memory-limit, the device's block sizes and nuclear-norm route. Only
#: the tests set it (:func:`simulated_device`), so that the GPU route runs on every test run on
#: machines without one; its results must equal the CPU route's.
SIMULATED_DEVICE_MEMORY: int | None = None


def route(device: torch.device) -> str:
    """The device type whose code route ``device`` takes: its own, or "cuda" for the CPU while
    an accelerator is simulated (:data:`SIMULATED_DEVICE_MEMORY`)."""
    if device.type == "cpu" and SIMULATED_DEVICE_MEMORY is not None:
        return "cuda"
    return device.type


def device_memory(device: torch.device) -> int | None:
    """Bytes of the accelerator's own memory (the simulated one's on the CPU); None for none."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return SIMULATED_DEVICE_MEMORY if route(device) == "cuda" else None
