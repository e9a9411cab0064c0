"""ftdyn: feature dynamics of CNNs during fine-tuning.

The same names as the command line (``help(ftdyn.NAME)`` for each):

* ``train(data_dir, arch=, out=, ...)``: fine-tune; per-epoch checkpoints + manifest.
* ``extract(series, data=, out=, ...)``: activations of every checkpoint -> Zarr store.
* ``analyze(stores, out=, ...)``: distances, agreement, reusability -> results Dataset.
* ``report(results)``: figures and ``report.html`` from the results.
* ``visualize(store, ...)``: class- and sample-based figures of one layer.
* ``info(store)``: a store's layers, checkpoints, completeness and size.
* ``demo(out)``: the whole pipeline, ImageNet MobileNetV2 fine-tuned on three real datasets.
* ``open_store(path)`` / ``open_results(path)``: validated xarray Datasets.

Submodules: ``ftdyn.metrics`` (pure metric functions), ``ftdyn.models``,
``ftdyn.checkpoints``, ``ftdyn.summary``, ... Heavy modules are imported on first use
so ``import ftdyn`` stays fast.
"""

import importlib
import logging

from ._version import __version__
from .errors import FtdynError, FtdynWarning

# API name -> module. Modules are not named like the functions because importing a
# submodule ``ftdyn.train`` would replace the attribute ``ftdyn.train``.
_API = {
    "train": "training",
    "extract": "extraction",
    "analyze": "analysis",
    "visualize": "viz",
    "report": "reporting",
    "demo": "demos",
    "open_store": "store",
    "open_results": "results",
    "info": "store",
}

# notes: shown only where the caller asks
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", "FtdynError", "FtdynWarning", *_API]


def __dir__() -> list[str]:
    # the API names, not the lazily loaded submodules and helpers, are what a notebook user
    # should see (``dir(ftdyn)``, tab completion)
    return list(__all__)


def __getattr__(name: str):
    # Imported on first use (PEP 562): the API modules pull in torch, dask and xarray,
    # which would make ``import ftdyn`` and ``ftdyn --help`` take seconds.
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'ftdyn' has no attribute {name!r}")
