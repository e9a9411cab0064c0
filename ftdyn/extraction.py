"""Replay a checkpoint series on a fixed probe set into an activation store.

:func:`extract` (``ftdyn extract``) loads every checkpoint of a series into *one*
model instance, runs the same probe images through it and writes the chosen
layers' activations into the Zarr store defined by :mod:`ftdyn.store`.

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

import hashlib
import math
import logging
import os
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ._version import __version__
from .devices import fastest_memory_format, resolve_device
from .errors import FtdynError, FtdynWarning, check_output_folder
from .progress import progress_bar, stage

DTYPES = {"float16": torch.float16, "float32": torch.float32}
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
    """The store's record of a checkpoint; ``copy``: which weights of the file were read (:func:`_apply_state`)."""
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
    return folder.parent.name if folder.name.lower() in _VAL_NAMES and folder.parent.name else folder.name


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


@contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on the store folder, so two runs never fill one store."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FtdynError(f"--out {path}: another `ftdyn extract` is writing to this store; "
                             "wait for it to finish or choose another --out.") from None
        yield
    finally:
        os.close(fd)


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
        raise FtdynError(f"--normalize {text}: give MEAN,STD (e.g. 0.5,0.5) or three means and three stds "
                         "(e.g. 0.485,0.456,0.406,0.229,0.224,0.225); stds must be positive.")
    return {"mean": values[:3], "std": values[3:]}


def _resolve_series(series: Path, arch: str | None, source, trust: bool):
    from .checkpoints import checkpoint_files, discover_series, read_manifest
    from .models import canonical_arch

    manifest = read_manifest(series) if series.is_dir() else None
    if manifest is None:
        if series.is_dir() and arch is None and checkpoint_files(series):
            raise FtdynError(f"--arch: {series} is not an ftdyn series (no manifest.json); name the architecture "
                             "of its checkpoints with --arch (e.g. --arch resnet50).")
        if arch is not None:
            arch = canonical_arch(arch)
        entries = discover_series(series, source=source, trust=trust, arch=arch)
        if arch is None:  # pragma: no cover - discover_series raised for an empty folder
            raise FtdynError(f"--arch: {series} has no manifest.json; pass --arch.")
        return arch, None, entries
    series_arch = canonical_arch(manifest["architecture"])
    if arch is not None and canonical_arch(arch) != series_arch:
        raise FtdynError(f"--arch {arch}: the series {series} was trained as {series_arch} (manifest.json); "
                         "drop --arch.")
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
    has_source: bool = False  # epoch 0 is a --source (read as its main copy, a --state-prefix optional)


def _is_source(entry, loading: _Loading) -> bool:
    return loading.has_source and int(entry.epoch) == 0


def _load_state(entry, loading: _Loading):
    """:class:`~ftdyn.checkpoints.Weights` of a file entry (None for a zoo weights name, loaded later);
    a file holding NaN/inf weights is refused here, before anything is extracted from it."""
    from .checkpoints import read_weights

    if entry.path is None:
        return None
    copy = "main" if _is_source(entry, loading) else loading.weights_copy
    weights = read_weights(entry.path, trust=loading.trust, copy=copy, state_prefix=loading.state_prefix)
    _check_finite_weights(weights.state, entry.path)
    return weights

def _check_finite_weights(state, path) -> None:
    """One line naming the file and the first tensor with NaN/inf values (a diverged run)."""
    for name, tensor in (state or {}).items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise FtdynError(f"{path}: tensor '{name}' holds {bad} NaN/inf value(s) of {tensor.numel()} (a diverged "
                             "checkpoint); its activations would be meaningless: leave this file out of the series "
                             "(or end the series before it).")


class NonFiniteActivations(FtdynError):
    """A region whose activations are not all finite: it is never written or marked complete.
    ``text(peak)`` adds the true largest magnitude once it has been measured in float32."""

    def __init__(self, where: str, layer: str, ci: int, rows: slice, n_bad: int, largest: float, overflow: bool):
        self.where, self.layer, self.ci, self.rows = where, layer, ci, rows
        self.n_bad, self.largest, self.overflow = n_bad, largest, overflow
        super().__init__(self.text())

    def text(self, peak: float | None = None) -> str:
        if self.overflow:
            seen = (f"largest magnitude {peak:.4g}, measured in float32" if peak is not None
                    else f"largest finite magnitude {self.largest:.4g}")
            return (f"{self.where}: {self.n_bad} activation(s) exceed float16's range (|x| > 65504; {seen}); store "
                    "this series in float32: run again with --dtype float32 and a new --out (this store is float16).")
        return (f"{self.where}: the network produced {self.n_bad} NaN/inf activation(s) (largest finite magnitude "
                f"{self.largest:.4g}; a diverged checkpoint?); leave that checkpoint out of the series.")


def _check_region(writer, ci: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
    """Refuse a region holding NaN/inf (float16 overflow, or NaN from the network) before it is
    written, naming the layer, the epoch and the samples."""
    from .store import all_finite

    for layer, arr in arrays.items():
        if all_finite(arr):
            continue
        finite = np.isfinite(arr)
        epoch = writer.attrs["checkpoints"][ci]["epoch"]
        rows = writer.chunk_slice(chunk)
        n_inf = int(np.isinf(arr).sum())
        largest = float(np.abs(arr[finite]).max()) if finite.any() else float("nan")
        where = f"--out {writer.path}: layer {layer}, epoch {epoch}, samples {rows.start}-{rows.stop - 1}"
        overflow = bool(n_inf) and arr.dtype == np.float16
        raise NonFiniteActivations(where, layer, ci, rows, n_inf if overflow else arr.size - int(finite.sum()),
                                   largest, overflow)


def _float32_peak(model, entry, loading: _Loading, exc: NonFiniteActivations, images: np.ndarray,
                  normalization, channels_last: frozenset[str], dev: torch.device, batch_size: int) -> float | None:
    """The true largest |activation| of the region that overflowed float16: the checkpoint is
    loaded again and that region's images run once more with the layer captured in float32.
    Only to complete the error message: any failure here gives None (the message then says
    the largest finite float16 value)."""
    from .data import normalize
    from .models import LayerCapture

    try:
        _apply_state(model, entry, _load_state(entry, loading), loading)
        model.to(dev).eval()
        peak = 0.0
        with LayerCapture(model, [exc.layer], dtype=torch.float32, channels_last=channels_last) as capture, \
                torch.inference_mode(), full_precision():
            for start in range(exc.rows.start, exc.rows.stop, batch_size):
                batch = torch.from_numpy(images[start:min(start + batch_size, exc.rows.stop)]).permute(0, 3, 1, 2)
                model(normalize(batch.to(dev), normalization["mean"], normalization["std"]))
                peak = max(peak, float(capture.pop()[exc.layer].abs().amax()))
        return peak
    except Exception:  # noqa: BLE001 - a best-effort detail of an error already being reported
        return None


def _write_checked(writer, ci: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
    _check_region(writer, ci, chunk, arrays)
    writer.write_region(ci, chunk, arrays)


def _apply_state(model, entry, weights, loading: _Loading) -> dict[str, str]:
    """Load an entry into ``model``; returns which copy it gave: ``{"weights": top-level key or "file",
    "key_prefix": the prefix stripped from its keys}`` (recorded in the store)."""
    from .checkpoints import load_source_weights, load_state_into_model

    if weights is None:
        load_source_weights(model, entry, arch=loading.arch, trust=loading.trust, adapt_head=loading.adapt_head,
                            state_prefix=loading.state_prefix)
        return {"weights": "zoo", "key_prefix": ""}
    prefix = load_state_into_model(model, weights.state, source=str(entry.path), adapt_head=loading.adapt_head,
                                   arch=loading.arch, state_prefix=weights.prefix,
                                   optional_prefix=_is_source(entry, loading))
    return {"weights": weights.key or "file", "key_prefix": prefix}


def _check_loadable(model, entries, positions, cache: dict, loading: _Loading) -> dict[int, dict[str, str]]:
    """Load the checkpoints at ``positions`` into a scratch copy of ``model`` before the store
    is created or extended, so that a file that does not fit (another architecture, missing
    keys, no weights at all) stops the run before anything is written, not half-way.
    Costs one more read of each file; states already in ``cache`` are reused. Returns which
    copy each gave (:func:`_apply_state`) and notes a classifier head whose class count changes
    inside the series (the source's own head aside)."""
    import copy

    from .models import num_classes_of

    scratch = copy.deepcopy(model)
    copies, classes = {}, {}
    for pos in positions:
        state = cache[pos] if pos in cache else _load_state(entries[pos], loading)
        copies[pos] = _apply_state(scratch, entries[pos], state, loading)
        if not _is_source(entries[pos], loading):
            classes[int(entries[pos].epoch)] = num_classes_of(scratch)
    if loading.adapt_head and len(set(classes.values())) > 1:
        shown = ", ".join(f"epoch {e}: {n}" for e, n in sorted(classes.items()))
        log.info(f"the classifier head changes its class count inside the series ({shown} classes); "
                 "each checkpoint is loaded with its own head (heads are not captured).")
    return copies


def _layer_shapes(model: torch.nn.Module, layers: list[str], input_size: int,
                  channels_last: frozenset[str]) -> dict[str, tuple[int, int, int]]:
    from .models import LayerCapture, blank_forward

    with LayerCapture(model, layers, channels_last=channels_last) as capture:
        blank_forward(model, input_size)
        outputs = capture.pop()
    shapes = {}
    for name, out in outputs.items():
        if out.dim() != 4:
            raise FtdynError(f"--layer {name}: its output has shape {tuple(out.shape)}, not (batch, channel, y, x); "
                             "choose a convolutional layer (see `ftdyn layers ARCH`).")
        shapes[name] = tuple(int(s) for s in out.shape[1:])
    return shapes


def _receptive_fields(model, layers: list[str], input_size: int) -> dict[str, dict | None]:
    from .receptive import ReceptiveFieldError, receptive_fields

    try:
        fields = receptive_fields(model, layers, input_size)
        return {name: fields[name].to_dict() for name in layers}
    except ReceptiveFieldError as exc:
        warnings.warn(f"receptive fields are not available for this model ({exc}); the store and the analysis do "
                      "not need them, only class-based patches will be unavailable for this store.", FtdynWarning)
        return {name: None for name in layers}


# ------------------------------------------------------------------- resume checks


def _check_same(out: Path, what: str, store_value, call_value, hint: str) -> None:
    if store_value != call_value:
        raise FtdynError(f"--out {out}: existing store has {what} {store_value}, this call {call_value}; "
                         f"{hint}, or choose a new --out.")


def _reconcile(out: Path, writer, *, arch: str, layers: list[str], probe: dict, input_size: int,
               normalization: dict, dtype: str, codec: str, samples_per_chunk: int | None,
               entries: list, done: np.ndarray, series: Path) -> tuple[list, dict[int, int]]:
    """Check that this call matches the store; return (new entries to append, epoch -> store index)."""
    attrs = writer.attrs
    _check_same(out, "architecture", attrs["architecture"], arch, "pass the same series/--arch")
    if list(attrs["layers"]) != list(layers):
        raise FtdynError(f"--out {out}: existing store has layers {', '.join(attrs['layers'])}, this call "
                         f"{', '.join(layers)}; pass the same --layer options, or choose a new --out.")
    _check_same(out, "input size", attrs["input_size"], input_size, f"pass --input-size {attrs['input_size']}")
    norm = {k: [float(v) for v in normalization[k]] for k in ("mean", "std")}
    stored_norm = {k: [float(v) for v in attrs["normalization"][k]] for k in ("mean", "std")}
    _check_same(out, "normalization", stored_norm, norm, "use the same series")
    _check_same(out, "dtype", attrs["dtype"], dtype, f"pass --dtype {attrs['dtype']}")
    if attrs.get("codec", "zstd") != codec:  # values do not depend on it: keep the store's
        warnings.warn(f"--codec {codec} ignored: the existing store {out} is compressed with "
                      f"{attrs.get('codec', 'zstd')}.", FtdynWarning)
    if samples_per_chunk is not None and int(attrs["samples_per_chunk"]) != min(samples_per_chunk, probe["n_samples"]):
        raise FtdynError(f"--chunk-samples {samples_per_chunk}: the existing store {out} has "
                         f"{attrs['samples_per_chunk']} samples per chunk; drop --chunk-samples or choose a new --out.")
    old = attrs["probe"]
    for key, flag in (("seed", "--seed"), ("per_class", "--per-class"), ("max_samples", "--max-samples")):
        if old.get(key) != probe[key]:
            shown = "all" if old.get(key) is None else old.get(key)
            raise FtdynError(f"--out {out}: existing store was extracted with {flag} {shown}, this call "
                             f"{'all' if probe[key] is None else probe[key]}; pass the same {flag}, or choose a new --out.")
    if old.get("fingerprint") != probe["fingerprint"]:
        raise FtdynError(f"--out {out}: the probe images differ from the store's (fingerprint mismatch: other "
                         f"images in --data {probe['data_dir']} or changed files); use the same --data, or choose "
                         "a new --out.")

    known = [dict(rec) for rec in attrs["checkpoints"]]
    index = {int(c["epoch"]): i for i, c in enumerate(known)}
    by_epoch = {int(e.epoch): e for e in entries}
    replaced = []
    for i, rec in enumerate(known):
        epoch = int(rec["epoch"])
        entry = by_epoch.get(epoch)
        if entry is None:
            if not done[i].all():
                raise FtdynError(f"--out {out}: checkpoint epoch {epoch} ({rec['file']}) is not fully extracted and "
                                 f"is no longer in {series}; restore the file, or choose a new --out.")
            continue
        if entry.sha256 != rec.get("sha256") or (entry.sha256 is None and entry.label != rec.get("file")):
            if not done[i].any():  # nothing of it stored yet (e.g. the file was broken and has been fixed)
                known[i] = _entry_record(entry)
                replaced.append(entry.label)
                continue
            raise FtdynError(f"--out {out}: epoch {epoch} is {entry.label} (sha256 {str(entry.sha256)[:12]}) but the "
                             f"store holds {rec['file']} (sha256 {str(rec.get('sha256'))[:12]}) for it; pass the same "
                             "series and --source, or choose a new --out.")
    if replaced:
        warnings.warn(f"--out {out}: {', '.join(replaced)} changed since the store was created, before any of its "
                      "activations were written; using the new file(s).", FtdynWarning)
        writer.group.attrs["checkpoints"] = known
        writer.attrs["checkpoints"] = known
    last = max(index)
    new = [e for e in entries if int(e.epoch) not in index]
    early = [e for e in new if int(e.epoch) < last]
    if early:
        names = ", ".join(f"epoch {e.epoch} ({e.label})" for e in early[:4])
        raise FtdynError(f"--out {out}: {names} would have to be inserted before the store's last epoch {last}; "
                         "a store can only be extended with later epochs: choose a new --out.")
    return new, index


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
            if isinstance(exc, FtdynError):
                raise exc
            raise FtdynError(f"--out {self.writer.path}: writing a region failed ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); fix the cause (disk space?) and re-run to "
                             "resume.") from exc

    def close(self, *, cancel: bool) -> None:
        self.pool.shutdown(wait=True, cancel_futures=cancel)


# ------------------------------------------------------------------------ the API


def extract(series: str | os.PathLike, *, data: str | os.PathLike, out: str | os.PathLike,
            arch: str | None = None, source: str | os.PathLike | None = None, layers: list[str] | None = None,
            per_class: int | None = None, max_samples: int | None = None, probe_seed: int = 0,
            input_size: int | None = None, batch_size: int = 64, dtype: str = "float16", codec: str = "zstd",
            samples_per_chunk: int | None = None, device: str = "auto", trust_checkpoint: bool = False,
            model_name: str | None = None, dataset_name: str | None = None, writers: int | None = None,
            state_prefix: str | None = None, weights_copy: str = "main", normalize: str | None = None,
            progress: bool = True, random_init_baseline: bool = False, random_init_seed: int = 0) -> Path:
    """Replay every checkpoint of ``series`` on the probe images of ``data`` into the store ``out``.

    ``series``: a folder written by ``ftdyn train`` (its ``manifest.json`` gives the
    architecture, classes, input size and normalization, and is kept in the store's
    attrs), or a folder of third-party checkpoints (``.pt/.pth/.bin/.ckpt/.safetensors``;
    ``arch`` required; ``source`` = a checkpoint file or torchvision weights name that
    becomes epoch 0; input size 224 and ImageNet normalization unless given).

    ``data``: an ImageFolder; ``per_class`` / ``max_samples`` / ``probe_seed`` pick the
    probe set (:func:`ftdyn.data.select_probe`). ``layers``: module names (default:
    :func:`ftdyn.models.default_layers`). ``dtype`` float16|float32 and ``codec``
    zstd|lz4 of the stored activations; ``samples_per_chunk`` (default: ~32 MB chunks
    of the largest layer). ``device``: auto (CUDA when present), cpu, cuda, cuda:N.
    ``trust_checkpoint`` allows unpickling arbitrary objects (only for trusted files).
    ``state_prefix``: the key prefix (``"ema.module."``) or top-level entry (``"state_dict_ema"``)
    of the copy to load from files holding several copies of the model; ``weights_copy``
    ``"ema"`` reads every series file's EMA copy (see :func:`ftdyn.checkpoints.read_weights`);
    the store's ``checkpoints`` records say which copy each file gave. ``normalize``:
    ``"MEAN,STD"`` (one value each for all channels) or six values (three means, three
    stds) for a third-party series (default: the timm model's pretrained config, else
    ImageNet's), recorded in the store. ``random_init_baseline``: also extract a randomly
    initialized model of the same architecture (``torch.manual_seed(random_init_seed)``, then
    the architecture's default constructor, its head then resized to the store's classes) on the same probe images, stored beside the checkpoints and not as
    an epoch (:func:`ftdyn.store.add_random_init`): the ceiling of ``ftdyn analyze``'s relative
    distances. ``writers``: threads compressing and writing regions (default :func:`default_writers`:
    one per CPU core but one, 2 to 16).

    If ``out`` exists it is resumed/extended (see the module docstring); a complete
    store with no new checkpoint is left untouched. Returns the store path.
    """
    from . import data as data_mod
    from .models import build_model, channels_last_layers, default_layers, default_normalization, \
        replace_head, validate_layers
    from .store import CODECS, LayerSpec, StoreSpec, StoreWriter, create_store, dir_size

    started = time.perf_counter()
    series, data_dir, out = Path(series), Path(data), Path(out)
    if dtype not in DTYPES:
        raise FtdynError(f"--dtype: '{dtype}' is not supported; choose float16 or float32.")
    if codec not in CODECS:
        raise FtdynError(f"--codec: unknown codec '{codec}'; choose from {', '.join(CODECS)}.")
    writers = default_writers() if writers is None else writers
    for flag, value in (("--batch-size", batch_size), ("--writers", writers)):
        if int(value) < 1:
            raise FtdynError(f"{flag}: must be at least 1 (got {value}).")
    if samples_per_chunk is not None and samples_per_chunk < 1:
        raise FtdynError(f"--chunk-samples: must be at least 1 (got {samples_per_chunk}).")
    if input_size is not None and input_size < 8:
        raise FtdynError(f"--input-size: {input_size} is too small (at least 8 pixels).")
    if not data_dir.exists():
        raise FtdynError(f"--data: folder '{data_dir}' does not exist.")
    probe_seed = data_mod.check_seed(probe_seed)
    check_output_folder(out, inputs=[data_dir, series], may_be_store=True)
    dev = resolve_device(device)

    # -- the series and the model ------------------------------------------------------
    arch, manifest, entries = _resolve_series(series, arch, source, trust_checkpoint)
    model = build_model(arch)
    if manifest is not None:
        if normalize is not None:
            raise FtdynError(f"--normalize: {series} is an ftdyn series whose manifest.json records its normalization; "
                             "drop --normalize.")
        if input_size is not None and int(input_size) != int(manifest["input_size"]):
            raise FtdynError(f"--input-size {input_size}: the series {series} was trained at {manifest['input_size']} "
                             "px; extract at that size (leave --input-size out).")
        num_classes = int(manifest["num_classes"])
        size = int(input_size or manifest["input_size"])
        normalization = {"mean": [float(v) for v in manifest["normalization"]["mean"]],
                         "std": [float(v) for v in manifest["normalization"]["std"]]}
        normalized_by = "manifest.json"
    else:
        num_classes = None
        size = int(input_size or 224)
        normalization, normalized_by = ((parse_normalize(normalize), "--normalize") if normalize
                                        else default_normalization(model, arch, origin=True))
    if num_classes is not None:
        replace_head(model, num_classes)
    layer_names = validate_layers(model, list(layers) if layers else default_layers(model, arch, size))
    channels_last = channels_last_layers(model, layer_names, size)
    shapes = _layer_shapes(model, layer_names, size, channels_last)

    # -- the probe set ---------------------------------------------------------------
    splits = [s for s in ("val", "test", "train") if (data_dir / s).is_dir()]
    if len(splits) >= 2:  # a dataset root: its splits would be taken for classes
        raise FtdynError(f"--data: {data_dir} holds the splits {', '.join(s + '/' for s in splits)} of a dataset; "
                         f"pass one of them, e.g. --data {data_dir / splits[0]}.")
    folder = data_mod.scan_image_folder(data_dir, flag="--data")
    for note in (data_mod.skipped_message(folder.skipped), data_mod.ignored_message(folder.ignored)):
        if note:
            warnings.warn(f"--data: {note}", FtdynWarning)
    if folder.rescaled:
        warnings.warn(f"--data: {data_mod.rescaled_message(folder.rescaled)}", FtdynWarning)
    probe_data = data_mod.select_probe(folder, per_class=per_class, max_samples=max_samples, seed=probe_seed)
    n = len(probe_data)
    if n < 2:  # one image has no variance: every distance would be undefined
        raise FtdynError(f"--data/--per-class/--max-samples: the probe set has {n} image; the similarity metrics "
                         "need at least 2 (hundreds for stable values).")
    workers_io = min(8, os.cpu_count() or 1) if n >= 512 else 0
    images = data_mod.load_images(probe_data, size, num_workers=workers_io)
    labels = np.asarray(probe_data.labels, dtype=np.int64)
    if manifest is not None and list(manifest["classes"]) != list(probe_data.classes):
        warnings.warn(f"--data: its classes ({', '.join(probe_data.classes[:5])}...) differ from the series' classes "
                      f"({', '.join(map(str, manifest['classes'][:5]))}...); labels are the probe folder's.",
                      FtdynWarning)
    probe = {"seed": int(probe_seed), "per_class": per_class, "max_samples": max_samples,
             "data_dir": str(data_dir.resolve()), "n_samples": n, "n_classes": len(probe_data.classes),
             "skipped_unreadable": len(folder.skipped),
             "fingerprint": probe_fingerprint(images, labels, probe_data.classes)}

    # -- first checkpoint: validates --arch before anything is written -------------------
    loading = _Loading(arch, trust_checkpoint, adapt_head=manifest is None, state_prefix=state_prefix,
                       weights_copy=weights_copy, has_source=source is not None)
    cache: dict[int, Any] = {}
    first = entries[0]
    cache[0] = _load_state(first, loading)
    _apply_state(model, first, cache[0], loading)

    # -- create, or check and extend, the store ------------------------------------------
    dtype_t = DTYPES[dtype]
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder made for the store: create the store in its place
    if not out.exists():
        if num_classes is None:  # third-party: the class count of the fine-tuned (last) checkpoint
            from .checkpoints import infer_num_classes

            last = len(entries) - 1
            if last not in cache:
                cache[last] = _load_state(entries[last], loading)
            num_classes = (infer_num_classes(cache[last].state, model, state_prefix=cache[last].prefix)
                           if cache[last] is not None else None)
        copies = _check_loadable(model, entries, range(len(entries)), cache, loading)
        records = [_entry_record(e, copies[i]) for i, e in enumerate(entries)]
        fields = _receptive_fields(model, layer_names, size)
        spec = StoreSpec(
            architecture=arch,
            layers=[LayerSpec(name, *shapes[name], receptive_field=fields[name]) for name in layer_names],
            checkpoints=records, images=images, labels=labels, class_names=list(probe_data.classes),
            image_paths=[str(p) for p in probe_data.paths], input_size=size, normalization=normalization,
            probe=probe, model=model_name or (manifest or {}).get("model_name") or arch,
            dataset=dataset_name or _dataset_name(manifest, data_dir), num_classes=num_classes, dtype=dtype,
            codec=codec, samples_per_chunk=samples_per_chunk, manifest=manifest,
            extra_attrs={"series": str(series.resolve()), "source": None if source is None else str(source),
                         "normalization_from": normalized_by, "weights_copy": weights_copy, "runs": []})
        create_store(out, spec)
    elif not out.is_dir():
        raise FtdynError(f"--out {out}: exists and is not a store folder; choose another --out.")

    with _store_lock(out):
        writer = StoreWriter(out)
        done = writer.done()
        new, index = _reconcile(out, writer, arch=arch, layers=layer_names, probe=probe, input_size=size,
                                normalization=normalization, dtype=dtype, codec=codec,
                                samples_per_chunk=samples_per_chunk, entries=entries, done=done, series=series)
        if new:
            positions = [entries.index(e) for e in new]
            copies = _check_loadable(model, entries, positions, cache, loading)
            writer.append_checkpoints([_entry_record(entries[p], copies[p]) for p in positions])
            if manifest is not None:
                writer.group.attrs["manifest"] = manifest
                writer.attrs["manifest"] = manifest
            index = {int(c["epoch"]): i for i, c in enumerate(writer.attrs["checkpoints"])}
            done = writer.done()
        todo = []  # (entry position, store index, pending chunks)
        for pos, entry in enumerate(entries):
            ci = index[int(entry.epoch)]
            pending = [c for c in range(writer.n_chunks) if not done[ci, c]]
            if pending:
                todo.append((pos, ci, pending))
        for pos in [p for p in cache if p not in {t[0] for t in todo}]:
            del cache[pos]  # loaded during setup but already extracted
        if not todo:
            if random_init_baseline:
                _extract_random_init(out, writer, arch=arch, layers=layer_names, images=images,
                                     normalization=normalization, channels_last=channels_last, dev=dev,
                                     dtype_t=dtype_t, batch_size=int(batch_size), seed=random_init_seed)
            stage(f"{out}: complete ({len(writer.attrs['checkpoints'])} checkpoints x {n} samples); nothing to do.")
            return out
        devices = {str(r.get("device", "")).split(":")[0] for r in writer.attrs.get("runs") or []}
        if devices - {dev.type}:
            warnings.warn(f"--out {out}: earlier regions were computed on {', '.join(sorted(devices))}, these on "
                          f"{dev.type}; the last bits of the values may differ between devices.", FtdynWarning)
        if new:
            stage(f"{out}: extending with {len(new)} new checkpoint(s): "
                  f"{', '.join(f'epoch {e.epoch}' for e in new)}.")

        try:
            stats = _run(model, entries, todo, cache, writer=writer, images=images, normalization=normalization,
                         layers=layer_names, channels_last=channels_last, dev=dev, dtype_t=dtype_t,
                         batch_size=int(batch_size), n_writers=int(writers), loading=loading, progress=progress)
        except NonFiniteActivations as exc:  # the same command would meet them again
            epoch = writer.attrs["checkpoints"][exc.ci]["epoch"]
            peak = _float32_peak(model, next(e for e in entries if int(e.epoch) == epoch), loading, exc, images,
                                 normalization, channels_last, dev, int(batch_size)) if exc.overflow else None
            raise FtdynError(f"{exc.text(peak)} ({out} keeps the regions finished so far.)") from None
        except FtdynError as exc:
            raise FtdynError(f"{exc} ({out} keeps the checkpoints finished so far; fix the cause and re-run the same "
                             "command to resume.)") from None
        rate = stats["images"] / stats["seconds"] if stats["seconds"] > 0 else float("nan")
        run = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(dev), "torch": torch.__version__,
               "ftdyn": __version__, "regions": stats["regions"], "images": stats["images"],
               "seconds": round(stats["seconds"], 3), "images_per_s": round(rate, 2), "batch_size": int(batch_size),
               "writers": int(writers)}
        writer.group.attrs["runs"] = list(writer.attrs.get("runs") or []) + [run]  # provenance: which device wrote
        if random_init_baseline:
            _extract_random_init(out, writer, arch=arch, layers=layer_names, images=images,
                                 normalization=normalization, channels_last=channels_last, dev=dev,
                                 dtype_t=dtype_t, batch_size=int(batch_size), seed=random_init_seed)
    elapsed = time.perf_counter() - started
    size_on_disk = dir_size(out)
    stage(f"{out}: {stats['regions']} regions of {len(todo)} checkpoint(s) written, {n} samples x "
          f"{len(layer_names)} layers; {human_bytes(size_on_disk)} on disk; {rate:.1f} images/s on {dev} "
          f"({elapsed:.1f} s in all).")
    return out


def _extract_random_init(out: Path, writer, *, arch: str, layers: list[str], images: np.ndarray, normalization,
                         channels_last: frozenset[str], dev: torch.device, dtype_t: torch.dtype, batch_size: int,
                         seed: int) -> None:
    """The random-init baseline: a seeded fresh ``arch`` (head sized like the store's) replayed on
    the probe images; chunks already written by an interrupted run are kept."""
    from .data import check_seed, normalize
    from .models import LayerCapture, build_model
    from .store import add_random_init, all_finite, write_random_init

    seed = check_seed(seed)
    done = add_random_init(out, seed=seed, architecture=arch,
                           init=f"torch.manual_seed({seed}); the architecture's default constructor (own init)")
    if done.all():
        return
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=writer.attrs.get("num_classes"))
    model.to(dev).eval()
    capture = LayerCapture(model, layers, dtype=dtype_t, channels_last=channels_last)
    mean, std = normalization["mean"], normalization["std"]
    try:
        with torch.inference_mode(), full_precision():
            for chunk in np.flatnonzero(~done):
                rows = writer.chunk_slice(int(chunk))
                parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
                for start in range(rows.start, rows.stop, batch_size):
                    stop = min(start + batch_size, rows.stop)
                    x = torch.from_numpy(images[start:stop]).permute(0, 3, 1, 2).to(dev)
                    model(normalize(x, mean, std))
                    for name, t in capture.pop().items():
                        parts[name].append(t.cpu().numpy())
                arrays = {name: np.concatenate(p) for name, p in parts.items()}
                bad = [name for name, a in arrays.items() if not all_finite(a)]
                if bad:
                    raise FtdynError(f"--random-init-baseline: the random network gave non-finite activations at "
                                     f"{', '.join(bad)} (float16 overflow?); re-extract with --dtype float32.")
                write_random_init(out, int(chunk), arrays)
    finally:
        capture.close()
    stage(f"{out}: random-init baseline (seed {seed}) written.")


def _run(model, entries, todo, cache, *, writer, images: np.ndarray, normalization, layers,
         channels_last: frozenset[str], dev: torch.device, dtype_t: torch.dtype, batch_size: int, n_writers: int,
         loading: _Loading, progress: bool) -> dict[str, float]:
    """The extraction loop: checkpoints -> batches -> host arrays -> writer threads."""
    from .data import normalize
    from .models import LayerCapture

    cuda = dev.type == "cuda"
    n = images.shape[0]
    spc = writer.samples_per_chunk
    plan = batch_plan(n, spc, batch_size)
    images_t = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 NCHW view
    if cuda:
        images_t = images_t.contiguous().pin_memory()
    mean, std = normalization["mean"], normalization["std"]

    total_regions = sum(len(p) for _, _, p in todo)
    remaining = {ci: len(p) for _, ci, p in todo}
    bars = progress_bar(progress)
    ck_task = bars.add_task("checkpoints", total=len(todo))
    rg_task = bars.add_task("regions", total=total_regions)
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

    memory_format = fastest_memory_format(model, dev)
    model.to(dev, memory_format=memory_format).eval()
    pool = _Writers(writer, n_writers, region_done)
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftdyn-ckpt")
    prefetch: dict[int, Future] = {}

    def want(k: int) -> None:
        if k < len(todo):
            pos = todo[k][0]
            if pos not in cache and pos not in prefetch:
                prefetch[pos] = loader.submit(_load_state, entries[pos], loading)

    forwarded = 0
    inflight: list = []  # CUDA: batches whose device->host copies are still running
    capture = LayerCapture(model, layers, dtype=dtype_t, channels_last=channels_last)
    ok = False
    t0 = time.perf_counter()
    try:
        with bars, full_precision():
            want(0)
            for k, (pos, ci, pending) in enumerate(todo):
                want(k + 1)  # read the next checkpoint file while this one runs
                entry = entries[pos]
                state = cache.pop(pos) if pos in cache else prefetch.pop(pos).result()
                if not (k == 0 and pos == 0):  # entry 0 was loaded into the model during setup
                    _apply_state(model, entry, state, loading)
                del state
                model.to(dev, memory_format=memory_format).eval()  # a replaced head is created on the CPU
                pending_set = set(pending)
                partial: dict[int, dict[str, np.ndarray]] = {}
                filled: dict[int, int] = {}
                for batch in plan:
                    if not pending_set.intersection(batch.chunks):
                        continue
                    with torch.inference_mode():
                        x = normalize(images_t[batch.start:batch.stop].to(dev, non_blocking=True), mean, std)
                        model(x)
                        outs = capture.pop()
                        if cuda:
                            host = {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                                    for name, t in outs.items()}
                            for name, t in outs.items():
                                host[name].copy_(t, non_blocking=True)
                            event = torch.cuda.Event()
                            event.record()
                            inflight.append((event, outs, host, ci, batch, pending_set, partial, filled))
                        else:  # the hook already copied to host memory
                            _distribute(pool, ci, batch, {name: t.numpy() for name, t in outs.items()},
                                        pending_set, partial, filled, writer)
                    forwarded += batch.stop - batch.start
                    # keep one batch in flight on the GPU while the host hands the previous one over
                    while len(inflight) > 1 or (inflight and inflight[0][0].query()):
                        _drain(pool, inflight.pop(0), writer)
                    pool.raise_if_failed()
            while inflight:
                _drain(pool, inflight.pop(0), writer)
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
    seconds = time.perf_counter() - t0
    return {"images": forwarded, "seconds": seconds, "regions": counts["regions"]}


def _drain(pool: _Writers, item, writer) -> None:
    event, _outs, host, ci, batch, pending_set, partial, filled = item
    event.synchronize()
    _distribute(pool, ci, batch, {k: v.numpy() for k, v in host.items()}, pending_set, partial, filled, writer)


def _distribute(pool: _Writers, ci: int, batch: Batch, arrays: dict[str, np.ndarray], pending: set,
                partial: dict, filled: dict, writer) -> None:
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
            buf = partial[chunk] = {name: np.empty((count, *arr.shape[1:]), dtype=arr.dtype)
                                    for name, arr in arrays.items()}
            filled[chunk] = 0
        lo = batch.start - rows.start
        for name, arr in arrays.items():
            buf[name][lo:lo + arr.shape[0]] = arr
        filled[chunk] += batch.stop - batch.start
        if filled[chunk] == rows.stop - rows.start:
            pool.submit(ci, chunk, partial.pop(chunk))
            del filled[chunk]
