"""Built-in synthetic image domains: the demo's stand-ins for a missing dataset; no downloads,
deterministic by seed.

Four small ImageFolder datasets that mirror the paper's transfer scenarios in
miniature (numpy rendering, PIL for the PNG files):

``source``
    Objects of several shape classes (circle, square, star, ...) with random colour,
    surface pattern, size, position and rotation, casting a soft shadow on varied,
    natural-looking textured backgrounds (sky, grass, water, sand, rock, bricks),
    with random photometric jitter and sensor noise. Plays the role of ImageNet.
``similar``
    The same kind of images (same background and placement distributions) but new
    object classes that the source never shows (crescent, arrow, heart, ...). Plays
    AwA2: close to the source, new labels.
``scene``
    The same kind of images, but the label is the background family (the "scene");
    0-2 random small objects of any shape are distractors. Plays 15-Scene: same
    images, different task.
``dissimilar``
    Fruit-like objects (apple, banana, grapes, ...) centred on a plain white
    background with shading and little variation. Plays Fruits-360: the domain
    farthest from the source.

Every image is drawn from its own random stream, derived from
``(seed, domain, split, class name, index)`` through :class:`numpy.random.SeedSequence`,
so the same seed gives byte-identical files (on one platform: float32 transcendental
functions may round differently on other CPUs/numpy builds), train and val never share an image,
and asking for fewer classes (``n_classes``) or fewer images gives a subset of the
same images. The background of a ``source``/``similar`` image is drawn independently
of its label, so the label lives in the object only; in ``scene`` it is the reverse.

Typical use::

    from ftdyn.demos.domains import generate_all
    paths = generate_all("data", n_train_per_class=60, n_val_per_class=20, n_classes=6)
    # paths["source"] / "train" is a torchvision ImageFolder root
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import FtdynError
from .drawing import (
    FRUITS,
    SCENES,
    SIMILAR_SHAPES,
    SOURCE_SHAPES,
    _Grid,
    _grid,
    _render_fruit,
    _render_object_scene,
    _render_scene,
)

__all__ = [
    "DOMAINS",
    "CLASSES",
    "SOURCE_SHAPES",
    "SIMILAR_SHAPES",
    "SCENES",
    "FRUITS",
    "SOURCE",
    "TARGETS",
    "UnknownDomainError",
    "RenderedDomain",
    "domain_classes",
    "render_domain",
    "generate_domain",
    "generate_all",
]

GENERATOR_VERSION = 1  # bump when the images a seed produces change

SOURCE = "source"
TARGETS = ("similar", "scene", "dissimilar")

DOMAINS: dict[str, str] = {
    "source": (
        "shape objects (8 classes) on varied textured natural backgrounds; "
        "the pre-training domain (like ImageNet)"
    ),
    "similar": "the same kind of images with 8 new object classes not in the source (like AwA2)",
    "scene": (
        "the same kind of images, labelled by background/scene type (6 classes) "
        "with random distractor objects (like 15-Scene)"
    ),
    "dissimilar": (
        "fruit-like objects (8 classes) centred on plain white backgrounds, "
        "little variation (like Fruits-360)"
    ),
}

# Class names in priority order (the names ``drawing`` draws): ``n_classes=k`` keeps the first k
# of these (the most distinct ones first). Labels follow the *alphabetical* order of the kept
# names, which is the order torchvision's ImageFolder gives the class folders.
_PRIORITY: dict[str, tuple[str, ...]] = {
    "source": SOURCE_SHAPES,
    "similar": SIMILAR_SHAPES,
    "scene": SCENES,
    "dissimilar": FRUITS,
}
#: all class names of each domain, in label order (alphabetical, as ImageFolder sorts them)
CLASSES: dict[str, tuple[str, ...]] = {k: tuple(sorted(v)) for k, v in _PRIORITY.items()}

_SPLITS = {"train": 0, "val": 1}
_META_FILE = "domain.json"


class UnknownDomainError(FtdynError, ValueError):
    """An unknown domain name (a :class:`ValueError` and an :class:`FtdynError`)."""


class RenderedDomain(NamedTuple):
    """In-memory images of one split of a domain."""

    images: np.ndarray  #: (N, H, W, 3) uint8, RGB
    labels: np.ndarray  #: (N,) int64 indices into ``classes``
    classes: list[str]  #: class names, in label order
    masks: (
        np.ndarray
    )  #: (N, H, W) uint8 coverage (0-255) of the rendered objects (scene: the distractors)


def _check_name(name: str) -> None:
    if name not in DOMAINS:
        raise UnknownDomainError(f"unknown domain {name!r}; choose from {', '.join(DOMAINS)}")


def domain_classes(name: str, n_classes: int | None = None) -> list[str]:
    """The class names a domain uses, in label order (alphabetical, like ImageFolder).

    ``n_classes=k`` keeps the k highest-priority classes of the domain (see the module
    constants, e.g. ``SOURCE_SHAPES``); ``None`` keeps all.
    """
    _check_name(name)
    classes = _PRIORITY[name]
    if n_classes is not None:
        if not 2 <= int(n_classes) <= len(classes):
            raise FtdynError(f"n_classes={n_classes} for domain {name!r}: choose 2..{len(classes)}")
        classes = classes[: int(n_classes)]
    return sorted(classes)


# ----------------------------------------------------------------------------------------------
# the random stream of each image


def _stable_id(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _image_rng(seed: int, domain: str, split: str, cls: str, index: int) -> np.random.Generator:
    ss = np.random.SeedSequence(
        [int(seed), _stable_id(domain), _SPLITS[split], _stable_id(cls), int(index)]
    )
    return np.random.default_rng(ss)


_RENDER: dict[str, Callable[[np.random.Generator, _Grid, str], tuple[np.ndarray, np.ndarray]]] = {
    "source": _render_object_scene,
    "similar": _render_object_scene,
    "scene": _render_scene,
    "dissimilar": _render_fruit,
}


# ----------------------------------------------------------------------------------------------
# public API


def _validate(name: str, split: str, n: int, image_size: int, seed: int) -> None:
    _check_name(name)
    if split not in _SPLITS:
        raise FtdynError(f"split {split!r}: choose from {', '.join(_SPLITS)}")
    if int(n) < 0:
        raise FtdynError(f"number of images per class must be >= 0, got {n}")
    if not 16 <= int(image_size) <= 1024:
        raise FtdynError(f"image_size={image_size}: choose 16..1024 pixels")
    if int(seed) < 0:
        raise FtdynError(f"seed must be a non-negative integer, got {seed}")


def _iter_images(
    name: str, split: str, n_per_class: int, image_size: int, seed: int, classes: Sequence[str]
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    g = _grid(int(image_size))
    render = _RENDER[name]
    for label, cls in enumerate(classes):
        for i in range(int(n_per_class)):
            rng = _image_rng(seed, name, split, cls, i)
            img, cover = render(rng, g, cls)
            yield label, i, img, cover


def render_domain(
    name: str,
    n_per_class: int,
    *,
    split: str = "train",
    image_size: int = 64,
    seed: int = 0,
    n_classes: int | None = None,
) -> RenderedDomain:
    """Render one split of a domain in memory.

    Images are ordered class by class. The images equal, pixel for pixel, the PNG files
    :func:`generate_domain` writes with the same arguments (PNG is lossless).
    """
    _validate(name, split, n_per_class, image_size, seed)
    classes = domain_classes(name, n_classes)
    n = len(classes) * int(n_per_class)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    masks = np.empty((n, image_size, image_size), np.uint8)
    labels = np.empty(n, np.int64)
    for k, (label, _, img, cover) in enumerate(
        _iter_images(name, split, n_per_class, image_size, seed, classes)
    ):
        images[k] = img
        masks[k] = np.clip(cover * 255 + 0.5, 0, 255).astype(np.uint8)
        labels[k] = label
    return RenderedDomain(images, labels, classes, masks)


def _prepare_dir(out: Path) -> None:
    """Clear the train/val folders of an earlier generation; refuse to touch anything else."""
    existing = [out / s for s in _SPLITS if (out / s).exists()]
    if not existing:
        return
    if not (out / _META_FILE).is_file():
        raise FtdynError(
            f"{out} already holds {existing[0].name}/ that ftdyn did not generate; "
            "choose an empty or new directory"
        )
    for d in existing:
        shutil.rmtree(d)


def generate_domain(
    name: str,
    out_dir: str | Path,
    *,
    n_train_per_class: int,
    n_val_per_class: int,
    image_size: int = 64,
    seed: int = 0,
    n_classes: int | None = None,
) -> Path:
    """Write one domain as an ImageFolder tree and return ``out_dir``.

    Layout: ``out_dir/train/<class>/<i>.png``, ``out_dir/val/<class>/<i>.png`` (RGB,
    ``image_size`` square, ``i`` zero-padded) and ``out_dir/domain.json`` (name, seed,
    classes, counts, generator version). Regenerating into a directory that ftdyn made
    replaces its train/val folders; a directory with other train/val content is refused.
    """
    from PIL import Image

    for split, n in (("train", n_train_per_class), ("val", n_val_per_class)):
        _validate(name, split, n, image_size, seed)
    classes = domain_classes(name, n_classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_dir(out)
    counts = {}
    for split, n in (("train", n_train_per_class), ("val", n_val_per_class)):
        width = max(3, len(str(max(int(n) - 1, 0))))
        for cls in classes:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for label, i, img, _ in _iter_images(name, split, n, image_size, seed, classes):
            Image.fromarray(img).save(
                out / split / classes[label] / f"{i:0{width}d}.png", format="PNG", compress_level=6
            )
        counts[split] = int(n)
    meta = {
        "domain": name,
        "description": DOMAINS[name],
        "classes": classes,
        "image_size": int(image_size),
        "seed": int(seed),
        "per_class": counts,
        "generator": "ftdyn.demos.domains",
        "generator_version": GENERATOR_VERSION,
    }
    (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def generate_all(out_root: str | Path, **kw) -> dict[str, Path]:
    """Generate the source and the three target domains under ``out_root/<name>``.

    Keyword arguments go to :func:`generate_domain` (``n_train_per_class`` and
    ``n_val_per_class`` are required). Returns ``{name: path}`` in the order of :data:`DOMAINS`.
    """
    root = Path(out_root)
    return {name: generate_domain(name, root / name, **kw) for name in DOMAINS}
