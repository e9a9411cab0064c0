"""Image folders, transforms, data loaders and probe-set selection.

* :func:`scan_image_folder` reads an ImageFolder layout (``root/<class>/<image>``),
  checks every image once and skips unreadable ones (counted in
  ``ImageFolderData.skipped``); :func:`resolve_splits` turns a dataset folder into
  train and validation sets (``train/`` + ``val/`` subfolders, or one folder and a
  stratified, seeded ``val_split``).
* Images are decoded to 8-bit RGB by :func:`to_rgb`, which scales 16-bit, 32-bit and float
  images instead of clipping them (the scan lists those it min-max rescales).
* Transforms return **uint8** CHW tensors; :func:`normalize` converts a uint8 batch to
  normalized float32 on the device, so stores can keep the images un-normalized.
* Randomness is explicit: the training augmentation of sample ``i`` in epoch ``e``
  depends only on ``(seed, e, i)`` and the shuffling only on ``(seed, e)``, never on the
  number of workers or on how many epochs ran before in the process. This is what
  makes ``ftdyn train --resume`` reproduce an uninterrupted run exactly on CPU.
* :func:`select_probe` / :func:`load_images` pick and load the probe images of the
  extract stage (deterministic, eval transform).
"""

from __future__ import annotations

import math
import os
import random
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import SEED_LIMIT, arg, check_seed  # noqa: F401  (re-exported: D.check_seed)
from .errors import FtdynError
from .folders import NOT_REGULAR, entry_mode

#: File suffixes read as images (the torchvision ImageFolder list), case-insensitive.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Names accepted for the validation subfolder next to ``train/``.
VAL_FOLDER_NAMES = ("val", "valid", "validation")


@dataclass
class ImageFolderData:
    """A labelled list of image files.

    ``paths[i]`` has label ``labels[i]`` (an index into ``classes``). ``skipped``
    lists the files that were found but could not be read (they are not in
    ``paths``). ``root`` is the folder the data came from. ``rescaled`` lists the images
    of ``paths`` whose pixel values are min-max rescaled when decoded (see :func:`to_rgb`).
    ``ignored`` lists the entries left out without being opened (not regular files, symlinks
    leading out of the folder or in a loop), each with the reason.
    """

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    root: Path | None = None
    skipped: list[Path] = field(default_factory=list)
    rescaled: list[Path] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # (path, why), never opened

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> ImageFolderData:
        """The samples at ``indices`` (in that order), same classes, no skipped files."""
        paths = [self.paths[i] for i in indices]
        chosen = set(paths)
        return ImageFolderData(
            paths,
            [self.labels[i] for i in indices],
            list(self.classes),
            self.root,
            [],
            [p for p in self.rescaled if p in chosen],
        )

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for label in self.labels:
            counts[label] += 1
        return counts


# ----------------------------------------------------------------------- scanning


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _check_image(path: Path) -> bool | None:
    """None when the file is unreadable, else whether decoding it min-max rescales its values.

    PIL verifies the file (headers + checksums, no full decode). ``verify`` does not
    decode JPEG data, so a JPEG that does not end with its EOI marker (typically a
    truncated download) is fully decoded once as well; so are the rare 32-bit integer
    and float images, whose value range decides how they are scaled (:func:`to_rgb`).
    """
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            img.verify()
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(path) - 64))
                tail = fh.read()
            if not tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
                with Image.open(path) as img:
                    img.load()
        if mode in ("I", "F"):
            with Image.open(path) as img:
                return to_rgb(img)[1]
        return False
    except Exception:  # PIL raises many types for broken files
        return None


def _check_folder(root: Path, flag: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FtdynError(f"{flag}: folder '{root}' does not exist.")
    if not root.is_dir():
        raise FtdynError(
            f"{flag}: '{root}' is not a folder; give a folder with one subfolder of images per"
            " class."
        )
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise FtdynError(
            f"{flag}: folder '{root}' is empty; it needs one subfolder of images per class."
        )
    return root


def _class_files(folder: Path, root: Path, ignored: list[tuple[Path, str]]) -> list[Path]:
    """The image files under one class folder, sorted. Only regular files are taken: FIFOs,
    devices and sockets are never opened (reading a FIFO would wait forever); symlinks are
    followed only to files inside ``root`` (or the class folder's target, when it is itself a
    link) and to folders inside ``folder`` not yet walked
    (a link to a parent would loop, or pull other classes' images into this one). What is
    left out goes to ``ignored`` as (path, reason)."""
    top, inside = folder.resolve(), root.resolve()
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            info = here.stat()
            if (info.st_dev, info.st_ino) in seen:
                ignored.append((here, "a symlink loop"))
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            ignored.append((here, f"unreadable folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            real = Path(os.path.realpath(path)) if entry.is_symlink() else None
            mode = entry_mode(path, ignored)
            if mode is None:
                continue
            if stat.S_ISDIR(mode):
                if real is not None and not real.is_relative_to(top):
                    ignored.append((path, "a symlink to a folder outside its class folder"))
                else:
                    stack.append(path)
            elif not _is_image(entry.name):
                continue
            elif not stat.S_ISREG(mode):
                ignored.append((path, NOT_REGULAR))
            elif real is not None and not (real.is_relative_to(inside) or real.is_relative_to(top)):
                ignored.append((path, "a symlink to a file outside the data folder"))
            else:
                files.append(path)
    return sorted(files)


def _class_folders(root: Path, ignored: list[tuple[Path, str]]) -> list[str]:
    """The class folders of ``root``: its non-hidden subfolders, sorted, without the links back
    into the data folder (``zz -> .`` would file every image a second time, under a class
    ``zz``; a link to another class folder would do the same for that class), which go to
    ``ignored``. A link to a folder elsewhere is a class like any other."""
    inside = root.resolve()
    classes = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        # a link that leads nowhere (broken, a loop) may have been a class folder: reported
        mode = entry_mode(path, ignored) if path.is_symlink() else path.lstat().st_mode
        if mode is None or not stat.S_ISDIR(mode):
            continue
        real = path.resolve()
        if path.is_symlink() and inside.is_relative_to(real):
            ignored.append((path, "a symlink to the data folder or a folder above it (a loop)"))
        elif path.is_symlink() and real.is_relative_to(inside):
            ignored.append((path, "a symlink to a folder inside the data folder"))
        else:
            classes.append(path.name)
    return classes


def scan_image_folder(
    root: str | os.PathLike,
    *,
    flag: str = "DATA_DIR",
    verify: bool = True,
    workers: int | None = None,
) -> ImageFolderData:
    """Read an ImageFolder layout: ``root/<class name>/**/<image>``.

    Classes are the non-hidden subfolders, sorted by name (label = position). Image
    files are found recursively and sorted. With ``verify`` every image is opened
    once (``PIL.Image.verify``); unreadable ones are left out and listed in
    ``skipped`` — the caller reports them. Raises :class:`FtdynError` (naming
    ``flag``) for a missing/empty folder, no class subfolders, a class folder
    without images, or a folder where no image is readable.
    """
    root = _check_folder(root, flag)
    ignored: list[tuple[Path, str]] = []
    classes = _class_folders(root, ignored)
    if not classes:
        raise FtdynError(
            f"{flag}: '{root}' has no class subfolders; expected {root}/<class name>/<image files>."
        )
    found: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = _class_files(root / name, root, ignored)
        if not files:
            raise FtdynError(
                f"{flag}: class folder '{root / name}' has no images "
                f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder."
            )
        found.extend((p, label) for p in sorted(files))
    if verify:
        n_threads = workers or min(8, os.cpu_count() or 1)
        if n_threads > 1 and len(found) > 64:
            with ThreadPoolExecutor(n_threads) as pool:
                status = list(pool.map(_check_image, (p for p, _ in found), chunksize=32))
        else:
            status = [_check_image(p) for p, _ in found]
    else:
        status = [False] * len(found)
    skipped = [p for (p, _), st in zip(found, status, strict=True) if st is None]
    kept = [(p, lab) for (p, lab), st in zip(found, status, strict=True) if st is not None]
    rescaled = [p for (p, _), st in zip(found, status, strict=True) if st]
    if not kept:
        raise FtdynError(
            f"{flag}: none of the {len(found)} images in '{root}' can be read "
            f"(first: {skipped[0]}); check the files."
        )
    present = {lab for _, lab in kept}
    for label, name in enumerate(classes):
        if label not in present:
            raise FtdynError(
                f"{flag}: class folder '{root / name}' has no readable images "
                "(all are unreadable); fix or remove them."
            )
    return ImageFolderData(
        [p for p, _ in kept], [lab for _, lab in kept], classes, root, skipped, rescaled, ignored
    )


def rescaled_message(rescaled: Sequence[Path]) -> str | None:
    """The one-line report about min-max rescaled images, or None when there were none."""
    if not rescaled:
        return None
    noun = "image" if len(rescaled) == 1 else "images"
    return (
        f"min-max rescaled {len(rescaled)} 32-bit/float {noun} to 0..255, each on its own (values"
        f" outside 0..65535 for integers, 0..1 and 0..255 for floats; first: {rescaled[0]})"
    )


def skipped_message(skipped: Sequence[Path]) -> str | None:
    """The one-line report about unreadable images, or None when there were none."""
    if not skipped:
        return None
    noun = "image" if len(skipped) == 1 else "images"
    return f"skipped {len(skipped)} unreadable {noun} (first: {skipped[0]})"


def resolve_splits(
    data_dir: str | os.PathLike,
    val_split: float | None,
    seed: int = 0,
) -> tuple[ImageFolderData, ImageFolderData]:
    """Train and validation sets of ``data_dir``.

    * ``data_dir/train`` and ``data_dir/val`` (or ``valid``/``validation``): used as
      they are; their class lists must match. ``val_split`` must then be None.
    * otherwise ``data_dir`` (or ``data_dir/train`` when there is no val folder) is one
      ImageFolder split by ``val_split`` (fraction in (0, 1)), stratified per class and
      seeded: every class with at least 2 images gives ``max(1, round(f·n))`` of them to
      validation and keeps at least one for training.

    The unreadable files found are reported in ``train.skipped`` and ``val.skipped``
    (for a split, all of them in ``train.skipped``), the entries left unopened likewise
    in ``ignored``.
    """
    root = _check_folder(data_dir, arg("data_dir"))
    if val_split is not None and not (0.0 < float(val_split) < 1.0):
        raise FtdynError(
            f"{arg('val_split')}: {val_split} is not a fraction between 0 and 1 (e.g. 0.2)."
        )
    train_dir = root / "train"
    val_dirs = [root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()]
    if train_dir.is_dir() and val_dirs:
        if val_split is not None:
            raise FtdynError(
                f"{arg('val_split')}: '{root}' already has train/ and {val_dirs[0].name}/ folders; "
                f"drop {arg('val_split')} or point {arg('data_dir')} at a single image folder."
            )
        train = scan_image_folder(train_dir, flag=arg("data_dir"))
        val = scan_image_folder(val_dirs[0], flag=arg("data_dir"))
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            parts = []
            if only_train:
                parts.append(f"only in train/: {', '.join(only_train[:5])}")
            if only_val:
                parts.append(f"only in {val_dirs[0].name}/: {', '.join(only_val[:5])}")
            raise FtdynError(
                f"DATA_DIR: the class folders of '{train_dir}' and '{val_dirs[0]}' differ "
                f"({'; '.join(parts)}); both need the same classes."
            )
        return train, val
    source = train_dir if train_dir.is_dir() else root
    if val_split is None:
        raise FtdynError(
            f"{arg('val_split')}: '{root}' has no train/ and val/ subfolders; pass"
            f" {arg('val_split')} 0.2 to hold out a fraction of each class for validation."
        )
    data = scan_image_folder(source, flag=arg("data_dir"))
    train_idx, val_idx = stratified_split(data.labels, float(val_split), seed)
    if not val_idx:
        raise FtdynError(
            f"{arg('val_split', val_split)}: no class of '{source}' has 2 images, so nothing is"
            " left for validation; add images or use train/ and val/ folders."
        )
    train, val = data.subset(train_idx), data.subset(val_idx)
    train.skipped, train.ignored = list(data.skipped), list(data.ignored)
    return train, val


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded per-class split of indices into (train, val), each sorted."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    train, val = [], []
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        n_val = 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))
        rng = np.random.default_rng([int(seed), label, 0x5E1])
        order = rng.permutation(n)
        val.extend(idx[j] for j in order[:n_val])
        train.extend(idx[j] for j in order[n_val:])
    return sorted(train), sorted(val)


# --------------------------------------------------------------------- transforms


def to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """``img`` as 8-bit RGB, and whether its values were min-max rescaled to do so.

    PIL's own ``convert("RGB")`` clips wide grey images at 255, so 16-bit images come
    out nearly white and float images in [0, 1] black. These modes are scaled here:

    * ``I;16*`` (16-bit) and ``I`` (32-bit int; PIL opens many 16-bit files so): by the
      16-bit depth, 65535 → 255;
    * ``F`` (float): values within [0, 1] × 255, values within [0, 255] kept;
    * ``I`` or ``F`` values outside those ranges: min-max rescaled per image to 0..255
      (the ``True`` case; NaN counts as the minimum, ±inf as the extremes).
    """
    mode = img.mode
    if not (mode == "F" or mode == "I" or mode.startswith("I;16")):
        return img.convert("RGB"), False  # loads the pixels: callers close the file
    arr = np.asarray(img, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    rescaled = False
    if mode != "F" and lo >= 0 and hi <= 65535:
        arr = arr * (255 / 65535)
    elif mode == "F" and lo >= 0 and hi <= 1:
        arr = arr * 255
    elif not (mode == "F" and lo >= 0 and hi <= 255):
        arr = (arr - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        rescaled = True
    grey = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    return grey.convert("RGB"), rescaled


def _pil_rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as img:
        return to_rgb(img)[0]


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def eval_resize_size(input_size: int) -> int:
    """Shorter-side size before the centre crop: the ImageNet 256/224 ratio."""
    return round(input_size * 256 / 224)


class EvalTransform:
    """Resize the shorter side to ``round(input_size·256/224)``, centre crop ``input_size``.

    PIL image → uint8 tensor (3, input_size, input_size). Deterministic.
    """

    def __init__(self, input_size: int):
        self.input_size = int(input_size)
        self.resize = eval_resize_size(self.input_size)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_rgb(img)[0]
        w, h = img.size  # as torchvision Resize(int): shorter side -> resize, longer truncated
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        img = img.resize((new_w, new_h), Image.BILINEAR)
        s = self.input_size
        top = round((new_h - s) / 2.0)
        left = round((new_w - s) / 2.0)
        img = img.crop((left, top, left + s, top + s))
        return _to_uint8_chw(img)

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.input_size})"


class TrainTransform:
    """Random resized crop (scale 0.08–1, ratio 3/4–4/3) + horizontal flip → uint8 CHW.

    Randomness comes from ``generator`` when given (the dataset passes one seeded with
    (seed, epoch, index)), else from the global torch RNG.
    """

    def __init__(
        self,
        input_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
    ):
        self.input_size = int(input_size)
        self.scale = scale
        self.ratio = ratio
        self.flip = flip

    def crop_box(
        self, width: int, height: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """(left, top, w, h) as torchvision's RandomResizedCrop.get_params, with ``generator``."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = (
                area
                * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            )
            aspect = math.exp(
                torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item()
            )
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
                return left, top, w, h
        in_ratio = width / height  # fallback: central crop
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_rgb(img)[0]
        left, top, w, h = self.crop_box(*img.size, generator=generator)
        s = self.input_size
        img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
        if self.flip and torch.rand(1, generator=generator).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_uint8_chw(img)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.input_size}, scale={self.scale}, flip={self.flip})"


def eval_transform(input_size: int) -> EvalTransform:
    """The ImageNet evaluation recipe scaled to ``input_size`` (see :class:`EvalTransform`)."""
    return EvalTransform(input_size)


def train_transform(input_size: int, crop_scale: float = 0.08) -> TrainTransform:
    """Random resized crop (area fraction ``crop_scale``..1) + horizontal flip at ``input_size``
    (see :class:`TrainTransform`)."""
    if not 0 < crop_scale <= 1:
        raise FtdynError(
            f"{arg('crop_scale')}: {crop_scale} is not in (0, 1]; 0.08 is the ImageNet recipe."
        )
    return TrainTransform(input_size, scale=(crop_scale, 1.0))


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float32 ``(x/255 − mean)/std`` on ``batch``'s device."""
    x = batch.to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


# ------------------------------------------------------------ datasets and loaders


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on the integers ``parts`` (SeedSequence mixing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(
        2, dtype=np.uint32
    )
    return int((int(state[0]) << 31) ^ int(state[1]))


class ImageDataset(torch.utils.data.Dataset):
    """``(uint8 CHW tensor, label)`` for each sample of an :class:`ImageFolderData`.

    With ``seed`` set, the transform of sample ``i`` gets a ``torch.Generator`` seeded
    from ``(seed, epoch, i)`` (call :meth:`set_epoch` before each epoch), so random
    augmentations do not depend on worker count or process history.
    """

    def __init__(self, data: ImageFolderData, transform: Callable, *, seed: int | None = None):
        self.data = data
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.data.paths[index]
        try:
            img = _pil_rgb(path)
        except Exception as exc:
            raise FtdynError(
                f"{path}: unreadable image ({' '.join(str(exc).split())}); remove or fix it."
            ) from None
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))
        return self.transform(img, generator), int(self.data.labels[index])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and python from the worker's torch seed."""
    base = torch.initial_seed() % 2**32
    np.random.seed(base)
    random.seed(base)


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)``.

    The sampler and the workers' base seeds come from a ``torch.Generator`` seeded with
    ``derive_seed(seed, epoch)``; ``dataset.set_epoch(epoch)`` is called here.
    """
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x10AD))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


# ------------------------------------------------------------------- probe sets


def select_probe(
    data: ImageFolderData,
    *,
    per_class: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> ImageFolderData:
    """A deterministic, class-balanced subset of ``data`` for the extract stage.

    Per class, the paths are sorted and shuffled by a generator seeded with
    ``(seed, label)``; ``per_class`` keeps the first ``per_class`` of that order (all
    when None). ``max_samples`` then takes samples round-robin over the classes (first
    of each class, then second, ...) until the limit, keeping classes balanced. The
    result is sorted by (label, path). Larger limits give supersets of smaller ones.
    """
    if per_class is not None and per_class < 1:
        raise FtdynError(f"{arg('per_class')}: must be at least 1 (got {per_class}).")
    if max_samples is not None and max_samples < 1:
        raise FtdynError(f"{arg('max_samples')}: must be at least 1 (got {max_samples}).")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_class.setdefault(int(label), []).append(i)
    orders: list[list[int]] = []
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: str(data.paths[i]))
        rng = np.random.default_rng([int(seed), label, 0x960BE])
        idx = [idx[j] for j in rng.permutation(len(idx))]
        orders.append(idx[:per_class] if per_class is not None else idx)
    if max_samples is not None:
        chosen: list[int] = []
        depth = 0
        while len(chosen) < max_samples and any(depth < len(o) for o in orders):
            for o in orders:
                if depth < len(o) and len(chosen) < max_samples:
                    chosen.append(o[depth])
            depth += 1
    else:
        chosen = [i for o in orders for i in o]
    chosen.sort(key=lambda i: (data.labels[i], str(data.paths[i])))
    return data.subset(chosen)


def load_images(
    data: ImageFolderData, input_size: int, *, num_workers: int = 0, batch_size: int = 64
) -> np.ndarray:
    """All images of ``data`` through :func:`eval_transform`: uint8 array (n, H, W, 3)."""
    out = np.empty((len(data), int(input_size), int(input_size), 3), dtype=np.uint8)
    if len(data) == 0:
        return out
    dataset = ImageDataset(data, eval_transform(input_size))
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    start = 0
    for images, _ in iter_batches(loader):
        n = images.shape[0]
        out[start : start + n] = images.permute(0, 2, 3, 1).numpy()
        start += n
    return out


def iter_batches(loader: torch.utils.data.DataLoader):
    """Iterate ``loader``; an FtdynError raised inside a worker comes back as one line."""
    try:
        yield from loader
    except FtdynError as exc:
        raise FtdynError(_last_error_line(str(exc))) from None


def _last_error_line(message: str) -> str:
    """DataLoader workers re-raise with the worker traceback in the message: keep the error line."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return message
    last = lines[-1]
    prefix = "ftdyn.errors.FtdynError: "
    return last[len(prefix) :] if last.startswith(prefix) else last
