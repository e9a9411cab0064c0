"""Figures: distance curves, class-based receptive-field averages, sample heatmaps.

Entry points (what ``ftdyn visualize`` and ``ftdyn analyze`` call):

* :func:`visualize` — for one store and one layer, the class-based grid (paper
  Figs. 5–6) and the sample-based grids (Figs. 7–8), with explicit or
  automatically chosen filters, classes, samples and epochs;
* :func:`default_figures` — the default set: curves and trajectory matrices from
  the results, and for each store the class- and sample-based grids of its
  shallowest and deepest layer.

Modules: :mod:`.curves` (results → line plots and matrices), :mod:`.interpret` (the
interpretation's figures), :mod:`.patches` (class-based), :mod:`.heatmaps` (sample-based).
Each keeps the computation in pure functions that return arrays (tested on their own) and
draws separately; all of them build on :mod:`.figure` (grids, saving, the figure index),
which this module imports too.

Every figure written is recorded, with a caption that says what it shows and how
it was computed, in ``figures.json`` in its folder (:func:`read_index`); the HTML
report (:mod:`ftdyn.reporting`) shows what the index lists. Matplotlib is used
through :class:`matplotlib.figure.Figure` only (Agg/SVG canvases, no pyplot, no
GUI backend).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._signature import takes_options
from ..config import (
    DEFAULT_CLASSES,
    DEFAULT_SAMPLES,
    MAX_DEFAULT_EPOCHS,
    MAX_EPOCHS,
    MAX_FILTERS,
    MAX_GRID_ROWS,
    VisualizeConfig,
    arg,
    build,
    default,
    describe,
)
from ..errors import FtdynError, FtdynWarning
from ..outputs import check_output_folder, folder_lock, update_result_set
from ..progress import track
from ..receptive import ReceptiveField
from ..results import open_results
from ..store import decoding, open_store, store_fingerprint, store_layers
from . import curves, heatmaps, patches
from . import interpret as interpret_figures
from .figure import FIGURES_DIR, INDEX_NAME, read_index, record, slug

__all__ = [
    "visualize",
    "make_plan",
    "execute",
    "FigurePlan",
    "default_figures",
    "read_index",
    "FIGURES_DIR",
    "INDEX_NAME",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- helpers


def check_out(out: str | Path, *, what: str | None = None, inputs=()) -> Path:
    """``out`` as a Path, once it is known that figures can be written there
    (:func:`ftdyn.outputs.check_output_folder`). ``what`` names the flag in the error
    (default ``--out OUT``); ``inputs``: folders it must not be inside."""
    check_output_folder(out, flag=what or arg("out", out), inputs=inputs)
    return Path(out)


def open_any_store(store):
    """(Dataset, path or None) from a store path or an already opened store Dataset."""
    if isinstance(store, xr.Dataset):
        source = store.encoding.get("source")
        return store, (Path(source) if source else None)
    path = Path(store)
    return open_store(path), path


def open_any_results(results):
    """A results Dataset (or None) from a results folder, results.zarr or a Dataset."""
    if results is None or isinstance(results, xr.Dataset):
        return results
    return open_results(results)


def store_label(ds, path: Path | None) -> str:
    """Short name of a store for titles and file names: the folder stem, else model-dataset."""
    if path is not None:
        name = path.name
        return name[:-5] if name.endswith(".zarr") else name
    return f"{ds.attrs.get('model', 'model')}-{ds.attrs.get('dataset', 'data')}"


def figure_stem(out: Path, label: str, path: Path | None) -> str:
    """The store part of the figure file names in ``out``: the store's label, plus a short
    hash of its resolved path when ``out`` already holds figures of another store whose label
    gives the same name (``sA/s.zarr`` and ``sB/s.zarr``), so that neither overwrites the other."""
    taken = any(
        e.get("kind") in ("class", "sample")
        and slug(e.get("store_label") or "") == slug(label)
        and not same_path(e.get("store"), path)
        for e in read_index(out)
    )
    if not taken:
        return slug(label)
    digest = hashlib.sha256(
        str(Path(path).resolve() if path is not None else "").encode()
    ).hexdigest()[:8]
    return f"{slug(label)}-{digest}"


def resolve_layer(ds, layer) -> tuple[str, str, int]:
    """(module name, variable, index shallow->deep) of ``layer`` given as module name,
    variable name or (possibly negative) index; FtdynError listing the choices otherwise."""
    pairs = store_layers(ds)
    names = [p[0] for p in pairs]
    if isinstance(layer, (int, np.integer)) or (
        isinstance(layer, str) and re.fullmatch(r"-?\d+", layer.strip())
    ):
        i = int(layer)
        if not -len(pairs) <= i < len(pairs):
            raise FtdynError(
                f"{arg('layer', layer)}: the store has {len(pairs)} layers (index"
                f" 0..{len(pairs) - 1})."
            )
        i %= len(pairs)
        return pairs[i][0], pairs[i][1], i
    for i, (name, var) in enumerate(pairs):
        if layer in (name, var):
            return name, var, i
    raise FtdynError(
        f"{arg('layer', layer)}: not a layer of this store; choose from {', '.join(names)} (or an"
        " index)."
    )


def receptive_field_of(ds, var: str, layer: str):
    """The layer's :class:`~ftdyn.receptive.ReceptiveField`, or FtdynError when the store
    has none."""
    rf = ds[var].attrs.get("receptive_field") or (ds.attrs.get("receptive_fields") or {}).get(layer)
    if not rf:
        raise FtdynError(
            f"layer {layer}: the store has no receptive-field geometry for it (a synthetic or "
            "third-party store?); class- and sample-based views need it. Re-extract the store "
            "with `ftdyn extract`, which records it."
        )
    try:
        return ReceptiveField.from_dict(rf)
    except (KeyError, TypeError, ValueError) as exc:
        raise FtdynError(
            f"layer {layer}: damaged receptive-field attribute {rf!r} ({exc})."
        ) from None


def resolve_classes(ds, classes) -> list[int]:
    """Class indices from names or indices; default: the first classes that have samples."""
    names = [str(c) for c in ds["class"].values]
    labels = np.asarray(ds["label"].values)
    if classes is None or len(classes) == 0:
        present = [c for c in range(len(names)) if np.any(labels == c)]
        return present[:DEFAULT_CLASSES]
    out = []
    for c in classes:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif isinstance(c, (int, np.integer)) or (isinstance(c, str) and re.fullmatch(r"\d+", c)):
            i = int(c)
            if not 0 <= i < len(names):
                raise FtdynError(
                    f"{arg('classes', c)}: only {len(names)} classes (0..{len(names) - 1}: "
                    f"{', '.join(names)})."
                )
            out.append(i)
        else:
            raise FtdynError(
                f"{arg('classes', c)}: not a class of this store; choose from {', '.join(names)}."
            )
        if not np.any(labels == out[-1]):
            raise FtdynError(f"{arg('classes', c)}: no probe image of this class in the store.")
    out = list(dict.fromkeys(out))
    if len(out) > MAX_GRID_ROWS:
        raise FtdynError(
            f"{arg('classes')}: {len(out)} classes; one figure shows at most {MAX_GRID_ROWS} (class"
            " x filter rows). Pass fewer and run visualize again for the rest."
        )
    return out


def resolve_epochs(ds, epochs) -> list[int]:
    """Positions along ``checkpoint`` of the epochs to show (default: all, or 8 evenly spaced)."""
    available = [int(e) for e in ds["checkpoint"].values]
    if epochs is None or len(epochs) == 0:
        if len(available) <= MAX_DEFAULT_EPOCHS:
            return list(range(len(available)))
        return sorted(
            set(
                np.round(np.linspace(0, len(available) - 1, MAX_DEFAULT_EPOCHS))
                .astype(int)
                .tolist()
            )
        )
    out = []
    for e in epochs:
        if int(e) not in available:
            raise FtdynError(
                f"{arg('epochs', e)}: not in the store; available epochs:"
                f" {', '.join(map(str, available))}."
            )
        out.append(available.index(int(e)))
    out = sorted(set(out))
    if len(out) > MAX_EPOCHS:
        raise FtdynError(
            f"{arg('epochs')}: {len(out)} epochs; one figure shows at most {MAX_EPOCHS}. Pass fewer"
            " and run visualize again for the rest."
        )
    return out


def resolve_filters(ds, var: str, filters) -> list[int]:
    n = int(ds.sizes[f"{var}_channel"])
    out = []
    for f in filters:
        if not 0 <= int(f) < n:
            raise FtdynError(f"{arg('filters', f)}: the layer has {n} filters (0..{n - 1}).")
        out.append(int(f))
    return list(dict.fromkeys(out))


def resolve_samples(ds, samples) -> list[int]:
    """Positions of sample ids (the ``sample`` coordinate)."""
    ids = [int(s) for s in ds["sample"].values]
    lookup = {s: i for i, s in enumerate(ids)}
    out = []
    for s in samples:
        if int(s) not in lookup:
            raise FtdynError(f"{arg('samples', s)}: no such sample id (ids {ids[0]}..{ids[-1]}).")
        out.append(lookup[int(s)])
    return list(dict.fromkeys(out))


def same_path(a, b) -> bool:
    """Whether two (possibly relative) paths name the same file; False when either is empty."""
    try:
        return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def match_experiment(results, ds, path: Path | None) -> str | None:
    """The results experiment computed from this store: the one whose recorded store has the
    same resolved path, else (a moved or copied store) the same fingerprint, when the results
    record fingerprints (``store_fingerprints``, as ``ftdyn analyze`` writes). None otherwise:
    the store is not one of the results' experiments."""
    if results is None or path is None:
        return None
    exps = [str(e) for e in results["experiment"].values]
    for e, s in zip(exps, results["store"].values, strict=True):
        if same_path(str(s), path):
            return e
    try:
        prints = json.loads(results.attrs.get("store_fingerprints") or "[]")
    except ValueError:  # unreadable: only the paths can tell
        return None
    if len(prints) != len(exps) or not Path(path).is_dir():
        return None
    mine = store_fingerprint(Path(path), ds)["sha256"]
    return next(
        (
            e
            for e, fp in zip(exps, prints, strict=True)
            if isinstance(fp, dict) and fp.get("sha256") == mine
        ),
        None,
    )


def results_stores(results) -> str:
    """``experiment (store), ...`` of the results, for messages."""
    return ", ".join(
        f"{e} ({s or 'no store recorded'})"
        for e, s in zip(
            (str(x) for x in results["experiment"].values),
            (str(x) for x in results["store"].values),
            strict=True,
        )
    )


# ----------------------------------------------------------------------------- API


@takes_options(VisualizeConfig)
def visualize(store, *, out, config: VisualizeConfig | None = None, **options: Any) -> list[Path]:
    """Class-based and sample-based figures of one layer of an activation store.

    ``store``: a store path (or an opened store Dataset). The options are the fields of
    :class:`~ftdyn.config.VisualizeConfig` (listed below), given as keyword arguments or as
    ``config=``. ``layer``: module name, variable name or index (negative counts from the
    deepest). ``filters``: filter indices; default: the ``n_filters`` whose distance changed
    most — from the per-filter distances of ``results`` (a results folder or Dataset) when
    they cover this store and layer, else from the activations (relative L2 change of the
    filter's mean map between the first and last shown epoch). ``classes``: names or indices
    (default: the first 3). ``samples``: sample ids for the sample-based figures (default: per
    shown class, up to 2, the image on which the shown filters respond most at the last
    epoch). ``epochs``: epochs to show (default all, or 8 evenly spaced incl. source and
    last). ``out``: folder. One figure shows at most :data:`MAX_FILTERS` filters,
    :data:`MAX_GRID_ROWS` class x filter rows and :data:`MAX_EPOCHS` epochs: more explicit
    choices are an error, a larger ``n_filters`` is capped (with a logged note).

    Writes ``class_<store>_<layer>.png`` (rows = (class, filter), columns = epochs)
    and ``sample_<store>_<layer>_s<id>.png`` (rows = filters, columns = image +
    epochs; ``<store>`` is the folder stem, with a hash suffix when ``out`` holds
    figures of another store of that stem: :func:`figure_stem`), records them with
    captions in ``out/figures.json`` and returns their paths. Only the needed slices
    of the store are read; nothing is drawn before every argument is checked. The
    figures of ``out`` are a result set (:mod:`ftdyn.outputs`): the new ones and those
    already there appear together in one atomic step, or (killed, interrupted, disk
    full) none of the new ones do.

    Same as ``execute(make_plan(store, out=out, ...))``.
    """
    return execute(make_plan(store, out=out, config=config, **options))


@dataclass(frozen=True)
class FigurePlan:
    """What :func:`execute` draws, decided from the store's metadata before any activation is read:
    the layer, the classes, epochs and (when given) filters and samples as positions in the
    store, and where the figures go under which names."""

    ds: Any  # the opened store (xarray Dataset)
    path: Path | None  # the store's folder (None: a Dataset without one)
    out: Path
    layer: str  # module name
    var: str  # store variable
    rf: Any  # the layer's receptive field (ftdyn.receptive.ReceptiveField)
    classes: list[int]
    epochs: list[int]  # positions along ``checkpoint``
    filters: list[int] | None  # None: choose ``n_filters``
    n_filters: int
    samples: list[int] | None  # positions along ``sample``; None: the strongest
    results: Any  # results Dataset ranking the filters, or None
    experiment: str | None  # the results' experiment of this store
    label: str  # how titles and captions name the store
    stem: str  # file names: class_<stem>.png, sample_<stem>_s<id>.png
    context: dict[str, Any]  # recorded with each figure in figures.json


def make_plan(store, *, out, config: VisualizeConfig | None = None, **options: Any) -> FigurePlan:
    """Check every argument of :func:`visualize` against the store (and the results) before
    anything is read in bulk or drawn, and return the plan."""
    config = build(VisualizeConfig, config, **options)
    ds, path = open_any_store(store)
    res = open_any_results(config.results)
    out = check_out(
        out, inputs=[p for p in (path, (ds.attrs.get("probe") or {}).get("data_dir")) if p]
    )
    return _plan(ds, path, res, config, out)


def _plan(ds, path: Path | None, res, config: VisualizeConfig, out: Path) -> FigurePlan:
    """The plan of one layer of the opened store ``ds``, its figures going to ``out`` (checked)."""
    name, var, index = resolve_layer(ds, config.layer)
    rf = receptive_field_of(ds, var, name)
    class_idx = resolve_classes(ds, config.classes)
    epoch_pos = resolve_epochs(ds, config.epochs)
    chosen = resolve_filters(ds, var, config.filters) if config.filters is not None else None
    n_filters = _filter_count(config, chosen, len(class_idx), int(ds.sizes[f"{var}_channel"]), name)
    sample_pos = resolve_samples(ds, config.samples) if config.samples is not None else None
    experiment = match_experiment(res, ds, path)
    if res is not None and experiment is None:  # another store's distances would rank the filters
        raise FtdynError(
            f"{arg('results')} {'(a Dataset)' if res is config.results else config.results}: the"
            f" store {path or '(a Dataset without a path)'} is not among its experiments"
            f" [{results_stores(res)}]; give the results of `ftdyn analyze` on this store, or leave"
            f" {arg('results')} out."
        )
    label = store_label(ds, path)
    context = {
        "store": str(path) if path is not None else None,
        "store_label": label,
        "layer": name,
        "layer_index": index,
        "model": ds.attrs.get("model"),
        "dataset": ds.attrs.get("dataset"),
        "experiment": experiment,
    }
    stem = f"{figure_stem(out, label, path)}_{slug(var)}"
    if experiment is not None:  # stores of several experiments may share a folder name
        label = f"{experiment} ({label})"
    return FigurePlan(
        ds=ds,
        path=path,
        out=out,
        layer=name,
        var=var,
        rf=rf,
        classes=class_idx,
        epochs=epoch_pos,
        filters=chosen,
        n_filters=n_filters,
        samples=sample_pos,
        results=res,
        experiment=experiment,
        label=label,
        stem=stem,
        context=context,
    )


def _filter_count(
    config: VisualizeConfig, chosen: list[int] | None, n_classes: int, n_channels: int, layer: str
) -> int:
    """How many filters to choose: ``n_filters`` capped at one figure's bounds (with a note);
    explicit filters beyond them are an error."""
    limit = min(MAX_FILTERS, MAX_GRID_ROWS // n_classes)
    if chosen is not None:
        if len(chosen) > limit:
            raise FtdynError(
                f"{arg('filters')}: {len(chosen)} filters with {n_classes} classes; one figure"
                f" shows at most {MAX_FILTERS} filters and {MAX_GRID_ROWS} class x filter rows."
                f" Pass fewer {arg('filters')} or {arg('classes')} and run visualize again for the"
                " rest."
            )
        return len(chosen)
    if config.n_filters > min(n_channels, limit):
        log.info(
            f"{arg('n_filters', config.n_filters)} capped at {min(n_channels, limit)}: layer"
            f" {layer} has {n_channels} filters, and one figure shows at most {MAX_FILTERS} filters"
            f" and {MAX_GRID_ROWS} class x filter rows."
        )
        return min(n_channels, limit)
    return config.n_filters


@dataclass
class _Figures:
    """What :func:`execute` computed from the store: the class-based grid, the sample-based
    grids, and why these filters and samples were shown."""

    grid: Any
    samples: list[Any]
    why: str
    sample_why: str


def execute(plan: FigurePlan) -> list[Path]:
    """Read the activations ``plan`` needs, draw the figures and make them current in ``plan.out``
    together with the figures already there (one atomic step)."""
    entries: list[dict[str, Any]] = []

    def draw(folder: Path) -> list[str]:
        entries.extend(_write_figures(plan, figures, folder))
        return [INDEX_NAME, *(e["file"] for e in entries)]

    # the folder lock: a second visualize or report into it is refused; a damaged chunk: one line
    with folder_lock(plan.out), decoding(plan.path or "store", f"layer {plan.layer}"):
        figures = _compute_figures(plan)
        update_result_set(plan.out, draw, carry=[INDEX_NAME, *_indexed_files(plan.out)])
    return [plan.out / e["file"] for e in entries]


def _compute_figures(plan: FigurePlan) -> _Figures:
    """The grids of ``plan``: filters chosen (unless given), the class-based grid, the samples
    chosen (unless given) and their sample-based grids."""
    ds, var, name = plan.ds, plan.var, plan.layer
    chosen, why = plan.filters, "filters chosen by the user"
    if chosen is None:
        class_samples = np.flatnonzero(np.isin(np.asarray(ds["label"].values), plan.classes))
        chosen, why = patches.choose_filters(
            ds,
            var,
            name,
            plan.n_filters,
            results=plan.results,
            experiment=plan.experiment,
            sample_positions=class_samples,
            epoch_positions=plan.epochs,
        )
    grid = patches.class_based(
        ds, var, name, plan.rf, filters=chosen, classes=plan.classes, epoch_positions=plan.epochs
    )
    sample_pos, sample_why = plan.samples, "samples chosen by the user"
    if sample_pos is None:
        sample_pos = patches.strongest_samples(grid, per_class=1)[:DEFAULT_SAMPLES]
        sample_why = (
            f"auto-chosen: for each shown class (up to {DEFAULT_SAMPLES}) the probe image on which"
            " the shown filters respond most (sum of their map maxima at the last shown epoch)"
        )
    samples = [
        heatmaps.sample_based(
            ds, var, name, plan.rf, sample_position=pos, filters=chosen, epoch_positions=plan.epochs
        )
        for pos in sample_pos
    ]
    return _Figures(grid=grid, samples=samples, why=why, sample_why=sample_why)


def _write_figures(plan: FigurePlan, figures: _Figures, folder: Path) -> list[dict[str, Any]]:
    """Draw the figures into ``folder`` and record them with captions in its index; returns
    their index entries."""
    label, name, rf = plan.label, plan.layer, plan.rf
    cls_name = f"class_{plan.stem}.png"
    patches.plot_class_grid(
        figures.grid,
        folder / cls_name,
        title=f"{label} · {name}: class-based receptive-field averages",
    )
    entries = [
        {
            **plan.context,
            "file": cls_name,
            "formats": [],
            "kind": "class",
            "title": f"Class-based: {label}, layer {name}",
            "caption": patches.caption(figures.grid, rf, why=figures.why, label=label),
        }
    ]
    for sgrid in figures.samples:
        sname = f"sample_{plan.stem}_s{sgrid.sample_id}.png"
        heatmaps.plot_sample_grid(
            sgrid,
            folder / sname,
            title=f"{label} · {name}: sample {sgrid.sample_id} ({sgrid.class_name})",
        )
        entries.append(
            {
                **plan.context,
                "file": sname,
                "formats": [],
                "kind": "sample",
                "title": f"Sample-based: {label}, layer {name}, sample {sgrid.sample_id}",
                "caption": heatmaps.caption(
                    sgrid, rf, why=figures.why, sample_why=figures.sample_why, label=label
                ),
            }
        )
    record(folder, entries)
    return entries


def _indexed_files(folder: Path) -> list[str]:
    """Every file the figure index of ``folder`` lists (the figure and its other formats)."""
    return [
        name
        for e in read_index(folder)
        if e.get("file")
        for name in [e["file"], *e.get("formats", [])]
    ]


def default_figures(
    results_dir,
    stores: Sequence[str | Path] | None,
    out,
    *,
    n_filters: int = default(VisualizeConfig, "n_filters"),
) -> list[Path]:
    """The default figure set, drawn into the folder ``out`` (the report draws it into the
    ``figures/`` of its new result set; ``out`` is written in place, not as a set).

    From the results in ``results_dir`` (a folder, results.zarr or Dataset; may be
    None): distance curves per metric and experiment, distance vs layer depth,
    and the checkpoint x checkpoint matrices. For each store: the class-based and
    sample-based grids of its shallowest and deepest layer with auto-chosen
    filters. A store that cannot be visualized (e.g. no receptive-field geometry)
    is skipped with an :class:`~ftdyn.errors.FtdynWarning` and a note in the index, so the
    rest is still made. Returns the written PNG/SVG paths.
    """
    out = Path(out)
    res = open_any_results(results_dir)
    written: list[Path] = []
    if res is not None:
        written += curves.plot_all(res, out)
        # relative curves, probes, convergence (when computed)
        written += interpret_figures.plot_all(res, out)
    for store in track(stores or [], "class/sample figures"):
        try:
            ds, path = open_any_store(store)
            layers = [p[0] for p in store_layers(ds)]
            for layer in dict.fromkeys([layers[0], layers[-1]]):
                plan = _plan(
                    ds,
                    path,
                    res,
                    VisualizeConfig(layer=layer, results=res, n_filters=n_filters),
                    out,
                )
                with decoding(path or "store", f"layer {plan.layer}"):
                    written += [
                        out / e["file"] for e in _write_figures(plan, _compute_figures(plan), out)
                    ]
        except FtdynError as exc:
            warnings.warn(
                f"skipped class/sample figures for {store}: {exc}", FtdynWarning, stacklevel=2
            )
            record(
                out,
                [
                    {
                        "file": None,
                        "kind": "note",
                        "store": str(store),
                        "caption": f"No class/sample figures for {store}: {exc}",
                    }
                ],
            )
    return written


visualize.__doc__ += "\n    Options (:class:`~ftdyn.config.VisualizeConfig`):\n\n" + "\n".join(
    f"    * {line}" for line in describe(VisualizeConfig).splitlines()
)
