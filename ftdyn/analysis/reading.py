"""How the Dask tasks read the store: cached arrays, checked blocks, and the heap trimmed after.

Each task gets a :class:`~ftdyn.analysis.inputs.Source` (picklable) and chunk indices and
reads what it needs itself (so a distributed worker never receives activations through the
scheduler), on ``Source.device``; :func:`trimmed` gives the heap back when a task ends.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np
import torch
import zarr

from ..errors import FtdynError
from ..store import all_finite, chunk_on_disk, decoding
from ..views import to_matrices
from .inputs import Source

F64 = torch.float64

_ARRAYS: dict[tuple[str, str], Any] = {}
_ARRAYS_LOCK = threading.Lock()


def _array(path: str, var: str):
    key = (path, var)
    arr = _ARRAYS.get(key)
    if arr is None:
        with _ARRAYS_LOCK:
            arr = _ARRAYS.get(key)
            if arr is None:
                arr = zarr.open_group(path, mode="r", zarr_format=3)[var]
                _ARRAYS[key] = arr
    return arr


def read_block(src: Source, ckpt: int, chunk: int, channels: slice = slice(None)) -> torch.Tensor:
    """One (checkpoint, sample chunk) block as stored (float16/32), on the analysis device
    (copied in the stored dtype: the float64 conversion happens there). ``channels``: a
    filter group; in a sharded store only the inner chunks holding it are decoded.
    A block with any NaN/inf raises a one-line FtdynError (:func:`nonfinite_error`)."""
    rows = src.rows(chunk)
    path, var, index = src.locate(ckpt)
    with decoding(path, src.where(ckpt, chunk)):
        block = np.asarray(_array(path, var)[index, rows, channels])
    if not all_finite(block):
        raise nonfinite_error(src, ckpt, chunk, block)
    return torch.from_numpy(np.ascontiguousarray(block)).to(src.device)


def read_matrices(src: Source, ckpt: int, chunk: int, channels: slice, view: str) -> torch.Tensor:
    """The view matrices (batch..., rows, cols) in float64 of one block (:func:`read_block`)."""
    return to_matrices(view, read_block(src, ckpt, chunk, channels), dtype=F64)


def nonfinite_error(src: Source, ckpt: int, chunk: int, block: np.ndarray) -> FtdynError:
    """Tell a chunk file that is gone (it reads as the fill value, NaN) from stored NaN/inf."""
    path, var, index = src.locate(ckpt)
    where = f"{path}: {src.where(ckpt, chunk)}"
    if not chunk_on_disk(path, var, index, chunk):
        return FtdynError(
            f"{where}: the chunk file is missing (removed after extraction, it reads as empty); "
            "the store is damaged: run the same `ftdyn extract` again to rewrite it."
        )
    finite = np.isfinite(block)
    n_inf = int(np.isinf(block).sum())
    n_nan = int(block.size - finite.sum()) - n_inf
    largest = float(np.abs(block[finite]).max()) if finite.any() else float("nan")
    if n_inf and block.dtype == np.float16:
        cause = (
            f"float16 overflow, |x| > {float(np.finfo(np.float16).max):.0f}",
            "re-extract with --dtype float32 into a new --out",
        )
    else:
        cause = (
            "the network produced them: a diverged checkpoint?",
            "check that checkpoint and extract a series without it",
        )
    return FtdynError(
        f"{where}: holds {n_inf} infinite and {n_nan} NaN stored value(s) (largest finite "
        f"magnitude {largest:.4g}; {cause[0]}); distances need finite activations: {cause[1]}."
    )


def spatial_means(raw: torch.Tensor) -> np.ndarray:
    """(images, channels) float64 means over the positions of a raw block (the linear probes'
    features): on the CPU numpy accumulates in float64 through a small buffer (no float64 copy
    of the block); on a GPU they are taken there, and only they cross to the host."""
    if raw.device.type != "cpu":
        return torch.mean(raw, dim=(-2, -1), dtype=F64).cpu().numpy()
    return raw.numpy().mean(axis=(-2, -1), dtype=np.float64)


# ==================================================================== heap trimming
_LIBC = None


def trim() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    glibc raises its mmap threshold up to 32 MiB after the first large free, after which
    chunk-sized temporaries come from per-thread arenas and stay resident: without a trim
    after each task the peak RSS grows far beyond the data actually held. (Forcing mmap for
    all large allocations instead, ``mallopt(M_MMAP_THRESHOLD)``, measured 4-7× slower.)
    """
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        _LIBC = False


def trimmed(func):
    """Run a task, then trim the heap (see :func:`trim`); keeps the task's name and pickles
    (every Dask task of the analysis is wrapped)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            if _LIBC is not False:
                trim()

    return wrapper
