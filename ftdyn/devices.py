"""Which torch device a command runs on (``--device``), shared by train, extract and analyze."""

from __future__ import annotations

import torch

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
        raise FtdynError(f"--device: '{device}' is not a device (use auto, cpu, cuda, cuda:1"
                         f"{'' if float64 else ', mps'}).") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FtdynError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FtdynError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present.")
    elif dev.type == "mps":
        if float64:
            raise FtdynError(f"--device {device}: the analysis computes in float64, which MPS does not support; "
                             "use --device cpu.")
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise FtdynError(f"--device {device}: MPS is not available on this machine; use --device cpu or auto.")
    elif dev.type != "cpu":
        raise FtdynError(f"--device: '{device}' is not supported (use auto, cpu, cuda, cuda:N"
                         f"{'' if float64 else ', mps'}).")
    return dev
