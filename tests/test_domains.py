"""The built-in synthetic domains: layout, determinism, and that they differ as designed."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftdyn.demos.domains import (
    CLASSES,
    DOMAINS,
    SOURCE,
    TARGETS,
    domain_classes,
    generate_all,
    generate_domain,
    render_domain,
)
from ftdyn.errors import FtdynError

SIZE = 48  # small images keep the statistics tests fast
BORDER = 5  # pixels; objects of source/similar stay inside the central region


# ------------------------------------------------------------------ helpers


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _border_pixels(images: np.ndarray) -> np.ndarray:
    m = np.zeros(images.shape[1:3], bool)
    m[:BORDER] = m[-BORDER:] = True
    m[:, :BORDER] = m[:, -BORDER:] = True
    return images[:, m].astype(np.float32)  # (N, P, 3)


def _border_features(images: np.ndarray) -> np.ndarray:
    """Colour and texture statistics of the border region only."""
    b = _border_pixels(images)
    f = images.astype(np.float32)
    strips = np.concatenate([f[:, :BORDER], f[:, -BORDER:]], axis=1)  # top and bottom strips
    gx = np.abs(np.diff(strips, axis=2)).mean(axis=(1, 2, 3))
    gy = np.abs(np.diff(strips, axis=1)).mean(axis=(1, 2, 3))
    return np.column_stack([b.mean(1), b.std(1), gx, gy, np.log1p(gx) - np.log1p(gy)])


def _shape_features(masks: np.ndarray) -> np.ndarray:
    """Translation/rotation/scale-invariant descriptors of the object region."""
    a = masks.astype(np.float32) / 255
    _, h, w = a.shape
    yy, xx = np.mgrid[:h, :w]
    area = a.sum((1, 2))
    cx = (a * xx).sum((1, 2)) / area
    cy = (a * yy).sum((1, 2)) / area
    r = np.hypot(xx - cx[:, None, None], yy - cy[:, None, None]) / np.sqrt(area)[:, None, None]
    hist = np.stack(
        [
            np.histogram(r[i], bins=12, range=(0, 1.2), weights=a[i])[0] / area[i]
            for i in range(len(a))
        ]
    )
    perimeter = np.abs(np.diff(a, axis=1)).sum((1, 2)) + np.abs(np.diff(a, axis=2)).sum((1, 2))
    return np.column_stack([hist, perimeter / np.sqrt(area)])


def _nearest_centroid_accuracy(f_train, y_train, f_test, y_test) -> float:
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    centroids = np.stack([f_train[y_train == c].mean(0) for c in np.unique(y_train)])
    pred = ((f_test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == y_test).mean())


@pytest.fixture(scope="module")
def rendered():
    """train (30/class) and val (15/class) splits of every domain, all classes, 48 px."""
    return {
        name: (
            render_domain(name, 30, split="train", image_size=SIZE, seed=7),
            render_domain(name, 15, split="val", image_size=SIZE, seed=7),
        )
        for name in DOMAINS
    }


# ------------------------------------------------------------------ API, layout, determinism


def test_domain_table_and_classes():
    assert list(DOMAINS) == ["source", "similar", "scene", "dissimilar"]
    assert SOURCE == "source" and TARGETS == ("similar", "scene", "dissimilar")
    for name, desc in DOMAINS.items():
        assert isinstance(desc, str) and desc
        classes = domain_classes(name)
        assert classes == sorted(classes) == list(CLASSES[name])
        assert len(classes) >= 6 and len(set(classes)) == len(classes)
        assert all(c.isidentifier() and c.islower() for c in classes)  # readable folder names
    assert len(domain_classes("scene")) == 6
    # a subset keeps the highest-priority classes, still in label (alphabetical) order
    six = domain_classes("source", 6)
    assert six == sorted(six) and set(six) < set(CLASSES["source"]) and len(six) == 6
    with pytest.raises(FtdynError, match="n_classes"):
        domain_classes("source", 1)
    with pytest.raises(FtdynError, match="n_classes"):
        domain_classes("scene", 7)


@pytest.mark.parametrize(
    "call",
    [
        lambda: domain_classes("imagenet"),
        lambda: render_domain("imagenet", 2),
        lambda: generate_domain(
            "imagenet", "/nonexistent/never-created", n_train_per_class=1, n_val_per_class=1
        ),
    ],
)
def test_unknown_domain_is_value_error(call):
    with pytest.raises(
        ValueError,
        match=r"unknown domain 'imagenet'; choose from source, similar, scene, dissimilar",
    ):
        call()
    with pytest.raises(FtdynError):  # the CLI prints it as a one-line error
        call()
    assert not Path("/nonexistent/never-created").exists()


def test_generate_layout_counts_and_pixels(tmp_path):
    out = tmp_path / "scene"
    ret = generate_domain(
        "scene", out, n_train_per_class=3, n_val_per_class=2, image_size=32, seed=1, n_classes=4
    )
    assert ret == out and isinstance(ret, Path)
    classes = domain_classes("scene", 4)
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == classes
        for cls in classes:
            files = sorted((out / split / cls).iterdir())
            assert [p.name for p in files] == [f"{i:03d}.png" for i in range(n)]
            with Image.open(files[0]) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    meta = json.loads((out / "domain.json").read_text())
    assert meta["domain"] == "scene" and meta["classes"] == classes and meta["seed"] == 1
    assert meta["per_class"] == {"train": 3, "val": 2} and meta["image_size"] == 32
    # the files hold exactly the in-memory rendering (PNG is lossless)
    r = render_domain("scene", 2, split="val", image_size=32, seed=1, n_classes=4)
    for k, (img, label) in enumerate(zip(r.images, r.labels, strict=True)):
        on_disk = np.asarray(Image.open(out / "val" / r.classes[label] / f"{k % 2:03d}.png"))
        np.testing.assert_array_equal(on_disk, img)


def test_imagefolder_labels_match(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    generate_domain(
        "source", tmp_path, n_train_per_class=2, n_val_per_class=1, image_size=24, seed=0
    )
    ds = datasets.ImageFolder(tmp_path / "train")
    r = render_domain("source", 2, image_size=24, seed=0)
    assert ds.classes == r.classes
    assert [t for _, t in ds.samples] == r.labels.tolist()
    np.testing.assert_array_equal(np.asarray(ds[3][0]), r.images[3])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kw = dict(n_train_per_class=2, n_val_per_class=1, image_size=32, n_classes=3)
    for name in DOMAINS:
        a = _files(generate_domain(name, tmp_path / f"a-{name}", seed=3, **kw))
        b = _files(generate_domain(name, tmp_path / f"b-{name}", seed=3, **kw))
        c = _files(generate_domain(name, tmp_path / f"c-{name}", seed=4, **kw))
        assert a == b, name
        assert a.keys() == c.keys()
        pngs = [k for k in a if k.endswith(".png")]
        assert len(pngs) == 9
        assert all(a[k] != c[k] for k in pngs), name


def test_regenerating_replaces_and_foreign_dirs_are_refused(tmp_path):
    out = tmp_path / "d"
    generate_domain(
        "dissimilar", out, n_train_per_class=3, n_val_per_class=1, image_size=24, n_classes=4
    )
    generate_domain(
        "dissimilar", out, n_train_per_class=1, n_val_per_class=1, image_size=24, n_classes=2
    )
    # no stale class folders for ImageFolder to find
    assert len(list((out / "train").iterdir())) == 2
    assert len(list((out / "train").rglob("*.png"))) == 2
    foreign = tmp_path / "mine"
    (foreign / "train" / "cats").mkdir(parents=True)
    (foreign / "train" / "cats" / "1.png").write_bytes(b"not ours")
    with pytest.raises(FtdynError, match="did not generate"):
        generate_domain("source", foreign, n_train_per_class=1, n_val_per_class=1)
    assert (foreign / "train" / "cats" / "1.png").read_bytes() == b"not ours"


def test_render_shapes_and_subsets_are_consistent():
    full = render_domain("similar", 3, image_size=32, seed=5)
    assert full.images.shape == (24, 32, 32, 3) and full.images.dtype == np.uint8
    assert full.masks.shape == (24, 32, 32) and full.masks.dtype == np.uint8
    assert full.labels.tolist() == [c for c in range(8) for _ in range(3)]
    # fewer classes / fewer images: the same images, not new ones
    sub = render_domain("similar", 2, image_size=32, seed=5, n_classes=3)
    for k, (img, label) in enumerate(zip(sub.images, sub.labels, strict=True)):
        j = full.classes.index(sub.classes[label]) * 3 + k % 2
        np.testing.assert_array_equal(img, full.images[j])


def test_train_and_val_never_share_an_image(rendered):
    seen: dict[bytes, str] = {}
    for name, (train, val) in rendered.items():
        for split, r in (("train", train), ("val", val)):
            for k, img in enumerate(r.images):
                h = hashlib.sha1(img.tobytes()).digest()
                assert h not in seen, f"{name}/{split}/{k} repeats {seen.get(h)}"
                seen[h] = f"{name}/{split}/{k}"


def test_bad_arguments(tmp_path):
    with pytest.raises(FtdynError, match="split"):
        render_domain("source", 1, split="test")
    with pytest.raises(FtdynError, match="seed"):
        render_domain("source", 1, seed=-1)
    with pytest.raises(FtdynError, match="image_size"):
        render_domain("source", 1, image_size=8)


def test_generate_all(tmp_path):
    paths = generate_all(
        tmp_path, n_train_per_class=1, n_val_per_class=1, image_size=24, n_classes=2
    )
    assert list(paths) == list(DOMAINS)
    for name, p in paths.items():
        assert p == tmp_path / name
        assert (
            len(list((p / "train").rglob("*.png"))) == 2
            and len(list((p / "val").rglob("*.png"))) == 2
        )


def test_generation_is_fast(tmp_path):
    t0 = time.perf_counter()
    # 240 images
    generate_all(tmp_path, n_train_per_class=8, n_val_per_class=2, image_size=64, n_classes=6)
    elapsed = time.perf_counter() - t0
    # ~1 s on 2 idle cores; the bound only catches a pathological slowdown on a busy machine
    assert elapsed < 15.0, f"240 images of 64 px took {elapsed:.1f} s"


# ------------------------------------------------------------------ the domains differ as designed


def test_dissimilar_has_white_borders_source_does_not(rendered):
    for name in DOMAINS:
        border_mean = _border_pixels(rendered[name][0].images).mean(axis=(1, 2))  # per image
        if name == "dissimilar":
            assert border_mean.min() > 240
            # plain, little variation
            assert _border_pixels(rendered[name][0].images).std(axis=1).mean() < 4
        else:
            assert np.median(border_mean) < 200, name
            assert (border_mean < 240).mean() > 0.97, name


def test_dissimilar_objects_are_centred(rendered):
    masks = rendered["dissimilar"][0].masks.astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    area = masks.sum((1, 2))
    cx, cy = (masks * xx).sum((1, 2)) / area, (masks * yy).sum((1, 2)) / area
    assert np.abs(cx - (SIZE - 1) / 2).max() < 0.12 * SIZE
    assert np.abs(cy - (SIZE - 1) / 2).max() < 0.15 * SIZE
    src = rendered["source"][0].masks.astype(np.float32)
    src_cx = (src * xx).sum((1, 2)) / src.sum((1, 2))
    assert src_cx.std() > 3 * cx.std()  # source objects move around


def test_scene_label_is_in_the_background(rendered):
    train, val = rendered["scene"]
    acc = _nearest_centroid_accuracy(
        _border_features(train.images), train.labels, _border_features(val.images), val.labels
    )
    assert acc > 0.75, acc  # chance 1/6


def test_source_label_is_in_the_object_not_the_background(rendered):
    for name in ("source", "similar"):
        train, val = rendered[name]
        chance = 1 / len(train.classes)
        border_acc = _nearest_centroid_accuracy(
            _border_features(train.images), train.labels, _border_features(val.images), val.labels
        )
        shape_acc = _nearest_centroid_accuracy(
            _shape_features(train.masks), train.labels, _shape_features(val.masks), val.labels
        )
        assert border_acc < chance + 0.15, (name, border_acc)
        assert shape_acc > 0.55, (name, shape_acc)  # chance 1/8
    # the border of a source image is pure background: no object pixels there
    assert _border_pixels(rendered["source"][0].masks[..., None]).max() == 0


def test_objects_stand_out_from_their_surroundings(rendered):
    images, masks = rendered["source"][0].images.astype(np.float32), rendered["source"][0].masks
    contrast = []
    for img, m in zip(images, masks, strict=True):
        ys, xs = np.nonzero(m)
        box = np.zeros(m.shape, bool)
        box[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
        contrast.append(np.abs(img[m > 230].mean(0) - img[box & (m == 0)].mean(0)).sum())
    assert np.median(contrast) > 100 and np.mean(np.array(contrast) > 40) > 0.95


def test_similar_shares_the_source_backgrounds_with_new_classes(rendered):
    assert not set(CLASSES["similar"]) & set(CLASSES["source"])
    assert not set(CLASSES["dissimilar"]) & set(CLASSES["source"])

    def stats(name):
        b = _border_pixels(rendered[name][0].images)
        return b.mean(axis=(0, 1)), b.std(axis=1).mean(0)  # mean colour, mean within-image spread

    src_mean, src_std = stats("source")
    for name, close in (("similar", True), ("scene", True), ("dissimilar", False)):
        mean, std = stats(name)
        d = np.abs(mean - src_mean).max() + np.abs(std - src_std).max()
        assert (d < 12) if close else (d > 60), (name, d)


@pytest.mark.slow
def test_a_small_cnn_learns_the_source_shapes():
    """The shapes are learnable from pixels despite colour, pattern, pose and background clutter.

    ~5 s on one idle core; measured val accuracy 0.49-0.53 over three seeds (chance 1/6).
    """
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and robust on a busy machine
    try:
        acc = _train_small_cnn(torch)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.35, acc  # > 2x chance


def _train_small_cnn(torch) -> float:
    nn = torch.nn
    n_classes = 6
    train = render_domain("source", 150, image_size=32, seed=0, n_classes=n_classes)
    val = render_domain("source", 30, split="val", image_size=32, seed=0, n_classes=n_classes)

    def tensor(r):
        return torch.from_numpy(r.images).permute(0, 3, 1, 2).float() / 255 - 0.5, torch.from_numpy(
            r.labels
        )

    (x, y), (xv, yv) = tensor(train), tensor(val)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, n_classes),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(20):
        net.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return (net(xv).argmax(1) == yv).float().mean().item()
