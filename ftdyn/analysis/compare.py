"""Runs compared: run-vs-run distances at matched epochs, the seed floor and departure epochs.

Two stores can be compared when they hold the same probe images (the fingerprint recorded at
extraction) and the same layers at the same shapes: the distance between run A at epoch t and
run B at epoch t is then computed by the engine like any other distance, as a two-checkpoint
experiment whose checkpoints come from the two stores (:attr:`Source.checkpoints
<ftdyn.analysis.inputs.Source.checkpoints>`), with the same views, estimators and bootstrap.
Stores probed with the same images draw the same bootstrap resamples
(:attr:`Experiment.draws <ftdyn.analysis.inputs.Experiment.draws>`), so these distances are
paired with each run's distances from its source.

Results (:mod:`ftdyn.results`):

- ``run_distance`` (experiment, experiment_other, metric, layer_index, epoch) and its interval
  ``run_ci_low/high``; NaN where the pair was not compared.
- ``floor`` (experiment, metric, layer_index, epoch): the mean distance between the experiment
  and its replicates (same condition, another seed) at that epoch, with ``floor_ci_low/high``;
  NaN without replicates.
- ``drift_above_floor`` = distance − floor, and ``drift_above_floor_p``: the one-sided paired
  bootstrap p-value of "the distance from the source does not exceed the floor" (without
  replicates the floor is 0: the bootstrap noise of the source against itself).
- ``departure_epoch`` (experiment, metric, layer_index): the first epoch after the reference
  whose p-value is below :data:`DEPARTURE_ALPHA`; NaN when none is, without a bootstrap of the
  metric, or where the value is unreliable.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass

import numpy as np

from ..config import AnalyzeConfig, arg
from ..errors import FtdynError
from ..summary import nanmean, percentile_interval
from .collect import Records
from .inputs import BASELINE, Experiment

log = logging.getLogger(__name__)

#: level of the one-sided test that decides a layer's departure epoch
DEPARTURE_ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """Which runs are compared: ``groups`` of replicates (experiment indices) and the ``pairs``
    (a, b), a < b, that get run-vs-run distances; ``experiments``: one two-checkpoint experiment
    per (pair, matched epoch), listed in ``cells`` as (pair index, epoch)."""

    groups: list[list[int]]
    pairs: list[tuple[int, int]]
    experiments: list[Experiment]
    cells: list[tuple[int, int]]

    def group_of(self, e: int) -> list[int]:
        """The replicate group of experiment ``e`` (empty without one)."""
        return next((g for g in self.groups if e in g), [])


def difference(a: Experiment, b: Experiment) -> str | None:
    """What keeps two stores from being compared run against run, in words; None if nothing."""
    if a.probe is None or a.probe != b.probe:
        return "their probe images differ (another probe set, order or classes)"
    if [m for m, _ in a.layers] != [m for m, _ in b.layers]:
        return "their layers differ"
    for (module, sa), (_, sb) in zip(a.layers, b.layers, strict=True):
        if (sa.channels, sa.height, sa.width) != (sb.channels, sb.height, sb.width):
            return f"layer {module} has another shape"
        if sa.spc != sb.spc:
            return "they were extracted with another --samples-per-chunk"
    return None


def _named_groups(exps: list[Experiment], args: AnalyzeConfig) -> list[list[int]]:
    """The replicate groups of ``args.replicates``, checked to be comparable stores."""
    index = {e.name: i for i, e in enumerate(exps)}
    groups = []
    for text in args.replicates:
        names = text.split(",")
        unknown = [n for n in names if n not in index]
        if unknown:
            raise FtdynError(
                f"{arg('replicates')}: '{unknown[0]}' is not an experiment; the experiments are"
                f" {', '.join(index)} (name stores with {arg('experiment_names')})."
            )
        group = [index[n] for n in names]
        for a, b in itertools.combinations(group, 2):
            why = difference(exps[a], exps[b])
            if why:
                raise FtdynError(
                    f"{arg('replicates')}: {exps[a].name} and {exps[b].name} cannot be compared:"
                    f" {why}; replicates must be probed with the same images (same ftdyn"
                    " extract --data, --per-class and --seed)."
                )
        groups.append(group)
    return groups


def _manifest_groups(exps: list[Experiment]) -> list[list[int]]:
    """Comparable stores whose training manifests differ only in the seed."""
    by_condition: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(exps):
        if e.condition is not None and e.probe is not None:
            by_condition.setdefault((e.condition, e.probe), []).append(i)
    groups = []
    for members in by_condition.values():
        seeds = [exps[i].train_seed for i in members]
        comparable = all(difference(exps[members[0]], exps[i]) is None for i in members)
        if len(members) > 1 and len(set(seeds)) == len(seeds) and comparable:
            groups.append(members)
    return groups


def plan_comparison(exps: list[Experiment], args: AnalyzeConfig) -> Comparison:
    """The replicate groups and the pairs compared (``args.run_pairs``), and their
    two-checkpoint experiments."""
    groups = _named_groups(exps, args) if args.replicates else _manifest_groups(exps)
    if args.run_pairs == "none":
        pairs = []
    elif args.run_pairs == "replicates":
        pairs = [p for g in groups for p in itertools.combinations(sorted(g), 2)]
    else:
        pairs, apart = [], []
        for a, b in itertools.combinations(range(len(exps)), 2):
            why = difference(exps[a], exps[b])
            if why is None:
                pairs.append((a, b))
            else:
                apart.append(f"{exps[a].name} and {exps[b].name}: {why}")
        if apart and pairs:
            log.info(
                f"run-vs-run distances: {len(pairs)} pair(s) of stores compared, {len(apart)} not"
                " (other probe images or layers; debug log for each)"
            )
        for line in apart:
            log.debug(f"not compared run to run: {line}")
    experiments, cells = [], []
    for p, (a, b) in enumerate(pairs):
        for epoch in exps[a].epochs:
            if epoch != BASELINE and epoch in exps[b].epochs:
                experiments.append(_matched(exps[a], exps[b], epoch))
                cells.append((p, epoch))
    return Comparison(groups, pairs, experiments, cells)


def _matched(a: Experiment, b: Experiment, epoch: int) -> Experiment:
    """Run ``a`` at ``epoch`` (the reference) and run ``b`` at ``epoch`` as one experiment."""
    ka, kb = a.ckpt_index[a.epochs.index(epoch)], b.ckpt_index[b.epochs.index(epoch)]
    layers = [
        (
            module,
            dataclasses.replace(
                sa, checkpoints=((sa.path, ka), (sb.path, kb)), epochs=(epoch, epoch)
            ),
        )
        for (module, sa), (_, sb) in zip(a.layers, b.layers, strict=True)
    ]
    return dataclasses.replace(
        a,
        name=f"{a.name} | {b.name} @ {epoch}",
        epochs=[epoch, epoch],
        ckpt_index=[0, 1],
        ref=0,
        layers=layers,
    )


# ------------------------------------------------------------------------------ results
@dataclass
class _Run:
    """A (pair, metric, layer)'s run-vs-run values over the common epochs: value, interval and
    bootstrap replicates (N, epochs), NaN where not computed."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reps: np.ndarray | None


def _run_values(
    comp: Comparison, recs: Records, key: tuple[int, str, int], epochs: list[int], n_boot: int
) -> _Run:
    """The run-vs-run values of pair ``key[0]`` from the records of the two-checkpoint
    experiments (position 1 holds run b's distance from run a)."""
    p, m, l = key
    run = _Run(*(np.full(len(epochs), np.nan) for _ in range(3)), None)
    for x, (pair, epoch) in enumerate(comp.cells):
        if pair != p:
            continue
        rec, col = recs[(x, m, l)], epochs.index(epoch)
        run.value[col] = rec.value[1]
        if rec.ci is not None:
            run.low[col], run.high[col] = rec.ci[0][1], rec.ci[1][1]
        if rec.reps is not None:
            if run.reps is None:
                run.reps = np.full((n_boot, len(epochs)), np.nan)
            run.reps[:, col] = rec.reps[:, 1]
    return run


def one_sided_p(drift_reps: np.ndarray) -> np.ndarray:
    """Bootstrap p-value of "drift ≤ 0" per column of paired replicates (N, epochs):
    (1 + replicates ≤ 0) / (1 + finite replicates); NaN where none is finite."""
    finite = np.isfinite(drift_reps)
    n = finite.sum(axis=0)
    below = (np.where(finite, drift_reps, np.inf) <= 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (1.0 + below) / (1.0 + n), np.nan)


def departure(p: np.ndarray, epochs: list[int], reference: int) -> float:
    """The first epoch after ``reference`` whose p-value is below :data:`DEPARTURE_ALPHA`."""
    for epoch, value in zip(epochs, p, strict=True):
        if epoch > reference and value < DEPARTURE_ALPHA:
            return float(epoch)
    return float("nan")


def comparison_variables(
    exps: list[Experiment],
    args: AnalyzeConfig,
    comp: Comparison,
    recs: tuple[Records, Records],
    unreliable: np.ndarray,
    epochs: list[int],
) -> tuple[dict, dict, dict]:
    """(data variables, coordinates, attrs) of the comparison from the main run's records and
    the two-checkpoint experiments' (``recs``), on the common ``epochs``; ``unreliable``
    (experiment, metric, layer) values get no departure epoch."""
    main, matched = recs
    E, Mn, Lmax, Ep = len(exps), len(args.metrics), max(len(e.layers) for e in exps), len(epochs)
    shape = (E, Mn, Lmax, Ep)
    run = {k: np.full((E, E, Mn, Lmax, Ep), np.nan) for k in ("value", "low", "high")}
    run_reps: dict[tuple[int, int, int, int], np.ndarray] = {}
    for p, (a, b) in enumerate(comp.pairs):
        for mi, m in enumerate(args.metrics):
            for l in range(len(exps[a].layers)):
                values = _run_values(comp, matched, (p, m, l), epochs, max(1, args.bootstrap))
                for x, y in ((a, b), (b, a)):
                    run["value"][x, y, mi, l] = values.value
                    run["low"][x, y, mi, l] = values.low
                    run["high"][x, y, mi, l] = values.high
                    if values.reps is not None:
                        run_reps[(x, y, mi, l)] = values.reps
    floor = {k: np.full(shape, np.nan) for k in ("value", "low", "high", "drift", "p")}
    depart = np.full((E, Mn, Lmax), np.nan)
    for e, exp in enumerate(exps):
        cols = [epochs.index(ep) for ep in exp.epochs]
        others = [o for o in comp.group_of(e) if o != e]
        for mi, m in enumerate(args.metrics):
            for l in range(len(exp.layers)):
                rec = main[(e, m, l)]
                distance = np.full(Ep, np.nan)
                distance[cols] = rec.value
                reps = None
                if rec.reps is not None:
                    reps = np.full((rec.reps.shape[0], Ep), np.nan)
                    reps[:, cols] = rec.reps
                floor_reps = _floor(floor, run, run_reps, (e, mi, l), others)
                if others:
                    floor["drift"][e, mi, l] = distance - floor["value"][e, mi, l]
                if reps is None or (others and floor_reps is None):
                    continue
                drift_reps = reps - (floor_reps if others else 0.0)
                floor["p"][e, mi, l] = one_sided_p(drift_reps)
                if not unreliable[e, mi, l]:
                    depart[e, mi, l] = departure(floor["p"][e, mi, l], epochs, args.reference)
    return _variables(run, floor, depart), _coords(exps, comp), _attrs(exps, comp, args)


def _floor(floor: dict, run: dict, run_reps: dict, key: tuple[int, int, int], others: list):
    """Fill the floor of ``key`` = (experiment, metric index, layer) from the run-vs-run values
    against its replicates ``others`` (their mean); returns the floor's replicates (N, epochs),
    None without them."""
    e, mi, l = key
    if not others:
        return None
    values = np.stack([run["value"][e, o, mi, l] for o in others])
    floor["value"][e, mi, l] = nanmean(values, axis=0)
    reps = [run_reps.get((e, o, mi, l)) for o in others]
    if any(r is None for r in reps):
        return None
    # the replicates are centred on their estimates (task_results.recentred): so is their mean
    mean_reps = nanmean(np.stack(reps), axis=0)
    floor["low"][e, mi, l], floor["high"][e, mi, l] = percentile_interval(mean_reps, axis=0)
    return mean_reps


def _variables(run: dict, floor: dict, depart: np.ndarray) -> dict:
    pair_dims = ("experiment", "experiment_other", "metric", "layer_index", "epoch")
    dims = ("experiment", "metric", "layer_index", "epoch")
    return {
        "run_distance": (
            pair_dims,
            run["value"],
            {"description": "distance between two runs at the same epoch (NaN: not compared)"},
        ),
        "run_ci_low": (pair_dims, run["low"], {"description": "its bootstrap interval, low"}),
        "run_ci_high": (pair_dims, run["high"], {"description": "its bootstrap interval, high"}),
        "floor": (
            dims,
            floor["value"],
            {"description": "seed floor: mean run_distance to the experiment's replicates"},
        ),
        "floor_ci_low": (dims, floor["low"], {"description": "its bootstrap interval, low"}),
        "floor_ci_high": (dims, floor["high"], {"description": "its bootstrap interval, high"}),
        "drift_above_floor": (
            dims,
            floor["drift"],
            {"description": "distance - floor (NaN without replicates)"},
        ),
        "drift_above_floor_p": (
            dims,
            floor["p"],
            {
                "description": "one-sided paired bootstrap p of distance <= floor (0 without"
                " replicates); NaN without a bootstrap of the metric"
            },
        ),
        "departure_epoch": (
            ("experiment", "metric", "layer_index"),
            depart,
            {
                "description": f"first epoch with drift_above_floor_p < {DEPARTURE_ALPHA}; NaN"
                " when none, without a bootstrap, or where the value is unreliable"
            },
        ),
    }


def _coords(exps: list[Experiment], comp: Comparison) -> dict:
    names = np.array([e.name for e in exps], dtype=object)
    groups = np.array(
        [",".join(exps[o].name for o in comp.group_of(e)) for e in range(len(exps))], dtype=object
    )
    return {
        "experiment_other": ("experiment_other", names),
        "replicates": ("experiment", groups),
    }


def _attrs(exps: list[Experiment], comp: Comparison, args: AnalyzeConfig) -> dict:
    named = [[exps[a].name, exps[b].name] for a, b in comp.pairs]
    note = (
        f"departure_epoch: the first epoch whose distance from the source exceeds the seed floor"
        f" (or, without replicates, 0) at one-sided p < {DEPARTURE_ALPHA} (paired bootstrap)"
    )
    if not args.bootstrap:
        note += f"; not estimated: no bootstrap (pass {arg('bootstrap')} 200)"
    return {
        "run_pairs": json.dumps(named),
        "replicate_groups": json.dumps([[exps[i].name for i in g] for g in comp.groups]),
        "departure_note": note,
    }
