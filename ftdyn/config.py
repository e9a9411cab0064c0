"""Typed, frozen configurations: the one place where each command's defaults and valid values live.

Each command gets one frozen dataclass. A field carries its default, its type (``Literal[...]``
for modes) and its help text (``metadata["help"]``, shown by ``ftdyn COMMAND --help`` and
:func:`describe`); ``__post_init__`` checks and normalizes every value, so the Python API and
the command line refuse the same inputs with the same one-line :class:`FtdynError`. The CLI
reads its option defaults and help from here (:func:`default`, :func:`help_text`), and a test
asserts that every CLI default equals the config default.

Messages name a parameter with :func:`arg`: its Python name (``memory_limit``) for a Python
caller, its flag (``--memory-limit``) under the command line (:func:`cli_names`), looked up in
:func:`command_flags`, the one table from parameter to flag.

:class:`TrainConfig`, :class:`ExtractConfig`, :class:`AnalyzeConfig` and :class:`VisualizeConfig`.

This module imports nothing heavy (no torch), so the CLI can use it at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence, get_args

from .errors import FtdynError

#: Seeds must fit numpy's legacy seeding (``np.random.seed``), the narrowest RNG ftdyn seeds.
SEED_LIMIT = 2**32

Optimizer = Literal["adam", "adamw", "sgd"]
#: Optimizers by name. The paper fine-tunes with Adam (lr 1e-4, batch size 196).
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


def check_seed(seed, param: str = "seed") -> int:
    """``seed`` as an int in ``[0, 2**32)``, or a one-line :class:`FtdynError` naming ``param``.

    Checked once up front: torch, numpy and python RNGs each fail differently (and
    deep inside a run) on seeds they cannot take.
    """
    try:
        value = operator.index(seed)  # ints and numpy integers, not 1.5 or "3"
    except TypeError:
        raise FtdynError(
            f"{arg(param)}: {seed!r} is not a whole number; give one from 0 to {SEED_LIMIT - 1}."
        ) from None
    if not 0 <= value < SEED_LIMIT:
        raise FtdynError(
            f"{arg(param)}: {value} is out of range; give a whole number from 0 to"
            f" {SEED_LIMIT - 1}."
        )
    return value


def _option(default: Any, help: str, *, flag: str | None = None, identity: bool = False) -> Any:
    """A config field: ``default``, its ``help`` text, its CLI ``flag`` (default: ``--field-name``)
    and whether it is part of the run's ``identity`` (a resumed run must repeat it)."""
    return field(default=default, metadata={"help": help, "flag": flag, "identity": identity})


def flag_of(config_type: type, name: str) -> str:
    """The command-line flag of field ``name`` (``num_workers`` -> ``--workers``)."""
    meta = _field(config_type, name).metadata
    return meta.get("flag") or "--" + name.replace("_", "-")


def default(config_type: type, name: str) -> Any:
    """The default value of field ``name`` of ``config_type``."""
    return _field(config_type, name).default


def help_text(config_type: type, name: str) -> str:
    """The help text of field ``name`` of ``config_type`` (the CLI option's help)."""
    return _field(config_type, name).metadata["help"]


def describe(config_type: type) -> str:
    """One line per field: name, default and help (for docstrings and ``help()``)."""
    lines = []
    for f in dataclasses.fields(config_type):
        if f.metadata.get("internal"):
            continue
        shown = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
        lines.append(f"{f.name} ({shown}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def build(config_type: type, config: Any = None, **options: Any) -> Any:
    """``config`` with ``options`` applied, or a new ``config_type`` from ``options`` (how the
    Python API takes either keyword arguments or a config)."""
    if config is None:
        return config_type(**options)
    if not isinstance(config, config_type):
        raise FtdynError(
            f"config: a {config_type.__name__} is needed, got {type(config).__name__}."
        )
    return config.replace(**options) if options else config


def _field(config_type: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(config_type):
        if f.name == name:
            return f
    raise KeyError(f"{config_type.__name__} has no field {name!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``ftdyn train`` / :func:`ftdyn.train` takes besides the data and output folders.

    Paper defaults: Adam, batch size 196, lr 1e-4, input 224, every layer trainable.
    Fields marked ``identity`` define the run: ``--resume`` requires the same values as the
    manifest records (``epochs`` may grow). Build with keyword arguments; values are checked
    and normalized on construction (``TrainConfig(arch="resnet18", lr="1e-3").lr == 0.001``).
    """

    arch: str = field(
        metadata={
            "help": (
                "Architecture (any torchvision classification model, or timm/NAME), "
                "e.g. vgg19, resnet50, densenet121."
            ),
            "flag": None,
            "identity": True,
        }
    )
    weights: str = _option(
        "none",
        "Source weights: a torchvision weights name (IMAGENET1K_V1, DEFAULT), a local "
        "weights file, or none (random init).",
        identity=True,
    )
    init: str | os.PathLike | None = _option(
        None,
        "Start from this checkpoint file instead (e.g. a model pre-trained elsewhere or by "
        "`ftdyn train`); its head is replaced.",
    )
    epochs: int = _option(10, "Number of fine-tuning epochs T (paper: 10-15).")
    optimizer: Optimizer = _option(
        "adam", "adam (paper), adamw or sgd (momentum 0.9).", identity=True
    )
    lr: float = _option(1e-4, "Learning rate (paper: 1e-4; 1e-3 for Fruits).", identity=True)
    batch_size: int = _option(196, "Batch size (paper: 196).", identity=True)
    crop_scale: float = _option(
        0.08,
        "Smallest area fraction of the random resized crop (0.08 = the ImageNet "
        "recipe; larger keeps small objects).",
        identity=True,
    )
    input_size: int = _option(224, "Input size in pixels (paper: 224).", identity=True)
    seed: int = _option(
        0, "Random seed: head init, data order, augmentation, split.", identity=True
    )
    val_split: float | None = _option(
        None,
        "Hold out this fraction of each class for validation when DATA_DIR "
        "has no train/ and val/ folders (e.g. 0.2).",
        identity=True,
    )
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps.")
    num_workers: int = _option(
        0,
        "Data-loading worker processes (results do not depend on it; use 4-8 on a GPU machine).",
        flag="--workers",
    )
    resume: bool = _option(
        False,
        "Continue the run in --out from its last complete epoch (same arguments; "
        "--epochs may be larger).",
    )
    overwrite: bool = _option(
        False, "Delete the run in --out (only epoch_*.pt and manifest.json) and start over."
    )
    trust_checkpoint: bool = _option(
        False,
        "Allow unpickling arbitrary objects from --init/--weights files (only "
        "for files you trust).",
    )
    state_prefix: str | None = _option(
        None,
        "Key prefix of the model copy to load from --init/--weights files "
        "holding several (e.g. ema.module.).",
    )
    progress: bool = _option(
        True, "Progress bars and per-epoch lines on stderr.", flag="--no-progress"
    )

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        if self.resume and self.overwrite:
            raise FtdynError(
                f"{arg('resume')} and {arg('overwrite')} exclude each other; pick one."
            )
        if int(self.epochs) < 0:
            raise FtdynError(f"{arg('epochs')}: must be 0 or more (got {self.epochs}).")
        if int(self.batch_size) < 1:
            raise FtdynError(f"{arg('batch_size')}: must be at least 1 (got {self.batch_size}).")
        if not (float(self.lr) > 0 and math.isfinite(float(self.lr))):
            raise FtdynError(f"{arg('lr')}: must be a positive number (got {self.lr}).")
        if not 0 < float(self.crop_scale) <= 1:
            raise FtdynError(
                f"{arg('crop_scale')}: {self.crop_scale} is not in (0, 1]; 0.08 is the ImageNet"
                " recipe."
            )
        if int(self.input_size) < 8:
            raise FtdynError(
                f"{arg('input_size')}: must be at least 8 pixels (got {self.input_size})."
            )
        if int(self.num_workers) < 0:
            raise FtdynError(f"{arg('num_workers')}: must be 0 or more (got {self.num_workers}).")
        seed = check_seed(self.seed)
        optimizer = str(self.optimizer).strip().lower()
        if optimizer not in OPTIMIZERS:
            raise FtdynError(
                f"{arg('optimizer')}: '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}."
            )
        weights = "none" if self.weights is None else str(self.weights)
        if self.init is not None and weights.lower() != "none":
            raise FtdynError(
                f"{arg('init')} and {arg('weights')} exclude each other: {arg('init')} loads every"
                f" weight from the checkpoint; drop {arg('weights')}."
            )
        normalized = {
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "lr": float(self.lr),
            "crop_scale": float(self.crop_scale),
            "input_size": int(self.input_size),
            "num_workers": int(self.num_workers),
            "seed": seed,
            "optimizer": optimizer,
            "weights": weights,
            "val_split": None if self.val_split is None else float(self.val_split),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (a resumed run must repeat them), by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("identity")
        }

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------ analyze

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
    ),
}


def parse_memory(value) -> int | None:
    """'1GB', '512MB', '2GiB', '1e9' or an int -> bytes (decimal units; *iB binary)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        text = str(value).strip().upper().replace(" ", "")
        units = {
            "KIB": 2**10,
            "MIB": 2**20,
            "GIB": 2**30,
            "TIB": 2**40,
            "KB": 1e3,
            "MB": 1e6,
            "GB": 1e9,
            "TB": 1e12,
            "K": 1e3,
            "M": 1e6,
            "G": 1e9,
            "T": 1e12,
            "B": 1,
        }
        factor = 1.0
        for suffix, f in units.items():
            if text.endswith(suffix):
                text, factor = text[: -len(suffix)], f
                break
        try:
            n = float(text) * factor
        except ValueError:
            raise FtdynError(
                f"{arg('memory_limit')}: cannot read '{value}'; write e.g. 1GB, 512MB or 2GiB."
            ) from None
    if not math.isfinite(n) or n < 64 * 2**20:
        raise FtdynError(f"{arg('memory_limit')}: {value} is too small; give at least 64MB.")
    return int(n)


def _names(value) -> tuple[str, ...] | None:
    """One name or several as a tuple; None for none (``None`` or empty)."""
    if value is None or len(value) == 0:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _internal(default: Any, help: str) -> Any:
    """A config field set by ftdyn itself (no command-line flag), e.g. for its convergence run."""
    return field(
        default=default, metadata={"help": help, "flag": None, "identity": False, "internal": True}
    )


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
        normalized = {
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
        if groups is not None and not 2 <= int(groups):
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


# ---------------------------------------------------------------------- visualize

#: Bounds of one ``visualize`` figure. Drawing time grows faster than the number of cells (about
#: 15 s for 48 rows x 16 columns), so a layer's hundreds of filters cannot all be shown.
MAX_FILTERS = 16
MAX_GRID_ROWS = 48  # class x filter rows of the class-based grid
MAX_EPOCHS = 16
#: Columns shown by default when a store has more checkpoints than this.
MAX_DEFAULT_EPOCHS = 8
#: Classes shown by default in the class-based grid.
DEFAULT_CLASSES = 3
#: Sample figures made by default.
DEFAULT_SAMPLES = 2


@dataclass(frozen=True)
class VisualizeConfig:
    """Everything ``ftdyn visualize`` / :func:`ftdyn.visualize` takes besides the store and the
    output folder.

    Lists left empty mean "choose automatically" and are stored as None; the choices are checked
    against the store when the figures are planned (:func:`ftdyn.viz.make_plan`).
    """

    layer: str | int = field(
        metadata={
            "help": (
                "Layer: module name (features.35), store variable (features_35) "
                "or index (0 = shallowest, -1 = deepest)."
            ),
            "flag": None,
        }
    )
    filters: tuple[int, ...] | None = _option(
        None,
        "Filter index (repeatable). Default: the --n-filters whose distance changed most. At most "
        f"{MAX_FILTERS}.",
        flag="--filter",
    )
    classes: tuple[str | int, ...] | None = _option(
        None,
        f"Class name or index (repeatable). Default: the first {DEFAULT_CLASSES} classes. At most "
        f"{MAX_GRID_ROWS} class x filter rows.",
        flag="--class",
    )
    samples: tuple[int, ...] | None = _option(
        None,
        "Sample id for a sample-based figure (repeatable). Default: per shown class (up to "
        f"{DEFAULT_SAMPLES}) the image the filters respond to most.",
        flag="--sample",
    )
    epochs: tuple[int, ...] | None = _option(
        None,
        f"Epoch to show (repeatable). Default: all, or {MAX_DEFAULT_EPOCHS} evenly spaced. At most "
        f"{MAX_EPOCHS}.",
        flag="--epoch",
    )
    results: Any = _option(
        None,
        "Results folder of `ftdyn analyze` that includes this store: rank filters by "
        "their per-filter distance.",
    )
    n_filters: int = _option(
        4,
        f"Filters to choose when no --filter is given (capped at {MAX_FILTERS} and at the "
        "layer's filters).",
    )

    def __post_init__(self) -> None:
        chosen = {
            name: _names(getattr(self, name))
            for name in ("filters", "classes", "samples", "epochs")
        }
        if chosen["filters"] is None and int(self.n_filters) < 1:
            raise FtdynError(f"{arg('n_filters', self.n_filters)}: must be at least 1.")
        for name, value in {**chosen, "n_filters": int(self.n_filters)}.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def replace(self, **changes: Any) -> VisualizeConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------ extract

StoreDtype = Literal["float16", "float32"]
#: Types an activation store holds its values in (one per store).
STORE_DTYPES: tuple[str, ...] = get_args(StoreDtype)
Codec = Literal["zstd", "lz4"]
#: Compression codecs of an activation store (Blosc): zstd is smaller, lz4 faster.
CODECS: tuple[str, ...] = get_args(Codec)
WeightsCopy = Literal["main", "ema"]
#: Which copy of the model a checkpoint file gives: the model's own weights, or its EMA copy.
WEIGHTS_COPIES: tuple[str, ...] = get_args(WeightsCopy)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``ftdyn extract`` / :func:`ftdyn.extract` takes besides the series, probe and
    store folders.

    Fields marked ``identity`` define the store: resuming or extending an existing store
    requires the values it records (a field left ``None`` takes the series' or model's
    default, and ``samples_per_chunk`` left ``None`` takes the store's). ``weights_copy`` is
    checked when the first checkpoint file is read (after the notes about the series).
    """

    arch: str | None = _option(
        None,
        "Architecture of third-party checkpoints, e.g. resnet50 or timm/convnext_atto "
        "(an ftdyn series names it in manifest.json).",
        identity=True,
    )
    source: str | os.PathLike | None = _option(
        None,
        "Epoch 0 of a third-party series: a checkpoint file or a "
        "torchvision weights name (IMAGENET1K_V1).",
    )
    layers: tuple[str, ...] | None = _option(
        None,
        "Module to capture (repeat the option; default: the paper's "
        "layers, see `ftdyn layers ARCH`).",
        flag="--layer",
        identity=True,
    )
    per_class: int | None = _option(
        None, "At most N probe images per class (default: all).", identity=True
    )
    max_samples: int | None = _option(
        None, "At most N probe images in all, balanced over classes.", identity=True
    )
    probe_seed: int = _option(0, "Seed of the probe-image selection.", flag="--seed", identity=True)
    input_size: int | None = _option(
        None, "Input size in pixels (default: the series' size, else 224).", identity=True
    )
    batch_size: int = _option(64, "Images per forward pass.")
    dtype: StoreDtype = _option(
        "float16", "Stored activation type: float16 or float32.", identity=True
    )
    codec: Codec = _option("zstd", "Compression: zstd (smaller) or lz4 (faster).")
    samples_per_chunk: int | None = _option(
        None,
        "Samples per store chunk (default: ~32 MB chunks of the largest layer).",
        flag="--chunk-samples",
        identity=True,
    )
    device: str = _option("auto", "auto (CUDA when present), cpu, cuda or cuda:N.")
    trust_checkpoint: bool = _option(
        False,
        "Allow unpickling arbitrary objects from checkpoint files (only for files you trust).",
    )
    state_prefix: str | None = _option(
        None,
        "Key prefix (ema.module.) or top-level entry (state_dict_ema, "
        "model_ema) of the model copy to load from files holding several.",
    )
    weights_copy: WeightsCopy = _option(
        "main",
        "main (the model's weights) or ema (its EMA copy: timm's "
        "state_dict_ema, torchvision's model_ema, ema.module. keys).",
    )
    normalize: str | None = _option(
        None,
        "MEAN,STD (or three means, three stds) the model expects (default: the "
        "timm model's pretrained config, else ImageNet's).",
        identity=True,
    )
    model_name: str | None = _option(
        None, "Model name shown in reports (default: the architecture)."
    )
    dataset_name: str | None = _option(
        None, "Dataset name shown in reports (default: from the series or the --data folder)."
    )
    writers: int | None = _option(
        None,
        "Threads compressing and writing regions (default: one per CPU core but one, 2 to 16).",
    )
    progress: bool = _option(True, "Progress bars on stderr.", flag="--no-progress")
    random_init_baseline: bool = _option(
        False,
        "Also extract a seeded randomly initialized model of the same "
        "architecture on the same images (not an epoch): the ceiling of "
        "`analyze`'s relative_distance.",
    )
    random_init_seed: int = _option(0, "Seed of the random-init baseline.")

    def __post_init__(self) -> None:
        # The order of the checks is the order of the errors a user meets; keep it stable.
        if self.dtype not in STORE_DTYPES:
            raise FtdynError(
                f"{arg('dtype')}: '{self.dtype}' is not supported; choose"
                f" {' or '.join(STORE_DTYPES)}."
            )
        if self.codec not in CODECS:
            raise FtdynError(
                f"{arg('codec')}: unknown codec '{self.codec}'; choose from {', '.join(CODECS)}."
            )
        for name in ("batch_size", "writers", "samples_per_chunk"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise FtdynError(f"{arg(name)}: must be at least 1 (got {value}).")
        if self.input_size is not None and int(self.input_size) < 8:
            raise FtdynError(
                f"{arg('input_size')}: {self.input_size} is too small (at least 8 pixels)."
            )
        normalized = {
            "probe_seed": check_seed(self.probe_seed, "probe_seed"),
            "random_init_seed": check_seed(self.random_init_seed, "random_init_seed"),
            "batch_size": int(self.batch_size),
            "layers": (
                (self.layers,) if isinstance(self.layers, str) else tuple(self.layers or ()) or None
            ),
        }
        for name in ("writers", "samples_per_chunk", "input_size"):
            value = getattr(self, name)
            normalized[name] = None if value is None else int(value)
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def identity(self) -> dict[str, Any]:
        """The fields that define the store (a resumed or extended store must repeat them),
        by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("identity")
        }

    def replace(self, **changes: Any) -> ExtractConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------- parameter names in messages

#: Each command's config: its fields are the command's options.
COMMAND_CONFIGS: dict[str, type] = {
    "train": TrainConfig,
    "extract": ExtractConfig,
    "analyze": AnalyzeConfig,
    "visualize": VisualizeConfig,
}
#: Parameters of the Python API that are not config fields: {command: {Python name: CLI flag or
#: argument}}.
OTHER_PARAMETERS: dict[str, dict[str, str]] = {
    "train": {"data_dir": "DATA_DIR", "out": "--out"},
    "extract": {"series": "CKPTS_DIR", "data": "--data", "out": "--out"},
    "analyze": {"stores": "STORES", "out": "--out"},
    "visualize": {"store": "STORE", "out": "--out"},
    "report": {"results_dir": "RESULTS_DIR", "stores": "--store", "out": "--out"},
    "demo": {"out": "OUT_DIR", "device": "--device", "seed": "--seed"},
    "layers": {"arch": "ARCH", "input_size": "--input-size"},
    "info": {"store": "STORE"},
}

#: The command whose flags messages name; None: a Python caller, who gets parameter names. One
#: per process, not a ContextVar, because errors are also raised in worker threads (extraction's
#: writers, Dask's), which would not see a context set by the CLI.
_cli_command: str | None = None
_NO_VALUE = object()


def command_flags(command: str) -> dict[str, str]:
    """{Python parameter name: CLI flag or argument} of ``command`` (``probe_seed`` -> ``--seed``
    for extract; ``epochs`` -> ``--epoch`` for visualize, ``--epochs`` for train)."""
    config_type = COMMAND_CONFIGS.get(command)
    fields = dataclasses.fields(config_type) if config_type else ()
    flags = {f.name: flag_of(config_type, f.name) for f in fields if not f.metadata.get("internal")}
    return {**flags, **OTHER_PARAMETERS[command]}


@contextlib.contextmanager
def cli_names(command: str) -> Iterator[None]:
    """While running ``ftdyn COMMAND``: :func:`arg` names flags instead of Python parameters."""
    global _cli_command
    previous, _cli_command = _cli_command, command
    try:
        yield
    finally:
        _cli_command = previous


def arg(param: str, value: Any = _NO_VALUE) -> str:
    """Parameter ``param`` as a message names it: ``memory_limit`` from Python, ``--memory-limit``
    under the command line; with ``value``: ``memory_limit=2GB`` / ``--memory-limit 2GB``."""
    if _cli_command is None:
        return param if value is _NO_VALUE else f"{param}={value}"
    flag = command_flags(_cli_command).get(param) or "--" + param.replace("_", "-")
    return flag if value is _NO_VALUE else f"{flag} {value}"
