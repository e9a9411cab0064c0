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
  is checked in the writer thread before it is written (:mod:`.regions`). A float16
  overflow (|x| > 65504) or NaN/inf from the network *stops* the run with one line naming
  layer, epoch, samples, the largest magnitude (for an overflow: measured by running that
  region once more in float32) and the fix (``--dtype float32`` into a new ``--out``);
  finished regions stay complete. ftdyn does not switch one layer
  to float32 on its own: a store keeps one dtype, which every reader may rely on.

Modules: :mod:`.plan` (:func:`make_plan`: options, series, probe set, store to create or resume),
:mod:`.loading` (checkpoints into model weights), :mod:`.resume` (an existing store checked
against the call), :mod:`.regions` (batches, region checks, writer threads), :mod:`.forward` (the
forward passes), :mod:`.cluster` (the checkpoints replayed on a Dask cluster's workers,
``scheduler``), :mod:`.baseline` (the random-init baseline) and :mod:`.running`
(:func:`execute`, :func:`extract`).
"""

from .forward import DTYPES, full_precision
from .plan import (
    ExtractPlan,
    Network,
    Probe,
    Replay,
    make_config,
    make_plan,
    parse_normalize,
    probe_fingerprint,
)
from .regions import Batch, NonFiniteActivations, batch_plan, default_writers
from .resume import recorded_identity
from .running import execute, extract, human_bytes

__all__ = [
    "DTYPES",
    "Batch",
    "ExtractPlan",
    "Network",
    "NonFiniteActivations",
    "Probe",
    "Replay",
    "batch_plan",
    "default_writers",
    "execute",
    "extract",
    "full_precision",
    "human_bytes",
    "make_config",
    "make_plan",
    "parse_normalize",
    "probe_fingerprint",
    "recorded_identity",
]
