"""Extraction on an existing Dask cluster: ``ftdyn extract --scheduler``
(:func:`replay_on_cluster`).

This process, the *driver*, makes the plan, creates or extends the store and holds its lock
(:func:`~ftdyn.outputs.folder_lock`) for the whole run, as a local extraction does. Each
checkpoint with regions to write is one task: a worker resolves ``--device`` itself (with
dask-cuda's ``LocalCUDACluster`` or ``dask cuda worker`` each worker sees one GPU, so "auto"
is its GPU; elsewhere the CPU), reads the checkpoint file, and replays the regions into the
store with the same code as a local run (:meth:`~.forward.Replayer.replay`). The model as
planned (holding the first checkpoint; pickled, so that each task unpickles a copy of its own)
and the probe images are sent to every worker once (``scatter(..., broadcast=True)``); a task
gets only its :class:`_Task`.

Workers write under the driver's lock: they write only the activation arrays of their regions
(each region is its own chunk, or shard, of every activation array:
:meth:`~ftdyn.store.StoreWriter.check_region_chunks`) and return the regions they finished;
the driver sets the completeness marks (marks last, as in a local run). A worker that dies,
or a run that is stopped, leaves at most unmarked regions, which the next run writes again.
After an error the driver tells the other tasks to stop at their next batch (a
``distributed.Event``), marks what they finished and reports the first error as a local run
would; so no task of the run writes to the store once the driver has let its lock go (but a
driver killed outright cannot tell them: wait for the cluster's tasks to end before starting
another run on the same store).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import arg, cli_command, cli_names
from ..devices import resolve_device
from ..errors import FtdynError
from ..progress import progress_bar
from ..store import StoreWriter
from .forward import _region_counter, replaying
from .loading import _load_state, _Loading
from .plan import ExtractPlan, Replay
from .regions import Passes

#: the warning torch gives for the read-only probe images a worker receives (never written)
_READ_ONLY = "The given NumPy array is not writable"


@dataclass(frozen=True)
class _Task:
    """What a worker needs to replay one checkpoint besides the model and the probe images (which
    every worker holds once): the store, the checkpoint and its regions, how files become
    weights, the passes, ``--device``, the command whose flags messages name, and the name of
    the run's stop event."""

    out: Path
    replay: Replay
    entry: Any  # CheckpointEntry
    loading: _Loading
    passes: Passes
    device: str
    command: str | None
    stop: str


def _naming(command: str | None):
    """Messages name the driver's flags (``--out``) or Python parameters (``out``)."""
    return cli_names(command) if command is not None else contextlib.nullcontext()


def worker_device(device: str, command: str | None = None) -> str:
    """``--device`` resolved on the worker that runs this (``cuda:0`` on a dask-cuda worker)."""
    with _naming(command):
        return str(resolve_device(device))


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _replay_task(task: _Task, model: bytes, images: np.ndarray) -> dict[str, Any]:
    """On a worker: replay the regions of ``task``'s checkpoint into the store, without setting
    their marks; returns the regions written (all of them unless the run was stopped)."""
    from distributed import Event, get_worker

    with _naming(task.command):
        device = resolve_device(task.device)
        stopped = Event(task.stop)
        position = task.replay.position
        # the model as planned, holding the first checkpoint: a copy of its own for this task
        model = pickle.loads(model)
        state = None if position == 0 else _load_state(task.entry, task.loading)
        writer = StoreWriter(task.out, tidy=False)
        written: list[int] = []
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_READ_ONLY, category=UserWarning)
            with replaying(
                task.passes,
                model,
                images,
                device,
                writer,
                lambda ci, chunk: written.append(chunk),
                mark=False,
            ) as replayer:
                replayer.replay(
                    task.replay,
                    task.entry,
                    state,
                    task.loading,
                    loaded=position == 0,
                    stop=stopped.is_set,
                )
        return {
            "index": task.replay.index,
            "chunks": sorted(written),
            "images": replayer.forwarded,
            "seconds": time.perf_counter() - started,
            "worker": get_worker().address,
            "device": str(device),
            "device_name": _device_name(device),
        }


def worker_devices(client, plan: ExtractPlan) -> dict[str, str]:
    """{worker address: the device it replays on}; a cluster without workers is an error (its
    tasks would wait for ever)."""
    devices = client.run(worker_device, plan.config.device, cli_command())
    if not devices:
        raise FtdynError(
            f"{arg('scheduler', _address(client))}: the cluster has no workers; start some"
            f" (`dask worker {_address(client)}`) and re-run."
        )
    return devices


def _address(client) -> str:
    return str(getattr(client.scheduler, "address", None) or client.scheduler_info().get("address"))


def replay_on_cluster(
    plan: ExtractPlan, writer: StoreWriter, replays: tuple[Replay, ...], client
) -> dict[str, Any]:
    """Replay ``replays`` on the workers of ``client`` (one task per checkpoint) and mark each
    region complete once its worker reports it written; the run's statistics and the workers'
    devices (for the store's ``runs`` record)."""
    from distributed import Event, as_completed

    writer.check_region_chunks()
    run = uuid.uuid4().hex[:12]
    stop = Event(f"ftdyn-extract-stop-{run}", client=client)
    # once to every worker, not with every task
    model, images = client.scatter(
        [_pickled_model(plan), plan.probe.images], broadcast=True, hash=False
    )
    passes = replace(plan.passes, writers=plan.config.writers)  # each worker its own default
    futures = {}
    for replay in replays:
        entry = plan.network.entries[replay.position]
        if entry.path is not None:  # the workers' working folder is not this one's
            entry = replace(entry, path=Path(os.path.abspath(entry.path)))
        task = _Task(
            Path(os.path.abspath(plan.out)),
            replay,
            entry,
            plan.loading,
            passes,
            plan.config.device,
            cli_command(),
            stop.name,
        )
        key = f"ftdyn-extract-{run}-epoch-{entry.epoch}"
        futures[client.submit(_replay_task, task, model, images, key=key, pure=False)] = entry

    bars = progress_bar(plan.config.progress)
    region_done, counts = _region_counter(bars, replays)
    workers: dict[str, dict[str, Any]] = {}
    failed: tuple[BaseException, Any] | None = None
    finished = False
    started = time.perf_counter()
    try:
        with bars:
            for future in as_completed(list(futures)):
                try:
                    result = future.result()
                except Exception as exc:  # the others stop at their next batch
                    if failed is None:
                        failed = (exc, futures[future])
                        stop.set()
                    continue
                writer.mark_complete(result["index"], result["chunks"])  # marks last
                for chunk in result["chunks"]:
                    region_done(result["index"], chunk)
                seen = workers.setdefault(
                    result["worker"],
                    {
                        "worker": result["worker"],
                        "device": result["device"],
                        "device_name": result["device_name"],
                        "regions": 0,
                        "images": 0,
                    },
                )
                seen["regions"] += len(result["chunks"])
                seen["images"] += result["images"]
        finished = True
    finally:
        with contextlib.suppress(Exception):  # best effort: the cluster may be gone
            if not finished:
                stop.set()
            client.cancel([*futures, model, images])
            if finished:
                stop.clear()  # the scheduler forgets the event
    if failed is not None:
        raise _one_line(*failed, client)
    devices = sorted({w["device"] for w in workers.values()})
    return {
        "images": sum(w["images"] for w in workers.values()),
        "seconds": time.perf_counter() - started,
        "regions": counts["regions"],
        "device": ", ".join(devices),
        "where": f"{len(workers)} worker(s) of {_address(client)} ({', '.join(devices)})",
        "scheduler": _address(client),
        "workers": sorted(workers.values(), key=lambda w: w["worker"]),
    }


def _pickled_model(plan: ExtractPlan) -> bytes:
    """The model as planned, pickled (each task unpickles a copy of its own)."""
    try:
        return pickle.dumps(plan.network.model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # a model holding a lambda, a lock, ...
        raise FtdynError(
            f"{arg('scheduler')}: the model {plan.network.arch} cannot be sent to the workers"
            f" ({type(exc).__name__}: {exc}); extract it without {arg('scheduler')}."
        ) from None


def _one_line(exc: BaseException, entry, client) -> BaseException:
    """A task's error as a local run gives it: ftdyn's own errors (non-finite activations, a bad
    checkpoint, a full disk) as they are; a worker that died or a cluster that failed as one
    line naming ``--scheduler`` and the epoch. Anything else is a bug and keeps its traceback."""
    module = type(exc).__module__.split(".")[0]
    if module in ("distributed", "tornado", "asyncio", "concurrent") or isinstance(
        exc, TimeoutError
    ):
        detail = " ".join(str(exc).split())[:200]
        return FtdynError(
            f"{arg('scheduler', _address(client))}: replaying epoch {entry.epoch} failed on the"
            f" cluster, a worker died or was lost ({type(exc).__name__}: {detail})."
        )
    return exc  # ftdyn's own errors, a full disk, or a bug
