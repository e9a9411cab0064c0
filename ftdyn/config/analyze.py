"""``ftdyn analyze``'s options: :class:`AnalyzeConfig`, the metrics and views by name, and the
presets (named sets of metrics, views and map averaging)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..errors import FtdynError
from .base import _internal, _names, _option, arg, check_seed, default, parse_memory

Metric = Literal["pwsm", "procrustes", "cka", "cka_debiased"]


#: Metrics ``analyze`` computes: the registry's (:data:`ftdyn.metrics.METRICS`, same order), then
#: debiased linear CKA (1 − CKA with U-centered Grams; Murphy et al. 2024), computed on the Gram
#: side (per-filter/flat/map views only).
METRIC_NAMES: tuple[str, ...] = get_args(Metric)


DEBIASED_CKA = "cka_debiased"


View = Literal["channels", "flat", "pooled", "filter", "map"]


#: How a layer's activations become the matrices a metric compares (:mod:`ftdyn.views`).
VIEWS: tuple[str, ...] = get_args(View)


Trajectory = Literal["auto", "all", "reference"]


#: Which checkpoint pairs the checkpoint x checkpoint matrix holds (:mod:`ftdyn.analysis`,
#: "Trajectory").
TRAJECTORY_MODES: tuple[str, ...] = get_args(Trajectory)


PresetName = Literal["default", "paper-code"]


RunPairs = Literal["comparable", "replicates", "none"]


#: Which pairs of runs get run-vs-run distances at matched epochs (:mod:`ftdyn.analysis.compare`).
RUN_PAIRS: tuple[str, ...] = get_args(RunPairs)


Estimator = Literal["corrected", "plugin"]


#: How a distance is estimated from the probe images (:mod:`ftdyn.metrics.estimators`):
#: ``corrected`` (debiased CKA, grouped-jackknife Procrustes and PWSM) or ``plugin``.
ESTIMATORS: tuple[str, ...] = get_args(Estimator)


def check_view(name: str) -> str:
    """Return ``name`` if it is a known view, else raise FtdynError."""
    if name not in VIEWS:
        raise FtdynError(f"{arg('views')}: unknown view '{name}'; choose from {', '.join(VIEWS)}.")
    return name


@dataclass(frozen=True)
class Preset:
    """A named set of analysis choices: metrics, their views, and how map-view values are
    averaged."""

    name: PresetName
    metrics: tuple[Metric, ...]
    views: Mapping[str, View]
    map_average: Literal["images", "class"]
    description: str
    map_center: Literal["columns", "rows"] = "columns"  # how procrustes and cka center each map
    estimator: Estimator = "corrected"


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        ("pwsm", "procrustes", "cka"),
        {"pwsm": "channels", "procrustes": "filter", "cka": "filter", DEBIASED_CKA: "filter"},
        "images",
        "pwsm on channels; procrustes and cka on filter (per-filter vector, NaN-aware mean)",
    ),
    "paper-code": Preset(
        "paper-code",
        ("pwsm", "procrustes", "cka"),
        {"pwsm": "channels", "procrustes": "map", "cka": "map", DEBIASED_CKA: "map"},
        "class",
        "the published code: pwsm (alpha 0) on channels; procrustes and cka on map with "
        "rows centered, per class then over all (class, filter) cells; Pearson agreement "
        "across filters",
        map_center="rows",
        estimator="plugin",
    ),
}


def _resolve_views(metrics: Sequence[str], views, preset: Preset) -> dict[str, str]:
    """{metric: view}: the preset's, changed by ``views`` (one view for all, ``"metric=view"``
    items, or a mapping)."""
    chosen = {m: preset.views[m] for m in metrics}
    if views is None:
        return chosen
    if isinstance(views, str):
        views = [views]
    items = [f"{k}={v}" for k, v in views.items()] if isinstance(views, Mapping) else list(views)
    named: set[str] = set()
    for item in items:
        if "=" not in item:
            view = check_view(item.strip())
            chosen = {m: view for m in chosen}
            continue
        metric, view = (x.strip() for x in item.split("=", 1))
        if metric not in METRIC_NAMES:
            raise FtdynError(
                f"{arg('views')}: unknown metric '{metric}' in '{item}'; choose from"
                f" {', '.join(METRIC_NAMES)}."
            )
        if metric not in chosen:
            raise FtdynError(
                f"{arg('views')}: '{item}' names metric '{metric}', which is not analyzed; add"
                f" {arg('metrics', metric)}."
            )
        if metric in named:
            raise FtdynError(
                f"{arg('views')}: metric '{metric}' is given a view twice; give one {arg('views')}"
                f" {metric}=VIEW."
            )
        named.add(metric)
        chosen[metric] = check_view(view)
    return chosen


def _replicate_groups(groups) -> tuple[str, ...] | None:
    """Each group of ``replicates`` as "name,name,..." (at least two distinct names, a name in
    one group only); None for none."""
    groups = _names(groups)
    if groups is None:
        return None
    out, seen = [], set()
    for group in groups:
        names = [n.strip() for n in str(group).split(",") if n.strip()]
        if len(set(names)) < 2:
            raise FtdynError(
                f"{arg('replicates')}: '{group}' names fewer than two experiments; give the"
                " names of a condition's runs separated by commas, e.g. A,B."
            )
        twice = [n for n in names if n in seen]
        if twice:
            raise FtdynError(
                f"{arg('replicates')}: '{twice[0]}' is in two groups; a run replicates one"
                " condition."
            )
        seen.update(names)
        out.append(",".join(dict.fromkeys(names)))
    return tuple(out)


@dataclass(frozen=True)
class AnalyzeConfig:
    """Everything ``ftdyn analyze`` / :func:`ftdyn.analyze` takes besides the stores and the output
    folder.

    Construction resolves the preset: ``metrics`` becomes the analyzed metrics (the preset's when
    none are given) and ``views`` the view of each (``{metric: view}``). Fields marked ``identity``
    decide whether saved results are up to date: :meth:`identity` is the results' ``arguments``.
    """

    metrics: tuple[Metric, ...] | None = _option(
        None,
        "Metric (repeatable): pwsm, procrustes, cka, cka_debiased (filter, flat or map view)."
        " Default: the preset's (default preset: all three; paper-code: the same three).",
        flag="--metric",
        identity=True,
    )
    views: Mapping[str, View] | Sequence[str] | str | None = _option(
        None,
        "View for every metric (channels, flat, pooled, filter, map) or METRIC=VIEW (repeatable)."
        " Default preset: pwsm=channels, procrustes=filter, cka=filter.",
        flag="--view",
        identity=True,
    )
    alpha: float = _option(
        0.0,
        "PWSM alpha in [0, 1]: 0 = full whitening (the paper's setting, scale free), 1 = "
        "angular Procrustes; 0<alpha<1 depends on the activation scale (netrep "
        "convention).",
        identity=True,
    )
    reference: int = _option(
        0, "Epoch every checkpoint is compared with (0 = source model).", identity=True
    )
    preset: PresetName = _option(
        "default",
        "default: pwsm on channels, procrustes and cka on filter (per-filter distances, NaN-aware"
        " mean, dead filters counted). paper-code: the published code's numbers: pwsm (alpha 0) on"
        " channels, procrustes and cka on map with rows centered, per class then over all (class,"
        " filter) cells, and its Pearson agreement across filters.",
        identity=True,
    )
    estimator: Estimator | None = _option(
        None,
        "corrected: debiased CKA and grouped-jackknife Procrustes and PWSM, whose values do not"
        " grow with the number of probe images (values whose columns per image exceed the"
        " correction's limit are marked unreliable); plugin: the plug-in estimators. Default: the"
        " preset's (default: corrected; paper-code: plugin, as published).",
        identity=True,
    )
    layers: tuple[str, ...] | None = _option(
        None,
        "Layer to analyze (module or store variable name; repeatable). Default: all.",
        flag="--layer",
        identity=True,
    )
    bootstrap: int = _option(
        0, "Bootstrap replicates over images for 95% intervals (0 = off).", identity=True
    )
    seed: int = _option(0, "Seed of the bootstrap draws.", identity=True)
    bootstrap_metrics: tuple[Metric, ...] | None = _option(
        None,
        "Bootstrap only these metrics (repeatable; default all; cka is the cheapest).",
        flag="--bootstrap-metric",
        identity=True,
    )
    bootstrap_groups: int | None = _option(
        None,
        "Groups of images the bootstrap resamples (default 32; fewer: cheaper, coarser).",
        identity=True,
    )
    experiment_names: tuple[str, ...] | None = _option(
        None,
        "Experiment label per store, in order (default: model/dataset from the store).",
        flag="--name",
        identity=True,
    )
    replicates: tuple[str, ...] | None = _option(
        None,
        "Experiments that are replicates of one condition (same data and hyperparameters, another"
        " seed) as comma-separated names, e.g. photos-s0,photos-s1 (repeatable, one group each):"
        " their distances from each other are the seed floor. Default: the stores whose training"
        " manifests (written by `ftdyn train`) differ only in the seed.",
        identity=True,
    )
    run_pairs: RunPairs = _option(
        "comparable",
        "Run-vs-run distances at matched epochs: comparable (every pair of stores with the same"
        " probe images and layers), replicates (only within replicate groups: the seed floor), or"
        " none (no floor either).",
        identity=True,
    )
    trajectory: Trajectory | bool = _option(
        "auto",
        "Checkpoint x checkpoint matrix: auto (all pairs for Gram-side views when cheap, else the"
        " reference row only), all (every pair, every view: O(T^2) work on the row side and map"
        " view), or reference.",
        identity=True,
    )
    allow_partial: bool = _option(
        False, "Analyze the complete checkpoints of an incompletely extracted store.", identity=True
    )
    memory_limit: str | int | None = _option(
        None,
        "Memory for data and statistics, e.g. 1GB (default: half the "
        "RAM; at most the RAM). Bounds concurrent tasks: approximate, not "
        "a hard cap on resident memory (measured: 92 % of 256MB to 109 % "
        "of 512MB on the channels view).",
    )
    workers: int | None = _option(
        None, "Threads (default: CPU count; lowered to fit --memory-limit)."
    )
    device: str = _option(
        "auto",
        "Where the float64 statistics run: auto (CUDA when present; cpu with "
        "--scheduler), cpu, cuda or cuda:N.",
    )
    scheduler: Any = _option(
        None,
        "Run on an existing Dask cluster: tcp://HOST:PORT (stores must be readable by "
        "the workers).",
    )
    overwrite: bool = _option(False, "Replace results of other arguments in --out.")
    progress: bool = _option(True, "A progress bar on stderr.", flag="--no-progress")
    nested: bool = _internal(
        False,
        "Replicates are the nested image subsets of the convergence check "
        "(analysis.interpret), not bootstrap draws.",
    )
    heldout: bool = _internal(
        True,
        "Held-out values beside the values beyond their correction's limit (the run-vs-run "
        "distances, which report none, leave them out).",
    )
    skip_replicates: tuple[int, ...] = _internal(
        (), "Epochs whose replicates are not needed (the convergence run skips its baseline)."
    )

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        preset = self.preset_choices()
        metrics = [str(m).strip().lower() for m in _names(self.metrics) or preset.metrics]
        for m in metrics:
            if m not in METRIC_NAMES:
                raise FtdynError(
                    f"{arg('metrics')}: unknown metric '{m}'; choose from"
                    f" {', '.join(METRIC_NAMES)}."
                )
        metrics = list(dict.fromkeys(metrics))
        try:
            alpha = float(default(AnalyzeConfig, "alpha") if self.alpha is None else self.alpha)
        except (TypeError, ValueError):
            raise FtdynError(
                f"{arg('alpha')}: '{self.alpha}' is not a number; give a value in [0, 1]."
            ) from None
        if not 0.0 <= alpha <= 1.0:
            raise FtdynError(
                f"{arg('alpha')}: {self.alpha} is outside [0, 1] (0 = full whitening, 1 = angular"
                " Procrustes)."
            )
        if self.bootstrap is None or int(self.bootstrap) < 0 or int(self.bootstrap) == 1:
            raise FtdynError(
                f"{arg('bootstrap')}: must be 0 (off) or a number of replicates of at least 2 (a"
                f" few hundred for stable 95 % intervals), got {self.bootstrap}."
            )
        trajectory = self.trajectory
        if isinstance(trajectory, bool):  # the Python API's yes/no
            trajectory = "all" if trajectory else "reference"
        if trajectory not in TRAJECTORY_MODES:
            raise FtdynError(
                f"{arg('trajectory')}: unknown mode '{trajectory}'; choose from"
                f" {', '.join(TRAJECTORY_MODES)}."
            )
        views = _resolve_views(metrics, self.views, preset)
        estimator = preset.estimator if self.estimator is None else str(self.estimator).lower()
        if estimator not in ESTIMATORS:
            raise FtdynError(
                f"{arg('estimator')}: unknown estimator '{self.estimator}'; choose from"
                f" {', '.join(ESTIMATORS)}."
            )
        if self.run_pairs not in RUN_PAIRS:
            raise FtdynError(
                f"{arg('run_pairs')}: unknown choice '{self.run_pairs}'; choose from"
                f" {', '.join(RUN_PAIRS)}."
            )
        normalized = {
            "replicates": _replicate_groups(self.replicates),
            "estimator": estimator,
            "metrics": tuple(metrics),
            "views": views,
            "alpha": alpha,
            "trajectory": trajectory,
            "bootstrap": int(self.bootstrap),
            **self._bootstrap_choices(metrics, views),
            "reference": int(self.reference),
            "seed": check_seed(self.seed),
            "layers": _names(self.layers),
            "experiment_names": _names(self.experiment_names),
            "allow_partial": bool(self.allow_partial),
            "skip_replicates": tuple(self.skip_replicates),
        }
        parse_memory(self.memory_limit)
        if self.workers is not None and int(self.workers) < 1:
            raise FtdynError(f"{arg('workers')}: must be at least 1, got {self.workers}.")
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def preset_choices(self) -> Preset:
        """The :class:`Preset` named by ``preset``."""
        if self.preset not in PRESETS:
            raise FtdynError(
                f"{arg('preset')}: unknown preset '{self.preset}'; choose from"
                f" {', '.join(PRESETS)}."
            )
        return PRESETS[self.preset]

    def _bootstrap_choices(self, metrics: list[str], views: dict[str, str]) -> dict[str, Any]:
        """The normalized ``bootstrap_groups`` and ``bootstrap_metrics`` (and the check of the
        debiased CKA's view, whose error users met after these)."""
        groups = self.bootstrap_groups
        if groups is not None and int(groups) < 2:
            raise FtdynError(
                f"{arg('bootstrap_groups')}: at least 2 groups of images, got {groups}."
            )
        chosen = _names(self.bootstrap_metrics)
        if chosen:
            chosen = tuple(dict.fromkeys(str(m).strip().lower() for m in chosen))
            stray = [m for m in chosen if m not in metrics]
            if stray:
                raise FtdynError(
                    f"{arg('bootstrap_metrics')}: '{stray[0]}' is not analyzed; choose from"
                    f" {', '.join(metrics)}."
                )
        if views.get(DEBIASED_CKA) in ("channels", "pooled"):
            raise FtdynError(
                f"{arg('views')}: {DEBIASED_CKA} is computed from per-image Gram matrices; give it"
                f" a filter, flat or map view ({arg('views')} {DEBIASED_CKA}=filter)."
            )
        return {
            "bootstrap_groups": None if groups is None else int(groups),
            "bootstrap_metrics": chosen or None,
        }

    @property
    def map_average(self) -> str:
        """How map-view values are averaged: ``images`` or per ``class`` (the preset's)."""
        return self.preset_choices().map_average

    @property
    def map_center(self) -> str:
        """How procrustes and cka center each map: ``columns`` or ``rows`` (the preset's)."""
        return self.preset_choices().map_center

    @property
    def memory_bytes(self) -> int | None:
        """``memory_limit`` in bytes (None: not given)."""
        return parse_memory(self.memory_limit)

    def metrics_on(self, view: str) -> list[str]:
        """The analyzed metrics computed on ``view``, in order."""
        return [m for m in self.metrics if self.views[m] == view]

    def identity(self) -> dict[str, Any]:
        """The resolved choices that define the results (their ``arguments`` attr): the identity
        fields plus the preset's map averaging and centering; bootstrap options left at their
        defaults are omitted, as results written before they existed record them."""
        key = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("identity")
        }
        key = {
            name: list(value) if isinstance(value, tuple) else value for name, value in key.items()
        }
        key.update(views=dict(self.views), map_average=self.map_average, map_center=self.map_center)
        for name in ("bootstrap_metrics", "bootstrap_groups"):
            if key[name] is None:
                del key[name]
        return key

    def replace(self, **changes: Any) -> AnalyzeConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)
