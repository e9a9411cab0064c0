"""Regions of the store: the fixed partition of the probe images into batches aligned with the
store's sample chunks, the check that refuses a region holding NaN/inf before it is written, and
the writer threads that store the regions with a bounded number in flight."""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..config import arg
from ..errors import FtdynError
from ..outputs import DISK_ERRORS
from ..store import all_finite


def default_writers() -> int:
    """Writer threads when not given: one per CPU core but one (for the forward pass), 2 to 16.

    Compression (zstd) is the usual bottleneck on a GPU machine, and each writer
    compresses one chunk at a time.
    """
    return max(2, min(16, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class Batch:
    """Samples ``[start, stop)``; ``chunks`` are the store chunks it touches (all whole,
    or one chunk that the batch covers only partly)."""

    start: int
    stop: int
    chunks: tuple[int, ...]


@dataclass(frozen=True)
class Passes:
    """How the probe images go through a model into a store's regions, whatever the model and
    the device (picklable: a cluster's workers get it): the layers captured and how each becomes
    (channel, y, x), the normalization, the fixed batches, the stored dtype and the writer
    threads (None: :func:`default_writers` of the machine it runs on)."""

    layers: tuple[str, ...]
    layouts: dict
    normalization: dict[str, list[float]]
    batches: tuple[Batch, ...]
    dtype: str
    writers: int | None


def batch_plan(n_samples: int, samples_per_chunk: int, batch_size: int) -> list[Batch]:
    """The fixed partition of ``range(n_samples)`` into batches aligned with store chunks."""
    n_chunks = math.ceil(n_samples / samples_per_chunk)
    spc = samples_per_chunk
    plan: list[Batch] = []
    if batch_size >= spc:
        k = batch_size // spc
        for c0 in range(0, n_chunks, k):
            c1 = min(c0 + k, n_chunks)
            plan.append(Batch(c0 * spc, min(n_samples, c1 * spc), tuple(range(c0, c1))))
    else:
        for c in range(n_chunks):
            lo, hi = c * spc, min(n_samples, (c + 1) * spc)
            plan.extend(Batch(b, min(b + batch_size, hi), (c,)) for b in range(lo, hi, batch_size))
    return plan


class NonFiniteActivations(FtdynError):
    """A region whose activations are not all finite: it is never written or marked complete.
    ``text(peak)`` adds the true largest magnitude once it has been measured in float32."""

    def __init__(
        self,
        where: str,
        layer: str,
        ci: int,
        rows: slice,
        n_bad: int,
        largest: float,
        overflow: bool,
    ):
        self.where, self.layer, self.ci, self.rows = where, layer, ci, rows
        self.n_bad, self.largest, self.overflow = n_bad, largest, overflow
        super().__init__(self.text())

    def __reduce__(self):  # crosses processes (a cluster's worker -> the driver) whole
        return (
            type(self),
            (self.where, self.layer, self.ci, self.rows, self.n_bad, self.largest, self.overflow),
        )

    def text(self, peak: float | None = None) -> str:
        if self.overflow:
            seen = (
                f"largest magnitude {peak:.4g}, measured in float32"
                if peak is not None
                else f"largest finite magnitude {self.largest:.4g}"
            )
            return (
                f"{self.where}: {self.n_bad} activation(s) exceed float16's range (|x| > 65504;"
                f" {seen}); store this series in float32: run again with {arg('dtype')} float32 and"
                f" a new {arg('out')} (this store is float16)."
            )
        return (
            f"{self.where}: the network produced {self.n_bad} NaN/inf activation(s) (largest finite"
            f" magnitude {self.largest:.4g}; a diverged checkpoint?); leave that checkpoint out of"
            " the series."
        )


def _check_region(writer, ci: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
    """Refuse a region holding NaN/inf (float16 overflow, or NaN from the network) before it is
    written, naming the layer, the epoch and the samples."""
    for layer, arr in arrays.items():
        if all_finite(arr):
            continue
        finite = np.isfinite(arr)
        epoch = writer.attrs["checkpoints"][ci]["epoch"]
        rows = writer.chunk_slice(chunk)
        n_inf = int(np.isinf(arr).sum())
        largest = float(np.abs(arr[finite]).max()) if finite.any() else float("nan")
        where = (
            f"{arg('out', writer.path)}: layer {layer}, epoch {epoch}, samples"
            f" {rows.start}-{rows.stop - 1}"
        )
        overflow = bool(n_inf) and arr.dtype == np.float16
        raise NonFiniteActivations(
            where,
            layer,
            ci,
            rows,
            n_inf if overflow else arr.size - int(finite.sum()),
            largest,
            overflow,
        )


def _write_checked(
    writer, ci: int, chunk: int, arrays: dict[str, np.ndarray], mark: bool = True
) -> None:
    _check_region(writer, ci, chunk, arrays)
    writer.write_region(ci, chunk, arrays, mark=mark)


class _Writers:
    """Writer threads with a bounded number of regions in flight (backpressure); ``mark``: each
    region is marked complete once written (False: the caller marks the regions ``on_done``
    reports)."""

    def __init__(self, writer, n_threads: int, on_done, *, mark: bool = True):
        self.writer, self.mark = writer, mark
        self.pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="ftdyn-writer")
        self.slots = threading.BoundedSemaphore(n_threads + 2)  # regions queued or being written
        self.on_done = on_done
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def submit(self, ci: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        self.raise_if_failed()
        self.slots.acquire()
        try:
            future = self.pool.submit(_write_checked, self.writer, ci, chunk, arrays, self.mark)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda f: self._finished(f, ci, chunk))

    def _finished(self, future: Future, ci: int, chunk: int) -> None:
        self.slots.release()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            with self.lock:
                self.errors.append(exc)
            return
        self.on_done(ci, chunk)

    def raise_if_failed(self) -> None:
        if self.errors:
            exc = self.errors[0]
            if isinstance(exc, FtdynError) or (
                isinstance(exc, OSError) and exc.errno in DISK_ERRORS
            ):
                # a full disk: folder_lock's disk_errors names the file that could not be written
                raise exc
            raise FtdynError(
                f"{arg('out', self.writer.path)}: writing a region failed ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); fix the cause (disk space?) and re-run to "
                "resume."
            ) from exc

    def close(self, *, cancel: bool) -> None:
        self.pool.shutdown(wait=True, cancel_futures=cancel)
