"""Typed configs: the single definition of each command's defaults and valid values."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import get_args

import pytest
import typer.main
from helpers import make_figure_store, make_planted_store
from typer.testing import CliRunner

import ftdyn
from ftdyn import cli, config, metrics
from ftdyn.analysis import plan as AP
from ftdyn.analysis.inputs import Source
from ftdyn.cli import app
from ftdyn.config import (
    CODECS,
    DEBIASED_CKA,
    MAX_TRAIN_EPOCHS,
    METRIC_NAMES,
    MIN_MEMORY_LIMIT,
    OPTIMIZERS,
    PRESETS,
    STORE_DTYPES,
    VIEWS,
    AnalyzeConfig,
    ExtractConfig,
    ReportConfig,
    TrainConfig,
    VisualizeConfig,
)
from ftdyn.errors import FtdynError
from ftdyn.extraction import recorded_identity as store_identity
from ftdyn.training import recorded_identity

#: Command -> its config type. Add a row when a command gets its config.
CONFIGS = {
    "train": TrainConfig,
    "extract": ExtractConfig,
    "analyze": AnalyzeConfig,
    "visualize": VisualizeConfig,
    "report": ReportConfig,
}


def _cli_params(command: str):
    group = typer.main.get_command(cli.app)
    return {p.name: p for p in group.commands[command].params}


def _param_of(params, config_type, name):
    """The click parameter for config field ``name`` (found by its flag), and whether it
    negates it."""
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
        if f.metadata.get("internal"):  # set by ftdyn itself, never a flag
            continue
        param, negated = _param_of(params, config_type, f.name)
        if f.default is dataclasses.MISSING:
            assert param.required, f.name
            continue
        expected = (not f.default) if negated else f.default
        assert param.default == expected, (
            f"--{param.name}: CLI default {param.default!r} != config {expected!r}"
        )
        if not negated:  # a --no-X flag words its help the other way round
            assert param.help == config.help_text(config_type, f.name), f.name


def test_command_help_has_one_line_per_paragraph():
    """The help screens wrap a command's text to the terminal; a source line break left in it
    would break a line mid-sentence (in `ftdyn --help`'s command list too)."""
    commands = typer.main.get_command(app).commands
    for name, command in commands.items():
        for paragraph in command.help.split("\n\n"):
            assert "\n" not in paragraph and paragraph == paragraph.strip(), name
    assert commands["analyze"].help.startswith(
        "Distances between the reference checkpoint and every checkpoint, per layer and metric,"
        " out-of-core.\n\nAlso the checkpoint x checkpoint trajectory"
    )


def test_train_config_normalizes_and_validates_in_one_place():
    c = TrainConfig(arch="resnet18", lr="1e-3", epochs="3", optimizer=" SGD ", weights=None)
    assert (c.lr, c.epochs, c.optimizer, c.weights) == (1e-3, 3, "sgd", "none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0
    bad = [
        dict(epochs=-1),
        dict(batch_size=0),
        dict(lr=0),
        dict(lr=float("nan")),
        dict(input_size=4),
        dict(num_workers=-1),
        dict(seed=-1),
        dict(seed=1.5),
        dict(optimizer="rmsprop"),
        dict(crop_scale=0),
        dict(crop_scale=1.5),
        dict(resume=True, overwrite=True),
        dict(init="x.pt", weights="IMAGENET1K_V1"),
    ]
    for kwargs in bad:
        with pytest.raises(FtdynError):
            TrainConfig(arch="resnet18", **kwargs)
    assert OPTIMIZERS == ("adam", "adamw", "sgd")
    assert c.replace(lr=0.5).lr == 0.5 and c.lr == 1e-3


def test_train_epochs_have_an_upper_bound_named_by_the_flag():
    """A typo of --epochs (an extra digit, a pasted number) would write a checkpoint per epoch
    until the disk is full: refused up front, naming the flag and the limit."""
    assert TrainConfig(arch="resnet18", epochs=MAX_TRAIN_EPOCHS).epochs == MAX_TRAIN_EPOCHS
    with pytest.raises(FtdynError, match=f"^epochs: must be between 0 and {MAX_TRAIN_EPOCHS}"):
        TrainConfig(arch="resnet18", epochs=MAX_TRAIN_EPOCHS + 1)
    result = CliRunner().invoke(
        app,
        ["train", "data", "--arch", "resnet18", "--out", "o", "--epochs", "99999999999999999999"],
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("ftdyn: error: --epochs: must be between 0 and")


def test_memory_limit_minimum_is_stated_in_the_units_it_compares():
    """64MB is 64 * 10^6 bytes, less than the 64MiB minimum: the refusal says so in bytes and
    names a value in either unit that passes (it said "64MB is too small; give at least 64MB")."""
    assert config.parse_memory("64MiB") == MIN_MEMORY_LIMIT == 64 * 2**20
    assert config.parse_memory("68MB") == 68 * 10**6
    with pytest.raises(FtdynError) as err:
        config.parse_memory("64MB")
    message = str(err.value)
    assert (
        f"64MB (64000000 bytes) is too small; the minimum is 64MiB ({MIN_MEMORY_LIMIT} bytes)"
        in (message)
    )
    assert "give at least 64MiB or 68MB" in message
    with pytest.raises(FtdynError, match="not a finite size"):
        config.parse_memory("inf")


def test_recorded_identity_reads_the_fields_the_manifest_records(tmp_path):
    c = TrainConfig(
        arch="resnet18", lr=1e-3, batch_size=8, input_size=32, seed=3, val_split=0.2, crop_scale=0.5
    )
    manifest = {
        "architecture": "resnet18",
        "input_size": 32,
        "seed": 3,
        "init": {"weights": "none"},
        "dataset": {"val_split": 0.2},
        "hyperparameters": {"optimizer": "adam", "lr": 1e-3, "batch_size": 8, "crop_scale": 0.5},
    }
    manifest = json.loads(json.dumps(manifest))  # as read back from manifest.json
    assert recorded_identity(manifest) == c.identity()
    del manifest["hyperparameters"][
        "crop_scale"
    ]  # a manifest written before crop_scale was recorded
    assert recorded_identity(manifest)["crop_scale"] == 0.08


def test_analyze_config_resolves_the_preset_and_validates_in_one_place():
    c = AnalyzeConfig(
        metrics=["CKA", "pwsm", "cka"],
        views=["filter", "pwsm=channels"],
        alpha="0.5",
        trajectory=True,
        layers="conv1",
        bootstrap_metrics="cka",
    )
    assert c.metrics == ("cka", "pwsm") and c.views == {"cka": "filter", "pwsm": "channels"}
    assert (c.alpha, c.trajectory, c.layers, c.bootstrap_metrics) == (
        0.5,
        "all",
        ("conv1",),
        ("cka",),
    )
    paper = AnalyzeConfig(preset="paper-code")
    assert paper.views == {"pwsm": "channels", "procrustes": "map", "cka": "map"}
    assert (paper.map_average, paper.map_center) == ("class", "rows")
    assert paper.metrics_on("map") == ["procrustes", "cka"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.alpha = 1.0
    bad = {
        "preset": dict(preset="paper"),
        "metrics": dict(metrics=["l2"]),
        "alpha": dict(alpha=1.5),
        "bootstrap": dict(bootstrap=1),
        "trajectory": dict(trajectory="some"),
        "views": dict(views="pixels"),
        "bootstrap_groups": dict(bootstrap_groups=1),
        "bootstrap_metrics": dict(metrics=["cka"], bootstrap_metrics=["pwsm"]),
        "seed": dict(seed=-1),
        "memory_limit": dict(memory_limit="lots"),
        "workers": dict(workers=0),
        "replicates": dict(replicates=["a"]),
        "run_pairs": dict(run_pairs="all"),
    }
    for param, kwargs in bad.items():
        with pytest.raises(FtdynError, match=f"^{param}: "):
            AnalyzeConfig(**kwargs)
    with pytest.raises(FtdynError, match="a view twice"):
        AnalyzeConfig(views=["cka=filter", "cka=map"])
    with pytest.raises(FtdynError, match="per-image Gram"):
        AnalyzeConfig(metrics=[DEBIASED_CKA], views="channels")


def test_analyze_identity_is_the_recorded_arguments():
    """The results' ``arguments``: resolved choices only, so equivalent spellings are the same
    analysis; execution options (memory, threads, device) are not part of it."""
    plain = AnalyzeConfig().identity()
    assert plain == {
        "metrics": ["pwsm", "procrustes", "cka"],
        "views": {"pwsm": "channels", "procrustes": "filter", "cka": "filter"},
        "alpha": 0.0,
        "reference": 0,
        "preset": "default",
        "estimator": "corrected",
        "layers": None,
        "bootstrap": 0,
        "seed": 0,
        "experiment_names": None,
        "replicates": None,
        "run_pairs": "comparable",
        "trajectory": "auto",
        "allow_partial": False,
        "map_average": "images",
        "map_center": "columns",
    }
    spelled = AnalyzeConfig(
        metrics=["pwsm", "procrustes", "cka"],
        views=["pwsm=channels"],
        layers=[],
        memory_limit="1GB",
        workers=2,
        device="cpu",
        progress=False,
        overwrite=True,
    )
    assert spelled.identity() == plain
    boot = AnalyzeConfig(bootstrap=10, bootstrap_groups=8).identity()
    assert (boot["bootstrap"], boot["bootstrap_groups"]) == (
        10,
        8,
    ) and "bootstrap_metrics" not in boot
    assert json.loads(json.dumps(boot)) == boot


def test_valid_names_are_defined_once():
    """The metric registry, the views and the presets agree with the config's names."""
    assert (*metrics.METRICS, DEBIASED_CKA) == METRIC_NAMES
    from ftdyn import views

    assert views.VIEWS is VIEWS and views.check_view is config.check_view
    assert all(
        set(p.views) == set(METRIC_NAMES) and set(p.views.values()) <= set(VIEWS)
        for p in PRESETS.values()
    )
    assert set(PRESETS) == set(get_args(config.PresetName))


def test_plan_job_is_inspectable_without_reading():
    """plan_job is pure: a layer that is never opened gets a plan from its shape alone."""
    src = Source(
        "never-opened.zarr", "layer", spc=10, n=40, channels=4, height=3, width=3, itemsize=2
    )
    spec = AP.JobSpec(exp=0, layer=0, src=src, view="channels", metrics=("pwsm",), epochs=3, ref=0)
    job = AP.plan_job(AnalyzeConfig(), spec, AP.Budget(host=10**9, threads=1))
    assert (job.side, job.mode, job.metrics, job.ckpt_groups) == ("row", "ref", ["pwsm"], [[1, 2]])
    # the reference once, every other checkpoint once
    assert job.read_bytes == 3 * src.n * src.image_bytes
    everything = AP.plan_job(
        AnalyzeConfig(trajectory="all"), spec, AP.Budget(host=10**9, threads=1)
    )
    assert (everything.mode, everything.ckpt_groups) == ("all", [None])
    mapped = AP.plan_job(
        AnalyzeConfig(preset="paper-code"),
        AP.JobSpec(0, 0, src, "map", ("procrustes", "cka"), 3, 0),
        AP.Budget(host=10**9, threads=1),
    )
    assert (mapped.side, mapped.metrics) == ("map", ["procrustes", "cka"])


def test_visualize_config_normalizes_choices():
    c = VisualizeConfig(layer=0, filters=[], classes="cat", epochs=(0, 2))
    assert (c.filters, c.classes, c.samples, c.epochs, c.n_filters) == (
        None,
        ("cat",),
        None,
        (0, 2),
        4,
    )
    with pytest.raises(FtdynError, match=r"^n_filters=0: must be at least 1"):
        VisualizeConfig(layer=0, n_filters=0)
    # n_filters unused then
    assert VisualizeConfig(layer=0, filters=[1], n_filters=0).filters == (1,)


def test_analyze_and_visualize_plans_read_no_activations(tmp_path):
    """make_plan opens the stores' metadata and decides everything; nothing is computed or
    written."""
    from ftdyn.analysis import make_plan as plan_analysis
    from ftdyn.viz import make_plan as plan_figures

    store, _ = make_planted_store(tmp_path / "s.zarr")
    plan = plan_analysis(store, out=tmp_path / "r", metrics=["cka"], memory_limit="1GB", workers=1)
    assert plan.config.metrics == ("cka",) and plan.threads == 1 and plan.memory_limit == 10**9
    assert [(row["layer"], row["view"]) for row in plan.summary()] == [
        (m, "filter") for m, _ in plan.experiments[0].layers
    ]
    # not an identity field
    assert plan.key == plan_analysis(store, out=tmp_path / "r", metrics=["cka"], workers=2).key
    assert not (tmp_path / "r").exists()

    vstore, _, _ = make_figure_store(tmp_path / "v.zarr")
    figures = plan_figures(
        vstore, out=tmp_path / "figs", layer=-1, classes=["square"], epochs=[0, 2]
    )
    assert (figures.classes, figures.epochs, figures.filters, figures.samples) == (
        [1],
        [0, 2],
        None,
        None,
    )
    assert figures.stem.startswith("v_") and not (tmp_path / "figs").exists()


def test_extract_config_normalizes_and_validates_in_one_place():
    c = ExtractConfig(
        batch_size="8", layers=["layer3", "layer4"], input_size="32", probe_seed=3, writers="2"
    )
    assert (c.batch_size, c.layers, c.input_size, c.probe_seed, c.writers) == (
        8,
        ("layer3", "layer4"),
        32,
        3,
        2,
    )
    assert (
        ExtractConfig(layers="layer3").layers == ("layer3",)
        and ExtractConfig(layers=[]).layers is None
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.dtype = "float32"
    bad = {
        "dtype": dict(dtype="float64"),
        "codec": dict(codec="gzip"),
        "batch_size": dict(batch_size=0),
        "writers": dict(writers=0),
        "samples_per_chunk": dict(samples_per_chunk=0),
        "input_size": dict(input_size=4),
        "probe_seed": dict(probe_seed=-1),
        "random_init_seed": dict(random_init_seed=1.5),
    }
    for param, kwargs in bad.items():
        with pytest.raises(FtdynError, match=f"^{param}: "):
            ExtractConfig(**kwargs)
    assert (STORE_DTYPES, CODECS) == (("float16", "float32"), ("zstd", "lz4"))
    assert c.replace(dtype="float32").dtype == "float32" and c.dtype == "float16"


def test_store_identity_reads_the_fields_the_store_records():
    """A store's root attributes give back every identity field of ExtractConfig, by name."""
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    attrs = {
        "architecture": "resnet18",
        "layers": ["layer3"],
        "input_size": 32,
        "normalization": norm,
        "dtype": "float32",
        "samples_per_chunk": 4,
        "codec": "lz4",
        "probe": {"seed": 2, "per_class": 3, "max_samples": None, "fingerprint": "0" * 64},
    }
    attrs = json.loads(json.dumps(attrs))  # as read back from the store
    recorded = store_identity(attrs)
    assert set(recorded) == set(ExtractConfig().identity())
    assert recorded == {
        "arch": "resnet18",
        "layers": ["layer3"],
        "input_size": 32,
        "normalize": norm,
        "dtype": "float32",
        "samples_per_chunk": 4,
        "probe_seed": 2,
        "per_class": 3,
        "max_samples": None,
    }


def test_one_table_maps_parameters_to_flags_per_command():
    assert config.command_flags("extract")[
        "probe_seed"
    ] == "--seed" and "seed" not in config.command_flags("extract")
    assert (
        config.command_flags("train")["epochs"],
        config.command_flags("visualize")["epochs"],
    ) == ("--epochs", "--epoch")
    assert config.command_flags("train")["num_workers"] == "--workers"
    assert (
        config.command_flags("analyze")["layers"]
        == config.command_flags("extract")["layers"]
        == "--layer"
    )
    assert (
        config.command_flags("report")["stores"] == "--store"
        and config.command_flags("train")["data_dir"] == "DATA_DIR"
    )
    assert "nested" not in config.command_flags("analyze")  # internal fields have no flag
    assert (config.arg("memory_limit"), config.arg("memory_limit", "2GB")) == (
        "memory_limit",
        "memory_limit=2GB",
    )
    with config.cli_names("analyze"):
        assert (config.arg("memory_limit"), config.arg("memory_limit", "2GB")) == (
            "--memory-limit",
            "--memory-limit 2GB",
        )
    assert config.arg("probe_seed") == "probe_seed"  # back to Python names after the command


def test_every_parameter_a_message_names_is_in_the_table():
    """A misspelt ``arg("...")`` would silently print an invented flag on the command line."""
    known = set().union(*(config.command_flags(c) for c in config.OTHER_PARAMETERS))
    source = Path(ftdyn.__file__).parent
    named = {
        m
        for path in source.rglob("*.py")
        for m in re.findall(r"""\barg\(['"](\w+)['"]""", path.read_text())
    }
    assert named and named <= known, sorted(named - known)
