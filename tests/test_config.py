"""Typed configs: the single definition of each command's defaults and valid values."""

from __future__ import annotations

import dataclasses
import json

import pytest
import typer.main

from ftdyn import cli, config
from ftdyn.config import CODECS, OPTIMIZERS, STORE_DTYPES, ExtractConfig, TrainConfig
from ftdyn.errors import FtdynError
from ftdyn.extraction import recorded_identity as store_identity
from ftdyn.training import recorded_identity

#: Command -> its config type. Add a row when a command gets its config.
CONFIGS = {"train": TrainConfig, "extract": ExtractConfig}


def _cli_params(command: str):
    group = typer.main.get_command(cli.app)
    return {p.name: p for p in group.commands[command].params}


def _param_of(params, config_type, name):
    """The click parameter for config field ``name`` (found by its flag), and whether it negates it."""
    flag = config.flag_of(config_type, name)
    for p in params.values():
        if flag in getattr(p, "opts", ()):
            return p, flag.startswith("--no-")
    raise AssertionError(f"{config_type.__name__}.{name}: no CLI option {flag}")


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_cli_default_is_the_config_default(command):
    config_type = CONFIGS[command]
    params = _cli_params(command)
    for f in dataclasses.fields(config_type):
        param, negated = _param_of(params, config_type, f.name)
        if f.default is dataclasses.MISSING:
            assert param.required, f.name
            continue
        expected = (not f.default) if negated else f.default
        assert param.default == expected, f"--{param.name}: CLI default {param.default!r} != config {expected!r}"
        if not negated:  # a --no-X flag words its help the other way round
            assert param.help == config.help_text(config_type, f.name), f.name


def test_train_config_normalizes_and_validates_in_one_place():
    c = TrainConfig(arch="resnet18", lr="1e-3", epochs="3", optimizer=" SGD ", weights=None)
    assert (c.lr, c.epochs, c.optimizer, c.weights) == (1e-3, 3, "sgd", "none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0
    bad = [dict(epochs=-1), dict(batch_size=0), dict(lr=0), dict(lr=float("nan")), dict(input_size=4),
           dict(num_workers=-1), dict(seed=-1), dict(seed=1.5), dict(optimizer="rmsprop"), dict(crop_scale=0),
           dict(crop_scale=1.5), dict(resume=True, overwrite=True), dict(init="x.pt", weights="IMAGENET1K_V1")]
    for kwargs in bad:
        with pytest.raises(FtdynError):
            TrainConfig(arch="resnet18", **kwargs)
    assert OPTIMIZERS == ("adam", "adamw", "sgd")
    assert c.replace(lr=0.5).lr == 0.5 and c.lr == 1e-3


def test_recorded_identity_reads_the_fields_the_manifest_records(tmp_path):
    c = TrainConfig(arch="resnet18", lr=1e-3, batch_size=8, input_size=32, seed=3, val_split=0.2, crop_scale=0.5)
    manifest = {"architecture": "resnet18", "input_size": 32, "seed": 3, "init": {"weights": "none"},
                "dataset": {"val_split": 0.2},
                "hyperparameters": {"optimizer": "adam", "lr": 1e-3, "batch_size": 8, "crop_scale": 0.5}}
    manifest = json.loads(json.dumps(manifest))  # as read back from manifest.json
    assert recorded_identity(manifest) == c.identity()
    del manifest["hyperparameters"]["crop_scale"]  # a manifest written before crop_scale was recorded
    assert recorded_identity(manifest)["crop_scale"] == 0.08


def test_extract_config_normalizes_and_validates_in_one_place():
    c = ExtractConfig(batch_size="8", layers=["layer3", "layer4"], input_size="32", probe_seed=3, writers="2")
    assert (c.batch_size, c.layers, c.input_size, c.probe_seed, c.writers) == (8, ("layer3", "layer4"), 32, 3, 2)
    assert ExtractConfig(layers="layer3").layers == ("layer3",) and ExtractConfig(layers=[]).layers is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.dtype = "float32"
    bad = {"--dtype": dict(dtype="float64"), "--codec": dict(codec="gzip"), "--batch-size": dict(batch_size=0),
           "--writers": dict(writers=0), "--chunk-samples": dict(samples_per_chunk=0), "--input-size": dict(input_size=4),
           "--seed": dict(probe_seed=-1), "--random-init-seed": dict(random_init_seed=1.5)}
    for flag, kwargs in bad.items():
        with pytest.raises(FtdynError, match=f"^{flag}: "):
            ExtractConfig(**kwargs)
    assert (STORE_DTYPES, CODECS) == (("float16", "float32"), ("zstd", "lz4"))
    assert c.replace(dtype="float32").dtype == "float32" and c.dtype == "float16"


def test_store_identity_reads_the_fields_the_store_records():
    """A store's root attributes give back every identity field of ExtractConfig, by name."""
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    attrs = {"architecture": "resnet18", "layers": ["layer3"], "input_size": 32, "normalization": norm,
             "dtype": "float32", "samples_per_chunk": 4, "codec": "lz4",
             "probe": {"seed": 2, "per_class": 3, "max_samples": None, "fingerprint": "0" * 64}}
    attrs = json.loads(json.dumps(attrs))  # as read back from the store
    recorded = store_identity(attrs)
    assert set(recorded) == set(ExtractConfig().identity())
    assert recorded == {"arch": "resnet18", "layers": ["layer3"], "input_size": 32, "normalize": norm,
                        "dtype": "float32", "samples_per_chunk": 4, "probe_seed": 2, "per_class": 3,
                        "max_samples": None}
