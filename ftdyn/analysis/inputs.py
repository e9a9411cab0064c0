"""What to analyze: the experiments opened from stores, as the tasks read them.

Everything here runs in the calling process before any Dask task. The user's choices are
checked by :class:`~ftdyn.config.AnalyzeConfig` (presets, metrics, views); here each store
is opened and checked against them (one clear :class:`~ftdyn.errors.FtdynError` each), and
each selected layer is described by a picklable :class:`Source` that the tasks of
:mod:`ftdyn.analysis.tasks` read from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AnalyzeConfig, arg
from ..errors import FtdynError
from ..store import baseline_var, open_store, store_fingerprint, store_layers

#: checkpoint position that reads the store's random-init baseline instead of an epoch
BASELINE = -1


# ============================================================================ memory
def physical_memory() -> int | None:
    """Bytes of memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory() -> int:
    """The default ``memory_limit``: half of this machine's memory (4 GiB where it is unknown)."""
    total = physical_memory()
    return 4 * 2**30 if total is None else int(total * 0.5)


# =========================================================================== stores
@dataclass(frozen=True)
class Source:
    """Everything a task needs to read one layer of one store (picklable)."""

    path: str
    var: str
    spc: int
    n: int
    channels: int
    height: int
    width: int
    itemsize: int
    device: str = "cpu"  # where the statistics are computed: every tensor of a task lives there
    channel_block: int = (
        0  # channels per inner chunk (sharded store); 0: every read decodes all channels
    )
    layer: str = ""  # the module name, for messages
    epochs: tuple[
        int, ...
    ] = ()  # epoch of each position of the store's checkpoint axis, for messages
    #: a run-vs-run comparison's checkpoints: position i is checkpoint index ``checkpoints[i][1]``
    #: of the store at ``checkpoints[i][0]`` (same layer, images and chunking); () : ``path``'s own
    checkpoints: tuple[tuple[str, int], ...] = ()

    def locate(self, ckpt: int) -> tuple[str, str, int]:
        """(store path, array, index on its checkpoint axis) of checkpoint position ``ckpt``."""
        if ckpt == BASELINE:
            return self.path, baseline_var(self.var), 0
        if self.checkpoints:
            path, index = self.checkpoints[ckpt]
            return path, self.var, index
        return self.path, self.var, ckpt

    def where(self, ckpt: int, chunk: int) -> str:
        """'layer L (array V), epoch E, samples a-b': how messages name a block (never by index)."""
        rows = self.rows(chunk)
        if ckpt == BASELINE:
            return (
                f"layer {self.layer or self.var} (array {self.var}), random-init baseline, samples"
                f" {rows.start}-{rows.stop - 1}"
            )
        epoch = self.epochs[ckpt] if ckpt < len(self.epochs) else f"#{ckpt}"
        return (
            f"layer {self.layer or self.var} (array {self.var}), epoch {epoch}, "
            f"samples {rows.start}-{rows.stop - 1}"
        )

    def decoded_fraction(self, group: int) -> float:
        """Part of a chunk decoded to read ``group`` consecutive channels (block-aligned groups)."""
        block = self.channel_block or self.channels
        return min(1.0, math.ceil(group / block) * block / self.channels)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.spc)

    def rows(self, chunk: int) -> slice:
        return slice(chunk * self.spc, min((chunk + 1) * self.spc, self.n))

    @property
    def image_bytes(self) -> int:
        return self.channels * self.height * self.width * self.itemsize

    @property
    def chunk_bytes(self) -> int:
        return self.spc * self.image_bytes


@dataclass
class Experiment:
    path: Path
    name: str
    model: str
    dataset: str
    epochs: list[int]  # analyzed (complete) epochs
    ckpt_index: list[int]  # their positions in the store's checkpoint axis
    ref: int  # position of the reference in ``epochs``
    labels: np.ndarray
    layers: list[tuple[str, Source]]  # (module name, source), shallow -> deep
    fingerprint: dict[str, Any]
    probe_dir: str | None = None  # where the probe images came from (outputs must not land there)
    #: the probe images' fingerprint (images, labels, classes; recorded at extraction)
    probe: str | None = None
    #: the random stream of the experiment's draws (bootstrap, jackknife groups, subsets): the
    #: index of the first experiment with the same probe images, so that stores probed with the
    #: same images draw the same resamples (paired comparisons between runs)
    draws: int = 0
    #: the training condition (a hash of the training manifest without the seed; None when no
    #: `ftdyn train` manifest) and the training seed: replicates share the one, not the other
    condition: str | None = None
    train_seed: int | None = None

    @property
    def last(self) -> int | None:
        """Position of the last epoch other than the reference (None without one); the
        random-init baseline, when it is among the positions, is no epoch."""
        others = [t for t, ep in enumerate(self.epochs) if t != self.ref and ep != BASELINE]
        return max(others, default=None)


def open_experiments(
    stores: Sequence, args: AnalyzeConfig, device: str = "cpu"
) -> list[Experiment]:
    """The stores as experiments: their complete epochs and the selected layers, checked
    against ``args`` (reference epoch, layers, names)."""
    if isinstance(stores, (str, os.PathLike)):
        stores = [stores]
    stores = [Path(s).expanduser().resolve() for s in stores]
    if not stores:
        raise FtdynError("analyze: give at least one activation store.")
    if args.experiment_names is not None and len(args.experiment_names) != len(stores):
        raise FtdynError(
            f"{arg('experiment_names')}: {len(args.experiment_names)} name(s) for {len(stores)}"
            f" store(s); give one {arg('experiment_names')} per store, in the same order."
        )
    exps = [_open_experiment(path, i, args, device) for i, path in enumerate(stores)]
    first = {}
    for i, exp in enumerate(exps):
        exp.draws = first.setdefault(exp.probe or i, i)
    names = [e.name for e in exps]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise FtdynError(
            f"analyze: several stores are labeled '{dup[0]}'; give each a distinct"
            f" {arg('experiment_names')}."
        )
    return exps


def _open_experiment(path: Path, i: int, args: AnalyzeConfig, device: str) -> Experiment:
    """The ``i``-th store (at ``path``) as an experiment."""
    if not path.exists():
        raise FtdynError(f"{path}: no such store.")
    ds = open_store(path, allow_partial=args.allow_partial)
    epochs, all_epochs = _complete_epochs(path, ds, args)
    chosen = _chosen_layers(path, ds, args)
    model, dataset = str(ds.attrs.get("model")), str(ds.attrs.get("dataset"))
    return Experiment(
        path=path,
        name=args.experiment_names[i] if args.experiment_names else f"{model}/{dataset}",
        model=model,
        dataset=dataset,
        epochs=epochs,
        ckpt_index=[all_epochs.index(e) for e in epochs],
        ref=epochs.index(args.reference),
        labels=np.asarray(ds["label"].values, dtype=np.int64),
        layers=[(m, _source(path, ds, m, v, all_epochs, device)) for m, v in chosen],
        fingerprint=store_fingerprint(path, ds),
        probe_dir=(ds.attrs.get("probe") or {}).get("data_dir"),
        probe=(ds.attrs.get("probe") or {}).get("fingerprint"),
        condition=_training_condition(ds.attrs.get("manifest")),
        train_seed=(ds.attrs.get("manifest") or {}).get("seed"),
    )


#: the parts of a training manifest that are not the condition of the run
_NOT_CONDITION = ("seed", "epochs", "complete", "created", "updated", "device")


def _training_condition(manifest) -> str | None:
    """A hash of what ``ftdyn train`` recorded of a run other than its seed, its progress and its
    machine (model, data, hyperparameters, initial weights); None without a manifest."""
    if not isinstance(manifest, dict) or manifest.get("format") != "ftdyn-series":
        return None
    condition = {
        k: v for k, v in manifest.items() if k not in _NOT_CONDITION and "version" not in k
    }
    text = json.dumps(condition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _complete_epochs(path: Path, ds, args: AnalyzeConfig) -> tuple[list[int], list[int]]:
    """(complete epochs, all epochs) of a store, checked to hold the reference and another."""
    epochs = [int(e) for e in ds["checkpoint"].values]
    all_epochs = [int(c["epoch"]) for c in ds.attrs["checkpoints"]]
    if args.reference not in epochs:
        where = "is not complete" if args.reference in all_epochs else "is not in the store"
        raise FtdynError(
            f"{arg('reference')}: epoch {args.reference} {where} ({path}: complete epochs"
            f" {', '.join(map(str, epochs))}); pass {arg('reference')} with one of them, or"
            " extract the source model as epoch 0 (ftdyn extract --source)."
        )
    if len(epochs) < 2:
        raise FtdynError(
            f"{path}: only epoch {epochs[0]} is complete, nothing to compare it with; extract"
            " more checkpoints (or finish the extraction) first."
        )
    return epochs, all_epochs


def _chosen_layers(path: Path, ds, args: AnalyzeConfig) -> list[tuple[str, str]]:
    """(module, variable) of the layers of ``args.layers`` (all: None), shallow -> deep."""
    available = store_layers(ds)
    if not args.layers:
        return available
    chosen = []
    for name in args.layers:
        match = [(m, v) for m, v in available if name in (m, v)]
        if not match:
            raise FtdynError(
                f"{arg('layers')}: '{name}' is not a layer of {path}; it has "
                f"{', '.join(m for m, _ in available)}."
            )
        chosen.append(match[0])
    order = {m: k for k, (m, _) in enumerate(available)}
    return sorted(dict.fromkeys(chosen), key=lambda mv: order[mv[0]])


def _source(path: Path, ds, module: str, var: str, all_epochs: list[int], device: str) -> Source:
    """The source of one layer's activations in the store."""
    _, _, c, h, w = ds[var].shape
    block = int((ds[var].encoding.get("chunks") or ds[var].shape)[2])
    return Source(
        str(path.resolve()),
        var,
        int(ds.attrs["samples_per_chunk"]),
        int(ds.sizes["sample"]),
        int(c),
        int(h),
        int(w),
        int(ds[var].dtype.itemsize),
        device,
        block,
        module,
        tuple(all_epochs),
    )
