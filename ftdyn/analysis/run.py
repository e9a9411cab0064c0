"""``analyze()``: resolve, plan, compute, collect and write the results atomically."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import os
import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from .. import metrics as M
from .. import views as V
from .._version import __version__
from ..devices import resolve_device
from ..errors import FtdynError, FtdynWarning, check_output_folder
from ..outputs import current_set, folder_lock, remove_stale, write_result_set
from ..progress import stage
from ..results import (RESULTS_FORMAT, RESULTS_STORE, TABLE_NAMES, open_results, save_results_store,
                       validate_results, write_tables)
from .collect import collect, to_dataset
from .graph import build_graph, compute
from .interpret import extra_pairs, interpretation, warn_unconverged
from .inputs import DEBIASED_CKA, DEFAULT_ALPHA, Args, Experiment, default_memory, open_experiments, parse_memory, resolve_args
from .plan import plan_analysis
from .tasks import trim

log = logging.getLogger(__name__)


def physical_memory() -> int | None:
    """Bytes of memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None



def _degenerate(exps: list[Experiment], args: Args) -> dict[tuple[int, str, int], str]:
    """(experiment, metric, layer) -> why the metric is 0 for any pair of checkpoints there,
    decided from each view's matrix shape (:func:`ftdyn.metrics.degenerate_reason`)."""
    out = {}
    for e, exp in enumerate(exps):
        for l, (_, src) in enumerate(exp.layers):
            for m in args.metrics:
                view = args.views[m]
                _, rows, cols = V.matrix_shape(view, src.n, src.channels, src.height, src.width)
                center = args.map_center if view == "map" and m != "pwsm" else "columns"
                reason = M.degenerate_reason("cka" if m == DEBIASED_CKA else m, rows, cols, args.alpha, center)
                if m == DEBIASED_CKA and rows < 4:
                    reason = reason or f"{rows} row(s) per matrix: debiased CKA needs at least 4"
                if reason:
                    out[(e, m, l)] = reason
    return out


def _warn_degenerate(exps: list[Experiment], args: Args, degenerate: dict) -> dict[str, list[str]]:
    """One warning line per layer; returns {metric: ["experiment:layer", ...]} for the attrs."""
    names = {m: [] for m in args.metrics}
    layers: dict[tuple[int, int], list[str]] = {}
    for (e, m, l), reason in degenerate.items():
        names[m].append(f"{exps[e].name}:{exps[e].layers[l][0]}")
        layers.setdefault((e, l), []).append(f"{m} on {args.views[m]} ({reason})")
    for (e, l), what in layers.items():
        warnings.warn(f"{exps[e].name} layer {exps[e].layers[l][0]}: degenerate (0 whatever the "
                      f"checkpoints): {'; '.join(what)}; left undefined (NaN). Use more probe images, another --view"
                      f"{' or --alpha 1' if any('alpha=0' in w for w in what) else ''}.", FtdynWarning)
    return names


def _undefined(rec: dict) -> None:
    """Blank a record whose values carry no information (NaN, counted in n_nan), so that a
    degenerate 0 never reads as "unchanged" or enters reusability and agreement."""
    for key in ("value", "traj", "filter", "ci", "cells"):
        if key in rec:
            rec[key] = np.full(np.shape(rec[key]), np.nan)
    rec["n_nan"] = np.full(np.shape(rec["n_nan"]), rec["n_filters"] if "filter" in rec else 1)


# ========================================================================= output
def _analysis_key(args: Args, exps: list[Experiment]) -> str:
    key = args.key()
    key["layers"] = [[module for module, _ in e.layers] for e in exps]  # resolved: names or variables alike
    payload = {"args": key, "stores": [e.fingerprint["sha256"] for e in exps],
               "format": RESULTS_FORMAT, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _existing(out: Path) -> tuple[str | None, str | None]:
    """(analysis key, problem) of the results in ``out``: the key from the current set's
    manifest, with the first file that fails verification; (None, None) when there are none."""
    manifest, problem = current_set(out)
    if manifest is not None or problem is not None:
        return (manifest or {}).get("analysis_key"), problem
    meta = out / RESULTS_STORE / "zarr.json"  # written in place by an older ftdyn: nothing vouches for the CSVs
    if out.joinpath(RESULTS_STORE).is_symlink() or not meta.is_file():
        return None, None
    try:
        key = json.loads(meta.read_text()).get("attributes", {}).get("analysis_key")
    except (OSError, ValueError, AttributeError):
        key = None
    return key, "no manifest vouches for them: written by an older ftdyn, or copied without their links"


_PRODUCTS = (*TABLE_NAMES, RESULTS_STORE)


def _write(ds: xr.Dataset, out: Path) -> None:
    """Make ``ds`` (results.zarr and the CSV tables) the current result set of ``out`` in one step."""
    def fill(folder: Path) -> None:
        save_results_store(ds, folder / RESULTS_STORE)
        write_tables(ds, folder)

    info = {"analysis_key": ds.attrs["analysis_key"], "arguments": json.loads(ds.attrs["arguments"]),
            "stores": json.loads(ds.attrs["store_fingerprints"]), "ftdyn_version": __version__,
            "created": ds.attrs["created"]}
    write_result_set(out, fill, products=_PRODUCTS, info=info)


def _check_flags(scheduler, memory_limit) -> None:
    """Refused up front: a cluster without its optional package, more memory than the machine has."""
    if isinstance(scheduler, str) and importlib.util.find_spec("distributed") is None:
        raise FtdynError("--scheduler: running on a Dask cluster needs the optional package 'distributed'; install "
                         "it with `pip install 'ftdyn[distributed]'` (or `pip install distributed`).")
    limit, total = parse_memory(memory_limit), physical_memory()
    if limit is not None and total is not None and limit > total:
        raise FtdynError(f"--memory-limit {memory_limit}: more than this machine's {total / 1e9:.1f} GB of memory; "
                         "give at most that (default: half of it).")


# ============================================================================ API
def analyze(stores, *, out, metrics: Sequence[str] | None = None, views=None, alpha: float = DEFAULT_ALPHA,
            reference: int = 0, preset: str = "default", layers: Sequence[str] | None = None, bootstrap: int = 0,
            seed: int = 0, experiment_names: Sequence[str] | None = None, allow_partial: bool = False,
            memory_limit=None, workers: int | None = None, scheduler=None, progress: bool = True,
            overwrite: bool = False, trajectory: str | bool = "auto", device: str = "auto",
            bootstrap_metrics: Sequence[str] | None = None, bootstrap_groups: int | None = None) -> xr.Dataset:
    """Analyze activation stores into ``out`` and return the results Dataset.

    ``stores``: one path or several (one experiment each, labeled "model/dataset" or
    by ``experiment_names``). ``metrics``: names from :data:`ftdyn.metrics.METRICS`
    (default: the preset's). ``views``: one view for all metrics, or ``{metric: view}``
    / ``["metric=view", ...]``. ``alpha``: PWSM α in [0, 1]. ``reference``: the epoch
    every checkpoint is compared with. ``preset``: "default" or "paper-code" (module
    doc). ``layers``: module or variable names (default all). ``bootstrap``: number of
    replicates (0 = off), one image resample each shared by every epoch, layer and view
    (paired: ``delta_ci_low/high``, ``layer_order_p``); ``bootstrap_metrics``: the metrics
    that get replicates (default all; "cka" alone needs no decompositions, the cheap
    choice on a CPU); ``bootstrap_groups``: groups of images resampled (default 32; fewer
    keep fewer statistics). ``memory_limit``: bytes or "1GB". ``workers``: threads.
    ``scheduler``: None (threads), "tcp://host:port" or a ``distributed.Client``.
    ``trajectory``: "auto" | "all" | "reference" (module doc). ``overwrite``: replace
    results of *different* arguments already in ``out``. ``device``: where the float64
    statistics and decompositions run: "auto" (CUDA when present; CPU with a
    ``scheduler``), "cpu", "cuda", "cuda:N". Not part of the arguments that decide
    whether results are up to date (devices agree to rounding).
    """
    _check_flags(scheduler, memory_limit)
    args = resolve_args(metrics, views, alpha, reference, preset, layers, bootstrap, seed, experiment_names,
                         allow_partial, trajectory, bootstrap_metrics, bootstrap_groups)
    dev = torch.device("cpu") if scheduler is not None and str(device).lower() == "auto" else \
        resolve_device(device, float64=True)
    exps = open_experiments(stores, args, str(dev))
    out = Path(out)
    check_output_folder(out, inputs=[e.path for e in exps] + [e.probe_dir for e in exps if e.probe_dir])
    with folder_lock(out):  # held from the "up to date" check until the new set is current
        return _analyze_locked(exps, args, dev, out, memory_limit, workers, scheduler, progress, overwrite)


def _analyze_locked(exps, args, dev, out, memory_limit, workers, scheduler, progress, overwrite) -> xr.Dataset:
    key = _analysis_key(args, exps)
    remove_stale(out)  # what a killed run left: unfinished or replaced sets, older versions' temporaries
    old, problem = _existing(out)
    if old is not None and old != key and not overwrite:
        raise FtdynError(f"--out: {out} holds results of other arguments or stores; pass --overwrite to "
                         "replace them, or choose another folder.")
    if old == key and problem is None:
        stage(f"{out} is up to date (same arguments and stores; every file verified); nothing to do.")
        return open_results(out)
    if problem is not None:
        log.info(f"the results in {out} cannot be reused ({problem}); computing them again.")

    limit = parse_memory(memory_limit) or default_memory()
    threads, jobs = plan_analysis(exps, args, dev, limit, workers)

    degenerate = _degenerate(exps, args)
    degenerate_names = _warn_degenerate(exps, args, degenerate)
    outputs = build_graph(exps, args, jobs, inplace=scheduler is None)
    results = compute(outputs, threads=threads, scheduler=scheduler, progress=progress)
    trim()
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # the statistics are gone: hand the cached blocks back to the driver
    recs = collect(exps, args, jobs, list(results))
    for e, m, l in degenerate:
        _undefined(recs[(e, m, l)])
    extra = extra_pairs(exps, args, dev, limit, workers, scheduler, progress, degenerate)
    plan = [{"experiment": exps[j.exp].name, "layer": exps[j.exp].layers[j.layer][0], "view": j.view,
             "metrics": j.metrics, "side": j.side, "pairs": "all" if j.mode == "all" else "reference",
             "filter_groups": len(j.groups), "checkpoint_passes": len(j.ckpt_groups) if j.side == "row" else None,
             "bootstrap_units": (j.units if j.side == "row" else "images")
             if args.bootstrap else None, "gram_panels": j.panels if j.side == "gram" else None,
             "task_bytes_estimate": int(j.task_bytes)} for j in jobs]
    attrs = {
        "ftdyn_results_format": RESULTS_FORMAT,
        "ftdyn_version": __version__,
        "reference_epoch": args.reference,
        "preset": args.preset,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "alpha": args.alpha,
        "map_average": args.map_average,
        "map_center": args.map_center,
        "trajectory": args.trajectory,
        "arguments": json.dumps(args.key(), sort_keys=True),
        "analysis_key": key,
        "store_fingerprints": json.dumps([e.fingerprint for e in exps]),
        "plan": json.dumps(plan),
        **{f"{m}_degenerate": json.dumps(degenerate_names.get(m, [])) for m in dict.fromkeys([*M.METRICS, *args.metrics])},
        "threads": int(threads),
        "device": str(dev),
        "memory_limit": int(limit),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    ds = validate_results(interpretation(exps, args, to_dataset(exps, args, recs, attrs), recs, extra),
                          "analyze")
    _write(ds, out)
    if progress:
        stage(f"results written to {out}")
    warn_unconverged(ds)
    return open_results(out)

