"""Carrying out a plan (:func:`execute`, and :func:`extract` = ``execute(make_plan(...))``):
create or extend the store, replay the checkpoints whose regions are missing, record the run and
add the random-init baseline."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .._signature import takes_options
from .._version import __version__
from ..config import ExtractConfig, arg, describe
from ..errors import FtdynError, FtdynWarning
from ..outputs import folder_lock
from ..progress import stage
from ..runtime import dask_client
from ..store import StoreWriter, create_store, dir_size
from .baseline import _extract_random_init
from .cluster import replay_on_cluster, worker_devices
from .forward import _float32_peak, _run
from .plan import ExtractPlan, Replay, make_plan
from .regions import NonFiniteActivations


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@takes_options(ExtractConfig)
def extract(
    series: str | os.PathLike,
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: ExtractConfig | None = None,
    **options: Any,
) -> Path:
    """Replay every checkpoint of ``series`` on the probe images of ``data`` into the store ``out``.

    ``series``: a folder written by ``ftdyn train`` (its ``manifest.json`` gives the
    architecture, classes, input size and normalization, and is kept in the store's
    attrs), or a folder of third-party checkpoints (``.pt/.pth/.bin/.ckpt/.safetensors``;
    ``arch`` required; ``source`` = a checkpoint file or torchvision weights name that
    becomes epoch 0; input size 224 and ImageNet normalization unless given).
    ``data``: an ImageFolder; ``per_class`` / ``max_samples`` / ``probe_seed`` pick the
    probe set (:func:`ftdyn.data.select_probe`).

    The options are the fields of :class:`~ftdyn.config.ExtractConfig` (listed below), given as
    keyword arguments (``extract(s, data=d, out=o, layers=["layer3"])``) or as ``config=``
    (keyword arguments then override its fields); they mirror ``ftdyn extract``. The store's
    ``checkpoints`` records say which copy of the model each file gave (``state_prefix``,
    ``weights_copy``: see :func:`ftdyn.checkpoints.read_weights`). ``random_init_baseline``
    stores a randomly initialized model of the same architecture (``torch.manual_seed(
    random_init_seed)``, then the architecture's default constructor, its head resized to the
    store's classes) beside the checkpoints, not as an epoch (:func:`ftdyn.store.add_random_init`):
    the ceiling of ``ftdyn analyze``'s relative distances.

    If ``out`` exists it is resumed/extended (see the module docstring); a complete
    store with no new checkpoint is left untouched. Same as ``execute(make_plan(series,
    data=data, out=out, ...))``. Returns the store path.
    """
    return execute(make_plan(series, data=data, out=out, config=config, **options))


def execute(plan: ExtractPlan) -> Path:
    """Carry out ``plan`` (from :func:`make_plan`): create or extend the store, replay the
    checkpoints whose regions are missing, record the run, add the random-init baseline."""
    started, out, config = time.perf_counter(), plan.out, plan.config
    with contextlib.ExitStack() as stack:
        # connected first: an unreachable --scheduler leaves no store behind
        client = (
            None if config.scheduler is None else stack.enter_context(dask_client(config.scheduler))
        )
        if plan.spec is not None:
            create_store(out, plan.spec)
        # held for the whole run, a cluster's too: its workers write under this lock
        stack.enter_context(folder_lock(out))
        writer = StoreWriter(out)
        replays = _update_store(plan, writer)
        if not replays:
            if config.random_init_baseline:
                _extract_random_init(plan, writer)
            stage(
                f"{out}: complete ({len(writer.attrs['checkpoints'])} checkpoints x {plan.probe.n}"
                " samples); nothing to do."
            )
            return out
        here = (
            {plan.device.type}
            if client is None
            else {d.split(":")[0] for d in worker_devices(client, plan).values()}
        )
        _warn_devices(out, writer, here)
        if plan.new_records:
            epochs = ", ".join(f"epoch {r['epoch']}" for r in plan.new_records)
            stage(f"{out}: extending with {len(plan.new_records)} new checkpoint(s): {epochs}.")
        stats = _replay(plan, writer, replays, client)
        rate = _record_run(plan, writer, stats)
        if config.random_init_baseline:
            _extract_random_init(plan, writer)
    elapsed = time.perf_counter() - started
    stage(
        f"{out}: {stats['regions']} regions of {len(replays)} checkpoint(s) written, {plan.probe.n}"
        f" samples x {len(plan.network.layers)} layers; {human_bytes(dir_size(out))} on disk;"
        f" {rate:.1f} images/s on {stats.get('where', plan.device)} ({elapsed:.1f} s in all)."
    )
    return out


def _warn_devices(out: Path, writer: StoreWriter, here: set[str]) -> None:
    """A caveat when this run computes on other device types than the store's earlier runs."""
    devices = {
        device.split(":")[0]
        for r in writer.attrs.get("runs") or []
        for device in str(r.get("device", "")).split(", ")
    }
    if devices - here or (devices and len(here) > 1):
        warnings.warn(
            f"{arg('out', out)}: earlier regions were computed on {', '.join(sorted(devices))},"
            f" these on {', '.join(sorted(here))}; the last bits of the values may differ between"
            " devices.",
            FtdynWarning,
            stacklevel=3,
        )


def _update_store(plan: ExtractPlan, writer: StoreWriter) -> tuple[Replay, ...]:
    """Give the store the plan's checkpoint records (files replaced, later epochs appended) and
    return the plan's replays without regions another run finished since it was planned."""
    if [dict(c) for c in writer.attrs["checkpoints"]] != list(plan.stored):
        raise FtdynError(
            f"{arg('out', plan.out)}: another `ftdyn extract` changed this store while this one was"
            " starting; re-run the same command."
        )
    # the records and the training manifest are derived from the series on every run and written
    # in one update, so a run killed before it leaves nothing stale that a re-run would keep
    changes: dict = {}
    known = [dict(r) for r in plan.records[: len(plan.stored)]]
    if known != list(plan.stored):
        changes["checkpoints"] = known
    manifest = plan.network.manifest
    if manifest is not None and manifest != writer.attrs.get("manifest"):
        changes["manifest"] = manifest
    if plan.new_records:
        writer.append_checkpoints([dict(r) for r in plan.new_records], changes)
    else:
        writer.update_attrs(changes)
    done = writer.done()
    replays = [
        Replay(r.position, r.index, tuple(c for c in r.chunks if not done[r.index, c]))
        for r in plan.replays
    ]
    return tuple(r for r in replays if r.chunks)


def _record_run(plan: ExtractPlan, writer: StoreWriter, stats: dict[str, Any]) -> float:
    """Append this run's provenance (which device wrote, how fast; on a cluster its scheduler
    and each worker's device and share) to the store, one record per run; returns images/s."""
    rate = stats["images"] / stats["seconds"] if stats["seconds"] > 0 else float("nan")
    run = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": stats["device"],
        "torch": torch.__version__,
        "ftdyn": __version__,
        "regions": stats["regions"],
        "images": stats["images"],
        "seconds": round(stats["seconds"], 3),
        "images_per_s": round(rate, 2),
        "batch_size": plan.config.batch_size,
        "writers": plan.writers if plan.config.scheduler is None else plan.config.writers,
        **{key: stats[key] for key in ("scheduler", "workers") if key in stats},
    }
    writer.group.attrs["runs"] = [*(writer.attrs.get("runs") or []), run]
    return rate


def _replay(
    plan: ExtractPlan, writer: StoreWriter, replays: tuple[Replay, ...], client=None
) -> dict[str, Any]:
    """:func:`_run` (on a cluster: :func:`~.cluster.replay_on_cluster`), with its errors in one
    line that says the store keeps what was finished."""
    try:
        if client is not None:
            return replay_on_cluster(plan, writer, replays, client)
        return _run(plan, writer, replays)
    except NonFiniteActivations as exc:  # the same command would meet them again
        epoch = writer.attrs["checkpoints"][exc.ci]["epoch"]
        entry = next(e for e in plan.network.entries if int(e.epoch) == epoch)
        peak = (
            _float32_peak(
                plan.network.model,
                entry,
                plan.loading,
                exc,
                plan.probe.images,
                plan.network.normalization,
                plan.network.layouts,
                plan.device,
                plan.config.batch_size,
            )
            if exc.overflow
            else None
        )
        raise FtdynError(
            f"{exc.text(peak)} ({plan.out} keeps the regions finished so far.)"
        ) from None
    except FtdynError as exc:
        raise FtdynError(
            f"{exc} ({plan.out} keeps the checkpoints finished so far; fix the cause and re-run the"
            " same command to resume.)"
        ) from None


extract.__doc__ += "\n    Options (:class:`~ftdyn.config.ExtractConfig`):\n\n" + "\n".join(
    f"    * {line}" for line in describe(ExtractConfig).splitlines()
)
