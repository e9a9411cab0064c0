"""Command line: a thin Typer layer over the Python API (``ftdyn.train``, ``ftdyn.extract``, ...).

Each command parses its options, calls the API function of the same name (see
``ftdyn.__init__`` for the module behind each) and turns an
:class:`~ftdyn.errors.FtdynError` into one line on stderr with exit code 2. Options of
commands with a typed config (:mod:`ftdyn.config`) take their defaults and help from it.
Each command imports its API module inside the function, for start-up speed: ``ftdyn
--help`` and every command load only the heavy libraries (torch, dask, ...) they use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .config import (
    AnalyzeConfig,
    ExtractConfig,
    ReportConfig,
    TrainConfig,
    VisualizeConfig,
    cli_names,
    default,
    help_text,
)
from .errors import FtdynError
from .progress import console
from .runtime import prefer_huge_pages

app = typer.Typer(
    name="ftdyn",
    help="Feature dynamics during fine-tuning: train -> extract -> analyze -> report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(func):
    """Print an FtdynError as one line (no traceback) and exit with code 2; notes, stage lines and
    caveats as one line each (:func:`ftdyn.progress.console`); messages name the command's flags
    (:func:`ftdyn.config.cli_names`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with console(), cli_names(func.__name__):
                return func(*args, **kwargs)
        except FtdynError as exc:
            typer.echo(f"ftdyn: error: {exc}", err=True)
            raise typer.Exit(2) from None
        # the reader went away (`ftdyn info ... | head`): nothing left to say
        except BrokenPipeError:
            # Python would report the pipe again when it flushes stdout at exit; a stdout that is
            # not a file (captured) has nothing to silence
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except (
            OSError
        ) as exc:  # the file system refused (read-only, full, permissions): not a bug of ours
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(
                f"ftdyn: error: {where}{exc.strerror or exc}; check that the path is writable and"
                " the disk has room, then re-run the same command (finished work is kept).",
                err=True,
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            resume = " with --resume" if func.__name__ == "train" else ""
            typer.echo(
                f"ftdyn: interrupted; finished work is kept and re-running the same command{resume}"
                " continues it.",
                err=True,
            )
            raise typer.Exit(130) from None

    wrapper.__doc__ = _reflowed(func.__doc__)
    return wrapper


def _reflowed(doc: str | None) -> str | None:
    """A command's docstring with each paragraph on one line: the help screens wrap it to the
    terminal themselves, and kept source line breaks would break its lines in odd places."""
    if doc is None:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftdyn {__version__}")
        raise typer.Exit()


def _config(config_type: type, params: dict, **renamed):
    """``config_type`` built from a command's parameters (its ``locals()``): each parameter named
    like a field, ``no_progress`` as ``progress``, and ``renamed`` for the flags named otherwise,
    so the field list is written once, in the signature."""
    names = {f.name for f in dataclasses.fields(config_type)}
    values = {key: value for key, value in params.items() if key in names}
    values["progress"] = not params["no_progress"]
    return config_type(**values, **renamed)


@app.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = None,
) -> None:
    """ftdyn: what happens inside a CNN while it is fine-tuned."""
    prefer_huge_pages()  # before any command imports torch


@app.command()
@user_errors
def layers(
    arch: Annotated[
        str | None,
        typer.Argument(help="Architecture name, e.g. resnet50 or timm/convnext_atto."),
    ] = None,
    input_size: Annotated[
        int, typer.Option(help="Input size in pixels used to compute output shapes.")
    ] = 224,
    all_layers: Annotated[
        bool, typer.Option("--all", help="List every candidate, not only the defaults.")
    ] = False,
    list_archs: Annotated[
        bool,
        typer.Option(
            "--list",
            help="List all supported architectures (torchvision's, then timm's as timm/NAME).",
        ),
    ] = False,
) -> None:
    """List the layers of ARCH that can be captured (defaults marked with *) and their shapes.

    Shapes are channels x height x width as stored (channels-last outputs are transposed); a
    token model's prefix token, MODULE:class, is a 1 x 1 map."""
    from . import models

    if list_archs or arch is None:
        typer.echo("\n".join(models.available_architectures()))
        return
    model = models.build_model(models.canonical_arch(arch))
    defaults = models.default_layers(model, arch, input_size)
    listed = [
        info
        for info in models.candidate_layers(model, input_size, include=tuple(defaults))
        # a default module's prefix tokens (ViT's class token) are listed beside it
        if all_layers or models.split_layer(info.name)[0] in defaults
    ]
    width = max([12, *(len(info.kind) for info in listed)])
    for info in listed:
        mark = "*" if info.name in defaults else " "
        shape = "x".join(map(str, info.shape))
        typer.echo(f"{mark} {info.name:<50} {info.kind:<{width}} {shape}")


def _extract_default(name: str):
    return default(ExtractConfig, name)


def _option(config_type: type, name: str, *decls: str, **kwargs):
    """The option of ``config_type``'s field ``name``: its help text comes from the config
    (``decls``: the flag's spellings when they are not ``--field-name``)."""
    return typer.Option(*decls, help=help_text(config_type, name), **kwargs)


def _extract(name: str, *decls: str):
    """The `ftdyn extract` option of ExtractConfig field ``name``: its help text comes from
    the config."""
    return _option(ExtractConfig, name, *decls)


@app.command()
@user_errors
def extract(
    ckpts_dir: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint series: a folder written by `ftdyn train`, or a folder "
            "of third-party checkpoints (.pt/.pth/.pth.tar/.bin/.ckpt/"
            ".safetensors, or Trainer checkpoint-N/ subfolders) with --arch."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Probe images: an ImageFolder (<class>/<image>), e.g. the target's "
            "validation split."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Activation store (Zarr v3 folder, e.g. store.zarr): created, or "
            "resumed/extended when it exists."
        ),
    ],
    arch: Annotated[str | None, _extract("arch")] = _extract_default("arch"),
    source: Annotated[str | None, _extract("source")] = _extract_default("source"),
    layer: Annotated[list[str] | None, _extract("layers", "--layer")] = _extract_default("layers"),
    per_class: Annotated[int | None, _extract("per_class")] = _extract_default("per_class"),
    max_samples: Annotated[int | None, _extract("max_samples")] = _extract_default("max_samples"),
    seed: Annotated[int, _extract("probe_seed")] = _extract_default("probe_seed"),
    input_size: Annotated[int | None, _extract("input_size")] = _extract_default("input_size"),
    batch_size: Annotated[int, _extract("batch_size")] = _extract_default("batch_size"),
    dtype: Annotated[str, _extract("dtype")] = _extract_default("dtype"),
    codec: Annotated[str, _extract("codec")] = _extract_default("codec"),
    chunk_samples: Annotated[int | None, _extract("samples_per_chunk")] = _extract_default(
        "samples_per_chunk"
    ),
    device: Annotated[str, _extract("device")] = _extract_default("device"),
    trust_checkpoint: Annotated[
        bool, _extract("trust_checkpoint", "--trust-checkpoint")
    ] = _extract_default("trust_checkpoint"),
    state_prefix: Annotated[str | None, _extract("state_prefix")] = _extract_default(
        "state_prefix"
    ),
    weights_copy: Annotated[str, _extract("weights_copy")] = _extract_default("weights_copy"),
    normalize: Annotated[str | None, _extract("normalize")] = _extract_default("normalize"),
    model_name: Annotated[str | None, _extract("model_name")] = _extract_default("model_name"),
    dataset_name: Annotated[str | None, _extract("dataset_name")] = _extract_default(
        "dataset_name"
    ),
    writers: Annotated[int | None, _extract("writers")] = _extract_default("writers"),
    scheduler: Annotated[str | None, _extract("scheduler")] = _extract_default("scheduler"),
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bars.")
    ] = not _extract_default("progress"),
    random_init_baseline: Annotated[
        bool, _extract("random_init_baseline", "--random-init-baseline")
    ] = _extract_default("random_init_baseline"),
    random_init_seed: Annotated[int, _extract("random_init_seed")] = _extract_default(
        "random_init_seed"
    ),
) -> None:
    """Replay every checkpoint of CKPTS_DIR on the probe images and store the layers' activations.

    Re-running the same command resumes a killed run and extends the store with
    checkpoints added since; a complete store is left as it is.
    """
    from .extraction import extract as run_extract

    config = _config(
        ExtractConfig,
        locals(),
        layers=layer or None,
        probe_seed=seed,
        samples_per_chunk=chunk_samples,
    )
    run_extract(ckpts_dir, data=data, out=out, config=config)


def _analyze(name: str, *decls: str):
    return _option(AnalyzeConfig, name, *decls)


def _default(name: str):
    return default(AnalyzeConfig, name)


@app.command()
@user_errors
def analyze(
    stores: Annotated[
        list[Path],
        typer.Argument(
            help="Activation stores written by `ftdyn extract` (one experiment "
            "each; several are analyzed together)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: results.zarr, distances.csv, "
            "reusability.csv, agreement.csv, agreement_summary.csv.",
        ),
    ] = Path("results"),
    metric: Annotated[list[str] | None, _analyze("metrics", "--metric")] = _default("metrics"),
    view: Annotated[list[str] | None, _analyze("views", "--view")] = _default("views"),
    alpha: Annotated[float, _analyze("alpha")] = _default("alpha"),
    reference: Annotated[int, _analyze("reference")] = _default("reference"),
    preset: Annotated[str, _analyze("preset")] = _default("preset"),
    estimator: Annotated[str | None, _analyze("estimator")] = _default("estimator"),
    layer: Annotated[list[str] | None, _analyze("layers", "--layer")] = _default("layers"),
    bootstrap: Annotated[int, _analyze("bootstrap")] = _default("bootstrap"),
    seed: Annotated[int, _analyze("seed")] = _default("seed"),
    bootstrap_metric: Annotated[
        list[str] | None, _analyze("bootstrap_metrics", "--bootstrap-metric")
    ] = _default("bootstrap_metrics"),
    bootstrap_groups: Annotated[int | None, _analyze("bootstrap_groups")] = _default(
        "bootstrap_groups"
    ),
    name: Annotated[list[str] | None, _analyze("experiment_names", "--name")] = _default(
        "experiment_names"
    ),
    replicates: Annotated[list[str] | None, _analyze("replicates")] = _default("replicates"),
    run_pairs: Annotated[str, _analyze("run_pairs")] = _default("run_pairs"),
    trajectory: Annotated[str, _analyze("trajectory")] = _default("trajectory"),
    allow_partial: Annotated[bool, _analyze("allow_partial", "--allow-partial")] = _default(
        "allow_partial"
    ),
    memory_limit: Annotated[str | None, _analyze("memory_limit")] = _default("memory_limit"),
    workers: Annotated[int | None, _analyze("workers")] = _default("workers"),
    device: Annotated[str, _analyze("device")] = _default("device"),
    scheduler: Annotated[str | None, _analyze("scheduler")] = _default("scheduler"),
    overwrite: Annotated[bool, _analyze("overwrite", "--overwrite")] = _default("overwrite"),
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bar.")
    ] = not _default("progress"),
    write_report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report", help="Also draw the default figures and write report.html."
        ),
    ] = True,
) -> None:
    """Distances between the reference checkpoint and every checkpoint, per layer and metric,
    out-of-core.

    Also the checkpoint x checkpoint trajectory, bootstrap intervals, the Pearson agreement
    between metrics and the reusability table (mean +- std over epochs). Re-running with the
    same arguments on unchanged stores reuses the results ("up to date").
    """
    from .analysis import analyze as run_analyze

    config = _config(
        AnalyzeConfig,
        locals(),
        metrics=metric,
        views=view,
        layers=layer,
        bootstrap_metrics=bootstrap_metric,
        experiment_names=name,
    )
    ds = run_analyze(stores, out=out, config=config)
    typer.echo(
        f"{out}: {ds.sizes['experiment']} experiment(s), {ds.sizes['metric']} metric(s),"
        f" {ds.sizes['layer_index']} layer(s), {ds.sizes['epoch']} epoch(s) -> results.zarr,"
        " distances.csv, reusability.csv, agreement.csv, agreement_summary.csv"
    )
    if write_report:
        from .reporting import report as write

        typer.echo(f"report: {write(out, stores=stores)}")


def _visualize(name: str, *decls: str):
    return _option(VisualizeConfig, name, *decls)


@app.command()
@user_errors
def visualize(
    store: Annotated[
        Path, typer.Argument(help="Activation store written by `ftdyn extract` (store.zarr).")
    ],
    layer: Annotated[str, _visualize("layer")],
    out: Annotated[
        Path, typer.Option(help="Output folder for the PNGs and figures.json (captions).")
    ],
    filter_: Annotated[list[int] | None, _visualize("filters", "--filter")] = default(
        VisualizeConfig, "filters"
    ),
    class_: Annotated[list[str] | None, _visualize("classes", "--class")] = default(
        VisualizeConfig, "classes"
    ),
    sample: Annotated[list[int] | None, _visualize("samples", "--sample")] = default(
        VisualizeConfig, "samples"
    ),
    epoch: Annotated[list[int] | None, _visualize("epochs", "--epoch")] = default(
        VisualizeConfig, "epochs"
    ),
    results: Annotated[Path | None, _visualize("results")] = default(VisualizeConfig, "results"),
    n_filters: Annotated[int, _visualize("n_filters")] = default(VisualizeConfig, "n_filters"),
) -> None:
    """Class-based (receptive-field averages) and sample-based (heatmap) figures of one layer."""
    from .viz import visualize as run_visualize

    config = VisualizeConfig(
        layer=layer,
        filters=filter_,
        classes=class_,
        samples=sample,
        epochs=epoch,
        results=results,
        n_filters=n_filters,
    )
    for path in run_visualize(store, out=out, config=config):
        typer.echo(str(path))


@app.command()
@user_errors
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder written by `ftdyn analyze`.")],
    store: Annotated[
        list[Path] | None,
        typer.Option(
            "--store",
            help="Activation store (repeatable): its "
            "manifest gives the accuracy table and "
            "its default class/sample figures are "
            "(re)made. Default: the stores named in "
            "the results, where they exist.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder for report.html, explore.html and figures/ (default: RESULTS_DIR)."
        ),
    ] = None,
    interactive: Annotated[
        bool, _option(ReportConfig, "interactive", "--interactive/--no-interactive")
    ] = default(ReportConfig, "interactive"),
    gallery_filters: Annotated[int, _option(ReportConfig, "gallery_filters")] = default(
        ReportConfig, "gallery_filters"
    ),
    max_filters: Annotated[int, _option(ReportConfig, "max_filters")] = default(
        ReportConfig, "max_filters"
    ),
) -> None:
    """Write report.html (experiments, accuracies, reusability, metric agreement, curves and
    figures) and explore.html (the same results to browse: epoch slider, layer x epoch overview,
    per-filter galleries)."""
    from .reporting import report as run_report

    config = ReportConfig(
        interactive=interactive, gallery_filters=gallery_filters, max_filters=max_filters
    )
    typer.echo(str(run_report(results_dir, stores=store, out=out, config=config)))


@app.command()
@user_errors
def info(
    store: Annotated[Path, typer.Argument(help="Activation store written by `ftdyn extract`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the information as JSON.")] = False,
) -> None:
    """Show a store's layers and shapes, checkpoints and their completeness, and size on disk."""
    import json

    from .extraction import human_bytes
    from .store import info as store_info

    if not store.exists():
        raise FtdynError(f"{store}: no such store; create one with `ftdyn extract`.")
    details = store_info(store)
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    ckpts = details["checkpoints"]
    done = sum(c["regions_done"] for c in ckpts)
    total = sum(c["regions"] for c in ckpts)
    typer.echo(f"store:       {details['path']}")
    typer.echo(
        f"model:       {details['model']} ({details['architecture']}), dataset {details['dataset']}"
    )
    typer.echo(
        f"probe:       {details['samples']} images, {len(details['classes'])} classes, stored as "
        f"{details['dtype']}"
    )
    typer.echo(f"size:        {human_bytes(details['bytes_on_disk'])} on disk")
    typer.echo(f"complete:    {'yes' if details['complete'] else 'no'} ({done}/{total} regions)")
    base = details["random_init_baseline"]
    if base:
        typer.echo(
            f"random init: seed {base['seed']} (not an epoch; the ceiling of relative distances), "
            f"{'complete' if base['complete'] else 'incomplete: run the same extract again'}"
        )
    typer.echo(f"layers ({len(details['layers'])}):")
    width = max(len(lay["layer"]) for lay in details["layers"])
    for lay in details["layers"]:
        shape = "x".join(map(str, lay["shape"]))
        blocks = lay["shape"][0] // lay["channel_block"]
        line = f"  {lay['layer']:<{width}}  {shape:<12}" + (
            f"  stored in {blocks} channel blocks" if blocks > 1 else ""
        )
        typer.echo(line.rstrip())
    typer.echo(f"checkpoints ({len(ckpts)}):")
    width = max(len(str(c["file"])) for c in ckpts)
    for c in ckpts:
        state = "complete" if c["complete"] else f"{c['regions_done']}/{c['regions']} regions"
        sha = (c.get("sha256") or "-")[:12]
        typer.echo(f"  epoch {c['epoch']:>3}  {c['file']:<{width}}  {sha:<12}  {state}")


def _train_default(name: str):
    return default(TrainConfig, name)


def _train(name: str, *decls: str):
    """The `ftdyn train` option of TrainConfig field ``name``: its help text comes from
    the config."""
    return _option(TrainConfig, name, *decls)


@app.command()
@user_errors
def train(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="ImageFolder dataset: DATA_DIR/train/<class>/* and "
            "DATA_DIR/val/<class>/*, or DATA_DIR/<class>/* with --val-split."
        ),
    ],
    arch: Annotated[str, _train("arch")],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder for the checkpoint series (epoch_000.pt ... and manifest.json)."
        ),
    ],
    weights: Annotated[str, _train("weights")] = _train_default("weights"),
    init: Annotated[Path | None, _train("init")] = _train_default("init"),
    epochs: Annotated[int, _train("epochs")] = _train_default("epochs"),
    batch_size: Annotated[int, _train("batch_size")] = _train_default("batch_size"),
    lr: Annotated[float, _train("lr")] = _train_default("lr"),
    crop_scale: Annotated[float, _train("crop_scale")] = _train_default("crop_scale"),
    optimizer: Annotated[str, _train("optimizer")] = _train_default("optimizer"),
    val_split: Annotated[float | None, _train("val_split")] = _train_default("val_split"),
    input_size: Annotated[int, _train("input_size")] = _train_default("input_size"),
    seed: Annotated[int, _train("seed")] = _train_default("seed"),
    device: Annotated[str, _train("device")] = _train_default("device"),
    workers: Annotated[int, _train("num_workers")] = _train_default("num_workers"),
    resume: Annotated[bool, _train("resume", "--resume")] = _train_default("resume"),
    overwrite: Annotated[bool, _train("overwrite", "--overwrite")] = _train_default("overwrite"),
    trust_checkpoint: Annotated[
        bool, _train("trust_checkpoint", "--trust-checkpoint")
    ] = _train_default("trust_checkpoint"),
    state_prefix: Annotated[str | None, _train("state_prefix")] = _train_default("state_prefix"),
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bars or per-epoch lines.")
    ] = not _train_default("progress"),
) -> None:
    """Fine-tune ARCH on DATA_DIR (every layer, new head) and save one checkpoint per epoch.

    Paper defaults: Adam, batch size 196, lr 1e-4, input 224. epoch_000.pt is the
    source model with its new head before any update.
    """
    from .checkpoints import read_manifest
    from .training import train as run_training

    config = _config(TrainConfig, locals(), num_workers=workers)
    folder = run_training(data_dir, out=out, config=config)
    manifest = read_manifest(folder) or {"epochs": []}
    entries = sorted(manifest["epochs"], key=lambda e: e["epoch"])
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    typer.echo(f"checkpoint series: {folder} ({len(entries)} checkpoints + manifest.json)")
    typer.echo(
        f"{'epoch':>5}  {'train_loss':>10}  {'train_acc':>9}  {'val_loss':>8}  {'val_acc':>7}"
    )
    for e in entries:
        typer.echo(
            f"{e['epoch']:>5}  {fmt(e.get('train_loss')):>10}  {fmt(e.get('train_acc')):>9}  "
            f"{fmt(e.get('val_loss')):>8}  {fmt(e.get('val_acc')):>7}"
        )


@app.command()
@user_errors
def demo(
    out: Annotated[
        Path,
        typer.Argument(help="Output folder (data, checkpoint series, stores, results, report)."),
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="A tiny run for tests (seconds instead of minutes).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the dataset draws and training.")] = 0,
    data_only: Annotated[
        bool,
        typer.Option(
            "--data-only",
            help=(
                "Only prepare the target datasets (ImageFolder trees under OUT_DIR/data) and stop."
            ),
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Fine-tune ImageNet MobileNetV2 on three real datasets and write a report (a few minutes
    on a CPU)."""
    from .demos import demo as run_demo

    run_demo(
        out, quick=quick, device=device, seed=seed, data_only=data_only, progress=not no_progress
    )
