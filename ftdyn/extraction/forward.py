"""The forward passes: checkpoint after checkpoint, the probe batches through the model with the
layers captured, the regions handed to the writer threads (on CUDA through pinned host memory),
the next checkpoint file read meanwhile; all without TF32 (:func:`full_precision`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from .. import data as data_mod
from ..config import STORE_DTYPES
from ..devices import fastest_memory_format
from ..models import LayerCapture
from ..progress import progress_bar
from ..store import StoreWriter
from ..tokens import MapLayout
from .loading import _apply_state, _load_state, _Loading
from .plan import ExtractPlan, Replay
from .regions import Batch, NonFiniteActivations, _Writers

#: Stored activation type -> the torch type activations are captured in.
DTYPES = {name: getattr(torch, name) for name in STORE_DTYPES}


@contextmanager
def full_precision() -> Iterator[None]:
    """No TF32 in convolutions and matmuls while inside (restored after).

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and newer GPUs
    (~1e-3 relative error), which would add noise of the size of the small
    fine-tuning differences the analysis looks for; stored values stay float32-exact
    up to the chosen storage dtype.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def _float32_peak(
    model,
    entry,
    loading: _Loading,
    exc: NonFiniteActivations,
    images: np.ndarray,
    normalization,
    layouts: dict[str, MapLayout],
    dev: torch.device,
    batch_size: int,
) -> float | None:
    """The true largest |activation| of the region that overflowed float16: the checkpoint is
    loaded again and that region's images run once more with the layer captured in float32.
    Only to complete the error message: any failure here gives None (the message then says
    the largest finite float16 value)."""
    try:
        _apply_state(model, entry, _load_state(entry, loading), loading)
        model.to(dev).eval()
        peak = 0.0
        with (
            LayerCapture(model, [exc.layer], dtype=torch.float32, layouts=layouts) as capture,
            torch.inference_mode(),
            full_precision(),
        ):
            for start in range(exc.rows.start, exc.rows.stop, batch_size):
                batch = torch.from_numpy(
                    images[start : min(start + batch_size, exc.rows.stop)]
                ).permute(0, 3, 1, 2)
                model(
                    data_mod.normalize(batch.to(dev), normalization["mean"], normalization["std"])
                )
                peak = max(peak, float(capture.pop()[exc.layer].abs().amax()))
        return peak
    except Exception:  # a best-effort detail of an error already being reported
        return None


class _Forward:
    """Runs the probe batches through the model, checkpoint after checkpoint, and hands the
    regions to the writers: on CUDA through pinned host memory, with one batch kept in flight
    on the GPU while the host hands the previous one over."""

    def __init__(
        self, plan: ExtractPlan, writer: StoreWriter, pool: _Writers, capture: LayerCapture
    ):
        self.plan, self.writer, self.pool, self.capture = plan, writer, pool, capture
        self.cuda = plan.device.type == "cuda"
        images = torch.from_numpy(plan.probe.images).permute(0, 3, 1, 2)  # uint8 NCHW view
        self.images = images.contiguous().pin_memory() if self.cuda else images
        self.inflight: list = []  # CUDA: batches whose device->host copies are still running
        self.forwarded = 0

    def checkpoint(self, ci: int, chunks: tuple[int, ...]) -> None:
        """Forward the batches covering ``chunks`` and hand each finished region to the writers."""
        dev, norm = self.plan.device, self.plan.network.normalization
        pending = set(chunks)
        partial: dict[int, dict[str, np.ndarray]] = {}
        filled: dict[int, int] = {}
        for batch in self.plan.batches:
            if not pending.intersection(batch.chunks):
                continue
            with torch.inference_mode():
                x = data_mod.normalize(
                    self.images[batch.start : batch.stop].to(dev, non_blocking=True),
                    norm["mean"],
                    norm["std"],
                )
                self.plan.network.model(x)
                outs = self.capture.pop()
                if self.cuda:
                    host = {
                        name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                        for name, t in outs.items()
                    }
                    for name, t in outs.items():
                        host[name].copy_(t, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    self.inflight.append((event, outs, host, ci, batch, pending, partial, filled))
                else:  # the hook already copied to host memory
                    _distribute(
                        self.pool,
                        ci,
                        batch,
                        {name: t.numpy() for name, t in outs.items()},
                        pending,
                        partial,
                        filled,
                        self.writer,
                    )
            self.forwarded += batch.stop - batch.start
            while len(self.inflight) > 1 or (self.inflight and self.inflight[0][0].query()):
                _drain(self.pool, self.inflight.pop(0), self.writer)
            self.pool.raise_if_failed()

    def finish(self) -> None:
        while self.inflight:
            _drain(self.pool, self.inflight.pop(0), self.writer)


def _region_counter(bars, replays: tuple[Replay, ...]):
    """(the writers' callback for a finished region, the count of finished regions): the callback
    advances the region and checkpoint bars and the count."""
    ck_task = bars.add_task("checkpoints", total=len(replays))
    rg_task = bars.add_task("regions", total=sum(len(r.chunks) for r in replays))
    remaining = {r.index: len(r.chunks) for r in replays}
    lock = threading.Lock()
    counts = {"regions": 0}

    def region_done(ci: int, chunk: int) -> None:
        with lock:
            counts["regions"] += 1
            remaining[ci] -= 1
            finished = remaining[ci] == 0
        bars.advance(rg_task)
        if finished:
            bars.advance(ck_task)

    return region_done, counts


def _run(plan: ExtractPlan, writer: StoreWriter, replays: tuple[Replay, ...]) -> dict[str, float]:
    """The extraction loop: checkpoints -> batches -> host arrays -> writer threads."""
    model, network, dev = plan.network.model, plan.network, plan.device
    bars = progress_bar(plan.config.progress)
    region_done, counts = _region_counter(bars, replays)
    memory_format = fastest_memory_format(model, dev)
    model.to(dev, memory_format=memory_format).eval()
    pool = _Writers(writer, plan.writers, region_done)
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftdyn-ckpt")
    prefetch: dict[int, Future] = {}

    def want(k: int) -> None:
        if k < len(replays):
            pos = replays[k].position
            if pos not in plan.states and pos not in prefetch:
                prefetch[pos] = loader.submit(_load_state, network.entries[pos], plan.loading)

    capture = LayerCapture(
        model,
        list(network.layers),
        dtype=DTYPES[plan.config.dtype],
        layouts=network.layouts,
    )
    forward = _Forward(plan, writer, pool, capture)
    ok = False
    t0 = time.perf_counter()
    try:
        with bars, full_precision():
            want(0)
            for k, replay in enumerate(replays):
                want(k + 1)  # read the next checkpoint file while this one runs
                pos = replay.position
                state = plan.states.pop(pos) if pos in plan.states else prefetch.pop(pos).result()
                if not (k == 0 and pos == 0):  # entry 0 was loaded into the model while planning
                    _apply_state(model, network.entries[pos], state, plan.loading)
                del state
                model.to(
                    dev, memory_format=memory_format
                ).eval()  # a replaced head is created on the CPU
                forward.checkpoint(replay.index, replay.chunks)
            forward.finish()
            pool.close(cancel=False)
            pool.raise_if_failed()
            ok = True
    finally:
        capture.close()
        if not ok:
            pool.close(cancel=True)  # writes already running finish; their regions stay valid
        for future in prefetch.values():
            future.cancel()
        loader.shutdown(wait=True, cancel_futures=True)
    return {
        "images": forward.forwarded,
        "seconds": time.perf_counter() - t0,
        "regions": counts["regions"],
    }


def _drain(pool: _Writers, item, writer) -> None:
    event, _outs, host, ci, batch, pending_set, partial, filled = item
    event.synchronize()
    _distribute(
        pool,
        ci,
        batch,
        {k: v.numpy() for k, v in host.items()},
        pending_set,
        partial,
        filled,
        writer,
    )


def _distribute(
    pool: _Writers,
    ci: int,
    batch: Batch,
    arrays: dict[str, np.ndarray],
    pending: set,
    partial: dict,
    filled: dict,
    writer,
) -> None:
    """Hand the pending regions covered by ``batch`` to the writers (views when whole)."""
    for chunk in batch.chunks:
        if chunk not in pending:
            continue
        rows = writer.chunk_slice(chunk)
        if rows.start >= batch.start and rows.stop <= batch.stop:  # whole region in this batch
            a, b = rows.start - batch.start, rows.stop - batch.start
            pool.submit(ci, chunk, {name: arr[a:b] for name, arr in arrays.items()})
            continue
        buf = partial.get(chunk)
        if buf is None:
            count = rows.stop - rows.start
            buf = partial[chunk] = {
                name: np.empty((count, *arr.shape[1:]), dtype=arr.dtype)
                for name, arr in arrays.items()
            }
            filled[chunk] = 0
        lo = batch.start - rows.start
        for name, arr in arrays.items():
            buf[name][lo : lo + arr.shape[0]] = arr
        filled[chunk] += batch.stop - batch.start
        if filled[chunk] == rows.stop - rows.start:
            pool.submit(ci, chunk, partial.pop(chunk))
            del filled[chunk]
