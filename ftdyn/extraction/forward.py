"""The forward passes: checkpoint after checkpoint, the probe batches through the model with the
layers captured, the regions handed to the writer threads (on CUDA through pinned host memory),
the next checkpoint file read meanwhile; all without TF32 (:func:`full_precision`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

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
from .regions import Batch, NonFiniteActivations, Passes, _Writers, default_writers

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
        self,
        passes: Passes,
        model: torch.nn.Module,
        images: np.ndarray,
        device: torch.device,
        writer: StoreWriter,
        pool: _Writers,
        capture: LayerCapture,
    ):
        self.passes, self.model, self.device = passes, model, device
        self.writer, self.pool, self.capture = writer, pool, capture
        self.cuda = device.type == "cuda"
        images = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 NCHW view
        self.images = images.contiguous().pin_memory() if self.cuda else images
        self.inflight: list = []  # CUDA: batches whose device->host copies are still running
        self.forwarded = 0

    def checkpoint(
        self, ci: int, chunks: tuple[int, ...], stop: Callable[[], bool] | None = None
    ) -> None:
        """Forward the batches covering ``chunks`` and hand each finished region to the writers;
        ``stop``: asked before each batch, True ends the checkpoint there (its regions handed
        over so far are written, the others not)."""
        dev, norm = self.device, self.passes.normalization
        pending = set(chunks)
        partial: dict[int, dict[str, np.ndarray]] = {}
        filled: dict[int, int] = {}
        for batch in self.passes.batches:
            if not pending.intersection(batch.chunks):
                continue
            if stop is not None and stop():
                return
            with torch.inference_mode():
                x = data_mod.normalize(
                    self.images[batch.start : batch.stop].to(dev, non_blocking=True),
                    norm["mean"],
                    norm["std"],
                )
                self.model(x)
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


class Replayer:
    """One model on its device with the layers captured, and the writer threads of one store:
    :meth:`replay` replays regions of one checkpoint after another into the store. Made by
    :func:`replaying`; the local extraction uses one for the whole series, a cluster's worker
    one per checkpoint (:mod:`.cluster`)."""

    def __init__(
        self,
        passes: Passes,
        model: torch.nn.Module,
        images: np.ndarray,
        device: torch.device,
        writer: StoreWriter,
        on_region: Callable[[int, int], None],
        mark: bool,
    ):
        self.model, self.device = model, device
        self.memory_format = fastest_memory_format(model, device)
        model.to(device, memory_format=self.memory_format).eval()
        writers = default_writers() if passes.writers is None else passes.writers
        self.pool = _Writers(writer, writers, on_region, mark=mark)
        self.capture = LayerCapture(
            model, list(passes.layers), dtype=DTYPES[passes.dtype], layouts=passes.layouts
        )
        self.forward = _Forward(passes, model, images, device, writer, self.pool, self.capture)

    @property
    def forwarded(self) -> int:
        """Images run through the model so far."""
        return self.forward.forwarded

    def replay(
        self,
        replay: Replay,
        entry,
        state,
        loading: _Loading,
        *,
        loaded: bool = False,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Replay the regions ``replay.chunks`` of checkpoint ``entry`` (its weights ``state``,
        :func:`~.loading._load_state`; ``loaded``: the model holds them already) into the store:
        each region is handed to the writers once its batches have run; ``stop`` as in
        :meth:`_Forward.checkpoint`."""
        if not loaded:
            _apply_state(self.model, entry, state, loading)
        # a replaced head is created on the CPU
        self.model.to(self.device, memory_format=self.memory_format).eval()
        self.forward.checkpoint(replay.index, replay.chunks, stop)

    def finish(self) -> None:
        """Wait for the regions in flight to be written (an error of a writer raised here)."""
        self.forward.finish()
        self.pool.close(cancel=False)
        self.pool.raise_if_failed()

    def close(self, ok: bool) -> None:
        self.capture.close()
        if not ok:
            self.pool.close(cancel=True)  # writes already running finish; their regions stay valid


@contextmanager
def replaying(
    passes: Passes,
    model: torch.nn.Module,
    images: np.ndarray,
    device: torch.device,
    writer: StoreWriter,
    on_region: Callable[[int, int], None],
    *,
    mark: bool = True,
) -> Iterator[Replayer]:
    """A :class:`Replayer` for the block, without TF32 (:func:`full_precision`); its regions are
    all written when the block ends without an error. ``on_region(checkpoint index, chunk)`` is
    called (in a writer thread) for every region written; ``mark`` False leaves the completeness
    marks to the caller."""
    replayer = Replayer(passes, model, images, device, writer, on_region, mark)
    ok = False
    try:
        with full_precision():
            yield replayer
            replayer.finish()
        ok = True
    finally:
        replayer.close(ok)


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


def _run(plan: ExtractPlan, writer: StoreWriter, replays: tuple[Replay, ...]) -> dict[str, Any]:
    """The extraction loop on this machine: checkpoints -> :meth:`Replayer.replay`, the next
    checkpoint file read meanwhile."""
    network = plan.network
    bars = progress_bar(plan.config.progress)
    region_done, counts = _region_counter(bars, replays)
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftdyn-ckpt")
    prefetch: dict[int, Future] = {}

    def want(k: int) -> None:
        if k < len(replays):
            pos = replays[k].position
            if pos not in plan.states and pos not in prefetch:
                prefetch[pos] = loader.submit(_load_state, network.entries[pos], plan.loading)

    t0 = time.perf_counter()
    try:
        with (
            bars,
            replaying(
                plan.passes, network.model, plan.probe.images, plan.device, writer, region_done
            ) as replayer,
        ):
            want(0)
            for k, replay in enumerate(replays):
                want(k + 1)  # read the next checkpoint file while this one runs
                pos = replay.position
                state = plan.states.pop(pos) if pos in plan.states else prefetch.pop(pos).result()
                # entry 0 was loaded into the model while planning
                replayer.replay(
                    replay,
                    network.entries[pos],
                    state,
                    plan.loading,
                    loaded=k == 0 and pos == 0,
                )
                del state
    finally:
        for future in prefetch.values():
            future.cancel()
        loader.shutdown(wait=True, cancel_futures=True)
    return {
        "images": replayer.forwarded,
        "seconds": time.perf_counter() - t0,
        "regions": counts["regions"],
        "device": str(plan.device),
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
