"""ftdyn: feature dynamics of CNNs during fine-tuning.

The same names as the command line: ``ftdyn.train``, ``ftdyn.extract``,
``ftdyn.analyze``, ``ftdyn.visualize``, ``ftdyn.demo``. Heavy modules are imported
on first use so ``import ftdyn`` stays fast.
"""

from ._version import __version__
from .errors import FtdynError

# API name -> module. Modules are not named like the functions because importing a
# submodule ``ftdyn.train`` would replace the attribute ``ftdyn.train``.
_API = {"train": "training", "extract": "extraction", "analyze": "analysis", "visualize": "viz",
        "report": "reporting", "demo": "demos", "open_store": "store", "open_results": "results",
        "info": "store"}

__all__ = ["__version__", "FtdynError", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'ftdyn' has no attribute {name!r}")
