"""Shared fixtures: tiny generated image folders (and a tiny trained series), drawn by
:func:`helpers.write_image_folder` (helpers.py holds the helpers the test files share).

Fixtures are session-scoped and must be treated as read-only; copy them
(``shutil.copytree``) before changing files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import write_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A dataset root with ``train/`` (3 classes × 8) and ``val/`` (3 × 4) 32×32 PNGs."""
    root = tmp_path_factory.mktemp("image_folder")
    write_image_folder(root / "train", 8, seed=0)
    write_image_folder(root / "val", 4, seed=1)
    return root


@pytest.fixture(scope="session")
def flat_image_folder(tmp_path_factory) -> Path:
    """A single ImageFolder (3 classes × 12 PNGs, no train/val split): use ``val_split``."""
    return write_image_folder(tmp_path_factory.mktemp("flat_image_folder"), 12, seed=2)


@pytest.fixture
def image_folder_copy(image_folder, tmp_path) -> Path:
    """A private, writable copy of :func:`image_folder` (for tests that break files)."""
    return Path(shutil.copytree(image_folder, tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_series(image_folder, tmp_path_factory) -> Path:
    """A trained series: resnet18, random init, input 32, batch 8, 2 epochs, seed 0.

    Folder with ``epoch_000.pt`` … ``epoch_002.pt`` and ``manifest.json``; the classes
    are :data:`helpers.CLASSES`. Takes a few seconds on CPU; built once per session.
    """
    import ftdyn

    out = tmp_path_factory.mktemp("tiny_series") / "ckpts"
    return ftdyn.train(
        image_folder,
        arch="resnet18",
        out=out,
        epochs=2,
        batch_size=8,
        input_size=32,
        seed=0,
        device="cpu",
        progress=False,
    )


@pytest.fixture
def cli_console():
    """ftdyn's notes, stage lines and caveats printed on stderr as the command line prints them
    (for tests that call the Python API and read stderr)."""
    from ftdyn.progress import console

    with console():
        yield


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: tiny tensors run faster on a shared 2-core machine
    (OpenMP barriers stall under load), and in-process and subprocess runs (resume tests) must use
    the same thread count to be bit-identical."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
