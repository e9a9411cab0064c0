"""Image decoding and input checks of ftdyn.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftdyn import data as D
from ftdyn.errors import FtdynError


def test_check_seed_range_and_type():
    assert D.check_seed(0) == 0
    assert D.check_seed(np.int64(2**32 - 1)) == 2**32 - 1
    with pytest.raises(
        FtdynError, match=r"^probe_seed: 4294967296 is out of range; .* 0 to 4294967295\.$"
    ):
        D.check_seed(2**32, "probe_seed")
    with pytest.raises(FtdynError, match=r"^seed: -1 is out of range"):
        D.check_seed(-1)
    with pytest.raises(FtdynError, match=r"^seed: 1\.5 is not a whole number"):
        D.check_seed(1.5)


def _probe(root, input_size=35):
    """The probe array of every image in ``root``. A 40 px image at input size 35 is resized to
    round(35·256/224) = 40 (unchanged) and centre-cropped to [2:37, 2:37], so pixels stay exact."""
    folder = D.scan_image_folder(root)
    return folder, D.load_images(folder, input_size)


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def test_16_bit_and_float_images_scale_to_8_bits(tmp_path):
    rng = np.random.default_rng(0)
    a16 = (rng.random((40, 40)) * 65535).astype(np.uint16)
    unit = rng.random((40, 40)).astype(np.float32)
    byte = (rng.random((40, 40)) * 255).astype(np.float32)
    img16 = Image.fromarray(a16)
    assert img16.mode == "I;16"
    _save(img16, tmp_path / "a" / "16bit.png")
    _save(Image.fromarray(a16.astype(np.int32)), tmp_path / "a" / "int32.tif")  # opens as mode I
    _save(Image.fromarray(unit), tmp_path / "b" / "unit.tif")
    _save(Image.fromarray(byte), tmp_path / "b" / "byte.tif")
    folder, images = _probe(tmp_path)
    assert [p.name for p in folder.paths] == ["16bit.png", "int32.tif", "byte.tif", "unit.tif"]
    assert folder.rescaled == []

    crop = (slice(2, 37), slice(2, 37))
    expected16 = np.round(a16 / 257).astype(np.uint8)[crop]  # 65535 -> 255
    assert expected16.max() > 200 and expected16.min() < 50  # a real spread, not clipped white
    for k, expected in enumerate(
        [
            expected16,
            expected16,
            np.round(byte).astype(np.uint8)[crop],
            np.round(unit * 255).astype(np.uint8)[crop],
        ]
    ):
        for channel in range(3):
            np.testing.assert_array_equal(
                images[k, :, :, channel], expected, err_msg=folder.paths[k].name
            )
    # PIL's plain convert("RGB") is what broke these: 16 bits clip to white, [0, 1] floats go black
    assert np.asarray(img16.convert("RGB")).mean() > 254
    assert np.asarray(Image.fromarray(unit).convert("RGB")).max() == 0


def test_out_of_range_images_are_min_max_rescaled_and_counted(tmp_path):
    wide = np.linspace(-1000.0, 3000.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    _save(Image.fromarray(wide), tmp_path / "a" / "wide.tif")
    _save(Image.fromarray((wide * 100).astype(np.int32)), tmp_path / "a" / "wide_int.tif")
    _save(Image.fromarray(np.full((40, 40), 0.5, np.float32)), tmp_path / "b" / "flat.tif")
    folder, images = _probe(tmp_path)
    assert [p.name for p in folder.rescaled] == ["wide.tif", "wide_int.tif"]
    expected = np.round((wide - wide.min()) * (255 / (wide.max() - wide.min()))).astype(np.uint8)[
        2:37, 2:37
    ]
    np.testing.assert_array_equal(images[0, :, :, 0], expected)
    np.testing.assert_array_equal(images[1, :, :, 0], expected)
    assert (images[2] == 128).all()  # 0.5 * 255, within [0, 1]: scaled, not rescaled
    message = D.rescaled_message(folder.rescaled)
    assert (
        message.startswith("min-max rescaled 2 32-bit/float images")
        and str(folder.rescaled[0]) in message
    )
    assert D.rescaled_message([]) is None
    # subsets (splits, probe sets) keep the rescaled files they hold
    assert [p.name for p in folder.subset([1, 2]).rescaled] == ["wide_int.tif"]
