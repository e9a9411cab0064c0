"""What makes a distance interpretable: a ceiling, paired significance and linear probes.

* **Ceiling** ``ceiling`` (experiment, metric, layer_index): the distance between the
  reference and the store's random-init baseline (``ftdyn extract --random-init-baseline``,
  a seeded untrained network of the same architecture on the same images), computed by the
  same engine, views and plan as the distances (one more pair per layer).
  ``relative_distance`` = distance / ceiling: 0 = unchanged, 1 = as far as an untrained
  network. NaN (with ``attrs["relative_note"]``) when the store has no baseline. The baseline
  is one more checkpoint of the main pass (:func:`with_baseline`).
* **Convergence** ``convergence`` (experiment, metric, layer_index, fraction): the distance
  at the last epoch on nested seeded subsets of the images (1/4, 1/2, all: the first ⌈f·U⌉ of
  U seeded groups of :func:`ftdyn.summary.shared_units`, U the bootstrap's groups where a job
  has at least 4, else 4), from the main pass's statistics per group (a row-side job without
  bootstrap keeps the 4 groups where that costs no pass; a Gram-side job gives them for every
  metric of its view); only the other row-side jobs take a second, smaller run over the
  reference and the last epoch (:func:`convergence_plan`). ``converged`` and ``images_needed``:
  :func:`ftdyn.summary.convergence_verdict` (the change from 1/2 to all within the bootstrap
  half-width, else the subsets' noise, or :data:`CONVERGENCE_TOL` of the ceiling, else of the
  metric's range); one warning line counts those that have not (:func:`warn_unconverged`).
* **Paired significance** (``bootstrap=N``): every replicate resamples the images once and
  evaluates every epoch and layer on that resample (:func:`ftdyn.summary.shared_resample`), so
  ``delta_ci_low/high`` (experiment, metric, layer_index, epoch), the 95 % interval of
  distance(t) − distance(t−1), and ``layer_order_p`` (experiment, metric, layer_index,
  layer_index_other), the two-sided bootstrap p-value of "the last-epoch distances of the two
  layers differ", are paired differences.
* **Linear probes** ``probe_accuracy`` (experiment, layer_index, epoch): stratified 5-fold
  (seeded) accuracy of a ridge classifier of the probe labels from the layer's spatially
  pooled activations (images × channels, standardized; :func:`ftdyn.metrics.probe.linear_probe`),
  ``probe_accuracy_random_init`` (experiment, layer_index) the same on the baseline, and
  ``probe_chance`` (experiment): the most frequent class's share. The pooled features come
  from the main run: kept by a row-side job of the layer as it reads each block
  (:func:`~ftdyn.analysis.plan.mark_pooled`), else read by a task of their own
  (:func:`~ftdyn.analysis.maps.pooled_leaf`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import xarray as xr

from ..config import AnalyzeConfig
from ..errors import ConvergenceWarning
from ..metrics.probe import linear_probe
from ..store import has_random_init
from ..summary import CONVERGENCE_TOLERANCE, convergence_verdict, percentile_interval, reusability
from .collect import Records
from .estimation import subsets_degenerate
from .inputs import BASELINE, Experiment
from .plan import (
    NESTED_FRACTIONS,
    NESTED_UNITS,
    Job,
    convergence_counts,
    convergence_units,
    plan_analysis,
    subset_sizes,
)

#: the convergence verdict's tolerance, a share of the ceiling (else of the metric's range)
CONVERGENCE_TOL = CONVERGENCE_TOLERANCE
#: the span of a metric's values where it is not [0, 1] (PWSM's angle, in radians)
METRIC_RANGE = {"pwsm": np.pi / 2}
#: folds and ridge of the linear probes (features standardized on the training folds)
PROBE_FOLDS = 5
PROBE_RIDGE = 1.0
#: how relative values are computed (results attrs; the report prints it)
RELATIVE_NOTE = (
    "relative_distance = distance / ceiling; ceiling = distance(reference, a seeded random-init "
    "network of the same architecture) on the same probe images, metric and view"
)
NO_BASELINE_NOTE = (
    "no random-init baseline in {stores}: ceiling and relative_distance are NaN; add one with "
    "`ftdyn extract ... --random-init-baseline` (same command as before) and analyze again"
)


# ------------------------------------------------------- ceiling and convergence
def with_baseline(exps: list[Experiment]) -> list[Experiment]:
    """The experiments as the engine runs them: the store's random-init baseline, where there is
    one, as one more checkpoint after the epochs: the ceiling is one more pair per layer of the
    same pass (no replicates, not in the trajectory: :func:`engine_config`)."""
    return [
        dataclasses.replace(e, epochs=[*e.epochs, BASELINE], ckpt_index=[*e.ckpt_index, BASELINE])
        if has_random_init(e.path)
        else e
        for e in exps
    ]


def engine_config(args: AnalyzeConfig) -> AnalyzeConfig:
    """``args`` for the experiments of :func:`with_baseline`."""
    return dataclasses.replace(args, skip_replicates=(BASELINE,))


def convergence_plan(
    exps: list[Experiment], args: AnalyzeConfig, jobs: list[Job], dev, limit: int, workers
) -> tuple[list[Experiment], AnalyzeConfig, int, list[Job]]:
    """(experiments, config, threads, jobs) of the convergence check's own run, for the row-side
    jobs of the main plan (``jobs``) whose statistics hold fewer than NESTED_UNITS groups of
    images (no bootstrap of their metrics): the reference and the last epoch only, statistics
    per seeded group, only the subsets' values. Every other job gives its subsets itself."""
    only = [
        (j.exp, j.layer, j.view, tuple(j.metrics))
        for j in jobs
        if j.side == "row"
        and j.convergence
        and j.units < NESTED_UNITS
        and not _subsets_degenerate(exps[j.exp], j, args).all()
    ]
    pairs = [
        dataclasses.replace(
            e,
            epochs=[e.epochs[e.ref], e.epochs[e.last]],
            ckpt_index=[e.ckpt_index[e.ref], e.ckpt_index[e.last]],
            ref=0,
        )
        for e in exps
    ]
    config = dataclasses.replace(
        args, bootstrap=0, bootstrap_metrics=None, nested=True, trajectory="reference"
    )
    threads, conv_jobs = plan_analysis(pairs, config, dev, limit, workers, only=only)
    return pairs, config, threads, conv_jobs


def _subsets_degenerate(exp: Experiment, job: Job, args: AnalyzeConfig) -> np.ndarray:
    """(metrics, subsets) degenerate in the convergence run of ``job`` (where all are, the job
    is not run: e.g. PWSM with α = 0 on the channels of a layer with more channels than the
    rows of half the images)."""
    src = exp.layers[job.layer][1]
    units = convergence_units(src.n, args.seed, exp.draws)
    return subsets_degenerate(
        args, src, job.metrics, subset_sizes(convergence_counts(src.n), units)
    )


def ceilings(
    exps: list[Experiment], engine: list[Experiment], args: AnalyzeConfig, recs: Records
) -> tuple[np.ndarray, list[str]]:
    """Split the baseline off the records of the ``engine``'s experiments
    (:func:`with_baseline`): the ceiling (experiment, metric, layer), NaN without a baseline,
    and the stores that have none."""
    E, Mn, Lmax = len(exps), len(args.metrics), max(len(e.layers) for e in exps)
    ceiling = np.full((E, Mn, Lmax), np.nan)
    missing = []
    for e, exp in enumerate(exps):
        if BASELINE not in engine[e].epochs:
            missing.append(str(exp.path))
            continue
        for mi, m in enumerate(args.metrics):
            for l in range(len(exp.layers)):
                ceiling[e, mi, l] = recs[(e, m, l)].split_baseline(len(exp.epochs))
    return ceiling, missing


@dataclasses.dataclass
class Measured:
    """What :func:`interpretation` needs beside the records and the Dataset."""

    ceiling: np.ndarray  #: (experiment, metric, layer), from :func:`ceilings`
    missing: list[str]  #: the stores without a random-init baseline
    convergence: np.ndarray  #: (experiment, metric, layer, fraction), :func:`convergence`
    pooled: list[np.ndarray]  #: pooled features per (experiment, layer), for :func:`probes`


def convergence(
    exps: list[Experiment], args: AnalyzeConfig, recs: Records, nested: dict, degenerate: dict
) -> np.ndarray:
    """``convergence`` (experiment, metric, layer, fraction): the last epoch's distance on the
    nested subsets (from the main pass's records, else from ``nested``:
    :func:`ftdyn.analysis.collect.collect_nested`), the distance itself at fraction 1.
    Degenerate (experiment, metric, layer) stay NaN."""
    E, Mn, Lmax = len(exps), len(args.metrics), max(len(e.layers) for e in exps)
    conv = np.full((E, Mn, Lmax, len(NESTED_FRACTIONS)), np.nan)
    for (e, m, l), rec in recs.items():
        if (e, m, l) in degenerate:
            continue
        mi = args.metrics.index(m)
        # none where every subset is degenerate (the convergence run skipped it): NaN
        subsets = rec.nested if rec.nested is not None else nested.get((e, m, l))
        if subsets is not None:
            conv[e, mi, l, :-1] = subsets
        conv[e, mi, l, -1] = rec.value[exps[e].last]
    return conv


def converged(
    conv: np.ndarray,
    n_images,
    *,
    half_width=np.nan,
    ceiling=np.nan,
    metric_range=1.0,
    tol: float = CONVERGENCE_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """(converged, images needed) from ``conv`` (experiment, ..., fraction) and the images of each
    experiment: :func:`ftdyn.summary.convergence_verdict`, ``n_images`` along the first axis."""
    n = np.asarray(n_images, dtype=np.float64).reshape((-1,) + (1,) * (conv.ndim - 2))
    return convergence_verdict(
        conv, n, half_width=half_width, ceiling=ceiling, metric_range=metric_range, tolerance=tol
    )


def _last_half_width(exps: list[Experiment], ds: xr.Dataset) -> np.ndarray:
    """(experiment, metric, layer) half-width of the bootstrap interval at each experiment's last
    epoch (NaN without one): the noise of the convergence verdict."""
    epochs = [int(x) for x in ds["epoch"].values]
    cols = [epochs.index(exp.epochs[exp.last]) for exp in exps]
    rows = np.arange(len(exps))
    return (ds["ci_high"].values[rows, :, :, cols] - ds["ci_low"].values[rows, :, :, cols]) / 2


def unconverged(exps: list[Experiment], args: AnalyzeConfig, need: np.ndarray) -> list[str]:
    """ "experiment:layer:metric" of the distances that have not converged."""
    return [
        f"{exps[e].name}:{exps[e].layers[l][0]}:{args.metrics[m]}"
        for e, m, l in zip(*np.nonzero(np.isfinite(need)), strict=True)
    ]


def warn_unconverged(ds: xr.Dataset) -> None:
    """The one warning line (after the results are written, so an error stays the only line of a
    failed run): how many distances have not converged, at how many images, and where to look."""
    need, checked = ds["images_needed"].values, np.isfinite(ds["convergence"].values[..., -2:])
    hits = int(np.isfinite(need).sum())
    if not hits:
        return
    images = sorted(set(json.loads(ds.attrs.get("probe_images", "[]"))))
    at = (
        f" at {images[0]}"
        if len(images) == 1
        else (f" at {images[0]}–{images[-1]}" if images else "")
    )
    warnings.warn(
        f"{hits} of {int(checked.all(axis=-1).sum())} (experiment, metric, layer) distances not"
        f" converged{at} images; see convergence.csv",
        ConvergenceWarning,
        stacklevel=2,
    )


def relative(distance: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """distance / ceiling along the epoch axis; NaN where the ceiling is NaN or not positive."""
    c = np.where(np.isfinite(ceiling) & (ceiling > 0), ceiling, np.nan)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return distance / c


# ----------------------------------------------------------------- paired bootstrap
def paired_deltas(reps: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of distance(t) − distance(t−1) from replicates (N, T) that share
    one resample across epochs; NaN at t = 0."""
    lo = np.full(reps.shape[1], np.nan)
    hi = lo.copy()
    if reps.shape[1] > 1:
        lo[1:], hi[1:] = percentile_interval(np.diff(reps, axis=1), level, axis=0)
    return lo, hi


def order_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a ≠ b from paired replicates (NaN without finite pairs)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))


def significance(
    exps: list[Experiment], args: AnalyzeConfig, recs: Records, epochs: list[int]
) -> dict[str, np.ndarray]:
    """``delta_ci_low/high`` and ``layer_order_p`` from the replicates kept by collect (NaN
    without bootstrap)."""
    E, Mn, Lmax, Ep = len(exps), len(args.metrics), max(len(e.layers) for e in exps), len(epochs)
    lo, hi = np.full((E, Mn, Lmax, Ep), np.nan), np.full((E, Mn, Lmax, Ep), np.nan)
    p = np.full((E, Mn, Lmax, Lmax), np.nan)
    for e, exp in enumerate(exps):
        cols = [epochs.index(ep) for ep in exp.epochs]
        for mi, m in enumerate(args.metrics):
            last = {}
            for l in range(len(exp.layers)):
                reps = recs[(e, m, l)].reps
                if reps is None or not np.isfinite(recs[(e, m, l)].value).any():
                    continue
                lo[e, mi, l, cols], hi[e, mi, l, cols] = paired_deltas(reps)
                last[l] = reps[:, -1]
            for a in last:
                for b in last:
                    if a != b:
                        p[e, mi, a, b] = order_p(last[a], last[b])
    return {"delta_ci_low": lo, "delta_ci_high": hi, "layer_order_p": p}


# ---------------------------------------------------------------------- probes
def probes(
    exps: list[Experiment], args: AnalyzeConfig, epochs: list[int], pooled: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """Linear-probe accuracy per (experiment, layer, epoch), on the baseline, and chance.
    ``pooled``: per (experiment, layer) in order, the pooled features the engine computed for
    :func:`with_baseline`'s experiments (the epochs, then the baseline where there is one)."""
    E, Lmax, Ep = len(exps), max(len(e.layers) for e in exps), len(epochs)
    acc = np.full((E, Lmax, Ep), np.nan)
    acc_rand = np.full((E, Lmax), np.nan)
    chance = np.full(E, np.nan)
    features = iter(pooled)

    def probe(x: np.ndarray, labels: np.ndarray):
        return linear_probe(x, labels, folds=PROBE_FOLDS, ridge=PROBE_RIDGE, seed=args.seed)

    for e, exp in enumerate(exps):
        for l in range(len(exp.layers)):
            feats = next(features)
            for t, ep in enumerate(exp.epochs):
                res = probe(feats[t], exp.labels)
                acc[e, l, epochs.index(ep)] = res.accuracy
                chance[e] = res.chance
            if len(feats) > len(exp.epochs):  # the baseline
                acc_rand[e, l] = probe(feats[len(exp.epochs)], exp.labels).accuracy
    return {"probe_accuracy": acc, "probe_accuracy_random_init": acc_rand, "probe_chance": chance}


# --------------------------------------------------------------------- dataset
def interpretation(
    exps: list[Experiment], args: AnalyzeConfig, ds: xr.Dataset, recs: Records, extra: Measured
) -> xr.Dataset:
    """``ds`` with the quantities of the module doc added (dims as named there)."""
    ceiling, missing = extra.ceiling, extra.missing
    ok, need = converged(
        extra.convergence,
        [len(e.labels) for e in exps],
        half_width=_last_half_width(exps, ds),
        ceiling=ceiling,
        metric_range=np.array([METRIC_RANGE.get(m, 1.0) for m in args.metrics])[:, None],
    )
    epochs = [int(x) for x in ds["epoch"].values]
    rel = relative(ds["distance"].values, ceiling)
    r_mean, r_std = _relative_reusability(exps, args, rel, epochs)
    sig = significance(exps, args, recs, epochs)
    pr = probes(exps, args, epochs, extra.pooled)
    new = {
        **_distance_vars(ceiling, rel, r_mean, r_std, sig),
        **_probe_vars(pr),
        **_convergence_vars(extra.convergence, ok, need),
    }
    out = ds.assign(new).assign_coords(
        layer_index_other=("layer_index_other", ds["layer_index"].values),
        fraction=("fraction", np.array(NESTED_FRACTIONS)),
    )
    out.attrs["convergence_tolerance"] = CONVERGENCE_TOL
    out.attrs["not_converged"] = json.dumps(unconverged(exps, args, need))
    out.attrs["probe_images"] = json.dumps([len(e.labels) for e in exps])
    out.attrs["relative_note"] = (
        NO_BASELINE_NOTE.format(stores=", ".join(missing)) if missing else RELATIVE_NOTE
    )
    return out


def _relative_reusability(
    exps: list[Experiment], args: AnalyzeConfig, rel: np.ndarray, epochs: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (experiment, metric) of the reusability of the relative distances, over
    each experiment's layers and its epochs other than the reference."""
    keep = np.array([ep != args.reference for ep in epochs])
    E, Mn = rel.shape[:2]
    r_mean, r_std = np.full((E, Mn), np.nan), np.full((E, Mn), np.nan)
    for e, exp in enumerate(exps):
        a, b, _, _ = reusability(rel[e, :, : len(exp.layers)], keep & np.isin(epochs, exp.epochs))
        r_mean[e], r_std[e] = a, b
    return r_mean, r_std


def _distance_vars(ceiling, rel, r_mean, r_std, sig: dict) -> dict:
    """The dataset variables of the relative distances and of their significance."""
    eml, le = (
        ("experiment", "metric", "layer_index"),
        ("experiment", "metric", "layer_index", "epoch"),
    )
    return {
        "ceiling": (
            eml,
            ceiling,
            {"description": "distance(reference, random-init baseline); NaN without one"},
        ),
        "relative_distance": (
            le,
            rel,
            {"description": "distance / ceiling: 0 unchanged, 1 as far as an untrained network"},
        ),
        "relative_reusability_mean": (("experiment", "metric"), r_mean),
        "relative_reusability_std": (("experiment", "metric"), r_std),
        "delta_ci_low": (
            le,
            sig["delta_ci_low"],
            {"description": "paired bootstrap 95 % interval of distance(t) - distance(t-1), lower"},
        ),
        "delta_ci_high": (le, sig["delta_ci_high"]),
        "layer_order_p": (
            (*eml, "layer_index_other"),
            sig["layer_order_p"],
            {
                "description": (
                    "paired bootstrap p-value: last-epoch distances of the two layers differ"
                )
            },
        ),
    }


def _probe_vars(pr: dict) -> dict:
    """The dataset variables of the linear probes (:func:`probes`)."""
    return {
        "probe_accuracy": (
            ("experiment", "layer_index", "epoch"),
            pr["probe_accuracy"],
            {
                "description": (
                    f"{PROBE_FOLDS}-fold stratified ridge-classifier accuracy on spatially "
                    "pooled, standardized activations"
                )
            },
        ),
        "probe_accuracy_random_init": (
            ("experiment", "layer_index"),
            pr["probe_accuracy_random_init"],
        ),
        "probe_chance": (
            ("experiment",),
            pr["probe_chance"],
            {"description": "most frequent class's share"},
        ),
    }


def _convergence_vars(convergence, ok, need) -> dict:
    """The dataset variables of the convergence check over nested image subsets."""
    eml = ("experiment", "metric", "layer_index")
    return {
        "convergence": (
            (*eml, "fraction"),
            convergence,
            {"description": "distance at the last epoch on nested seeded image subsets"},
        ),
        "converged": (
            eml,
            ok,
            {
                "description": (
                    "|d(all) - d(half)| <= max(bootstrap half-width (else the subsets' noise),"
                    f" {CONVERGENCE_TOL} x ceiling (else x the metric's range))"
                )
            },
        ),
        "images_needed": (
            eml,
            need,
            {
                "description": (
                    "images at which the change from half to all would fall "
                    "within its bound (change ~ 1/n); NaN where converged"
                )
            },
        ),
    }
