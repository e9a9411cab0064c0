"""Figures: distance curves, class-based receptive-field averages, sample heatmaps.

Entry points (what ``ftdyn visualize`` and ``ftdyn analyze`` call):

* :func:`visualize` — for one store and one layer, the class-based grid (paper
  Figs. 5–6) and the sample-based grids (Figs. 7–8), with explicit or
  automatically chosen filters, classes, samples and epochs;
* :func:`default_figures` — the default set: curves and trajectory matrices from
  the results, and for each store the class- and sample-based grids of its
  shallowest and deepest layer.

Modules: :mod:`.curves` (results → line plots and matrices), :mod:`.patches`
(class-based), :mod:`.heatmaps` (sample-based). Each keeps the computation in pure
functions that return arrays (tested on their own) and draws separately.

Every figure written is recorded, with a caption that says what it shows and how
it was computed, in ``figures.json`` in its folder (:func:`read_index`); the HTML
report (:mod:`ftdyn.reporting`) shows what the index lists. Matplotlib is used
through :class:`matplotlib.figure.Figure` only (Agg/SVG canvases, no pyplot, no
GUI backend).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import logging
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import FtdynError, FtdynWarning, check_output_folder
from ..outputs import folder_lock
from ..progress import track

__all__ = ["visualize", "default_figures", "read_index", "FIGURES_DIR", "INDEX_NAME"]

log = logging.getLogger(__name__)

#: Folder under a results/report folder that holds the figures (what ``report`` reads).
FIGURES_DIR = "figures"
#: Index of the figures in a folder, with captions.
INDEX_NAME = "figures.json"
#: Columns shown by default when a store has more checkpoints than this.
MAX_DEFAULT_EPOCHS = 8
#: Classes shown by default in the class-based grid.
DEFAULT_CLASSES = 3
#: Sample figures made by default.
DEFAULT_SAMPLES = 2
#: Bounds of one figure. Drawing time grows faster than the number of cells (about
#: 15 s for 48 rows x 16 columns), so a layer's hundreds of filters cannot all be shown.
MAX_FILTERS = 16
MAX_GRID_ROWS = 48  # class x filter rows of the class-based grid
MAX_EPOCHS = 16


# ----------------------------------------------------------------------------- helpers


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^0-9A-Za-z.+-]+", "_", str(text)).strip("_.") or "x"


def epoch_label(epoch: int) -> str:
    return "source (epoch 0)" if int(epoch) == 0 else f"epoch {int(epoch)}"


def save_figure(fig, path: Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix); no timestamps in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Date": None} if path.suffix == ".svg" else {"Software": None} if path.suffix == ".png" else None
    fig.savefig(path, dpi=dpi, metadata=metadata)
    return path


def check_out(out: str | Path, *, what: str | None = None, inputs=()) -> Path:
    """``out`` as a Path, once it is known that figures can be written there
    (:func:`ftdyn.errors.check_output_folder`). ``what`` names the flag in the error
    (default ``--out OUT``); ``inputs``: folders it must not be inside."""
    check_output_folder(out, flag=what or f"--out {out}", inputs=inputs)
    return Path(out)


@contextmanager
def staging(out: Path):
    """A fresh hidden folder inside ``out`` to draw into, removed on exit whatever happens.

    The caller moves the finished files into ``out`` only once all are drawn, so an
    error or an interrupt midway leaves no partial set (and no folder this call made)."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ftdyn-drawing-", dir=out))
    except OSError as exc:
        raise FtdynError(f"--out {out}: cannot write there ({exc.strerror or exc}).") from None
    finished = False
    try:
        yield tmp
        finished = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not finished:
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:  # not empty: something else is in it now
                    break


def read_index(folder: str | Path) -> list[dict[str, Any]]:
    """Entries of ``folder/figures.json`` (``[]`` when there is none)."""
    index = Path(folder) / INDEX_NAME
    if not index.is_file():
        return []
    try:
        return list(json.loads(index.read_text()).get("figures", []))
    except (json.JSONDecodeError, AttributeError):
        raise FtdynError(f"{index}: not a readable figure index; delete it and re-run `ftdyn visualize`.") from None


def record(folder: str | Path, entries: Iterable[dict[str, Any]]) -> None:
    """Add or replace (by ``file``) entries of ``folder/figures.json``.

    An entry: ``file`` (name of the PNG in ``folder``), ``formats`` (other files of
    the same figure, e.g. the SVG), ``kind`` (curves, by_layer, trajectory, class,
    sample, note), ``title``, ``caption``, and context (experiment, store, layer).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = {e.get("file") or f"note:{e.get('caption')}": e for e in read_index(folder)}
    for e in entries:
        current[e.get("file") or f"note:{e.get('caption')}"] = e
    tmp = folder / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps({"figures": list(current.values())}, indent=1, default=_jsonable))
    tmp.replace(folder / INDEX_NAME)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def open_any_store(store):
    """(Dataset, path or None) from a store path or an already opened store Dataset."""
    import xarray as xr

    if isinstance(store, xr.Dataset):
        source = store.encoding.get("source")
        return store, (Path(source) if source else None)
    from ..store import open_store

    path = Path(store)
    return open_store(path), path


def open_any_results(results):
    """A results Dataset (or None) from a results folder, results.zarr or a Dataset."""
    import xarray as xr

    if results is None or isinstance(results, xr.Dataset):
        return results
    from ..results import open_results

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
    taken = any(e.get("kind") in ("class", "sample") and slug(e.get("store_label") or "") == slug(label)
                and not same_path(e.get("store"), path) for e in read_index(out))
    if not taken:
        return slug(label)
    digest = hashlib.sha256(str(Path(path).resolve() if path is not None else "").encode()).hexdigest()[:8]
    return f"{slug(label)}-{digest}"


def resolve_layer(ds, layer) -> tuple[str, str, int]:
    """(module name, variable, index shallow->deep) of ``layer`` given as module name,
    variable name or (possibly negative) index; FtdynError listing the choices otherwise."""
    from ..store import store_layers

    pairs = store_layers(ds)
    names = [p[0] for p in pairs]
    if isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and re.fullmatch(r"-?\d+", layer.strip())):
        i = int(layer)
        if not -len(pairs) <= i < len(pairs):
            raise FtdynError(f"--layer {layer}: the store has {len(pairs)} layers (index 0..{len(pairs) - 1}).")
        i %= len(pairs)
        return pairs[i][0], pairs[i][1], i
    for i, (name, var) in enumerate(pairs):
        if layer in (name, var):
            return name, var, i
    raise FtdynError(f"--layer {layer}: not a layer of this store; choose from {', '.join(names)} (or an index).")


def receptive_field_of(ds, var: str, layer: str):
    """The layer's :class:`~ftdyn.receptive.ReceptiveField`, or FtdynError when the store has none."""
    from ..receptive import ReceptiveField

    rf = ds[var].attrs.get("receptive_field") or (ds.attrs.get("receptive_fields") or {}).get(layer)
    if not rf:
        raise FtdynError(f"layer {layer}: the store has no receptive-field geometry for it (a synthetic or "
                         "third-party store?); class- and sample-based views need it. Re-extract the store "
                         "with `ftdyn extract`, which records it.")
    try:
        return ReceptiveField.from_dict(rf)
    except (KeyError, TypeError, ValueError) as exc:
        raise FtdynError(f"layer {layer}: damaged receptive-field attribute {rf!r} ({exc}).") from None


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
                raise FtdynError(f"--class {c}: only {len(names)} classes (0..{len(names) - 1}: "
                                 f"{', '.join(names)}).")
            out.append(i)
        else:
            raise FtdynError(f"--class {c}: not a class of this store; choose from {', '.join(names)}.")
        if not np.any(labels == out[-1]):
            raise FtdynError(f"--class {c}: no probe image of this class in the store.")
    out = list(dict.fromkeys(out))
    if len(out) > MAX_GRID_ROWS:
        raise FtdynError(f"--class: {len(out)} classes; one figure shows at most {MAX_GRID_ROWS} (class x filter "
                         "rows). Pass fewer and run visualize again for the rest.")
    return out


def resolve_epochs(ds, epochs) -> list[int]:
    """Positions along ``checkpoint`` of the epochs to show (default: all, or 8 evenly spaced)."""
    available = [int(e) for e in ds["checkpoint"].values]
    if epochs is None or len(epochs) == 0:
        if len(available) <= MAX_DEFAULT_EPOCHS:
            return list(range(len(available)))
        return sorted(set(np.round(np.linspace(0, len(available) - 1, MAX_DEFAULT_EPOCHS)).astype(int).tolist()))
    out = []
    for e in epochs:
        if int(e) not in available:
            raise FtdynError(f"--epoch {e}: not in the store; available epochs: {', '.join(map(str, available))}.")
        out.append(available.index(int(e)))
    out = sorted(set(out))
    if len(out) > MAX_EPOCHS:
        raise FtdynError(f"--epoch: {len(out)} epochs; one figure shows at most {MAX_EPOCHS}. Pass fewer and run "
                         "visualize again for the rest.")
    return out


def resolve_filters(ds, var: str, filters) -> list[int]:
    n = int(ds.sizes[f"{var}_channel"])
    out = []
    for f in filters:
        if not 0 <= int(f) < n:
            raise FtdynError(f"--filter {f}: the layer has {n} filters (0..{n - 1}).")
        out.append(int(f))
    return list(dict.fromkeys(out))


def resolve_samples(ds, samples) -> list[int]:
    """Positions of sample ids (the ``sample`` coordinate)."""
    ids = [int(s) for s in ds["sample"].values]
    lookup = {s: i for i, s in enumerate(ids)}
    out = []
    for s in samples:
        if int(s) not in lookup:
            raise FtdynError(f"--sample {s}: no such sample id (ids {ids[0]}..{ids[-1]}).")
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
    for e, s in zip(exps, results["store"].values):
        if same_path(str(s), path):
            return e
    try:
        prints = json.loads(results.attrs.get("store_fingerprints") or "[]")
    except ValueError:  # unreadable: only the paths can tell
        return None
    if len(prints) != len(exps) or not Path(path).is_dir():
        return None
    from ..analysis.inputs import store_fingerprint

    mine = store_fingerprint(Path(path), ds)["sha256"]
    return next((e for e, fp in zip(exps, prints) if isinstance(fp, dict) and fp.get("sha256") == mine), None)


def results_stores(results) -> str:
    """``experiment (store), ...`` of the results, for messages."""
    return ", ".join(f"{e} ({s or 'no store recorded'})" for e, s in
                     zip((str(x) for x in results["experiment"].values), (str(x) for x in results["store"].values)))


def results_layer_index(results, experiment: str, layer: str) -> int | None:
    names = [str(x) for x in results["layer"].sel(experiment=experiment).values]
    return names.index(layer) if layer in names else None


# ----------------------------------------------------------------------------- API


def visualize(store, *, layer, filters: Sequence[int] | None = None, classes: Sequence[str | int] | None = None,
              samples: Sequence[int] | None = None, results=None, out, epochs: Sequence[int] | None = None,
              n_filters: int = 4) -> list[Path]:
    """Class-based and sample-based figures of one layer of an activation store.

    ``store``: a store path (or an opened store Dataset). ``layer``: module name,
    variable name or index (negative counts from the deepest). ``filters``: filter
    indices; default: the ``n_filters`` whose distance changed most — from the
    per-filter distances of ``results`` (a results folder or Dataset) when they
    cover this store and layer, else from the activations (relative L2 change of
    the filter's mean map between the first and last shown epoch). ``classes``:
    names or indices (default: the first 3). ``samples``: sample ids for the
    sample-based figures (default: per shown class, up to 2, the image on which
    the shown filters respond most at the last epoch). ``epochs``: epochs to show
    (default all, or 8 evenly spaced incl. source and last). ``out``: folder.
    One figure shows at most :data:`MAX_FILTERS` filters, :data:`MAX_GRID_ROWS`
    class x filter rows and :data:`MAX_EPOCHS` epochs: more explicit choices are an
    error, a larger ``n_filters`` is capped (with a logged note).

    Writes ``class_<store>_<layer>.png`` (rows = (class, filter), columns = epochs)
    and ``sample_<store>_<layer>_s<id>.png`` (rows = filters, columns = image +
    epochs; ``<store>`` is the folder stem, with a hash suffix when ``out`` holds
    figures of another store of that stem: :func:`figure_stem`), records them with
    captions in ``out/figures.json`` and returns their paths. Only the needed slices
    of the store are read; nothing is drawn before every argument is checked, and
    the figures appear in ``out`` together once all are drawn.
    """
    from ..store import decoding
    from . import heatmaps, patches

    # every flag is checked before anything is read in bulk or drawn
    ds, path = open_any_store(store)
    res = open_any_results(results)
    out = check_out(out, inputs=[p for p in (path, (ds.attrs.get("probe") or {}).get("data_dir")) if p])
    name, var, index = resolve_layer(ds, layer)
    rf = receptive_field_of(ds, var, name)
    class_idx = resolve_classes(ds, classes)
    epoch_pos = resolve_epochs(ds, epochs)
    chosen = resolve_filters(ds, var, filters) if filters is not None and len(filters) > 0 else None
    n_channels = int(ds.sizes[f"{var}_channel"])
    limit = min(MAX_FILTERS, MAX_GRID_ROWS // len(class_idx))
    if chosen is not None and len(chosen) > limit:
        raise FtdynError(f"--filter: {len(chosen)} filters with {len(class_idx)} classes; one figure shows at most "
                         f"{MAX_FILTERS} filters and {MAX_GRID_ROWS} class x filter rows. Pass fewer --filter or "
                         "--class and run visualize again for the rest.")
    if chosen is None:
        if n_filters < 1:
            raise FtdynError(f"--n-filters {n_filters}: must be at least 1.")
        if n_filters > min(n_channels, limit):
            log.info(f"--n-filters {n_filters} capped at {min(n_channels, limit)}: layer {name} has {n_channels} "
                     f"filters, and one figure shows at most {MAX_FILTERS} filters and {MAX_GRID_ROWS} class x filter "
                     "rows.")
            n_filters = min(n_channels, limit)
    sample_pos = resolve_samples(ds, samples) if samples is not None and len(samples) > 0 else None
    experiment = match_experiment(res, ds, path)
    if res is not None and experiment is None:  # another store's distances would rank the filters
        raise FtdynError(f"--results {'(a Dataset)' if res is results else results}: the store "
                         f"{path or '(a Dataset without a path)'} is not among its experiments "
                         f"[{results_stores(res)}]; give the results of `ftdyn analyze` on this store, or leave "
                         "--results out.")
    label = store_label(ds, path)
    context = {"store": str(path) if path is not None else None, "store_label": label, "layer": name,
               "layer_index": index, "model": ds.attrs.get("model"), "dataset": ds.attrs.get("dataset"),
               "experiment": experiment}
    stem = f"{figure_stem(out, label, path)}_{slug(var)}"
    if experiment is not None:  # stores of several experiments may share a folder name
        label = f"{experiment} ({label})"
    # the folder lock: a second visualize or report into it is refused; a damaged chunk: one line
    with folder_lock(out), decoding(path or "store", f"layer {name}"):
        labels = np.asarray(ds["label"].values)
        class_samples = np.flatnonzero(np.isin(labels, class_idx))

        if chosen is not None:
            why = "filters chosen by the user"
        else:
            chosen, why = patches.choose_filters(ds, var, name, n_filters, results=res, experiment=experiment,
                                                 sample_positions=class_samples, epoch_positions=epoch_pos)
        grid = patches.class_based(ds, var, name, rf, filters=chosen, classes=class_idx, epoch_positions=epoch_pos)
        if sample_pos is not None:
            sample_why = "samples chosen by the user"
        else:
            sample_pos = patches.strongest_samples(grid, per_class=1)[:DEFAULT_SAMPLES]
            sample_why = ("auto-chosen: for each shown class (up to 2) the probe image on which the shown filters "
                          "respond most (sum of their map maxima at the last shown epoch)")

        entries = []
        with staging(out) as tmp:
            cls_name = f"class_{stem}.png"
            patches.plot_class_grid(grid, tmp / cls_name,
                                    title=f"{label} · {name}: class-based receptive-field averages")
            entries.append({**context, "file": cls_name, "formats": [], "kind": "class",
                            "title": f"Class-based: {label}, layer {name}",
                            "caption": patches.caption(grid, rf, why=why, label=label)})
            for pos in sample_pos:
                sgrid = heatmaps.sample_based(ds, var, name, rf, sample_position=pos, filters=chosen,
                                              epoch_positions=epoch_pos)
                sname = f"sample_{stem}_s{sgrid.sample_id}.png"
                heatmaps.plot_sample_grid(sgrid, tmp / sname, title=f"{label} · {name}: sample {sgrid.sample_id} "
                                                                    f"({sgrid.class_name})")
                entries.append({**context, "file": sname, "formats": [], "kind": "sample",
                                "title": f"Sample-based: {label}, layer {name}, sample {sgrid.sample_id}",
                                "caption": heatmaps.caption(sgrid, rf, why=why, sample_why=sample_why, label=label)})
            for e in entries:
                os.replace(tmp / e["file"], out / e["file"])
        record(out, entries)
    return [out / e["file"] for e in entries]


def default_figures(results_dir, stores: Sequence[str | Path] | None, out, *, n_filters: int = 4) -> list[Path]:
    """The default figure set into ``out`` (e.g. ``<results>/figures``).

    From the results in ``results_dir`` (a folder, results.zarr or Dataset; may be
    None): distance curves per metric and experiment, distance vs layer depth,
    and the checkpoint x checkpoint matrices. For each store: the class-based and
    sample-based grids of its shallowest and deepest layer with auto-chosen
    filters. A store that cannot be visualized (e.g. no receptive-field geometry)
    is skipped with an :class:`~ftdyn.errors.FtdynWarning` and a note in the index, so the
    rest is still made. Returns the written PNG/SVG paths.
    """
    from . import curves
    from . import interpret as interpret_figures
    from ..store import store_layers

    out = Path(out)
    res = open_any_results(results_dir)
    written: list[Path] = []
    if res is not None:
        written += curves.plot_all(res, out)
        written += interpret_figures.plot_all(res, out)  # relative curves, probes, convergence (when computed)
    for store in track(stores or [], "class/sample figures"):
        try:
            ds, path = open_any_store(store)
            layers = [p[0] for p in store_layers(ds)]
            picks = list(dict.fromkeys([layers[0], layers[-1]]))
            for layer in picks:
                written += visualize(ds if path is None else path, layer=layer, results=res, out=out,
                                     n_filters=n_filters)
        except FtdynError as exc:
            warnings.warn(f"skipped class/sample figures for {store}: {exc}", FtdynWarning)
            record(out, [{"file": None, "kind": "note", "store": str(store),
                          "caption": f"No class/sample figures for {store}: {exc}"}])
    return written
