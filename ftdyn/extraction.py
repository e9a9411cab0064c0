"""Replay a checkpoint series on a fixed probe set into an activation store.

:func:`extract` (``ftdyn extract``) loads every checkpoint of a series into *one*
model instance, runs the same probe images through it and writes the chosen
layers' activations into the Zarr store defined by :mod:`ftdyn.store`. It is
``execute(make_plan(...))``: :func:`make_plan` validates the options
(:class:`~ftdyn.config.ExtractConfig`), reads the series, the probe images and an existing
store, and returns an :class:`ExtractPlan` (checkpoints and regions to compute, layers, store
layout, batches) without writing anything; :func:`execute` carries it out.

Pipeline (README "The activation store")::

    probe images (uint8, loaded once) --normalize on device--> model + LayerCapture
      --(CUDA: non-blocking copy into pinned memory)--> host arrays
      --bounded hand-off--> writer threads --StoreWriter.write_region--> store

* **Batches are a fixed partition of the samples** that never straddles a store
  chunk: with ``batch_size >= samples_per_chunk`` a batch is ``batch_size //
  samples_per_chunk`` whole chunks (the region arrays are views of the batch
  output, no copy); otherwise each chunk is cut into batches of ``batch_size`` and
  assembled into one region buffer. The partition does not depend on which regions
  are still missing, so a resumed run feeds every image in exactly the batch an
  uninterrupted run would have used and writes bit-identical arrays (on the same
  device).
* **Regions** (checkpoint, sample chunk) are written once, complete; the store
  sets a region's completeness mark only after all its layers are written. A run
  killed at any moment leaves unmarked regions, which the next run rewrites.
* **Resume / extend**: when ``out`` exists, the call must describe the same store:
  architecture, layer list, probe images (fingerprint: SHA-256 of the stored image
  bytes and labels) and selection options, input size, normalization, dtype and the
  SHA-256 of every checkpoint the store already holds (the codec and chunking are
  the store's). A mismatch raises one line naming what differs. Then only unmarked
  regions are computed; checkpoints newer than the store's last epoch are appended;
  an earlier new epoch cannot be inserted.
* **Precision**: TF32 is switched off during extraction (:func:`full_precision`).
* **Non-finite values are never stored**: a checkpoint with NaN/inf weights is refused
  when it is loaded (file and tensor named), before the store is created; every region
  is checked in the writer thread before it is written (:func:`_check_region`). A float16
  overflow (|x| > 65504) or NaN/inf from the network *stops* the run with one line naming
  layer, epoch, samples, the largest magnitude (for an overflow: measured by running that
  region once more in float32) and the fix (``--dtype float32`` into a new ``--out``);
  finished regions stay complete. ftdyn does not switch one layer
  to float32 on its own: a store keeps one dtype, which every reader may rely on.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import data as data_mod
from ._signature import takes_options
from ._version import __version__
from .checkpoints import (
    checkpoint_files,
    discover_series,
    infer_num_classes,
    load_source_weights,
    load_state_into_model,
    read_manifest,
    read_weights,
)
from .config import STORE_DTYPES, ExtractConfig, arg, describe
from .devices import fastest_memory_format, resolve_device
from .errors import FtdynError, FtdynWarning
from .models import (
    LayerCapture,
    blank_forward,
    build_model,
    canonical_arch,
    channels_last_layers,
    default_layers,
    default_normalization,
    num_classes_of,
    replace_head,
    validate_layers,
)
from .outputs import DISK_ERRORS, check_output_folder, folder_lock
from .progress import progress_bar, stage
from .receptive import ReceptiveFieldError, receptive_fields
from .store import (
    LayerSpec,
    StoreSpec,
    StoreWriter,
    add_random_init,
    all_finite,
    create_store,
    dir_size,
    planned_regions,
    write_random_init,
)

#: Stored activation type -> the torch type activations are captured in.
DTYPES = {name: getattr(torch, name) for name in STORE_DTYPES}
_VAL_NAMES = {"val", "valid", "validation", "test", "train", "probe"}
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- helpers


def default_writers() -> int:
    """Writer threads when not given: one per CPU core but one (for the forward pass), 2 to 16.

    Compression (zstd) is the usual bottleneck on a GPU machine, and each writer
    compresses one chunk at a time.
    """
    return max(2, min(16, (os.cpu_count() or 2) - 1))


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def probe_fingerprint(images: np.ndarray, labels, class_names) -> str:
    """SHA-256 of the probe: image bytes (uint8, n×H×W×3), labels (int64 LE) and class names."""
    digest = hashlib.sha256(b"ftdyn-probe-v1")
    digest.update(repr(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    digest.update("\x00".join(map(str, class_names)).encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Batch:
    """Samples ``[start, stop)``; ``chunks`` are the store chunks it touches (all whole,
    or one chunk that the batch covers only partly)."""

    start: int
    stop: int
    chunks: tuple[int, ...]


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


def _entry_record(entry, copy: dict[str, str] | None = None) -> dict[str, Any]:
    """The store's record of a checkpoint; ``copy``: which weights of the file were read
    (:func:`_apply_state`)."""
    return {"epoch": int(entry.epoch), "file": entry.label, "sha256": entry.sha256, **(copy or {})}


def _dataset_name(manifest: dict | None, data_dir: Path) -> str:
    if manifest is not None:
        ds = manifest.get("dataset")
        if isinstance(ds, str) and ds:
            return ds
        if isinstance(ds, dict):
            if ds.get("name"):
                return str(ds["name"])
            if ds.get("path"):
                return Path(str(ds["path"])).name
    folder = data_dir.resolve()
    return (
        folder.parent.name
        if folder.name.lower() in _VAL_NAMES and folder.parent.name
        else folder.name
    )


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


# ----------------------------------------------------------------------- the setup


def parse_normalize(text: str) -> dict[str, list[float]]:
    """``--normalize MEAN,STD`` (one value each for all three channels) or six values
    ``M1,M2,M3,S1,S2,S3`` -> ``{"mean": [...], "std": [...]}``; a one-line error otherwise."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        values = [values[0]] * 3 + [values[1]] * 3
    if len(values) != 6 or not all(math.isfinite(v) for v in values) or min(values[3:]) <= 0:
        raise FtdynError(
            f"{arg('normalize', text)}: give MEAN,STD (e.g. 0.5,0.5) or three means and three stds "
            "(e.g. 0.485,0.456,0.406,0.229,0.224,0.225); stds must be positive."
        )
    return {"mean": values[:3], "std": values[3:]}


def _resolve_series(series: Path, arch: str | None, source, trust: bool):
    manifest = read_manifest(series) if series.is_dir() else None
    if manifest is None:
        if series.is_dir() and arch is None and checkpoint_files(series):
            raise FtdynError(
                f"{arg('arch')}: {series} is not an ftdyn series (no manifest.json); name the"
                f" architecture of its checkpoints with {arg('arch')} (e.g. {arg('arch')}"
                " resnet50)."
            )
        if arch is not None:
            arch = canonical_arch(arch)
        entries = discover_series(series, source=source, trust=trust, arch=arch)
        if arch is None:  # pragma: no cover - discover_series raised for an empty folder
            raise FtdynError(f"{arg('arch')}: {series} has no manifest.json; pass {arg('arch')}.")
        return arch, None, entries
    series_arch = canonical_arch(manifest["architecture"])
    if arch is not None and canonical_arch(arch) != series_arch:
        raise FtdynError(
            f"{arg('arch', arch)}: the series {series} was trained as {series_arch}"
            f" (manifest.json); drop {arg('arch')}."
        )
    entries = discover_series(series, source=source, trust=trust)
    return series_arch, manifest, entries


@dataclass(frozen=True)
class _Loading:
    """How checkpoints become model weights: the architecture (named in errors), whether
    full pickles are trusted, whether a head of another class count is adapted (third-party
    series), and which copy of the model a file holding several is read from."""

    arch: str
    trust: bool
    adapt_head: bool
    state_prefix: str | None = None
    weights_copy: str = "main"  # --weights-copy: the model's own weights or its EMA copy
    has_source: bool = (
        False  # epoch 0 is a --source (read as its main copy, a --state-prefix optional)
    )


def _is_source(entry, loading: _Loading) -> bool:
    return loading.has_source and int(entry.epoch) == 0


def _load_state(entry, loading: _Loading):
    """:class:`~ftdyn.checkpoints.Weights` of a file entry (None for a zoo weights name, loaded
    later);
    a file holding NaN/inf weights is refused here, before anything is extracted from it."""
    if entry.path is None:
        return None
    copy = "main" if _is_source(entry, loading) else loading.weights_copy
    weights = read_weights(
        entry.path, trust=loading.trust, copy=copy, state_prefix=loading.state_prefix
    )
    _check_finite_weights(weights.state, entry.path)
    return weights


def _check_finite_weights(state, path) -> None:
    """One line naming the file and the first tensor with NaN/inf values (a diverged run)."""
    for name, tensor in (state or {}).items():
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()
        ):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FtdynError(
                f"{path}: tensor '{name}' holds {bad} NaN/inf value(s) of {tensor.numel()} (a"
                " diverged checkpoint); its activations would be meaningless: leave this file out"
                " of the series (or end the series before it)."
            )


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


def _float32_peak(
    model,
    entry,
    loading: _Loading,
    exc: NonFiniteActivations,
    images: np.ndarray,
    normalization,
    channels_last: frozenset[str],
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
            LayerCapture(
                model, [exc.layer], dtype=torch.float32, channels_last=channels_last
            ) as capture,
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
    except Exception:  # noqa: BLE001 - a best-effort detail of an error already being reported
        return None


def _write_checked(writer, ci: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
    _check_region(writer, ci, chunk, arrays)
    writer.write_region(ci, chunk, arrays)


def _apply_state(model, entry, weights, loading: _Loading) -> dict[str, str]:
    """Load an entry into ``model``; returns which copy it gave: ``{"weights": top-level key or
    "file",
    "key_prefix": the prefix stripped from its keys}`` (recorded in the store)."""
    if weights is None:
        load_source_weights(
            model,
            entry,
            arch=loading.arch,
            trust=loading.trust,
            adapt_head=loading.adapt_head,
            state_prefix=loading.state_prefix,
        )
        return {"weights": "zoo", "key_prefix": ""}
    prefix = load_state_into_model(
        model,
        weights.state,
        source=str(entry.path),
        adapt_head=loading.adapt_head,
        arch=loading.arch,
        state_prefix=weights.prefix,
        optional_prefix=_is_source(entry, loading),
    )
    return {"weights": weights.key or "file", "key_prefix": prefix}


def _check_loadable(
    model, entries, positions, cache: dict, loading: _Loading
) -> dict[int, dict[str, str]]:
    """Load the checkpoints at ``positions`` into a scratch copy of ``model`` before the store
    is created or extended, so that a file that does not fit (another architecture, missing
    keys, no weights at all) stops the run before anything is written, not half-way.
    Costs one more read of each file; states already in ``cache`` are reused. Returns which
    copy each gave (:func:`_apply_state`) and notes a classifier head whose class count changes
    inside the series (the source's own head aside)."""
    scratch = copy.deepcopy(model)
    copies, classes = {}, {}
    for pos in positions:
        state = cache[pos] if pos in cache else _load_state(entries[pos], loading)
        copies[pos] = _apply_state(scratch, entries[pos], state, loading)
        if not _is_source(entries[pos], loading):
            classes[int(entries[pos].epoch)] = num_classes_of(scratch)
    if loading.adapt_head and len(set(classes.values())) > 1:
        shown = ", ".join(f"epoch {e}: {n}" for e, n in sorted(classes.items()))
        log.info(
            f"the classifier head changes its class count inside the series ({shown} classes); "
            "each checkpoint is loaded with its own head (heads are not captured)."
        )
    return copies


def _layer_shapes(
    model: torch.nn.Module, layers: list[str], input_size: int, channels_last: frozenset[str]
) -> dict[str, tuple[int, int, int]]:
    with LayerCapture(model, layers, channels_last=channels_last) as capture:
        blank_forward(model, input_size)
        outputs = capture.pop()
    shapes = {}
    for name, out in outputs.items():
        if out.dim() != 4:
            raise FtdynError(
                f"{arg('layers', name)}: its output has shape {tuple(out.shape)}, not (batch,"
                " channel, y, x); choose a convolutional layer (see `ftdyn layers ARCH`)."
            )
        shapes[name] = tuple(int(s) for s in out.shape[1:])
    return shapes


def _receptive_fields(model, layers: list[str], input_size: int) -> dict[str, dict | None]:
    try:
        fields = receptive_fields(model, layers, input_size)
        return {name: fields[name].to_dict() for name in layers}
    except ReceptiveFieldError as exc:
        warnings.warn(
            f"receptive fields are not available for this model ({exc}); the store and the analysis"
            " do not need them, only class-based patches will be unavailable for this store.",
            FtdynWarning,
        )
        return {name: None for name in layers}


# ------------------------------------------------------------------- resume checks


#: Where a store records each identity field of :class:`ExtractConfig` (attribute keys, outermost
#: first), in the order a call that resumes or extends the store is checked against them.
_STORE_IDENTITY = {
    "arch": ("architecture",),
    "layers": ("layers",),
    "input_size": ("input_size",),
    "normalize": ("normalization",),
    "dtype": ("dtype",),
    "samples_per_chunk": ("samples_per_chunk",),
    "probe_seed": ("probe", "seed"),
    "per_class": ("probe", "per_class"),
    "max_samples": ("probe", "max_samples"),
}


def _float_normalization(values: dict) -> dict[str, list[float]]:
    return {k: [float(v) for v in values[k]] for k in ("mean", "std")}


def recorded_identity(attrs: dict) -> dict[str, Any]:
    """The identity fields of the store whose root attributes are ``attrs``, named like
    :meth:`ExtractConfig.identity` (``normalize``: the ``{"mean", "std"}`` the store records)."""
    recorded: dict[str, Any] = {}
    for name, keys in _STORE_IDENTITY.items():
        value: Any = attrs
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        recorded[name] = value
    recorded["layers"] = list(recorded["layers"])
    recorded["normalize"] = _float_normalization(recorded["normalize"])
    recorded["samples_per_chunk"] = int(recorded["samples_per_chunk"])
    return recorded


def _mismatch(out: Path, name: str, stored, given, config: ExtractConfig) -> str:
    """The one-line refusal of a call whose identity field ``name`` differs from the store's."""
    flag = arg(name)
    if name == "layers":
        return (
            f"{arg('out', out)}: existing store has layers {', '.join(stored)}, this call"
            f" {', '.join(given)}; pass the same {arg('layers')} options, or choose a new"
            f" {arg('out')}."
        )
    if name == "samples_per_chunk":
        return (
            f"{arg('samples_per_chunk', config.samples_per_chunk)}: the existing store {out} has"
            f" {stored} samples per chunk; drop {arg('samples_per_chunk')} or choose a new"
            f" {arg('out')}."
        )
    if name in ("probe_seed", "per_class", "max_samples"):
        shown, now = ("all" if v is None else v for v in (stored, given))
        return (
            f"{arg('out', out)}: existing store was extracted with {flag} {shown}, this call {now};"
            f" pass the same {flag}, or choose a new {arg('out')}."
        )
    what, hint = {
        "arch": ("architecture", f"pass the same series/{arg('arch')}"),
        "input_size": ("input size", f"pass {arg('input_size', stored)}"),
        "normalize": ("normalization", "use the same series"),
        "dtype": ("dtype", f"pass {arg('dtype', stored)}"),
    }[name]
    return (
        f"{arg('out', out)}: existing store has {what} {stored}, this call {given}; {hint}, or"
        f" choose a new {arg('out')}."
    )


def _check_store(
    out: Path, attrs: dict, given: dict[str, Any], config: ExtractConfig, probe: dict
) -> None:
    """Refuse a call that does not describe the store ``out`` (identity fields in
    :data:`_STORE_IDENTITY`
    order, then the probe images); ``samples_per_chunk`` left None takes the store's."""
    recorded = recorded_identity(attrs)
    for name in _STORE_IDENTITY:
        if name == "samples_per_chunk" and given[name] is None:
            continue
        if recorded[name] != given[name]:
            raise FtdynError(_mismatch(out, name, recorded[name], given[name], config))
    if attrs["probe"].get("fingerprint") != probe["fingerprint"]:
        raise FtdynError(
            f"{arg('out', out)}: the probe images differ from the store's (fingerprint mismatch:"
            f" other images in {arg('data', probe['data_dir'])} or changed files); use the same"
            f" {arg('data')}, or choose a new {arg('out')}."
        )
    if attrs.get("codec", "zstd") != config.codec:  # values do not depend on it: keep the store's
        warnings.warn(
            f"{arg('codec', config.codec)} ignored: the existing store {out} is compressed with "
            f"{attrs.get('codec', 'zstd')}.",
            FtdynWarning,
        )


def _reconcile(
    out: Path, attrs: dict, done: np.ndarray, entries: list, series: Path
) -> tuple[list[dict], list]:
    """Match the series with the store's checkpoints: (the store's records, where a file changed
    before any of its activations were written is taken as it is now; the entries to append)."""
    known = [dict(rec) for rec in attrs["checkpoints"]]
    index = {int(c["epoch"]): i for i, c in enumerate(known)}
    by_epoch = {int(e.epoch): e for e in entries}
    replaced = []
    for i, rec in enumerate(known):
        epoch = int(rec["epoch"])
        entry = by_epoch.get(epoch)
        if entry is None:
            if not done[i].all():
                raise FtdynError(
                    f"{arg('out', out)}: checkpoint epoch {epoch} ({rec['file']}) is not fully"
                    f" extracted and is no longer in {series}; restore the file, or choose a new"
                    f" {arg('out')}."
                )
            continue
        if entry.sha256 != rec.get("sha256") or (
            entry.sha256 is None and entry.label != rec.get("file")
        ):
            if not done[
                i
            ].any():  # nothing of it stored yet (e.g. the file was broken and has been fixed)
                known[i] = _entry_record(entry)
                replaced.append(entry.label)
                continue
            raise FtdynError(
                f"{arg('out', out)}: epoch {epoch} is {entry.label} (sha256"
                f" {str(entry.sha256)[:12]}) but the store holds {rec['file']} (sha256"
                f" {str(rec.get('sha256'))[:12]}) for it; pass the same series and {arg('source')},"
                f" or choose a new {arg('out')}."
            )
    if replaced:
        warnings.warn(
            f"{arg('out', out)}: {', '.join(replaced)} changed since the store was created, before"
            " any of its activations were written; using the new file(s).",
            FtdynWarning,
        )
    last = max(index)
    new = [e for e in entries if int(e.epoch) not in index]
    early = [e for e in new if int(e.epoch) < last]
    if early:
        names = ", ".join(f"epoch {e.epoch} ({e.label})" for e in early[:4])
        raise FtdynError(
            f"{arg('out', out)}: {names} would have to be inserted before the store's last epoch"
            f" {last}; a store can only be extended with later epochs: choose a new {arg('out')}."
        )
    return known, new


# ------------------------------------------------------------------------ writing


class _Writers:
    """Writer threads with a bounded number of regions in flight (backpressure)."""

    def __init__(self, writer, n_threads: int, on_done):
        self.writer = writer
        self.pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="ftdyn-writer")
        self.slots = threading.BoundedSemaphore(n_threads + 2)  # regions queued or being written
        self.on_done = on_done
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def submit(self, ci: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        self.raise_if_failed()
        self.slots.acquire()
        try:
            future = self.pool.submit(_write_checked, self.writer, ci, chunk, arrays)
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
            if isinstance(exc, FtdynError) or isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
                # a full disk: folder_lock's disk_errors names the file that could not be written
                raise exc
            raise FtdynError(
                f"{arg('out', self.writer.path)}: writing a region failed ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); fix the cause (disk space?) and re-run to "
                "resume."
            ) from exc

    def close(self, *, cancel: bool) -> None:
        self.pool.shutdown(wait=True, cancel_futures=cancel)


# ------------------------------------------------------------------------ the plan


@dataclass(frozen=True, eq=False)
class Network:
    """The model side of a plan: the series, the model built for it and the layers it captures.

    ``model`` holds the first checkpoint (loaded while planning, so a wrong ``--arch`` stops the
    run before anything is written); ``num_classes`` is None for a third-party series until the
    store's class count is read from its last checkpoint.
    """

    arch: str  # canonical
    manifest: dict | None  # the series' manifest.json (None: a third-party series)
    entries: (
        tuple  # the series' checkpoints (:class:`~ftdyn.checkpoints.CheckpointEntry`), epoch order
    )
    model: torch.nn.Module
    num_classes: int | None
    input_size: int
    normalization: dict[str, list[float]]
    normalized_by: str  # where the normalization comes from (recorded in the store)
    layers: tuple[str, ...]
    channels_last: frozenset[
        str
    ]  # layers whose outputs are transposed to channels-first when captured
    shapes: dict[str, tuple[int, int, int]]  # layer -> (channels, height, width)


@dataclass(frozen=True, eq=False)
class Probe:
    """The probe set: images after resize/crop (uint8, n×H×W×3), labels (n,), class names and
    image files, and ``record``, the store's ``probe`` attribute (how they were chosen,
    fingerprint).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]
    record: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class Replay:
    """One checkpoint to run: its position in the series, its index in the store and the sample
    chunks of the store it still lacks (its regions to write)."""

    position: int
    index: int
    chunks: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class ExtractPlan:
    """What :func:`execute` will do, decided before anything is written.

    ``spec`` is the store to create (None: ``out`` is an existing store, resumed or extended).
    ``stored`` are the store's checkpoint records when :func:`execute` opens it (for a new store:
    all of ``records``), ``records`` the records once this run has replaced files changed before
    any of their activations were written and appended new, later epochs. ``done`` marks the
    (checkpoint, chunk) regions already complete (rows of ``records``); ``replays`` are the
    checkpoints with regions left to write, ``batches`` the fixed partition of the probe images
    into forward passes, ``writers`` the writer threads (at most ``writers + 2`` regions in
    flight). ``states``: checkpoint weights read while planning, by series position (``execute``
    uses them up, so a plan is carried out once).
    """

    config: ExtractConfig  # validated, as given
    series: Path
    data_dir: Path
    out: Path
    device: torch.device
    network: Network
    probe: Probe
    loading: _Loading
    spec: StoreSpec | None
    stored: tuple[dict, ...]
    records: tuple[dict, ...]
    samples_per_chunk: int
    done: np.ndarray
    replays: tuple[Replay, ...]
    batches: tuple[Batch, ...]
    writers: int
    states: dict[int, Any] = field(default_factory=dict)

    @property
    def new_records(self) -> tuple[dict, ...]:
        """Records of the checkpoints this run appends to an existing store."""
        return self.records[len(self.stored) :]

    def identity(self) -> dict[str, Any]:
        """The config's identity with the values the plan resolved from the series, model
        and probe."""
        return _identity(self.config, self.network, self.probe)


def _identity(config: ExtractConfig, network: Network, probe: Probe) -> dict[str, Any]:
    given = config.samples_per_chunk
    return {
        **config.identity(),
        "arch": network.arch,
        "layers": list(network.layers),
        "input_size": network.input_size,
        "normalize": _float_normalization(network.normalization),
        "samples_per_chunk": None if given is None else min(given, probe.n),
    }


def make_config(config: ExtractConfig | None = None, **options: Any) -> ExtractConfig:
    """``config`` with ``options`` applied, or a new :class:`ExtractConfig` from ``options``."""
    return (
        ExtractConfig(**options)
        if config is None
        else config.replace(**options)
        if options
        else config
    )


def _plan_network(series: Path, config: ExtractConfig) -> Network:
    """The series, its architecture, input size and normalization, and the layers' shapes."""
    arch, manifest, entries = _resolve_series(
        series, config.arch, config.source, config.trust_checkpoint
    )
    model = build_model(arch)
    if manifest is not None:
        if config.normalize is not None:
            raise FtdynError(
                f"{arg('normalize')}: {series} is an ftdyn series whose manifest.json records its"
                f" normalization; drop {arg('normalize')}."
            )
        if config.input_size is not None and config.input_size != int(manifest["input_size"]):
            raise FtdynError(
                f"{arg('input_size', config.input_size)}: the series {series} was trained at"
                f" {manifest['input_size']} px; extract at that size (leave {arg('input_size')}"
                " out)."
            )
        num_classes = int(manifest["num_classes"])
        size = int(config.input_size or manifest["input_size"])
        normalization = _float_normalization(manifest["normalization"])
        normalized_by = "manifest.json"
    else:
        num_classes = None
        size = int(config.input_size or 224)
        normalization, normalized_by = (
            (parse_normalize(config.normalize), "--normalize")
            if config.normalize
            else default_normalization(model, arch, origin=True)
        )
    if num_classes is not None:
        replace_head(model, num_classes)
    layers = validate_layers(
        model, list(config.layers) if config.layers else default_layers(model, arch, size)
    )
    channels_last = channels_last_layers(model, layers, size)
    shapes = _layer_shapes(model, layers, size, channels_last)
    return Network(
        arch,
        manifest,
        tuple(entries),
        model,
        num_classes,
        size,
        normalization,
        normalized_by,
        tuple(layers),
        channels_last,
        shapes,
    )


def _plan_probe(data_dir: Path, config: ExtractConfig, network: Network) -> Probe:
    """The probe images (loaded and resized once), with notes on what was skipped or rescaled."""
    splits = [s for s in ("val", "test", "train") if (data_dir / s).is_dir()]
    if len(splits) >= 2:  # a dataset root: its splits would be taken for classes
        raise FtdynError(
            f"{arg('data')}: {data_dir} holds the splits {', '.join(s + '/' for s in splits)} of a"
            f" dataset; pass one of them, e.g. {arg('data')} {data_dir / splits[0]}."
        )
    folder = data_mod.scan_image_folder(data_dir, flag=arg("data"))
    for note in (
        data_mod.skipped_message(folder.skipped),
        data_mod.ignored_message(folder.ignored),
    ):
        if note:
            warnings.warn(f"{arg('data')}: {note}", FtdynWarning)
    if folder.rescaled:
        warnings.warn(f"{arg('data')}: {data_mod.rescaled_message(folder.rescaled)}", FtdynWarning)
    chosen = data_mod.select_probe(
        folder, per_class=config.per_class, max_samples=config.max_samples, seed=config.probe_seed
    )
    n = len(chosen)
    if n < 2:  # one image has no variance: every distance would be undefined
        raise FtdynError(
            f"{arg('data')}/{arg('per_class')}/{arg('max_samples')}: the probe set has {n} image;"
            " the similarity metrics need at least 2 (hundreds for stable values)."
        )
    workers_io = min(8, os.cpu_count() or 1) if n >= 512 else 0
    images = data_mod.load_images(chosen, network.input_size, num_workers=workers_io)
    labels = np.asarray(chosen.labels, dtype=np.int64)
    manifest = network.manifest
    if manifest is not None and list(manifest["classes"]) != list(chosen.classes):
        warnings.warn(
            f"{arg('data')}: its classes ({', '.join(chosen.classes[:5])}...) differ from the"
            f" series' classes ({', '.join(map(str, manifest['classes'][:5]))}...); labels are the"
            " probe folder's.",
            FtdynWarning,
        )
    record = {
        "seed": config.probe_seed,
        "per_class": config.per_class,
        "max_samples": config.max_samples,
        "data_dir": str(data_dir.resolve()),
        "n_samples": n,
        "n_classes": len(chosen.classes),
        "skipped_unreadable": len(folder.skipped),
        "fingerprint": probe_fingerprint(images, labels, chosen.classes),
    }
    return Probe(images, labels, list(chosen.classes), [str(p) for p in chosen.paths], record)


@dataclass(frozen=True, eq=False)
class _StorePlan:
    """The store side of a plan (the fields of the same names in :class:`ExtractPlan`)."""

    spec: StoreSpec | None
    stored: tuple[dict, ...]
    records: tuple[dict, ...]
    samples_per_chunk: int
    done: np.ndarray


def _plan_new_store(
    config: ExtractConfig,
    series: Path,
    data_dir: Path,
    network: Network,
    probe: Probe,
    loading: _Loading,
    states: dict[int, Any],
) -> _StorePlan:
    """The store to create: every checkpoint is loaded once first (a file that does not fit stops
    the run before anything is written)."""
    model, entries, num_classes = network.model, list(network.entries), network.num_classes
    if num_classes is None:  # third-party: the class count of the fine-tuned (last) checkpoint
        last = len(entries) - 1
        if last not in states:
            states[last] = _load_state(entries[last], loading)
        num_classes = (
            infer_num_classes(states[last].state, model, state_prefix=states[last].prefix)
            if states[last] is not None
            else None
        )
    copies = _check_loadable(model, entries, range(len(entries)), states, loading)
    records = [_entry_record(e, copies[i]) for i, e in enumerate(entries)]
    fields = _receptive_fields(model, list(network.layers), network.input_size)
    manifest = network.manifest
    spec = StoreSpec(
        architecture=network.arch,
        layers=[
            LayerSpec(name, *network.shapes[name], receptive_field=fields[name])
            for name in network.layers
        ],
        checkpoints=records,
        images=probe.images,
        labels=probe.labels,
        class_names=probe.class_names,
        image_paths=probe.paths,
        input_size=network.input_size,
        normalization=network.normalization,
        probe=probe.record,
        model=config.model_name or (manifest or {}).get("model_name") or network.arch,
        dataset=config.dataset_name or _dataset_name(manifest, data_dir),
        num_classes=num_classes,
        dtype=config.dtype,
        codec=config.codec,
        samples_per_chunk=config.samples_per_chunk,
        manifest=manifest,
        extra_attrs={
            "series": str(series.resolve()),
            "source": None if config.source is None else str(config.source),
            "normalization_from": network.normalized_by,
            "weights_copy": config.weights_copy,
            "runs": [],
        },
    )
    spc = spec.chunk_samples()
    done = np.zeros((len(records), math.ceil(probe.n / spc)), dtype=bool)
    return _StorePlan(spec, tuple(records), tuple(records), spc, done)


def _plan_existing_store(
    config: ExtractConfig,
    series: Path,
    out: Path,
    network: Network,
    probe: Probe,
    loading: _Loading,
    states: dict[int, Any],
) -> _StorePlan:
    """The store ``out`` as it is (read only): the call must describe it; new, later checkpoints
    are loaded once before they are appended."""
    attrs, done = planned_regions(out)
    _check_store(out, attrs, _identity(config, network, probe), config, probe.record)
    entries = list(network.entries)
    known, new = _reconcile(out, attrs, done, entries, series)
    if new:
        positions = [entries.index(e) for e in new]
        copies = _check_loadable(network.model, entries, positions, states, loading)
        known += [_entry_record(entries[p], copies[p]) for p in positions]
        done = np.concatenate([done, np.zeros((len(new), done.shape[1]), dtype=bool)])
    stored = tuple(dict(c) for c in attrs["checkpoints"])
    return _StorePlan(None, stored, tuple(known), int(attrs["samples_per_chunk"]), done)


def _replays(entries, records, done: np.ndarray) -> tuple[Replay, ...]:
    """The checkpoints of the series with regions not yet done, in series order."""
    index = {int(r["epoch"]): i for i, r in enumerate(records)}
    replays = []
    for position, entry in enumerate(entries):
        ci = index[int(entry.epoch)]
        chunks = tuple(int(c) for c in np.flatnonzero(~done[ci]))
        if chunks:
            replays.append(Replay(position, ci, chunks))
    return tuple(replays)


def make_plan(
    series: str | os.PathLike,
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: ExtractConfig | None = None,
    **options: Any,
) -> ExtractPlan:
    """Validate the arguments of :func:`extract`, read the series, the probe images and the store
    ``out`` if it exists, and return what :func:`execute` will do. Writes nothing; builds the
    model and loads the checkpoints that must be checked before a store is created or extended."""
    config = make_config(config, **options)
    series, data_dir, out = Path(series), Path(data), Path(out)
    if not data_dir.exists():
        raise FtdynError(f"{arg('data')}: folder '{data_dir}' does not exist.")
    check_output_folder(out, inputs=[data_dir, series], may_be_store=True)
    device = resolve_device(config.device)
    network = _plan_network(series, config)
    probe = _plan_probe(data_dir, config, network)
    loading = _Loading(
        network.arch,
        config.trust_checkpoint,
        adapt_head=network.manifest is None,
        state_prefix=config.state_prefix,
        weights_copy=config.weights_copy,
        has_source=config.source is not None,
    )
    first = network.entries[0]  # loaded now: validates --arch before anything is written
    states: dict[int, Any] = {0: _load_state(first, loading)}
    _apply_state(network.model, first, states[0], loading)
    # an empty folder: made for the store
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        store = _plan_new_store(config, series, data_dir, network, probe, loading, states)
    elif not out.is_dir():
        raise FtdynError(
            f"{arg('out', out)}: exists and is not a store folder; choose another {arg('out')}."
        )
    else:
        store = _plan_existing_store(config, series, out, network, probe, loading, states)
    replays = _replays(network.entries, store.records, store.done)
    needed = {r.position for r in replays}
    # loaded while planning, needed again
    return ExtractPlan(
        config=config,
        series=series,
        data_dir=data_dir,
        out=out,
        device=device,
        network=network,
        probe=probe,
        loading=loading,
        spec=store.spec,
        stored=store.stored,
        records=store.records,
        samples_per_chunk=store.samples_per_chunk,
        done=store.done,
        replays=replays,
        batches=tuple(batch_plan(probe.n, store.samples_per_chunk, config.batch_size)),
        writers=default_writers() if config.writers is None else config.writers,
        states={p: s for p, s in states.items() if p in needed},
    )


# ------------------------------------------------------------------------ execute


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
    if plan.spec is not None:
        if out.exists():
            out.rmdir()  # an empty folder made for the store: create the store in its place
        create_store(out, plan.spec)
    with folder_lock(out):
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
        devices = {str(r.get("device", "")).split(":")[0] for r in writer.attrs.get("runs") or []}
        if devices - {plan.device.type}:
            warnings.warn(
                f"{arg('out', out)}: earlier regions were computed on {', '.join(sorted(devices))},"
                f" these on {plan.device.type}; the last bits of the values may differ between"
                " devices.",
                FtdynWarning,
            )
        if plan.new_records:
            epochs = ", ".join(f"epoch {r['epoch']}" for r in plan.new_records)
            stage(f"{out}: extending with {len(plan.new_records)} new checkpoint(s): {epochs}.")
        stats = _replay(plan, writer, replays)
        rate = _record_run(plan, writer, stats)
        if config.random_init_baseline:
            _extract_random_init(plan, writer)
    elapsed = time.perf_counter() - started
    stage(
        f"{out}: {stats['regions']} regions of {len(replays)} checkpoint(s) written, {plan.probe.n}"
        f" samples x {len(plan.network.layers)} layers; {human_bytes(dir_size(out))} on disk;"
        f" {rate:.1f} images/s on {plan.device} ({elapsed:.1f} s in all)."
    )
    return out


def _update_store(plan: ExtractPlan, writer: StoreWriter) -> tuple[Replay, ...]:
    """Give the store the plan's checkpoint records (files replaced, later epochs appended) and
    return the plan's replays without regions another run finished since it was planned."""
    if [dict(c) for c in writer.attrs["checkpoints"]] != list(plan.stored):
        raise FtdynError(
            f"{arg('out', plan.out)}: another `ftdyn extract` changed this store while this one was"
            " starting; re-run the same command."
        )
    known = [dict(r) for r in plan.records[: len(plan.stored)]]
    if known != list(plan.stored):
        writer.group.attrs["checkpoints"] = known
        writer.attrs["checkpoints"] = known
    if plan.new_records:
        writer.append_checkpoints([dict(r) for r in plan.new_records])
        if plan.network.manifest is not None:
            writer.group.attrs["manifest"] = plan.network.manifest
            writer.attrs["manifest"] = plan.network.manifest
    done = writer.done()
    replays = [
        Replay(r.position, r.index, tuple(c for c in r.chunks if not done[r.index, c]))
        for r in plan.replays
    ]
    return tuple(r for r in replays if r.chunks)


def _record_run(plan: ExtractPlan, writer: StoreWriter, stats: dict[str, float]) -> float:
    """Append this run's provenance (which device wrote, how fast) to the store; returns
    images/s."""
    rate = stats["images"] / stats["seconds"] if stats["seconds"] > 0 else float("nan")
    run = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(plan.device),
        "torch": torch.__version__,
        "ftdyn": __version__,
        "regions": stats["regions"],
        "images": stats["images"],
        "seconds": round(stats["seconds"], 3),
        "images_per_s": round(rate, 2),
        "batch_size": plan.config.batch_size,
        "writers": plan.writers,
    }
    writer.group.attrs["runs"] = list(writer.attrs.get("runs") or []) + [run]
    return rate


def _replay(
    plan: ExtractPlan, writer: StoreWriter, replays: tuple[Replay, ...]
) -> dict[str, float]:
    """:func:`_run`, with its errors in one line that says the store keeps what was finished."""
    try:
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
                plan.network.channels_last,
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


def _extract_random_init(plan: ExtractPlan, writer: StoreWriter) -> None:
    """The random-init baseline: a seeded fresh architecture (head sized like the store's) replayed
    on the probe images; chunks already written by an interrupted run are kept."""
    out, seed, network = plan.out, plan.config.random_init_seed, plan.network
    done = add_random_init(
        out,
        seed=seed,
        architecture=network.arch,
        init=f"torch.manual_seed({seed}); the architecture's default constructor (own init)",
    )
    if done.all():
        return
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        model = build_model(network.arch, num_classes=writer.attrs.get("num_classes"))
    model.to(plan.device).eval()
    layers = list(network.layers)
    capture = LayerCapture(
        model, layers, dtype=DTYPES[plan.config.dtype], channels_last=network.channels_last
    )
    mean, std = network.normalization["mean"], network.normalization["std"]
    images, batch_size = plan.probe.images, plan.config.batch_size
    try:
        with torch.inference_mode(), full_precision():
            for chunk in np.flatnonzero(~done):
                rows = writer.chunk_slice(int(chunk))
                parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
                for start in range(rows.start, rows.stop, batch_size):
                    stop = min(start + batch_size, rows.stop)
                    x = torch.from_numpy(images[start:stop]).permute(0, 3, 1, 2).to(plan.device)
                    model(data_mod.normalize(x, mean, std))
                    for name, t in capture.pop().items():
                        parts[name].append(t.cpu().numpy())
                arrays = {name: np.concatenate(p) for name, p in parts.items()}
                bad = [name for name, a in arrays.items() if not all_finite(a)]
                if bad:
                    raise FtdynError(
                        f"{arg('random_init_baseline')}: the random network gave non-finite"
                        f" activations at {', '.join(bad)} (float16 overflow?); re-extract with"
                        f" {arg('dtype')} float32."
                    )
                write_random_init(out, int(chunk), arrays)
    finally:
        capture.close()
    stage(f"{out}: random-init baseline (seed {seed}) written.")


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
        channels_last=network.channels_last,
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


extract.__doc__ += "\n    Options (:class:`~ftdyn.config.ExtractConfig`):\n\n" + "\n".join(
    f"    * {line}" for line in describe(ExtractConfig).splitlines()
)
