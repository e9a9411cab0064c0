"""ftdyn.demos: the built-in demo, the paper's study in miniature on real ImageNet features and
real images, on a CPU.

* :mod:`~ftdyn.demos.pipeline`: ``demo(out)``, the ``ftdyn demo`` command (prepare the targets,
  fine-tune, extract, analyze, report, findings).
* :mod:`~ftdyn.demos.datasets`: the real target datasets, prepared as ImageFolder trees.
* :mod:`~ftdyn.demos.domains` (drawn by :mod:`~ftdyn.demos.drawing`): the generated stand-in for
  a target whose source is not installed.
"""

import importlib

#: the pipeline's names (``ftdyn.demos.demo``, ...)
_PIPELINE = (
    "ALPHA_LEVEL",
    "ANALYZE_MEMORY",
    "ARCH",
    "BOOTSTRAP_GROUPS",
    "BOOTSTRAP_METRICS",
    "CROP_SCALE",
    "SIZES",
    "TARGETS",
    "TARGET_LR",
    "DemoSize",
    "add_to_report",
    "demo",
    "findings",
    "findings_html",
    "format_findings",
    "interpreted",
    "prepare_targets",
    "probe_layers",
    "source_weights",
    "target_accuracy",
)

__all__ = list(_PIPELINE)


def __getattr__(name: str):
    # Imported on first use (PEP 562): the pipeline pulls in training, extraction, the analysis
    # (dask, xarray, zarr) and the report (matplotlib), which preparing the data
    # (``ftdyn.demos.datasets``, ``ftdyn.demos.domains``) does not need.
    if name in _PIPELINE:
        return getattr(importlib.import_module(".pipeline", __name__), name)
    raise AttributeError(f"module 'ftdyn.demos' has no attribute {name!r}")
