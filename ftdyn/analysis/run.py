"""``analyze()``: validate → plan → execute, the results written atomically.

:func:`make_plan` checks the arguments (an :class:`~ftdyn.config.AnalyzeConfig`), the machine,
the stores and the output folder, and decides the memory plan, without reading a chunk;
:func:`execute` carries the plan out: the "up to date" check, the Dask computation, the
results Dataset and its atomic write.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .._version import __version__
from ..config import AnalyzeConfig, arg, build, describe
from ..devices import resolve_device
from ..errors import FtdynError, FtdynWarning
from ..metrics.registry import METRICS
from ..outputs import check_output_folder, current_set, folder_lock, remove_stale, write_result_set
from ..progress import stage
from ..results import (
    RESULTS_FORMAT,
    RESULTS_STORE,
    TABLE_NAMES,
    open_results,
    save_results_store,
    validate_results,
    write_tables,
)
from ..runtime import require_distributed
from ..views import matrix_shape
from .collect import collect, collect_nested, collect_pooled, to_dataset
from .compare import Comparison, comparison_variables, plan_comparison
from .estimation import degenerate, estimator_names, untrusted
from .graph import build_graph, build_pooled, compute
from .inputs import Experiment, default_memory, open_experiments, physical_memory
from .interpret import (
    Measured,
    ceilings,
    convergence,
    convergence_plan,
    engine_config,
    interpretation,
    warn_unconverged,
    with_baseline,
)
from .plan import Job, bootstrapped, plan_analysis
from .reading import trim

log = logging.getLogger(__name__)


def _degenerate(exps: list[Experiment], args: AnalyzeConfig) -> dict[tuple[int, str, int], str]:
    """(experiment, metric, layer) -> why the metric is 0 for any pair of checkpoints there,
    decided from each view's matrix shape (:func:`ftdyn.analysis.plan.degenerate`)."""
    out = {}
    for e, exp in enumerate(exps):
        for l, (_, src) in enumerate(exp.layers):
            for m in args.metrics:
                reason = degenerate(args, src, m, src.n)
                if reason:
                    out[(e, m, l)] = reason
    return out


def _reliability(exps: list[Experiment], args: AnalyzeConfig) -> dict:
    """The results' ``column_ratio`` and ``unreliable`` (experiment, metric, layer_index) and the
    ``unreliable_reasons`` attr: columns per row of each metric's view on all images, and whether
    the value cannot be trusted there (:func:`~ftdyn.analysis.estimation.untrusted`: degenerate,
    or above the estimator's column/row limit); one warning line counts them."""
    n_layers = max(len(exp.layers) for exp in exps)
    ratio = np.full((len(exps), len(args.metrics), n_layers), np.nan)
    unreliable = np.zeros(ratio.shape, dtype=bool)
    reasons = {}
    for e, exp in enumerate(exps):
        for l, (name, src) in enumerate(exp.layers):
            for mi, m in enumerate(args.metrics):
                _, rows, cols = matrix_shape(
                    args.views[m], src.n, src.channels, src.height, src.width
                )
                ratio[e, mi, l] = cols / rows
                reason = untrusted(args, src, m)
                if reason:
                    unreliable[e, mi, l] = True
                    reasons[f"{exp.name}/{m}/{name}"] = reason
    if reasons:
        warnings.warn(
            f"{len(reasons)} of {unreliable.size} (experiment, metric, layer) distances are"
            " unreliable at this probe-set size (too many columns per image, or degenerate);"
            " they are marked in the results and figures (results attrs 'unreliable_reasons').",
            FtdynWarning,
            stacklevel=2,
        )
    dims = ("experiment", "metric", "layer_index")
    variables = {
        "column_ratio": (dims, ratio, {"description": "columns per row of the metric's view"}),
        "unreliable": (dims, unreliable, {"description": "the value cannot be trusted there"}),
    }
    return variables, json.dumps(reasons)


def _warn_degenerate(
    exps: list[Experiment], args: AnalyzeConfig, degenerate: dict
) -> dict[str, list[str]]:
    """One warning line per layer; returns {metric: ["experiment:layer", ...]} for the attrs."""
    names = {m: [] for m in args.metrics}
    layers: dict[tuple[int, int], list[str]] = {}
    for (e, m, l), reason in degenerate.items():
        names[m].append(f"{exps[e].name}:{exps[e].layers[l][0]}")
        layers.setdefault((e, l), []).append(f"{m} on {args.views[m]} ({reason})")
    for (e, l), what in layers.items():
        warnings.warn(
            f"{exps[e].name} layer {exps[e].layers[l][0]}: degenerate (0 whatever the "
            f"checkpoints): {'; '.join(what)}; left undefined (NaN). Use more probe images, another"
            f" {arg('views')}"
            f"{' or ' + arg('alpha', 1) if any('alpha=0' in w for w in what) else ''}.",
            FtdynWarning,
            stacklevel=2,
        )
    return names


# ========================================================================= output
def _analysis_key(args: AnalyzeConfig, exps: list[Experiment]) -> str:
    """The hash that decides whether saved results are up to date: the config's identity (with
    the layers as resolved), the stores' fingerprints, the results format and ftdyn's version."""
    key = args.identity()
    key["layers"] = [
        [module for module, _ in e.layers] for e in exps
    ]  # resolved: names or variables alike
    payload = {
        "args": key,
        "stores": [e.fingerprint["sha256"] for e in exps],
        "format": RESULTS_FORMAT,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _existing(out: Path) -> tuple[str | None, str | None]:
    """(analysis key, problem) of the results in ``out``: the key from the current set's
    manifest, with the first file that fails verification; (None, None) when there are none."""
    manifest, problem = current_set(out)
    if manifest is not None or problem is not None:
        return (manifest or {}).get("analysis_key"), problem
    # written in place by an older ftdyn: nothing vouches for the CSVs
    meta = out / RESULTS_STORE / "zarr.json"
    if out.joinpath(RESULTS_STORE).is_symlink() or not meta.is_file():
        return None, None
    try:
        key = json.loads(meta.read_text()).get("attributes", {}).get("analysis_key")
    except (OSError, ValueError, AttributeError):
        key = None
    return (
        key,
        "no manifest vouches for them: written by an older ftdyn, or copied without their links",
    )


_PRODUCTS = (*TABLE_NAMES, RESULTS_STORE)


def _write(ds: xr.Dataset, out: Path) -> None:
    """Make ``ds`` (results.zarr and the CSV tables) the current result set of ``out`` in
    one step."""

    def fill(folder: Path) -> None:
        save_results_store(ds, folder / RESULTS_STORE)
        write_tables(ds, folder)

    info = {
        "analysis_key": ds.attrs["analysis_key"],
        "arguments": json.loads(ds.attrs["arguments"]),
        "stores": json.loads(ds.attrs["store_fingerprints"]),
        "ftdyn_version": __version__,
        "created": ds.attrs["created"],
    }
    write_result_set(out, fill, products=_PRODUCTS, info=info)


def _check_machine(config: AnalyzeConfig) -> None:
    """Refused up front: a cluster without its optional package, more memory than the
    machine has."""
    require_distributed(config.scheduler)
    limit, total = config.memory_bytes, physical_memory()
    if limit is not None and total is not None and limit > total:
        raise FtdynError(
            f"{arg('memory_limit', config.memory_limit)}: more than this machine's"
            f" {total / 1e9:.1f} GB of memory; give at most that (default: half of it)."
        )


# ============================================================================ API
def analyze(stores, *, out, config: AnalyzeConfig | None = None, **options: Any) -> xr.Dataset:
    """Analyze activation stores into ``out`` and return the results Dataset.

    ``stores``: one path or several (one experiment each, labeled "model/dataset" or
    by ``experiment_names``). The options are the fields of :class:`~ftdyn.config.AnalyzeConfig`
    (listed below), given as keyword arguments (``analyze(s, out=o, metrics=["cka"])``) or as
    ``config=`` (keyword arguments then override its fields); they mirror ``ftdyn analyze``.
    ``metrics``: names from :data:`ftdyn.config.METRIC_NAMES` (default: the preset's).
    ``views``: one view for all metrics, or ``{metric: view}`` / ``["metric=view", ...]``.
    ``preset``: "default" or "paper-code" (module doc of :mod:`ftdyn.analysis`).
    ``bootstrap``: number of replicates (0 = off), one image resample each shared by every
    epoch, layer and view (paired: ``delta_ci_low/high``, ``layer_order_p``).
    ``memory_limit``: bytes or "1GB". ``scheduler``: None (threads), "tcp://host:port" or a
    ``distributed.Client``. ``trajectory``: "auto" | "all" | "reference" (or True/False).
    ``overwrite``: replace results of *different* arguments already in ``out``. ``device`` is
    not part of the arguments that decide whether results are up to date (devices agree to
    rounding).

    Same as ``execute(make_plan(stores, out=out, ...))``.
    """
    return execute(make_plan(stores, out=out, config=config, **options))


@dataclass(frozen=True)
class EngineRun:
    """One run of the engine: its experiments (positions as the tasks read them), its config
    and one :class:`~ftdyn.analysis.plan.Job` per (experiment, layer, view) it computes."""

    experiments: list[Experiment]
    config: AnalyzeConfig
    jobs: list[Job]


@dataclass(frozen=True)
class AnalysisPlan:
    """What :func:`execute` will do, decided before any chunk is read: the experiments, the
    device, the memory plan (``threads``; the ``main`` run: every epoch and the random-init
    baseline, and the ``convergence`` check's run for the jobs whose statistics cannot give
    its subsets: :func:`~ftdyn.analysis.interpret.convergence_plan`), the degenerate
    (experiment, metric, layer) and the analysis ``key`` that says whether results already in
    ``out`` are these."""

    config: AnalyzeConfig
    experiments: list[Experiment]
    out: Path
    device: torch.device
    memory_limit: int  # bytes
    threads: int
    main: EngineRun
    convergence: EngineRun
    #: run-vs-run distances: which runs are compared, and the engine run of their matched epochs
    comparison: Comparison
    runs: EngineRun
    degenerate: dict[tuple[int, str, int], str]
    key: str

    @property
    def jobs(self) -> list[Job]:
        """The main run's jobs."""
        return self.main.jobs

    def summary(self) -> list[dict[str, Any]]:
        """One line per job, as the results record it (``attrs["plan"]``)."""
        exps = self.experiments
        return [
            {
                "experiment": exps[j.exp].name,
                "layer": exps[j.exp].layers[j.layer][0],
                "view": j.view,
                "metrics": j.metrics,
                "side": j.side,
                "pairs": "all" if j.mode == "all" else "reference",
                "filter_groups": len(j.groups),
                "checkpoint_passes": len(j.ckpt_groups) if j.side == "row" else None,
                "bootstrap_units": (
                    (j.units if j.side == "row" else "images")
                    if bootstrapped(self.config, j.metrics)
                    else None
                ),
                # row side: the statistics' groups of images (bootstrap, convergence subsets)
                "image_groups": j.units if j.side == "row" else None,
                # row side: XᵀX and YᵀY whole, or their diagonals (Procrustes alone)
                "self_products": ("diagonal" if j.diagonal else "full")
                if j.side == "row"
                else None,
                "gram_panels": j.panels if j.side == "gram" else None,
                # the view's metrics whose convergence subsets this job gives (a row-side job
                # without groups of images: through the convergence check's own run)
                "convergence_metrics": j.convergence,
                # the linear probes' features kept while reading (plan.mark_pooled)
                "pooled_features": j.pooled,
                "task_bytes_estimate": int(j.task_bytes),
            }
            for j in self.jobs
        ]


def make_plan(stores, *, out, config: AnalyzeConfig | None = None, **options: Any) -> AnalysisPlan:
    """Validate the arguments of :func:`analyze`, open the stores and plan the computation.
    Reads the stores' metadata only and writes nothing."""
    config = build(AnalyzeConfig, config, **options)
    _check_machine(config)
    dev = (
        torch.device("cpu")
        if config.scheduler is not None and str(config.device).lower() == "auto"
        else resolve_device(config.device, float64=True)
    )
    exps = open_experiments(stores, config, str(dev))
    out = Path(out)
    check_output_folder(
        out, inputs=[e.path for e in exps] + [e.probe_dir for e in exps if e.probe_dir]
    )
    limit = config.memory_bytes or default_memory()
    engine, engine_args = with_baseline(exps), engine_config(config)
    threads, jobs = plan_analysis(engine, engine_args, dev, limit, config.workers)
    pairs, conv_args, conv_threads, conv_jobs = convergence_plan(
        exps, config, jobs, dev, limit, config.workers
    )
    comparison = plan_comparison(exps, config)
    runs_args = dataclasses.replace(config, trajectory="reference", heldout=False)
    runs_threads, runs_jobs = plan_analysis(
        comparison.experiments, runs_args, dev, limit, config.workers
    )
    for job in runs_jobs:  # the linear probes read the runs' own stores
        job.pooled = False
    return AnalysisPlan(
        config=config,
        experiments=exps,
        out=out,
        device=dev,
        memory_limit=limit,
        # the runs compute together: at most as many tasks at once as the tightest allows
        threads=min(threads, conv_threads, runs_threads),
        main=EngineRun(engine, engine_args, jobs),
        convergence=EngineRun(pairs, conv_args, conv_jobs),
        comparison=comparison,
        runs=EngineRun(comparison.experiments, runs_args, runs_jobs),
        degenerate=_degenerate(exps, config),
        key=_analysis_key(config, exps),
    )


def execute(plan: AnalysisPlan) -> xr.Dataset:
    """Carry out ``plan``: reuse the results in ``plan.out`` when they are up to date, else
    compute them and make them the folder's current set in one step. Returns the results."""
    with folder_lock(plan.out):  # held from the "up to date" check until the new set is current
        if _up_to_date(plan):
            return open_results(plan.out)
        ds = _compute(plan)
        _write(ds, plan.out)
        if plan.config.progress:
            stage(f"results written to {plan.out}")
        warn_unconverged(ds)
        return open_results(plan.out)


def _up_to_date(plan: AnalysisPlan) -> bool:
    """Whether ``plan.out`` holds these results, every file verified; refuses results of other
    arguments or stores unless ``overwrite``."""
    out = plan.out
    # what a killed run left: unfinished or replaced sets, older versions' temporaries
    remove_stale(out)
    old, problem = _existing(out)
    if old is not None and old != plan.key and not plan.config.overwrite:
        raise FtdynError(
            f"{arg('out')}: {out} holds results of other arguments or stores; pass"
            f" {arg('overwrite')} to replace them, or choose another folder."
        )
    if old == plan.key and problem is None:
        stage(
            f"{out} is up to date (same arguments and stores; every file verified); nothing to do."
        )
        return True
    if problem is not None:
        log.info(f"the results in {out} cannot be reused ({problem}); computing them again.")
    return False


def _compute(plan: AnalysisPlan) -> xr.Dataset:
    """The results Dataset of ``plan``: both runs' Dask computation, the baseline split off as
    the ceiling, the degenerate values blanked, the tables and the interpretation."""
    config, exps, main, conv = plan.config, plan.experiments, plan.main, plan.convergence
    degenerate_names = _warn_degenerate(exps, config, plan.degenerate)
    inplace = config.scheduler is None
    outputs = build_graph(main.experiments, main.config, main.jobs, inplace)
    conv_outputs = build_graph(conv.experiments, conv.config, conv.jobs, inplace, name="c")
    runs = plan.runs
    runs_outputs = build_graph(runs.experiments, runs.config, runs.jobs, inplace, name="r")
    pooled = build_pooled(main.experiments, main.jobs)
    results = compute(
        outputs + conv_outputs + runs_outputs + list(pooled.values()),
        threads=plan.threads,
        scheduler=config.scheduler,
        progress=config.progress,
    )
    trim()
    if plan.device.type == "cuda":
        # the statistics are gone: hand the cached blocks back to the driver
        torch.cuda.empty_cache()
    recs = collect(main.experiments, main.config, main.jobs, list(results[: len(outputs)]))
    ceiling, missing = ceilings(exps, main.experiments, config, recs)
    for e, m, l in plan.degenerate:
        recs[(e, m, l)].make_undefined()
    n_main, n_conv = len(outputs), len(conv_outputs)
    nested = collect_nested(conv.experiments, conv.jobs, list(results[n_main : n_main + n_conv]))
    conv_values = convergence(exps, config, recs, nested, plan.degenerate)
    n_runs = len(runs_outputs)
    ours = results[n_main + n_conv : n_main + n_conv + n_runs]
    run_recs = collect(runs.experiments, runs.config, runs.jobs, list(ours))
    pooled = {
        **dict(zip(pooled, results[n_main + n_conv + n_runs :], strict=True)),
        **collect_pooled(main.experiments, main.jobs, list(results[:n_main])),
    }
    extra = Measured(
        ceiling=ceiling,
        missing=missing,
        convergence=conv_values,
        pooled=[pooled[(e, l)] for e, exp in enumerate(exps) for l in range(len(exp.layers))],
    )
    ds = to_dataset(exps, config, recs, _attrs(plan, degenerate_names))
    reliability, reasons = _reliability(exps, config)
    ds = ds.assign(reliability)
    ds.attrs["unreliable_reasons"] = reasons
    ds = interpretation(exps, config, ds, recs, extra)
    return validate_results(_compared(plan, ds, recs, run_recs), "analyze")


def _compared(plan: AnalysisPlan, ds: xr.Dataset, recs, run_recs) -> xr.Dataset:
    """``ds`` with the run-vs-run distances, the seed floor and the departure epochs
    (:mod:`ftdyn.analysis.compare`); the pairs of a degenerate (experiment, metric, layer) are
    undefined like its distances."""
    comp = plan.comparison
    for x, (pair, _) in enumerate(comp.cells):
        for e, m, l in plan.degenerate:
            if e == comp.pairs[pair][0]:
                run_recs[(x, m, l)].make_undefined()
    epochs = [int(x) for x in ds["epoch"].values]
    data, coords, attrs = comparison_variables(
        plan.experiments,
        plan.config,
        comp,
        (recs, run_recs),
        np.asarray(ds["unreliable"].values, dtype=bool),
        epochs,
    )
    out = ds.assign_coords(coords).assign(data)
    out.attrs.update(attrs)
    return out


def _attrs(plan: AnalysisPlan, degenerate_names: dict[str, list[str]]) -> dict[str, Any]:
    """The results' attrs: format, arguments (the config's identity), analysis key, store
    fingerprints, the plan and where it ran."""
    config = plan.config
    return {
        "ftdyn_results_format": RESULTS_FORMAT,
        "ftdyn_version": __version__,
        "reference_epoch": config.reference,
        "preset": config.preset,
        "bootstrap": config.bootstrap,
        "seed": config.seed,
        "alpha": config.alpha,
        "map_average": config.map_average,
        "map_center": config.map_center,
        "trajectory": config.trajectory,
        "estimators": json.dumps(estimator_names(config)),
        "arguments": json.dumps(config.identity(), sort_keys=True),
        "analysis_key": plan.key,
        "store_fingerprints": json.dumps([e.fingerprint for e in plan.experiments]),
        "plan": json.dumps(plan.summary()),
        **{
            f"{m}_degenerate": json.dumps(degenerate_names.get(m, []))
            for m in dict.fromkeys([*METRICS, *config.metrics])
        },
        "threads": int(plan.threads),
        "device": str(plan.device),
        "memory_limit": int(plan.memory_limit),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


analyze.__doc__ += "\n    Options (:class:`~ftdyn.config.AnalyzeConfig`):\n\n" + "\n".join(
    f"    * {line}" for line in describe(AnalyzeConfig).splitlines()
)
