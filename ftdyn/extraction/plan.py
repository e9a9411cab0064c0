"""The plan of an extraction (:func:`make_plan`): the options validated, the series, model and
layers, the probe images, and the store to create or the existing store's missing regions;
decided before anything is written."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as data_mod
from ..checkpoints import infer_num_classes
from ..config import ExtractConfig, arg
from ..devices import resolve_device
from ..errors import FtdynError, FtdynWarning
from ..folders import ignored_message
from ..models import (
    LayerCapture,
    blank_forward,
    build_model,
    default_layers,
    default_normalization,
    layer_layouts,
    replace_head,
    token_fields,
    validate_layers,
)
from ..outputs import check_output_folder
from ..receptive import ReceptiveFieldError, receptive_fields
from ..runtime import require_distributed
from ..store import LayerSpec, StoreSpec, planned_regions
from ..tokens import MapLayout
from .loading import (
    _apply_state,
    _check_loadable,
    _entry_record,
    _load_state,
    _Loading,
    _resolve_series,
)
from .regions import Batch, Passes, batch_plan, default_writers
from .resume import _check_store, _float_normalization, _reconcile

_VAL_NAMES = {"val", "valid", "validation", "test", "train", "probe"}


def probe_fingerprint(images: np.ndarray, labels, class_names) -> str:
    """SHA-256 of the probe: image bytes (uint8, n×H×W×3), labels (int64 LE) and class names."""
    digest = hashlib.sha256(b"ftdyn-probe-v1")
    digest.update(repr(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    digest.update("\x00".join(map(str, class_names)).encode("utf-8"))
    return digest.hexdigest()


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


def _layer_shapes(
    model: torch.nn.Module, layers: list[str], input_size: int, layouts: dict[str, MapLayout]
) -> dict[str, tuple[int, int, int]]:
    with LayerCapture(model, layers, layouts=layouts) as capture:
        blank_forward(model, input_size)
        outputs = capture.pop()
    shapes = {}
    for name, out in outputs.items():
        if out.dim() != 4:
            raise FtdynError(
                f"{arg('layers', name)}: its output has shape {tuple(out.shape)}, neither a"
                " (batch, channel, y, x) map nor a token model's patch tokens (a class token or a"
                " pooled vector has no map); choose another layer, or a block's class token as"
                " BLOCK:class (see `ftdyn layers ARCH`)."
            )
        shapes[name] = tuple(int(s) for s in out.shape[1:])
    return shapes


def _receptive_fields(
    model, layouts: dict[str, MapLayout], input_size: int
) -> dict[str, dict | None]:
    """Each layer's receptive field: a token model's token layers from its patch geometry
    (:func:`~ftdyn.models.token_fields`), the other layers traced (:mod:`ftdyn.receptive`)."""
    fields: dict[str, dict | None] = token_fields(model, layouts, input_size)
    traced = [name for name in layouts if name not in fields]
    if not traced:
        return fields
    try:
        found = receptive_fields(model, traced, input_size)
        return {name: fields[name] if name in fields else found[name].to_dict() for name in layouts}
    except ReceptiveFieldError as exc:
        warnings.warn(
            f"receptive fields are not available for this model ({exc}); the store and the analysis"
            " do not need them, only class-based patches will be unavailable for this store.",
            FtdynWarning,
            stacklevel=2,
        )
        return {name: fields.get(name) for name in layouts}


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
    layouts: dict[str, MapLayout]  # how each layer's output becomes (channel, y, x) when captured
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

    @property
    def passes(self) -> Passes:
        """How the probe images go through the model into regions (:class:`Passes`)."""
        network = self.network
        return Passes(
            network.layers,
            network.layouts,
            network.normalization,
            self.batches,
            self.config.dtype,
            self.writers,
        )

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
    layouts = layer_layouts(model, layers, size)
    shapes = _layer_shapes(model, layers, size, layouts)
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
        layouts,
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
        ignored_message(folder.ignored),
    ):
        if note:
            warnings.warn(f"{arg('data')}: {note}", FtdynWarning, stacklevel=2)
    if folder.rescaled:
        warnings.warn(
            f"{arg('data')}: {data_mod.rescaled_message(folder.rescaled)}",
            FtdynWarning,
            stacklevel=2,
        )
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
            stacklevel=2,
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
    fields = _receptive_fields(model, network.layouts, network.input_size)
    manifest = network.manifest
    spec = StoreSpec(
        architecture=network.arch,
        layers=[
            LayerSpec(
                name,
                *network.shapes[name],
                receptive_field=fields[name],
                tokens=network.layouts[name].tokens_record(),
            )
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
    require_distributed(config.scheduler)
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
