"""Real target datasets for the demo, prepared as ImageFolder trees (no downloads).

Three sources span the paper's scenarios from close to ImageNet to far from it:

``photos``
    32×32 tiles of the colour photographs and textures bundled in scikit-image's wheel
    (astronaut, cat, coffee, rocket, motorcycle; brick, grass, gravel), labelled by the
    picture they come from: natural camera images like ImageNet's, with a new, scene-like
    label (the role of 15-Scene). Train and val tiles never overlap (each tile is one cell
    of a grid over the picture).
``fashion``
    Fashion-MNIST (Debian's ``dataset-fashion-mnist``): one product, centred on a plain
    black background, greyscale, 28×28 — the role of Fruits-360 (objects on a plain background).
    Train images come from its training file, val images from its test file.
``digits``
    scikit-learn's bundled handwritten digits (1,797 images, 8×8, 17 grey levels): strokes
    without texture or colour, the farthest from ImageNet.

:func:`prepare_dataset` draws ``n_train_per_class`` + ``n_val_per_class`` images per class
(stratified, without replacement, from a seeded permutation), upsizes each to
``image_size`` (bicubic) and writes ``out/train/<class>/<id>.png``, ``out/val/<class>/<id>.png``
and ``out/dataset.json`` (source, classes, counts and the source ids of every split, so
disjointness can be checked; ``complete`` turns true once every image is written). The same
arguments give byte-identical files; preparing again
into a folder this module wrote replaces it, any other content is refused. ``ftdyn demo
--data-only`` runs this for the demo's targets.

A missing source (no scikit-image/scikit-learn, no Debian package) raises
:class:`SourceMissing`, whose message says how to install it.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FtdynError
from ..offline import FASHION_MNIST_ENV, FASHION_MNIST_INSTALL, fashion_mnist_dir

__all__ = ["SOURCES", "SourceMissing", "source_classes", "load_source", "prepare_dataset"]

PREPARE_VERSION = 1  # bump when the files a seed produces change
META_FILE = "dataset.json"
TILE = 32  # pixels of a photo tile: 126+ non-overlapping tiles even in the smallest picture (cat)

SOURCES: dict[str, str] = {
    "photos": (
        "32x32 tiles of scikit-image's bundled photographs and textures, labelled by picture "
        "(natural images, new scene-like labels; like 15-Scene)"
    ),
    "fashion": (
        "Fashion-MNIST (Debian dataset-fashion-mnist): one product centred on a plain background, "
        "greyscale (like Fruits-360)"
    ),
    "digits": (
        "scikit-learn's handwritten digits, 8x8 strokes without texture or colour (farthest from"
        " ImageNet)"
    ),
}
# (class name, skimage.data function, index in its result or None); greyscale textures are repeated
# over RGB
_PHOTOS = (
    ("astronaut", "astronaut", None),
    ("brick", "brick", None),
    ("cat", "chelsea", None),
    ("coffee", "coffee", None),
    ("grass", "grass", None),
    ("gravel", "gravel", None),
    ("motorcycle", "stereo_motorcycle", 0),
    ("rocket", "rocket", None),
)
_FASHION = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
_DIGITS = tuple(f"digit-{d}" for d in range(10))
_CLASSES = {"photos": tuple(c for c, _, _ in _PHOTOS), "fashion": _FASHION, "digits": _DIGITS}
_INSTALL = {
    "photos": "pip install scikit-image (or pip install '.[demo]')",
    "digits": "pip install scikit-learn (or pip install '.[demo]')",
    "fashion": (
        f"{FASHION_MNIST_INSTALL} (or set {FASHION_MNIST_ENV} to a folder with its four .gz files)"
    ),
}


class SourceMissing(FtdynError):
    """A dataset source is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Pool:
    """Candidate images of one source: ``split`` is "train"/"val" when the source fixes it,
    else None."""

    images: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64, index into the source's class list
    ids: np.ndarray  # (N,) int64, stable id of the image inside the source
    split: str | None = None


def source_classes(name: str, n_classes: int | None = None) -> list[str]:
    """The first ``n_classes`` classes of a source (all by default), in the source's label order."""
    if name not in SOURCES:
        raise FtdynError(f"dataset '{name}': not one of {', '.join(SOURCES)}.")
    classes = _CLASSES[name]
    if n_classes is not None and not 2 <= int(n_classes) <= len(classes):
        raise FtdynError(
            f"dataset '{name}': n_classes must be 2..{len(classes)} (got {n_classes})."
        )
    return list(classes[: int(n_classes) if n_classes is not None else None])


def _photos() -> list[Pool]:
    try:
        import skimage.data
    except ImportError:
        raise SourceMissing(f"scikit-image is not installed; {_INSTALL['photos']}.") from None
    images, labels, ids = [], [], []
    for label, (_, func, index) in enumerate(_PHOTOS):
        picture = getattr(skimage.data, func)()
        picture = np.asarray(picture if index is None else picture[index], np.uint8)
        if picture.ndim == 2:
            picture = np.repeat(picture[..., None], 3, axis=2)
        rows, cols = picture.shape[0] // TILE, picture.shape[1] // TILE
        for k in range(rows * cols):
            r, c = divmod(k, cols)
            images.append(picture[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE, :3])
            labels.append(label)
            ids.append(k)
    return [Pool(np.stack(images), np.asarray(labels, np.int64), np.asarray(ids, np.int64))]


def _digits() -> list[Pool]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SourceMissing(f"scikit-learn is not installed; {_INSTALL['digits']}.") from None
    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)
    return [Pool(images, bunch.target.astype(np.int64), np.arange(len(images), dtype=np.int64))]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 + 4 * ndim or raw[2] != 0x08 or raw[3] != ndim:
        raise FtdynError(
            f"{path}: not a uint8 IDX file with {ndim} dimension(s); reinstall "
            f"`{FASHION_MNIST_INSTALL}`."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise FtdynError(
            f"{path}: truncated ({data.size} of {int(np.prod(shape))} values); reinstall "
            f"`{FASHION_MNIST_INSTALL}`."
        )
    return data.reshape(shape)


def _fashion() -> list[Pool]:
    folder = fashion_mnist_dir()
    if folder is None:
        raise SourceMissing(f"Fashion-MNIST is not installed; {_INSTALL['fashion']}.")
    pools = []
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 3)
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 1).astype(np.int64)
        pools.append(Pool(images, labels, np.arange(len(images), dtype=np.int64), split))
    return pools


_LOADERS = {"photos": _photos, "fashion": _fashion, "digits": _digits}


def load_source(name: str) -> list[Pool]:
    """All candidate images of a source (raises :class:`SourceMissing` when it is not installed)."""
    source_classes(name)
    return _LOADERS[name]()


def _draw(
    pools: list[Pool], n_classes: int, n_per_split: dict[str, int], seed: int, name: str
) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """Per split: (label, id, image) drawn per class from a seeded permutation, train first."""
    drawn: dict[str, list] = {split: [] for split in n_per_split}
    for label in range(n_classes):
        rng = np.random.default_rng([int(seed), PREPARE_VERSION, label])
        orders = [rng.permutation(np.flatnonzero(p.labels == label)) for p in pools]
        # a shared pool: val continues after train, so the two never overlap
        taken = [0] * len(pools)
        for split, n in n_per_split.items():
            k = next((i for i, p in enumerate(pools) if p.split == split), 0)
            chosen = orders[k][taken[k] : taken[k] + n]
            if len(chosen) < n:
                raise FtdynError(
                    f"dataset '{name}': class {_CLASSES[name][label]} has only {len(orders[k])} "
                    f"images for {split}, fewer than asked for; ask for fewer per class."
                )
            drawn[split].extend((label, int(pools[k].ids[i]), pools[k].images[i]) for i in chosen)
            taken[k] += n
    return drawn


def _to_png(image: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(image).convert("RGB")
    return img if img.size == (size, size) else img.resize((size, size), Image.BICUBIC)


def _clear(out: Path) -> None:
    """Remove a tree this module wrote; refuse one it did not."""
    existing = [out / s for s in ("train", "val") if (out / s).exists()]
    if existing and not (out / META_FILE).is_file():
        raise FtdynError(
            f"{out} already holds {existing[0].name}/ that ftdyn did not prepare; choose an empty "
            "or new folder."
        )
    for folder in existing:
        shutil.rmtree(folder)


def prepare_dataset(
    name: str,
    out: str | Path,
    *,
    n_train_per_class: int,
    n_val_per_class: int,
    image_size: int = 64,
    seed: int = 0,
    n_classes: int | None = None,
) -> Path:
    """Write ``name`` as an ImageFolder tree (``train/``, ``val/``, ``dataset.json``) into ``out``.

    Returns ``out``. When ``out/dataset.json`` already records these exact arguments the
    folder is kept as it is (a rerun does nothing).
    """
    classes = source_classes(name, n_classes)
    counts = {"train": int(n_train_per_class), "val": int(n_val_per_class)}
    if min(counts.values()) < 1:
        raise FtdynError(
            f"dataset '{name}': at least 1 train and 1 val image per class (got {counts})."
        )
    if not 16 <= int(image_size) <= 1024:
        raise FtdynError(
            f"dataset '{name}': image_size must be 16..1024 pixels (got {image_size})."
        )
    out = Path(out)
    request = {
        "source": name,
        "classes": classes,
        "image_size": int(image_size),
        "seed": int(seed),
        "per_class": counts,
        "version": PREPARE_VERSION,
    }
    meta_path = out / META_FILE
    if meta_path.is_file():
        try:
            found = json.loads(meta_path.read_text())
            if (
                found.get("complete")
                and {k: v for k, v in found.items() if k in request} == request
            ):
                return out
        except (OSError, ValueError):
            pass
    drawn = _draw(load_source(name), len(classes), counts, int(seed), name)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    # written first, so a tree interrupted while its images are written is still known as ours
    meta_path.write_text(json.dumps({**request, "complete": False}) + "\n")
    ids: dict[str, dict[str, list[int]]] = {}
    for split, items in drawn.items():
        ids[split] = {c: [] for c in classes}
        for c in classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for label, image_id, image in items:
            _to_png(image, int(image_size)).save(
                out / split / classes[label] / f"{image_id:05d}.png", format="PNG", compress_level=6
            )
            ids[split][classes[label]].append(image_id)
    meta = {**request, "complete": True, "description": SOURCES[name], "ids": ids}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")  # last: marks the tree complete
    return out
