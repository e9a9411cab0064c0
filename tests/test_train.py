"""End-to-end tests of `ftdyn train`: the checkpoint series, resume after SIGKILL, bad input.

Random-init models at 32 px on the tiny generated image folders of conftest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CLASSES,
    FAST_TRAIN,
    assert_same_state,
    kill_cli_when,
    run_cli,
    state_of,
    write_image_folder,
)
from PIL import Image

from ftdyn import checkpoints as ckpt
from ftdyn import data as D
from ftdyn import models


def assert_one_line_error(result, *needles):
    """Exit code 2, a single 'ftdyn: error:' line naming ``needles``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("ftdyn: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------ the series


@pytest.mark.slow
def test_series_manifest_hashes_epoch0_and_metrics(image_folder, tmp_path):
    out = tmp_path / "ckpts"
    args = [
        "train",
        image_folder,
        "--arch",
        "resnet18",
        "--epochs",
        2,
        "--out",
        out,
        "--seed",
        3,
        *FAST_TRAIN,
    ]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert f"checkpoint series: {out}" in result.output
    assert "val_acc" in result.output

    files = sorted(p.name for p in out.iterdir())
    assert files == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt", "manifest.json"]
    manifest = ckpt.read_manifest(out)
    assert manifest["architecture"] == "resnet18"
    assert manifest["classes"] == list(CLASSES) and manifest["num_classes"] == 3
    assert manifest["input_size"] == 32
    assert manifest["normalization"] == {
        "mean": list(models.IMAGENET_MEAN),
        "std": list(models.IMAGENET_STD),
    }
    assert manifest["seed"] == 3
    assert manifest["hyperparameters"]["optimizer"] == "adam"
    assert manifest["hyperparameters"]["lr"] == 1e-4
    assert manifest["hyperparameters"]["batch_size"] == 8
    assert manifest["hyperparameters"]["epochs"] == 2
    assert manifest["dataset"]["path"] == str(image_folder.resolve())
    assert (manifest["dataset"]["train_size"], manifest["dataset"]["val_size"]) == (24, 12)
    assert manifest["dataset"]["skipped_unreadable"] == 0
    assert manifest["init"]["weights"] == "none"
    assert manifest["complete"] is True
    for key in ("ftdyn_version", "torch_version", "torchvision_version", "device", "created"):
        assert manifest[key]

    entries = manifest["epochs"]
    assert [e["epoch"] for e in entries] == [0, 1, 2]
    for e in entries:
        assert ckpt.sha256_file(out / e["file"]) == e["sha256"]
        assert 0.0 <= e["val_acc"] <= 1.0 and e["val_loss"] > 0
        assert e["seconds"] >= 0
        model = models.build_model("resnet18", num_classes=3)
        # strict load of a weights_only file
        assert ckpt.load_into_model(model, out / e["file"]) == e["epoch"]
    assert entries[0]["train_loss"] is None and entries[0]["train_acc"] is None
    for e in entries[1:]:
        assert 0.0 <= e["train_acc"] <= 1.0 and e["train_loss"] > 0

    # epoch 0 = the initial weights (same seed) with a new 3-class head, before any update
    torch.manual_seed(3)
    reference = models.build_model("resnet18").state_dict()
    epoch0 = state_of(out / "epoch_000.pt")
    backbone = [k for k in reference if not k.startswith("fc.")]
    assert backbone and all(torch.equal(epoch0[k], reference[k]) for k in backbone)
    assert epoch0["fc.weight"].shape == (3, 512) and epoch0["fc.bias"].shape == (3,)
    # ... and training changed every layer, not just the head
    epoch2 = state_of(out / "epoch_002.pt")
    assert not torch.equal(epoch2["conv1.weight"], epoch0["conv1.weight"])
    assert not torch.equal(epoch2["fc.weight"], epoch0["fc.weight"])
    # each epoch checkpoint carries what an exact resume needs
    payload = ckpt.load_checkpoint_payload(out / "epoch_002.pt")
    assert payload["epoch"] == 2 and "optimizer" in payload and "rng" in payload

    # killed after writing epoch_002.pt but before the manifest listed it, and epoch_001.pt damaged
    # since: resume goes back to the intact epoch 0 and redoes epochs 1 and 2 exactly
    epoch1 = state_of(out / "epoch_001.pt")
    manifest["epochs"], manifest["complete"] = manifest["epochs"][:2], False
    ckpt.write_manifest(out, manifest)
    (out / "epoch_002.pt").write_bytes(b"half-written")
    good = (out / "epoch_001.pt").read_bytes()
    (out / "epoch_001.pt").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (
        "ftdyn: note: --resume: epoch_001.pt changed since it was written (SHA-256 differs from"
        " manifest.json); redoing epoch 1 from epoch_000.pt" in result.output
    )
    assert_same_state(state_of(out / "epoch_001.pt"), epoch1)
    assert_same_state(state_of(out / "epoch_002.pt"), epoch2)
    assert ckpt.read_manifest(out)["complete"] is True

    # no listed checkpoint left to resume from: a clear error, nothing deleted
    (out / "epoch_000.pt").write_bytes(b"damaged")
    manifest = ckpt.read_manifest(out)
    manifest["epochs"] = manifest["epochs"][:1]
    ckpt.write_manifest(out, manifest)
    assert_one_line_error(
        run_cli(*args, "--resume"),
        "--resume",
        "no checkpoint",
        "epoch_000.pt changed",
        "--overwrite",
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "epoch_000.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "manifest.json",
    ]


def test_val_split_and_epochs_zero(flat_image_folder, tmp_path):
    out = tmp_path / "ckpts"
    result = run_cli(
        "train",
        flat_image_folder,
        "--arch",
        "resnet18",
        "--epochs",
        0,
        "--val-split",
        0.25,
        "--out",
        out,
        *FAST_TRAIN,
    )
    assert result.exit_code == 0, result.output
    manifest = ckpt.read_manifest(out)
    assert (manifest["dataset"]["train_size"], manifest["dataset"]["val_size"]) == (27, 9)
    assert manifest["dataset"]["class_counts"]["val"] == [3, 3, 3]
    assert [e["epoch"] for e in manifest["epochs"]] == [0]


def test_split_is_stratified_seeded_and_probe_deterministic(flat_image_folder):
    train_a, val_a = D.resolve_splits(flat_image_folder, 0.25, seed=1)
    train_b, val_b = D.resolve_splits(flat_image_folder, 0.25, seed=1)
    _, val_c = D.resolve_splits(flat_image_folder, 0.25, seed=2)
    assert val_a.paths == val_b.paths and train_a.paths == train_b.paths
    assert val_a.paths != val_c.paths
    assert not set(train_a.paths) & set(val_a.paths)
    probe = D.select_probe(train_a, per_class=2, max_samples=5, seed=0)
    assert probe.paths == D.select_probe(train_a, per_class=2, max_samples=5, seed=0).paths
    assert len(probe) == 5 and sorted(probe.class_counts()) == [1, 2, 2]
    assert [(lab, str(p)) for lab, p in zip(probe.labels, probe.paths, strict=True)] == sorted(
        (lab, str(p)) for lab, p in zip(probe.labels, probe.paths, strict=True)
    )
    images = D.load_images(probe, 32)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8


# --------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(image_folder, tmp_path):
    # mobilenet_v3_small has dropout, so this also checks that the global RNG is restored per epoch
    common = [
        "train",
        image_folder,
        "--arch",
        "mobilenet_v3_small",
        "--epochs",
        4,
        "--seed",
        7,
        "--lr",
        1e-3,
        *FAST_TRAIN,
    ]
    reference = tmp_path / "reference"
    result = run_cli(*common, "--out", reference)
    assert result.exit_code == 0, result.output

    killed = tmp_path / "killed"
    code = kill_cli_when(
        [*common, "--out", killed], (killed / "epoch_001.pt").exists, "epoch_001.pt"
    )
    assert code == -signal.SIGKILL
    manifest = ckpt.read_manifest(killed)
    assert manifest is not None and manifest["complete"] is False
    assert max(e["epoch"] for e in manifest["epochs"]) < 4
    assert not (killed / "epoch_004.pt").exists()

    # without --resume or --overwrite the folder is refused
    assert_one_line_error(run_cli(*common, "--out", killed), "--resume", str(killed))

    result = run_cli(*common, "--out", killed, "--resume")
    assert result.exit_code == 0, result.output
    resumed = ckpt.read_manifest(killed)
    ref = ckpt.read_manifest(reference)
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3, 4]
    assert_same_state(state_of(killed / "epoch_004.pt"), state_of(reference / "epoch_004.pt"))
    for a, b in zip(resumed["epochs"], ref["epochs"], strict=True):
        assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (
            b["train_loss"],
            b["val_loss"],
            b["val_acc"],
        )
    assert resumed["complete"] is True
    for e in resumed["epochs"]:
        assert ckpt.sha256_file(killed / e["file"]) == e["sha256"]

    # a finished run resumed again has nothing to do; a different --lr is refused by name
    assert run_cli(*common, "--out", killed, "--resume").exit_code == 0
    bad = [a if a != 1e-3 else 1e-2 for a in common]
    assert_one_line_error(run_cli(*bad, "--out", killed, "--resume"), "--lr")


@pytest.mark.slow
def test_resume_walks_back_past_damaged_or_missing_checkpoints(image_folder, tmp_path):
    common = [
        "train",
        image_folder,
        "--arch",
        "resnet18",
        "--epochs",
        4,
        "--seed",
        5,
        "--lr",
        1e-3,
        *FAST_TRAIN,
    ]
    reference = tmp_path / "reference"
    assert run_cli(*common, "--out", reference).exit_code == 0
    ref = ckpt.read_manifest(reference)

    def damaged(name: str, damage) -> Path:
        out = Path(shutil.copytree(reference, tmp_path / name))
        damage(out)
        return out

    truncated = damaged("truncated", lambda out: os.truncate(out / "epoch_004.pt", 1000))
    deleted = damaged("deleted", lambda out: [(out / f"epoch_00{e}.pt").unlink() for e in (3, 4)])
    # later files intact
    middle = damaged("middle", lambda out: os.truncate(out / "epoch_002.pt", 5000))
    for out, note in (
        (
            truncated,
            (
                "epoch_004.pt changed since it was written (SHA-256 differs from manifest.json); "
                "redoing epoch 4 from epoch_003.pt"
            ),
        ),
        (deleted, "epoch_003.pt is missing; redoing epochs 3-4 from epoch_002.pt"),
        (
            middle,
            (
                "epoch_002.pt changed since it was written (SHA-256 differs from manifest.json); "
                "redoing epochs 2-4 from epoch_001.pt"
            ),
        ),
    ):
        result = run_cli(*common, "--out", out, "--resume")
        assert result.exit_code == 0, result.output
        assert [ln for ln in result.output.splitlines() if "note:" in ln] == [
            f"ftdyn: note: --resume: {note}"
        ]
        resumed = ckpt.read_manifest(out)
        assert resumed["complete"] is True
        # bit-exact on CPU: the same files, metrics and weights as the uninterrupted run
        assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3, 4]
        for a, b in zip(resumed["epochs"], ref["epochs"], strict=True):
            assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (
                b["train_loss"],
                b["val_loss"],
                b["val_acc"],
            )
            assert ckpt.sha256_file(out / a["file"]) == a["sha256"]
            assert_same_state(state_of(out / a["file"]), state_of(reference / b["file"]))


# ------------------------------------------------------------------ bad input


def _break(folder: Path, name: str, content: bytes = b"this is not an image") -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def test_bad_data_dirs(tmp_path, image_folder_copy):
    out = tmp_path / "out"
    base = ["--arch", "resnet18", "--out", out, *FAST_TRAIN]
    assert_one_line_error(
        run_cli("train", tmp_path / "missing", *base), "DATA_DIR", "does not exist"
    )
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("train", tmp_path / "empty", *base), "DATA_DIR", "empty")

    flat = write_image_folder(tmp_path / "flat", 2)
    assert_one_line_error(run_cli("train", flat, *base), "--val-split")
    assert_one_line_error(run_cli("train", flat, *base, "--val-split", 1.5), "--val-split")

    (image_folder_copy / "train" / "zebra").mkdir()
    assert_one_line_error(
        run_cli("train", image_folder_copy, *base), "DATA_DIR", "zebra", "no images"
    )
    _break(image_folder_copy / "train" / "zebra", "z.png")
    assert_one_line_error(run_cli("train", image_folder_copy, *base), "zebra", "no readable images")
    shutil.rmtree(image_folder_copy / "train" / "zebra")

    (image_folder_copy / "val" / "zebra").mkdir()
    write_image_folder(image_folder_copy / "val", 1, classes=("zebra",))
    assert_one_line_error(run_cli("train", image_folder_copy, *base), "DATA_DIR", "zebra", "differ")

    only_bad = tmp_path / "only_bad"
    (only_bad / "a").mkdir(parents=True)
    _break(only_bad / "a", "1.png")
    _break(only_bad / "a", "2.jpg")
    assert_one_line_error(
        run_cli("train", only_bad, *base, "--val-split", 0.5), "DATA_DIR", "none of the 2"
    )
    assert not out.exists()


def test_unreadable_images_are_skipped_and_counted(image_folder_copy, tmp_path):
    bad = _break(image_folder_copy / "train" / "circle", "broken.png", b"\x89PNG\r\n\x1a\n garbage")
    _break(image_folder_copy / "val" / "square", "empty.jpg", b"")
    out = tmp_path / "out"
    result = run_cli(
        "train", image_folder_copy, "--arch", "resnet18", "--epochs", 0, "--out", out, *FAST_TRAIN
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warning = [ln for ln in result.output.splitlines() if "warning:" in ln]
    assert (
        len(warning) == 1 and "skipped 2 unreadable images" in warning[0] and str(bad) in warning[0]
    )
    manifest = ckpt.read_manifest(out)
    assert manifest["dataset"]["skipped_unreadable"] == 2
    assert (manifest["dataset"]["train_size"], manifest["dataset"]["val_size"]) == (24, 12)


def test_bad_model_arguments(image_folder, tmp_path):
    out = tmp_path / "out"
    base = [image_folder, "--out", out, *FAST_TRAIN]
    assert_one_line_error(run_cli("train", *base, "--arch", "resnet9000"), "--arch", "resnet9000")

    junk = tmp_path / "junk.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, junk)
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--weights", junk),
        "--weights",
        str(junk),
        "does not fit resnet18",
    )
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--weights", tmp_path / "nope.pt"),
        "--weights",
        "does not exist",
    )
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--init", junk), "--init", str(junk)
    )
    other = tmp_path / "shufflenet.pt"
    torch.save(models.build_model("shufflenet_v2_x0_5").state_dict(), other)
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--init", other), str(other), "does not fit"
    )
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--init", tmp_path / "nope.pt"), "--init"
    )
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--weights", "IMAGENET_NOPE"), "--weights"
    )
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--optimizer", "lbfgs"), "--optimizer"
    )
    assert_one_line_error(
        run_cli("train", *base, "--arch", "resnet18", "--device", "potato"), "--device"
    )
    if not torch.cuda.is_available():
        assert_one_line_error(
            run_cli("train", *base, "--arch", "resnet18", "--device", "cuda"), "--device", "CUDA"
        )
    assert not out.exists()


def test_init_from_a_trained_series_checkpoint(image_folder, tmp_path):
    source = tmp_path / "source"
    scratch = run_cli(
        "train", image_folder, "--arch", "resnet18", "--epochs", 0, "--out", source, *FAST_TRAIN
    )
    assert scratch.exit_code == 0 and "randomly initialized, not pre-trained" in scratch.output
    # a 2-class target: the 3-class head of the source is adapted on load, then replaced
    target_data = write_image_folder(tmp_path / "target", 6, classes=("circle", "square"))
    out = tmp_path / "target_ckpts"
    result = run_cli(
        "train",
        target_data,
        "--arch",
        "resnet18",
        "--epochs",
        0,
        "--val-split",
        0.5,
        "--init",
        source / "epoch_000.pt",
        "--out",
        out,
        *FAST_TRAIN,
    )
    assert result.exit_code == 0 and "not pre-trained" not in result.output, result.output
    manifest = ckpt.read_manifest(out)
    assert manifest["init"]["checkpoint_sha256"] == ckpt.sha256_file(source / "epoch_000.pt")
    src, tgt = state_of(source / "epoch_000.pt"), state_of(out / "epoch_000.pt")
    assert tgt["fc.weight"].shape == (2, 512)
    assert all(torch.equal(src[k], tgt[k]) for k in src if not k.startswith("fc."))


def test_existing_output_folder(image_folder, tmp_path):
    out = tmp_path / "out"
    args = ["train", image_folder, "--arch", "resnet18", "--epochs", 0, "--out", out, *FAST_TRAIN]
    assert run_cli(*args).exit_code == 0
    first = ckpt.read_manifest(out)["epochs"][0]["sha256"]
    assert_one_line_error(run_cli(*args), "--out", str(out), "--resume", "--overwrite")
    assert_one_line_error(run_cli(*args, "--resume", "--overwrite"), "--resume", "--overwrite")
    (out / "notes.txt").write_text("keep me")
    result = run_cli(*[a if a != 0 else 1 for a in args], "--overwrite", "--seed", 1)
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "keep me"  # --overwrite removes only ftdyn's files
    manifest = ckpt.read_manifest(out)
    assert [e["epoch"] for e in manifest["epochs"]] == [0, 1] and manifest["seed"] == 1
    assert manifest["epochs"][0]["sha256"] != first

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2")
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert_one_line_error(
            run_cli(*args[: -len(FAST_TRAIN) - 2], "--out", foreign, *FAST_TRAIN, *extra),
            "--out",
            str(foreign),
            "not empty",
        )
    assert sorted(p.name for p in foreign.iterdir()) == ["data.csv"]

    # --resume with a different seed on the (complete) run is refused by name
    assert_one_line_error(run_cli(*args, "--resume", "--seed", 5), "--seed")


def test_seed_out_of_numpy_range(image_folder, tmp_path):
    out = tmp_path / "out"
    base = ["train", image_folder, "--arch", "resnet18", "--epochs", 0, "--out", out, *FAST_TRAIN]
    for seed in ("99999999999999999999", "4294967296", "-1"):
        assert_one_line_error(run_cli(*base, "--seed", seed), "--seed", seed, "4294967295")
    assert not out.exists()
    result = run_cli(*base, "--seed", 2**32 - 1)  # the largest seed numpy takes
    assert result.exit_code == 0, result.output
    assert ckpt.read_manifest(out)["seed"] == 2**32 - 1


def test_input_size_the_model_cannot_take(image_folder, tmp_path):
    out = tmp_path / "out"
    base = ["train", image_folder, "--epochs", 0, "--out", out, *FAST_TRAIN]
    # ViT asserts its fixed 224 px; DenseNet's poolings run out of pixels below 32
    assert_one_line_error(
        run_cli(*base, "--arch", "vit_b_16"),
        "--input-size 32",
        "cannot run on 32x32",
        "Wrong image height",
        "choose another --input-size",
    )
    assert_one_line_error(
        run_cli(*base, "--arch", "densenet121", "--input-size", 16),
        "--input-size 16",
        "cannot run on 16x16",
    )
    assert not out.exists()


def test_fewer_than_two_classes(tmp_path):
    out = tmp_path / "out"
    base = ["--arch", "resnet18", "--epochs", 1, "--out", out, *FAST_TRAIN]
    one = write_image_folder(tmp_path / "one", 6, classes=("circle",))
    assert_one_line_error(
        run_cli("train", one, *base, "--val-split", 0.5),
        "DATA_DIR",
        str(one),
        "only class 'circle'",
        "at least 2 classes",
    )
    write_image_folder(tmp_path / "split" / "train", 4, classes=("square",))
    write_image_folder(tmp_path / "split" / "val", 2, classes=("square",))
    assert_one_line_error(
        run_cli("train", tmp_path / "split", *base),
        "DATA_DIR",
        "training images",
        "only class 'square'",
    )
    # 'square' has one image: it trains, but validation would only see 'circle'
    lopsided = write_image_folder(tmp_path / "lopsided", 4, classes=("circle",))
    write_image_folder(lopsided, 1, classes=("square",))
    assert_one_line_error(
        run_cli("train", lopsided, *base, "--val-split", 0.5),
        "DATA_DIR",
        "validation images",
        "only class 'circle'",
        "--val-split",
    )
    assert not out.exists()


def test_16_bit_and_float_images_train_and_rescaling_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    (data / "deep").mkdir(parents=True)
    (data / "float").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((40, 40)) * 65535).astype(np.uint16)).save(
            data / "deep" / f"{i}.png"
        )
        Image.fromarray(rng.random((40, 40)).astype(np.float32)).save(data / "float" / f"{i}.tif")
    Image.fromarray((rng.random((40, 40)) * 1e4).astype(np.float32)).save(
        data / "float" / "wide.tif"
    )
    out = tmp_path / "out"
    result = run_cli(
        "train",
        data,
        "--arch",
        "resnet18",
        "--epochs",
        1,
        "--val-split",
        0.3,
        "--out",
        out,
        *FAST_TRAIN,
    )
    assert result.exit_code == 0, result.output
    warning = [ln for ln in result.output.splitlines() if "warning:" in ln]
    assert warning == [
        "ftdyn: warning: min-max rescaled 1 32-bit/float image to 0..255, each on its own "
        "(values outside 0..65535 for integers, 0..1 and 0..255 for floats; first: "
        f"{data / 'float' / 'wide.tif'})"
    ]
    assert ckpt.read_manifest(out)["dataset"]["min_max_rescaled"] == 1


def test_full_disk_is_one_line(image_folder, tmp_path, monkeypatch):
    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "out"
    result = run_cli(
        "train", image_folder, "--arch", "resnet18", "--epochs", 0, "--out", out, *FAST_TRAIN
    )
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (
        result.output.splitlines()[-1]
        == f"ftdyn: error: cannot write {out / 'epoch_000.pt'}: [Errno 28] "
        "No space left on device; free space or make the folder writable, "
        "then re-run (a stopped `ftdyn train` continues with --resume)."
    )
    # no temp file, no manifest: the folder this run made is removed (outputs._unmake)
    assert not out.exists()
