"""Checkpoint writing, manifest, safe loading of every supported format, and series discovery."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import random

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from ftdyn import checkpoints as ck
from ftdyn.errors import FtdynError, FtdynWarning

ARCH = "shufflenet_v2_x0_5"  # small (0.35M params with 5 classes), nn.Linear head "fc"


def _model(num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(ARCH, weights=None, num_classes=num_classes)


@pytest.fixture(scope="module")
def reference():
    model = _model()
    with torch.no_grad():  # make BatchNorm buffers non-default so they are checked too
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: torch.nn.Module, reference: dict) -> None:
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# ----------------------------------------------------------------------------- writing


def test_checkpoint_filename():
    assert ck.checkpoint_filename(3) == "epoch_003.pt"
    assert ck.checkpoint_filename(0) == "epoch_000.pt"
    assert ck.checkpoint_filename(1234) == "epoch_1234.pt"
    assert ck.CHECKPOINT_REGEX.match(ck.checkpoint_filename(12))
    assert ck.MANIFEST_NAME == "manifest.json"


def test_save_checkpoint_atomic_and_hash(tmp_path, reference):
    target = tmp_path / ck.checkpoint_filename(2)
    digest = ck.save_checkpoint(target, reference, epoch=2, extra={"val_acc": 0.5})
    assert digest == ck.sha256_file(target)
    assert sorted(os.listdir(tmp_path)) == ["epoch_002.pt"]  # no temp file left behind
    payload = torch.load(target, weights_only=True)
    assert payload["format"] == "ftdyn-checkpoint" and payload["format_version"] == 1
    assert payload["epoch"] == 2 and payload["val_acc"] == 0.5


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
        # what torch's zip writer raises when the file object stops taking bytes without saying
        # why (torch's internals are no reason a user can act on)
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
            "the file could not be written (a full disk, a quota or a failing drive)",
        ),
    ],
)
def test_save_checkpoint_failure_leaves_nothing(tmp_path, reference, monkeypatch, error, reason):
    target = tmp_path / "epoch_001.pt"

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial bytes")
        raise error

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(FtdynError) as info:
        ck.save_checkpoint(target, reference, epoch=1)
    assert (
        str(info.value)
        == f"cannot write {target}: {reason}; free space or make the folder writable, then "
        "re-run (a stopped `ftdyn train` continues with --resume)."
    )
    assert os.listdir(tmp_path) == []


def test_save_checkpoint_other_errors_stay_bugs(tmp_path, reference, monkeypatch):
    def broken_save(obj, fh, *args, **kwargs):
        raise RuntimeError("something unrelated")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="something unrelated"):
        ck.save_checkpoint(tmp_path / "epoch_001.pt", reference, epoch=1)
    assert os.listdir(tmp_path) == []


def test_written_files_follow_the_umask(tmp_path):
    """Checkpoints and manifests are 0o666 less the umask, like any new file (mkstemp
    gives 0o600)."""
    for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        folder = tmp_path / f"umask_{umask:03o}"
        old = os.umask(umask)
        try:
            ck.save_checkpoint(folder / "epoch_000.pt", {"w": torch.zeros(2)}, epoch=0)
            ck.write_manifest(folder, _manifest())
        finally:
            os.umask(old)
        for name in ("epoch_000.pt", ck.MANIFEST_NAME):
            assert (folder / name).stat().st_mode & 0o777 == mode, (name, oct(umask))


def test_save_checkpoint_failure_keeps_previous_file(tmp_path, reference, monkeypatch):
    target = tmp_path / "epoch_001.pt"
    digest = ck.save_checkpoint(target, reference, epoch=1)

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(target, {"x": torch.zeros(1)}, epoch=1)
    assert ck.sha256_file(target) == digest
    assert os.listdir(tmp_path) == ["epoch_001.pt"]


def test_payload_with_optimizer_and_rng_loads_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    states = ck.rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = tmp_path / "epoch_001.pt"
    ck.save_checkpoint(
        path,
        model.state_dict(),
        epoch=1,
        extra={
            "optimizer": opt.state_dict(),
            "rng": states,
            "np_value": np.float32(1.5),
            "history": [{"epoch": 1, "loss": 0.25}],
        },
    )
    payload = ck.load_checkpoint_payload(path)  # weights_only=True inside
    assert payload["epoch"] == 1 and payload["np_value"] == 1.5
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(payload["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_states(payload["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_checkpoint_payload_rejects_foreign_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(FtdynError, match="not an ftdyn checkpoint"):
        ck.load_checkpoint_payload(path)


# ---------------------------------------------------------------------------- manifest


def _manifest(**overrides) -> dict:
    manifest = {
        "format": "ftdyn-series",
        "format_version": 1,
        "architecture": ARCH,
        "num_classes": 2,
        "classes": ["a", "b"],
        "input_size": 32,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "epochs": [],
        "ftdyn_version": "0.1.0",
        "torch_version": torch.__version__,
        "seed": 0,
        "hyperparameters": {"lr": 1e-4},
    }
    manifest.update(overrides)
    return manifest


def test_manifest_round_trip(tmp_path):
    assert ck.read_manifest(tmp_path) is None
    manifest = _manifest(
        epochs=[{"epoch": 0, "file": "epoch_000.pt", "sha256": "ab", "val_acc": 0.1}]
    )
    ck.write_manifest(tmp_path, manifest)
    assert ck.read_manifest(tmp_path) == manifest
    assert (tmp_path / "manifest.json").read_text().startswith('{\n  "format"')
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "unreadable manifest"),
        (
            json.dumps({k: v for k, v in _manifest().items() if k != "classes"}),
            "required key(s) classes",
        ),
        (json.dumps(_manifest(format="other")), "'format' is 'other'"),
        (json.dumps(_manifest(format_version=99)), "format_version 99"),
        (json.dumps(_manifest(normalization=[0.5])), "'normalization' must be"),
        (json.dumps(_manifest(epochs=[{"epoch": 0}])), "epochs[0] must hold"),
        (json.dumps([1, 2]), "must be a JSON object"),
    ],
)
def test_manifest_validation_errors(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(FtdynError) as info:
        ck.read_manifest(tmp_path)
    assert message in str(info.value)
    assert "manifest.json" in str(info.value) and "\n" not in str(info.value)


def test_write_manifest_validates(tmp_path):
    with pytest.raises(FtdynError, match="architecture"):
        ck.write_manifest(tmp_path, {k: v for k, v in _manifest().items() if k != "architecture"})
    assert not (tmp_path / "manifest.json").exists()


def _ftdyn_series(folder, epochs=3):
    entries = []
    for epoch in range(epochs):
        name = ck.checkpoint_filename(epoch)
        digest = ck.save_checkpoint(
            folder / name, {"w": torch.full((2,), float(epoch))}, epoch=epoch
        )
        entries.append(
            {"epoch": epoch, "file": name, "sha256": digest, "val_loss": 1.0 / (epoch + 1)}
        )
    ck.write_manifest(folder, _manifest(epochs=entries))


def test_discover_series_from_manifest(tmp_path):
    _ftdyn_series(tmp_path)
    entries = ck.discover_series(tmp_path)
    assert [e.epoch for e in entries] == [0, 1, 2]
    assert [e.path.name for e in entries] == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]
    assert all(e.sha256 == ck.sha256_file(e.path) for e in entries)
    with pytest.raises(FtdynError, match="drop source"):
        ck.discover_series(tmp_path, source="IMAGENET1K_V1")


def test_discover_series_detects_modified_file(tmp_path):
    _ftdyn_series(tmp_path)
    torch.save(
        {
            "format": "ftdyn-checkpoint",
            "format_version": 1,
            "epoch": 1,
            "state_dict": {"w": torch.full((2,), 7.0)},
        },
        tmp_path / "epoch_001.pt",
    )
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    assert "epoch_001.pt" in str(info.value) and "changed since training" in str(info.value)
    (tmp_path / "epoch_002.pt").unlink()
    with pytest.raises(FtdynError, match=r"epoch_001.pt|epoch_002.pt"):
        ck.discover_series(tmp_path)


def test_discover_series_missing_file(tmp_path):
    _ftdyn_series(tmp_path)
    (tmp_path / "epoch_002.pt").unlink()
    with pytest.raises(FtdynError, match=r"epoch_002.pt: listed in .* but missing"):
        ck.discover_series(tmp_path)


# ---------------------------------------------------------------------- every format


FORMATS = {
    "plain_pt": ("w.pt", lambda sd: sd),
    "plain_bin": ("pytorch_model.bin", lambda sd: sd),
    "state_dict": ("w.pth", lambda sd: {"state_dict": sd, "epoch": 4, "best_acc": 0.9}),
    "model_state_dict": (
        "w.pth",
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 4},
    ),
    "model": ("w.pth", lambda sd: {"model": sd, "epoch": 4}),
    "nested": ("w.pth", lambda sd: {"model": {"state_dict": sd}, "epoch": 4}),
    "dataparallel": ("w.pt", lambda sd: _prefixed(sd, "module.")),
    "compiled": ("w.pt", lambda sd: _prefixed(sd, "_orig_mod.")),
    "ddp_compiled": ("w.pt", lambda sd: {"state_dict": _prefixed(sd, "_orig_mod.module.")}),
    "lightning": (
        "epoch=4-step=50.ckpt",
        lambda sd: {
            "epoch": 4,
            "global_step": 50,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": _prefixed(sd, "model."),
            "optimizer_states": [],
            "lr_schedulers": [],
        },
    ),
    "lightning_nested_compiled": (
        "last.ckpt",
        lambda sd: {
            "epoch": 4,
            "global_step": 50,
            "state_dict": {
                **_prefixed(sd, "net.backbone._orig_mod."),
                "criterion.weight": torch.ones(5),
            },
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_format_loads_same_weights(tmp_path, reference, kind):
    name, wrap = FORMATS[kind]
    path = tmp_path / name
    torch.save(wrap(dict(reference)), path)
    model = _model(seed=1)
    epoch = ck.load_into_model(model, path)
    _assert_same(model, reference)
    expected_epoch = (
        4
        if kind not in {"plain_pt", "plain_bin", "dataparallel", "compiled", "ddp_compiled"}
        else None
    )
    assert epoch == expected_epoch


def test_legacy_serialization_loads(tmp_path, reference):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": reference, "epoch": 2}, path, _use_new_zipfile_serialization=False)
    model = _model(seed=1)
    assert ck.load_into_model(model, path) == 2
    _assert_same(model, reference)
    assert ck.read_stored_epoch(path) == 2


def test_safetensors_loads_with_epoch_metadata(tmp_path, reference):
    path = tmp_path / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in _prefixed(reference, "module.").items()},
        str(path),
        metadata={"epoch": "6"},
    )
    model = _model(seed=1)
    assert ck.load_into_model(model, path) == 6
    _assert_same(model, reference)
    nometa = tmp_path / "nometa.safetensors"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(nometa))
    assert ck.load_state_dict(nometa)[1] is None


def test_ftdyn_checkpoint_loads(tmp_path, reference):
    path = tmp_path / ck.checkpoint_filename(3)
    ck.save_checkpoint(
        path, reference, epoch=3, extra={"optimizer": {"state": {}, "param_groups": []}}
    )
    model = _model(seed=1)
    assert ck.load_into_model(model, path) == 3
    _assert_same(model, reference)


def test_pickled_module_needs_trust(tmp_path, reference):
    model = _model(seed=1)
    model.load_state_dict(reference)
    path = tmp_path / "whole.pt"
    torch.save({"model": model, "epoch": 1}, path)
    with pytest.raises(FtdynError) as info:
        ck.load_state_dict(path)
    message = str(info.value)
    assert (
        "refusing to unpickle" in message
        and "ShuffleNetV2" in message
        and "trust_checkpoint" in message
    )
    target = _model(seed=2)
    assert ck.load_into_model(target, path, trust=True) == 1
    _assert_same(target, reference)


class _Malicious:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, reference, suffix):
    target = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": reference, "epoch": 1, "payload": _Malicious(target)}, path)
    assert not target.exists()
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(_model(), path)
    message = str(info.value)
    assert message.startswith(str(path)) and "refusing to unpickle" in message
    assert "pathlib" in message and "trust_checkpoint" in message and "\n" not in message
    assert not target.exists()
    # discovery reads the epoch of every file: it must refuse too, without running it
    with pytest.raises(FtdynError, match="trust_checkpoint"):
        ck.discover_series(tmp_path)
    with pytest.raises(FtdynError, match="refusing"):
        ck.read_stored_epoch(path)
    assert not target.exists()


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "junk", "truncated_safetensors", "bad_header_safetensors"]
)
def test_corrupt_files(tmp_path, reference, kind):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": reference, "epoch": 1}, good)
    data = good.read_bytes()
    if kind == "truncated":
        path, content = tmp_path / "cut.pt", data[: len(data) // 2]
    elif kind == "empty":
        path, content = tmp_path / "empty.pth", b""
    elif kind == "junk":
        path, content = tmp_path / "junk.bin", b"this is not a checkpoint\n" * 20
    else:
        st = tmp_path / "good.safetensors"
        save_file({k: v.contiguous() for k, v in reference.items()}, str(st))
        raw = st.read_bytes()
        path = tmp_path / "bad.safetensors"
        content = raw[: len(raw) // 2] if kind == "truncated_safetensors" else b"\xff" * 8 + raw[8:]
    path.write_bytes(content)
    for call in (lambda: ck.load_into_model(_model(), path), lambda: ck.read_stored_epoch(path)):
        with pytest.raises(FtdynError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable checkpoint (") and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(FtdynError, match="no such checkpoint file"):
        ck.load_state_dict(tmp_path / "nope.pt")


# --------------------------------------------------------------------- mismatches


def test_wrong_architecture(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), path)
    vgg = torchvision.models.vgg11(weights=None, num_classes=3)
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(vgg, path, arch="vgg11")
    message = str(info.value)
    assert message.startswith(f"{path}: does not fit vgg11")
    assert "missing keys" in message and "unexpected keys" in message and "check arch" in message
    assert "\n" not in message and len(message) < 600


def test_missing_keys(tmp_path, reference):
    state = dict(reference)
    dropped = [k for k in state if k.startswith("conv5.")]
    for key in dropped:
        del state[key]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(_model(), path)
    message = str(info.value)
    assert f"missing keys {len(dropped)} (conv5." in message and "unexpected" not in message


def test_missing_num_batches_tracked_is_tolerated(tmp_path, reference):
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in reference.items() if not k.endswith("num_batches_tracked")}, path)
    model = _model(seed=1)
    ck.load_into_model(model, path)
    for key, value in reference.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[key], value)


def test_head_mismatch_and_adapt_head(tmp_path, reference):
    path = tmp_path / "five.pt"
    torch.save({"state_dict": _prefixed(reference, "model.")}, path)
    model = _model(num_classes=7)
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(model, path)
    assert "fc.weight: file [5, " in str(info.value) and "classifier head" in str(info.value)
    state, _ = ck.load_state_dict(path)
    assert ck.infer_num_classes(state, model) == 5
    ck.load_into_model(model, path, adapt_head=True)
    assert model.fc.out_features == 5
    _assert_same(model, reference)


def test_infer_num_classes_without_head(reference):
    with pytest.raises(FtdynError, match=r"fc.weight"):
        ck.infer_num_classes({"x": torch.zeros(1)}, _model())


# ------------------------------------------------------------------ third-party series


def _tiny(path, epoch=None, value=0.0, wrap="state_dict"):
    sd = {"w": torch.full((2,), float(value))}
    if path.suffix.lower() == ".safetensors":
        save_file(sd, str(path), metadata={"epoch": str(epoch)} if epoch is not None else None)
    elif epoch is None:
        torch.save(sd, path)
    else:
        torch.save({wrap: sd, "epoch": epoch}, path)


def test_order_by_stored_epoch(tmp_path):
    # names deliberately contradict the stored epochs
    _tiny(tmp_path / "b_9.ckpt", epoch=0)
    _tiny(tmp_path / "a_1.pth", epoch=2)
    _tiny(tmp_path / "c.safetensors", epoch=1)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.pt.tmp").write_bytes(b"ignored")
    entries = ck.discover_series(tmp_path)
    # 0-based stored epochs: numbered from 1 (no file is the source model)
    assert [(e.epoch, e.path.name) for e in entries] == [
        (1, "b_9.ckpt"),
        (2, "c.safetensors"),
        (3, "a_1.pth"),
    ]
    assert all(e.sha256 == ck.sha256_file(e.path) and e.weights_name is None for e in entries)


def test_order_by_file_name(tmp_path):
    for n in (10, 2, 0, 1):
        _tiny(tmp_path / f"resnet50_run3_epoch{n}.pt")
    _tiny(tmp_path / "model-epoch=3-step=400.pt")  # the number after 'epoch' wins over the last one
    entries = ck.discover_series(tmp_path)
    assert [e.epoch for e in entries] == [1, 2, 3, 4, 11]
    assert entries[3].path.name == "model-epoch=3-step=400.pt"


def test_ambiguous_duplicate_epochs(tmp_path):
    _tiny(tmp_path / "x.pt", epoch=1)
    _tiny(tmp_path / "y.pt", epoch=1)
    _tiny(tmp_path / "z.pt", epoch=2)
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    message = str(info.value)
    assert (
        "ambiguous order" in message
        and "x.pt" in message
        and "y.pt" in message
        and "z.pt" not in message
    )


def test_ambiguous_duplicate_names(tmp_path):
    _tiny(tmp_path / "epoch_1.pt")
    _tiny(tmp_path / "epoch_01.pth")
    with pytest.raises(FtdynError, match=r"ambiguous order: .*epoch_01.pth.*epoch_1.pt"):
        ck.discover_series(tmp_path)


def test_files_without_number(tmp_path):
    _tiny(tmp_path / "epoch_1.pt")
    _tiny(tmp_path / "final.pt")
    _tiny(tmp_path / "best.pt")
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    message = str(info.value)
    assert "cannot order" in message and "best.pt" in message and "final.pt" in message
    assert "epoch_1.pt" not in message


def test_mixed_stored_and_named(tmp_path):
    _tiny(tmp_path / "epoch_1.pt")
    _tiny(tmp_path / "epoch_2.pt", epoch=2)
    assert [e.epoch for e in ck.discover_series(tmp_path)] == [1, 2]
    _tiny(tmp_path / "epoch_3.pt", epoch=7)
    with pytest.raises(FtdynError, match=r"ambiguous order.*epoch_3.pt"):
        ck.discover_series(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.md").write_text("no checkpoints")
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    assert (
        str(info.value)
        == f"{tmp_path}: no checkpoint files (.pt, .pth, .pth.tar, .bin, .ckpt, .safetensors)."
    )
    with pytest.raises(FtdynError, match="no such checkpoint folder"):
        ck.discover_series(tmp_path / "missing")


def test_source_weights_name(tmp_path):
    for n in (1, 2):
        _tiny(tmp_path / f"epoch_{n}.pt")
    entries = ck.discover_series(tmp_path, source="IMAGENET1K_V1", arch="resnet18")
    assert entries[0] == ck.CheckpointEntry(0, None, None, weights_name="IMAGENET1K_V1")
    assert entries[0].label == "torchvision:IMAGENET1K_V1"
    assert [e.epoch for e in entries] == [0, 1, 2]
    with pytest.raises(
        FtdynError,
        match=r"not a weights name of resnet18|neither a file nor a weights name of resnet18",
    ):
        ck.discover_series(tmp_path, source="IMAGENET9K", arch="resnet18")
    with pytest.raises(FtdynError, match="no such checkpoint file"):
        ck.discover_series(tmp_path, source=str(tmp_path / "absent.pt"))


def test_source_file_shifts_zero_based_epochs(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for n in (0, 1, 2):  # Lightning counts epochs from 0: epoch=0 is after the first epoch
        _tiny(series / f"epoch={n}-step={10 * (n + 1)}.ckpt", epoch=n, value=n + 1)
    source = tmp_path / "pretrained.pth"
    _tiny(source, value=0.0)
    entries = ck.discover_series(series, source=source)
    assert [e.epoch for e in entries] == [0, 1, 2, 3]
    assert entries[0].path == source and entries[0].sha256 == ck.sha256_file(source)
    assert entries[1].path.name == "epoch=0-step=10.ckpt"
    # without a source they are numbered from 1 too, with a note: no trained file is taken for the
    # source
    assert [e.epoch for e in ck.discover_series(series)] == [1, 2, 3]


def test_source_file_inside_folder_is_not_duplicated(tmp_path):
    for n in (0, 1, 2):
        _tiny(tmp_path / f"epoch_{n}.pt", value=n)
    entries = ck.discover_series(tmp_path, source=tmp_path / "epoch_0.pt")
    assert [(e.epoch, e.path.name) for e in entries] == [
        (0, "epoch_0.pt"),
        (1, "epoch_1.pt"),
        (2, "epoch_2.pt"),
    ]


def test_load_source_weights_file_entry(tmp_path, reference):
    path = tmp_path / "src.pt"
    torch.save(reference, path)
    entry = ck.CheckpointEntry(0, path, ck.sha256_file(path))
    model = _model(seed=1)
    ck.load_source_weights(model, entry, arch=ARCH)
    _assert_same(model, reference)


def test_flipped_bytes_in_zip_checkpoint_are_refused(tmp_path, reference):
    path = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": reference, "epoch": 1}, path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the tensor data, which is most of the file
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    for call in (
        lambda: ck.load_state_dict(path),
        lambda: ck.read_stored_epoch(path),
        lambda: ck.load_state_dict(path, trust=True),
        lambda: ck.discover_series(tmp_path),
    ):
        with pytest.raises(FtdynError) as info:
            call()
        message = str(info.value)
        assert message.startswith(
            f"{path}: not a readable checkpoint (damaged data: CRC check failed for "
        )
        assert "re-download" in message and "\n" not in message


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (3.0, 3),
        (2.5, None),
        (np.int64(3), 3),
        (np.int32(4), 4),
        (np.float64(5.0), 5),
        (torch.tensor(6), 6),
        (True, None),
        ("7", 7),
    ],
)
def test_stored_epoch_types(tmp_path, reference, epoch, expected):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": reference, "epoch": epoch, "best_acc": np.float64(0.9)}, path)
    assert ck.read_stored_epoch(path) == expected
    state, stored = ck.load_state_dict(path)
    assert stored == expected and type(stored) is (int if expected is not None else type(None))
    assert state.keys() == reference.keys()


def test_numpy_scalars_allowed_only_inside_checkpoint_loads(tmp_path, reference):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": reference, "epoch": np.int64(2)}, path)
    assert ck.load_state_dict(path)[1] == 2
    with pytest.raises(pickle.UnpicklingError):  # no global registration left behind
        torch.load(path, weights_only=True)


def test_numpy_1_scalar_name_loads(tmp_path, reference):
    # files written under numpy 1 name the scalar constructor numpy.core.multiarray.scalar
    path = tmp_path / "old_numpy.pth"
    torch.save(
        {"state_dict": reference, "epoch": np.int64(3)}, path, _use_new_zipfile_serialization=False
    )
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    assert ck.load_state_dict(path)[1] == 3


# ----------------------------------------------------------- several copies (EMA, teacher)


def _resnet18_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return dict(torchvision.models.resnet18(weights=None, num_classes=3).state_dict())


def test_several_complete_copies_are_refused_until_one_is_chosen(tmp_path):
    live, ema = _resnet18_state(0), _resnet18_state(1)
    path = tmp_path / "epoch=1-step=10.ckpt"
    torch.save(
        {"epoch": 1, "state_dict": {**_prefixed(live, "model."), **_prefixed(ema, "ema.module.")}},
        path,
    )
    resnet = torchvision.models.resnet18(weights=None, num_classes=3)
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(resnet, path, arch="resnet18")
    assert (
        str(info.value)
        == f"{path}: holds several complete copies of resnet18 under 'ema.module.', 'model.' "
        "(e.g. the model and its EMA or teacher); choose one with state_prefix PREFIX "
        "(or weights_copy ema)."
    )
    state, _ = ck.load_state_dict(path)
    with pytest.raises(FtdynError, match="several complete copies"):
        ck.infer_num_classes(state, resnet)
    for prefix, expected in (
        ("model.", live),
        ("model", live),
        ("ema.module.", ema),
        ("ema.", ema),
    ):
        ck.load_into_model(resnet, path, state_prefix=prefix)
        _assert_same(resnet, expected)
    assert ck.infer_num_classes(state, resnet, state_prefix="ema.") == 3
    with pytest.raises(FtdynError) as info:
        ck.load_into_model(resnet, path, state_prefix="teacher.")
    assert (
        str(info.value)
        == f"{path}: no key starts with state_prefix 'teacher.' (its keys start with "
        "'ema.', 'model.'); pass one of those or drop state_prefix."
    )


def test_state_prefix_leaves_exact_and_single_copy_files_alone(tmp_path):
    live = _resnet18_state(0)
    plain, lightning = tmp_path / "source.pth", tmp_path / "epoch=1.ckpt"
    torch.save(live, plain)
    torch.save(
        {"state_dict": {**_prefixed(live, "model."), "criterion.weight": torch.ones(3)}}, lightning
    )
    resnet = torchvision.models.resnet18(weights=None, num_classes=3)
    ck.load_source_weights(
        resnet, ck.CheckpointEntry(0, plain, None), arch="resnet18", state_prefix="model."
    )
    _assert_same(resnet, live)
    ck.load_into_model(resnet, lightning)  # one complete copy: found without a prefix, as before
    _assert_same(resnet, live)


# ------------------------------------------------------------- numbers in third-party names


@pytest.mark.parametrize(
    "names, epochs",
    [
        (["model_ep1_acc0.91.pth", "model_ep2_acc0.87.pth", "model_ep3_acc0.95.pth"], [1, 2, 3]),
        (
            ["weights-0001-0.5421.pth", "weights-0002-0.4312.pth", "weights-0010-0.3999.pth"],
            [1, 2, 10],
        ),
        (["resnet50_1.pth", "resnet50_2.pth", "resnet50_3.pth"], [1, 2, 3]),
        (["checkpoint-500.pt", "checkpoint-1000.pt"], [500, 1000]),
        (
            ["resnet18_E4.pt", "resnet18_e12.pt"],
            [4, 12],
        ),  # markers in any case; 'e' of 'resnet' is no marker
        (["run2_lr1e-4_Epoch=5.pt", "run2_lr1e-4_Epoch=6.pt"], [5, 6]),
        (["run_lr1e-4_7.pt", "run_lr1e-4_8.pt"], [7, 8]),  # the learning rate is no number either
    ],
)
def test_epoch_from_file_names(tmp_path, names, epochs):
    for name in names:
        _tiny(tmp_path / name)
    entries = ck.discover_series(tmp_path)
    assert [e.epoch for e in entries] == epochs
    assert sorted(e.path.name for e in entries) == sorted(names)


def test_several_varying_numbers_in_names_are_refused(tmp_path):
    for name in ("m_12_loss_035.pth", "m_13_loss_030.pth", "m_14_loss_030.pth"):
        _tiny(tmp_path / name)
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    assert (
        str(info.value) == f"{tmp_path}: cannot tell which number in the file names is the epoch: "
        "m_12_loss_035.pth, m_13_loss_030.pth, m_14_loss_030.pth; rename the files, "
        "e.g. epoch_3.pt."
    )


def test_suffixes_in_any_case_and_pth_tar(tmp_path, reference):
    _tiny(tmp_path / "epoch_1.PT")
    _tiny(tmp_path / "epoch_2.Pth")
    torch.save(
        {"state_dict": reference, "best_acc1": torch.tensor(0.5)},
        tmp_path / "checkpoint_epoch3.pth.tar",
    )
    _tiny(tmp_path / "epoch_4.SAFETENSORS")
    entries = ck.discover_series(tmp_path)
    assert [(e.epoch, e.path.name) for e in entries] == [
        (1, "epoch_1.PT"),
        (2, "epoch_2.Pth"),
        (3, "checkpoint_epoch3.pth.tar"),
        (4, "epoch_4.SAFETENSORS"),
    ]
    model = _model(seed=1)
    ck.load_into_model(model, entries[2].path)
    _assert_same(model, reference)


def test_lightning_last_and_links_are_skipped(tmp_path, capsys, cli_console):
    for n in (0, 1, 2):
        _tiny(tmp_path / f"epoch={n}-step={10 * (n + 1)}.ckpt", epoch=n, value=n)
    _tiny(tmp_path / "last.ckpt", epoch=2, value=2)  # save_last=True: a copy of the newest
    (tmp_path / "best.ckpt").symlink_to(tmp_path / "epoch=1-step=20.ckpt")
    entries = ck.discover_series(tmp_path)
    assert [(e.epoch, e.path.name) for e in entries] == [
        (1, "epoch=0-step=10.ckpt"),
        (2, "epoch=1-step=20.ckpt"),
        (3, "epoch=2-step=30.ckpt"),
    ]
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"ftdyn: note: {tmp_path}: skipping best.ckpt (a link to epoch=1-step=20.ckpt),"
        " last.ckpt "
        "(Lightning's copy of the newest checkpoint)."
    )
    assert err[1].startswith(f"ftdyn: note: {tmp_path}: epochs count from 0") and len(err) == 2
    (tmp_path / "last.ckpt").unlink()
    (tmp_path / "last.ckpt").symlink_to("epoch=2-step=30.ckpt")  # save_last="link"
    assert [e.epoch for e in ck.discover_series(tmp_path)] == [1, 2, 3]


def test_series_path_is_a_file(tmp_path):
    _tiny(tmp_path / "epoch_1.pth")
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path / "epoch_1.pth")
    assert (
        str(info.value)
        == f"{tmp_path / 'epoch_1.pth'}: is a file, not a checkpoint folder; pass the folder "
        f"holding the series (e.g. {tmp_path})."
    )


# ------------------------------------------------------------ Hugging Face Trainer layout


def _trainer_checkpoint(folder, weights, value):
    folder.mkdir(parents=True)
    _tiny(folder / weights, value=value)
    for state in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        _tiny(folder / state, value=-1.0)
    (folder / "trainer_state.json").write_text("{}")


def test_hugging_face_trainer_folders(tmp_path):
    _trainer_checkpoint(tmp_path / "checkpoint-500", "pytorch_model.bin", 1.0)
    _trainer_checkpoint(tmp_path / "checkpoint-1000", "model.safetensors", 2.0)
    _trainer_checkpoint(tmp_path / "checkpoint-1500", "weights.pth", 3.0)
    (tmp_path / "runs").mkdir()  # TensorBoard logs: no weights, ignored
    (tmp_path / "runs" / "events.out.tfevents.1").write_bytes(b"x")
    entries = ck.discover_series(tmp_path)
    assert [(e.epoch, e.label) for e in entries] == [
        (500, "checkpoint-500/pytorch_model.bin"),
        (1000, "checkpoint-1000/model.safetensors"),
        (1500, "checkpoint-1500/weights.pth"),
    ]
    assert [ck.load_state_dict(e.path)[0]["w"][0].item() for e in entries] == [1.0, 2.0, 3.0]
    with pytest.raises(
        FtdynError,
        match=(
            "is one Hugging Face Trainer checkpoint; pass the folder holding all of "
            f"them \\({tmp_path}\\)"
        ),
    ):
        ck.discover_series(tmp_path / "checkpoint-500")
    _tiny(tmp_path / "checkpoint-1500" / "other.pt")
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    assert (
        str(info.value) == f"{tmp_path / 'checkpoint-1500'}: holds several weights files "
        "(checkpoint-1500/other.pt, checkpoint-1500/weights.pth); keep one per checkpoint "
        "folder, or name it pytorch_model.bin or model.safetensors."
    )


def _trainer_epoch_folder(folder, step, epoch, weights="model.safetensors"):
    """A Trainer ``checkpoint-STEP`` folder whose trainer_state.json holds ``epoch`` (omitted when
    None), as Trainer writes it: a float, beside ``global_step``."""
    _trainer_checkpoint(folder / f"checkpoint-{step}", weights, step)
    state = {"global_step": step, "log_history": [], **({} if epoch is None else {"epoch": epoch})}
    (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))


def test_trainer_folders_numbered_by_the_epoch_in_trainer_state(tmp_path, capsys, cli_console):
    """save_strategy="epoch": the folders are named by global step, trainer_state.json holds the
    epoch; a --source stays epoch 0."""
    series = tmp_path / "out"
    for step, epoch in ((2, 1.0), (4, 2.0), (6, 3.0)):
        _trainer_epoch_folder(series, step, epoch)
    entries = ck.discover_series(series)
    assert [(e.epoch, e.label) for e in entries] == [
        (1, "checkpoint-2/model.safetensors"),
        (2, "checkpoint-4/model.safetensors"),
        (3, "checkpoint-6/model.safetensors"),
    ]
    assert [ck.load_state_dict(e.path)[0]["w"][0].item() for e in entries] == [2.0, 4.0, 6.0]
    assert capsys.readouterr().err.splitlines() == [
        f"ftdyn: note: {series}: numbering the Hugging Face Trainer checkpoints by the epoch in"
        " their trainer_state.json (checkpoint-2: epoch 1, checkpoint-4: epoch 2, checkpoint-6:"
        " epoch 3)."
    ]
    _tiny(tmp_path / "src.pth", value=-5.0)
    entries = ck.discover_series(series, source=tmp_path / "src.pth")
    assert [(e.epoch, e.label) for e in entries] == [
        (0, "src.pth"),
        (1, "checkpoint-2/model.safetensors"),
        (2, "checkpoint-4/model.safetensors"),
        (3, "checkpoint-6/model.safetensors"),
    ]


def test_trainer_folders_saved_mid_epoch_keep_their_step_numbers(tmp_path):
    """save_strategy="steps": fractional epochs, so the step numbers stay, with a warning; so
    when one folder's trainer_state.json has no epoch."""
    series = tmp_path / "out"
    for step, epoch in ((500, 0.5), (1000, 1.0), (1500, 1.5)):
        _trainer_epoch_folder(series, step, epoch, weights="pytorch_model.bin")
    with pytest.warns(FtdynWarning) as caught:
        entries = ck.discover_series(series)
    assert [e.epoch for e in entries] == [500, 1000, 1500]
    assert [str(w.message) for w in caught] == [
        f"{series}: the Hugging Face Trainer checkpoints are numbered by the global step in their"
        " folder names, not by epoch: the epochs in their trainer_state.json are not whole"
        " numbers (checkpoint-500: 0.5, checkpoint-1500: 1.5; saved mid-epoch, e.g. with"
        ' save_strategy="steps"); the store\'s epochs are these step numbers.'
    ]
    other = tmp_path / "other"
    _trainer_epoch_folder(other, 2, 1.0)
    _trainer_epoch_folder(other, 4, None)
    with pytest.warns(FtdynWarning) as caught:
        assert [e.epoch for e in ck.discover_series(other)] == [2, 4]
    assert [str(w.message) for w in caught] == [
        f"{other}: the Hugging Face Trainer checkpoints are numbered by the global step in their"
        " folder names, not by epoch: checkpoint-4/model.safetensors have no epoch in"
        " trainer_state.json; the store's epochs are these step numbers."
    ]


def test_subfolders_without_weights(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "checkpoint-500").mkdir()
    _tiny(tmp_path / "checkpoint-500" / "optimizer.pt")
    with pytest.raises(FtdynError) as info:
        ck.discover_series(tmp_path)
    assert (
        str(info.value)
        == f"{tmp_path}: no checkpoint files (.pt, .pth, .pth.tar, .bin, .ckpt, .safetensors); "
        "none of its 2 subfolders holds one either (expected e.g. "
        "checkpoint-500/pytorch_model.bin or checkpoint-500/model.safetensors)."
    )
