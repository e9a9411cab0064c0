"""Shared fixtures: tiny generated image folders (and a tiny trained series).

Images are drawn with PIL, seeded, with a class-dependent colour *and* shape so a
small CNN can learn them in a few epochs:

* ``circle``:  reddish disc on a dark background,
* ``square``:  greenish filled square,
* ``stripes``: bluish horizontal stripes.

Fixtures are session-scoped and must be treated as read-only; copy them
(``shutil.copytree``) before changing files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "stripes")


def draw_image(class_name: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One synthetic RGB image of ``class_name`` (see module doc)."""
    bg = tuple(int(v) for v in rng.integers(0, 60, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    jitter = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    if class_name == "circle":
        colour = (jitter(180, 256), jitter(0, 80), jitter(0, 80))
        r = jitter(size // 5, size // 3)
        cx, cy = jitter(r, size - r), jitter(r, size - r)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif class_name == "square":
        colour = (jitter(0, 80), jitter(180, 256), jitter(0, 80))
        a = jitter(size // 3, size // 2)
        x, y = jitter(0, size - a), jitter(0, size - a)
        draw.rectangle((x, y, x + a, y + a), fill=colour)
    else:
        colour = (jitter(0, 80), jitter(0, 80), jitter(180, 256))
        step = jitter(4, 7)
        for y in range(jitter(0, step), size, step):
            draw.rectangle((0, y, size, y + step // 2 - 1), fill=colour)
    noise = rng.integers(-12, 13, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def write_image_folder(
    root: Path, per_class: int, *, classes=CLASSES, size: int = 32, seed: int = 0, ext: str = "png"
) -> Path:
    """``root/<class>/<class>_NN.<ext>`` with ``per_class`` images per class; returns ``root``."""
    root = Path(root)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            draw_image(name, rng, size).save(folder / f"{name}_{i:02d}.{ext}")
    return root


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
    are :data:`CLASSES`. Takes a few seconds on CPU; built once per session.
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


def hooked_forward(
    model, images: np.ndarray, modules: list[str], norm: dict
) -> dict[str, np.ndarray]:
    """Independent reference for stored activations: a plain forward pass of ``model`` (eval mode)
    on uint8 NHWC ``images`` normalized as ``(x/255 - mean)/std``, with the test's own hooks
    recording each module's last output."""
    import torch

    model.eval()
    outs, handles = {}, []
    for name in modules:

        def hook(_m, _i, o, name=name):
            outs[name] = o.detach().clone()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(
        1, 3, 1, 1
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: v.numpy() for k, v in outs.items()}
