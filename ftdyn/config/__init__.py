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

:class:`TrainConfig`, :class:`ExtractConfig`, :class:`AnalyzeConfig`, :class:`VisualizeConfig` and
:class:`ReportConfig`.

This package imports nothing heavy (no torch), so the CLI can use it at import time. Modules:
:mod:`.base` (what the configs share, and parameter names in messages), then one per command:
:mod:`.train`, :mod:`.extract`, :mod:`.analyze`, :mod:`.visualize`, :mod:`.report`.
"""

from .analyze import (
    DEBIASED_CKA,
    ESTIMATORS,
    METRIC_NAMES,
    PRESETS,
    RUN_PAIRS,
    TRAJECTORY_MODES,
    VIEWS,
    AnalyzeConfig,
    Estimator,
    Metric,
    Preset,
    PresetName,
    Trajectory,
    View,
    check_view,
)
from .base import (
    COMMAND_CONFIGS,
    MIN_MEMORY_LIMIT,
    OTHER_PARAMETERS,
    SEED_LIMIT,
    arg,
    build,
    check_seed,
    cli_command,
    cli_names,
    command_flags,
    default,
    describe,
    flag_of,
    help_text,
    parse_memory,
)
from .extract import (
    CODECS,
    STORE_DTYPES,
    WEIGHTS_COPIES,
    Codec,
    ExtractConfig,
    StoreDtype,
    WeightsCopy,
)
from .report import GALLERY_FILTERS, MAX_REPORT_FILTERS, ReportConfig
from .train import MAX_TRAIN_EPOCHS, OPTIMIZERS, Optimizer, TrainConfig
from .visualize import (
    DEFAULT_CLASSES,
    DEFAULT_SAMPLES,
    MAX_DEFAULT_EPOCHS,
    MAX_EPOCHS,
    MAX_FILTERS,
    MAX_GRID_ROWS,
    VisualizeConfig,
)

COMMAND_CONFIGS.update(
    train=TrainConfig,
    extract=ExtractConfig,
    analyze=AnalyzeConfig,
    visualize=VisualizeConfig,
    report=ReportConfig,
)

__all__ = [
    "SEED_LIMIT",
    "check_seed",
    "flag_of",
    "default",
    "help_text",
    "describe",
    "build",
    "parse_memory",
    "MIN_MEMORY_LIMIT",
    "COMMAND_CONFIGS",
    "OTHER_PARAMETERS",
    "command_flags",
    "cli_names",
    "cli_command",
    "arg",
    "Optimizer",
    "OPTIMIZERS",
    "TrainConfig",
    "MAX_TRAIN_EPOCHS",
    "StoreDtype",
    "STORE_DTYPES",
    "Codec",
    "CODECS",
    "WeightsCopy",
    "WEIGHTS_COPIES",
    "ExtractConfig",
    "Metric",
    "METRIC_NAMES",
    "DEBIASED_CKA",
    "View",
    "VIEWS",
    "Trajectory",
    "RUN_PAIRS",
    "TRAJECTORY_MODES",
    "ESTIMATORS",
    "Estimator",
    "PresetName",
    "check_view",
    "Preset",
    "PRESETS",
    "AnalyzeConfig",
    "MAX_FILTERS",
    "MAX_GRID_ROWS",
    "MAX_EPOCHS",
    "MAX_DEFAULT_EPOCHS",
    "DEFAULT_CLASSES",
    "DEFAULT_SAMPLES",
    "VisualizeConfig",
    "GALLERY_FILTERS",
    "MAX_REPORT_FILTERS",
    "ReportConfig",
]
