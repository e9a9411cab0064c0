"""Command line: a thin Typer layer over the Python API (``ftdyn.train``, ``ftdyn.extract``, ...).

Each command parses its options, calls the API function of the same name (see
``ftdyn.__init__`` for the module behind each) and turns an
:class:`~ftdyn.errors.FtdynError` into one line on stderr with exit code 2. Options of
commands with a typed config (:mod:`ftdyn.config`) take their defaults and help from it.
Each command imports its API module inside the function, for start-up speed: ``ftdyn
--help`` and every command load only the heavy libraries (torch, dask, ...) they use.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import TrainConfig, default, help_text
from .errors import FtdynError

app = typer.Typer(
    name="ftdyn",
    help="Feature dynamics during fine-tuning: train -> extract -> analyze -> report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(func):
    """Print an FtdynError as one line (no traceback) and exit with code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FtdynError as exc:
            typer.echo(f"ftdyn: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except BrokenPipeError:  # the reader went away (`ftdyn info ... | head`): nothing left to say
            try:  # Python would report the pipe again when it flushes stdout at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # stdout is not a file (captured)
                pass
            raise typer.Exit(141) from None
        except OSError as exc:  # the file system refused (read-only, full, permissions): not a bug of ours
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"ftdyn: error: {where}{exc.strerror or exc}; check that the path is writable and the disk "
                       "has room, then re-run the same command (finished work is kept).", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            resume = " with --resume" if func.__name__ == "train" else ""
            typer.echo(f"ftdyn: interrupted; finished work is kept and re-running the same command{resume} "
                       "continues it.", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftdyn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    """ftdyn: what happens inside a CNN while it is fine-tuned."""


@app.command()
@user_errors
def layers(
    arch: Annotated[Optional[str], typer.Argument(help="Architecture name, e.g. resnet50 or timm/convnext_atto.")
                    ] = None,
    input_size: Annotated[int, typer.Option(help="Input size in pixels used to compute output shapes.")] = 224,
    all_layers: Annotated[bool, typer.Option("--all", help="List every candidate, not only the defaults.")] = False,
    list_archs: Annotated[bool, typer.Option("--list", help="List all supported architectures (torchvision's, "
                                                            "then timm's as timm/NAME).")] = False,
) -> None:
    """List the layers of ARCH that can be captured (defaults marked with *), with output shapes
    channels x height x width (as stored; channels-last outputs are transposed)."""
    from . import models

    if list_archs or arch is None:
        typer.echo("\n".join(models.available_architectures()))
        return
    model = models.build_model(models.canonical_arch(arch, flag="ARCH"))
    defaults = models.default_layers(model, arch, input_size)
    for info in models.candidate_layers(model, input_size, include=tuple(defaults)):
        if all_layers or info.name in defaults:
            mark = "*" if info.name in defaults else " "
            shape = "x".join(map(str, info.shape))
            typer.echo(f"{mark} {info.name:<50} {info.kind:<12} {shape}")


@app.command()
@user_errors
def extract(
    ckpts_dir: Annotated[Path, typer.Argument(help="Checkpoint series: a folder written by `ftdyn train`, or a folder "
                                                   "of third-party checkpoints (.pt/.pth/.pth.tar/.bin/.ckpt/"
                                                   ".safetensors, or Trainer checkpoint-N/ subfolders) with --arch.")],
    data: Annotated[Path, typer.Option(help="Probe images: an ImageFolder (<class>/<image>), e.g. the target's "
                                            "validation split.")],
    out: Annotated[Path, typer.Option(help="Activation store (Zarr v3 folder, e.g. store.zarr): created, or "
                                           "resumed/extended when it exists.")],
    arch: Annotated[Optional[str], typer.Option(help="Architecture of third-party checkpoints, e.g. resnet50 "
                                                     "or timm/convnext_atto (an ftdyn series names it in "
                                                     "manifest.json).")] = None,
    source: Annotated[Optional[str], typer.Option(help="Epoch 0 of a third-party series: a checkpoint file or a "
                                                       "torchvision weights name (IMAGENET1K_V1).")] = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", help="Module to capture (repeat the option; "
                                                                       "default: the paper's layers, see "
                                                                       "`ftdyn layers ARCH`).")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="At most N probe images per class (default: all).")] = None,
    max_samples: Annotated[Optional[int], typer.Option(help="At most N probe images in all, balanced over "
                                                            "classes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the probe-image selection.")] = 0,
    input_size: Annotated[Optional[int], typer.Option(help="Input size in pixels (default: the series' size, "
                                                           "else 224).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    dtype: Annotated[str, typer.Option(help="Stored activation type: float16 or float32.")] = "float16",
    codec: Annotated[str, typer.Option(help="Compression: zstd (smaller) or lz4 (faster).")] = "zstd",
    chunk_samples: Annotated[Optional[int], typer.Option(help="Samples per store chunk (default: ~32 MB chunks "
                                                              "of the largest layer).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow unpickling arbitrary "
                                                                              "objects from checkpoint files "
                                                                              "(only for files you trust).")] = False,
    state_prefix: Annotated[Optional[str], typer.Option(help="Key prefix (ema.module.) or top-level entry "
                                                             "(state_dict_ema, model_ema) of the model copy to load "
                                                             "from files holding several.")] = None,
    weights_copy: Annotated[str, typer.Option(help="main (the model's weights) or ema (its EMA copy: timm's "
                                                   "state_dict_ema, torchvision's model_ema, ema.module. keys).")
                            ] = "main",
    normalize: Annotated[Optional[str], typer.Option(help="MEAN,STD (or three means, three stds) the model expects "
                                                          "(default: the timm model's pretrained config, else "
                                                          "ImageNet's).")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="Model name shown in reports (default: the "
                                                           "architecture).")] = None,
    dataset_name: Annotated[Optional[str], typer.Option(help="Dataset name shown in reports (default: from the "
                                                             "series or the --data folder).")] = None,
    writers: Annotated[Optional[int], typer.Option(help="Threads compressing and writing regions (default: one "
                                                        "per CPU core but one, 2 to 16).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    random_init_baseline: Annotated[bool, typer.Option(
        "--random-init-baseline", help="Also extract a seeded randomly initialized model of the same architecture "
                                       "on the same images (not an epoch): the ceiling of `analyze`'s "
                                       "relative_distance.")] = False,
    random_init_seed: Annotated[int, typer.Option(help="Seed of the random-init baseline.")] = 0,
) -> None:
    """Replay every checkpoint of CKPTS_DIR on the probe images and store the layers' activations.

    Re-running the same command resumes a killed run and extends the store with
    checkpoints added since; a complete store is left as it is.
    """
    from .extraction import extract as run_extract

    run_extract(ckpts_dir, data=data, out=out, arch=arch, source=source, layers=layer or None,
                per_class=per_class, max_samples=max_samples, probe_seed=seed, input_size=input_size,
                batch_size=batch_size, dtype=dtype, codec=codec, samples_per_chunk=chunk_samples, device=device,
                trust_checkpoint=trust_checkpoint, model_name=model_name, dataset_name=dataset_name,
                writers=writers, state_prefix=state_prefix, weights_copy=weights_copy, normalize=normalize,
                progress=not no_progress, random_init_baseline=random_init_baseline,
                random_init_seed=random_init_seed)


@app.command()
@user_errors
def analyze(
    stores: Annotated[list[Path], typer.Argument(help="Activation stores written by `ftdyn extract` (one experiment "
                                                      "each; several are analyzed together).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: results.zarr, distances.csv, "
                                                          "reusability.csv, agreement.csv, agreement_summary.csv.")]
    = Path("results"),
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Metric (repeatable): pwsm, procrustes, cka, "
                                                                         "cka_debiased (filter, flat or map view). "
                                                                         "Default: the preset's (default preset: all "
                                                                         "three; paper-code: the same three).")]
    = None,
    view: Annotated[Optional[list[str]], typer.Option("--view", help="View for every metric (channels, flat, pooled, "
                                                                     "filter, map) or METRIC=VIEW (repeatable). "
                                                                     "Default preset: pwsm=channels, procrustes=filter, "
                                                                     "cka=filter.")] = None,
    alpha: Annotated[float, typer.Option(help="PWSM alpha in [0, 1]: 0 = full whitening (the paper's setting, scale "
                                              "free), 1 = angular Procrustes; 0<alpha<1 depends on the activation "
                                              "scale (netrep convention).")] = 0.0,
    reference: Annotated[int, typer.Option(help="Epoch every checkpoint is compared with (0 = source model).")] = 0,
    preset: Annotated[str, typer.Option(help="default: pwsm on channels, procrustes and cka on filter (per-filter "
                                             "distances, NaN-aware mean, dead filters counted). paper-code: the "
                                             "published code's numbers: pwsm (alpha 0) on channels, procrustes and "
                                             "cka on map with rows centered, per class then over all (class, filter) "
                                             "cells, and its Pearson agreement across filters.")] = "default",
    layer: Annotated[Optional[list[str]], typer.Option("--layer", help="Layer to analyze (module or store variable "
                                                                       "name; repeatable). Default: all.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates over images for 95% intervals (0 = off).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap draws.")] = 0,
    bootstrap_metric: Annotated[Optional[list[str]], typer.Option(
        "--bootstrap-metric", help="Bootstrap only these metrics (repeatable; default all; cka is the cheapest)."
    )] = None,
    bootstrap_groups: Annotated[Optional[int], typer.Option(
        help="Groups of images the bootstrap resamples (default 32; fewer: cheaper, coarser).")] = None,
    name: Annotated[Optional[list[str]], typer.Option("--name", help="Experiment label per store, in order "
                                                                     "(default: model/dataset from the store).")]
    = None,
    trajectory: Annotated[str, typer.Option(help="Checkpoint x checkpoint matrix: auto (all pairs for Gram-side "
                                                 "views when cheap, else the reference row only), all (every pair, "
                                                 "every view: O(T^2) work on the row side and map view), or "
                                                 "reference.")] = "auto",
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Analyze the complete checkpoints of an "
                                                                        "incompletely extracted store.")] = False,
    memory_limit: Annotated[Optional[str], typer.Option(help="Memory for data and statistics, e.g. 1GB "
                                                             "(default: half the RAM). Bounds concurrent tasks.")]
    = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads (default: CPU count; lowered to fit "
                                                        "--memory-limit).")] = None,
    device: Annotated[str, typer.Option(help="Where the float64 statistics run: auto (CUDA when present; cpu with "
                                             "--scheduler), cpu, cuda or cuda:N.")] = "auto",
    scheduler: Annotated[Optional[str], typer.Option(help="Run on an existing Dask cluster: tcp://HOST:PORT "
                                                          "(stores must be readable by the workers).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace results of other arguments in --out.")]
    = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    write_report: Annotated[bool, typer.Option("--report/--no-report",
                                               help="Also draw the default figures and write report.html.")] = True,
) -> None:
    """Distances between the reference checkpoint and every checkpoint, per layer and metric, out-of-core.

    Also the checkpoint x checkpoint trajectory, bootstrap intervals, the Pearson agreement
    between metrics and the reusability table (mean +- std over epochs). Re-running with the
    same arguments on unchanged stores reuses the results ("up to date").
    """
    from .analysis import analyze as run_analyze

    ds = run_analyze(stores, out=out, metrics=metric or None, views=view or None, alpha=alpha, reference=reference,
                     preset=preset, layers=layer or None, bootstrap=bootstrap, seed=seed,
                     experiment_names=name or None, allow_partial=allow_partial, memory_limit=memory_limit,
                     workers=workers, scheduler=scheduler, progress=not no_progress, overwrite=overwrite,
                     trajectory=trajectory, device=device, bootstrap_metrics=bootstrap_metric or None,
                     bootstrap_groups=bootstrap_groups)
    typer.echo(f"{out}: {ds.sizes['experiment']} experiment(s), {ds.sizes['metric']} metric(s), "
               f"{ds.sizes['layer_index']} layer(s), {ds.sizes['epoch']} epoch(s) -> results.zarr, distances.csv, "
               "reusability.csv, agreement.csv, agreement_summary.csv")
    if write_report:
        from .reporting import report as write

        typer.echo(f"report: {write(out, stores=stores)}")


@app.command()
@user_errors
def visualize(
    store: Annotated[Path, typer.Argument(help="Activation store written by `ftdyn extract` (store.zarr).")],
    layer: Annotated[str, typer.Option(help="Layer: module name (features.35), store variable (features_35) "
                                            "or index (0 = shallowest, -1 = deepest).")],
    out: Annotated[Path, typer.Option(help="Output folder for the PNGs and figures.json (captions).")],
    filter_: Annotated[Optional[list[int]], typer.Option("--filter", help="Filter index (repeatable). Default: "
                                                                          "the --n-filters whose distance changed "
                                                                          "most. At most 16.")] = None,
    class_: Annotated[Optional[list[str]], typer.Option("--class", help="Class name or index (repeatable). "
                                                                        "Default: the first 3 classes. At most "
                                                                        "48 class x filter rows.")] = None,
    sample: Annotated[Optional[list[int]], typer.Option("--sample", help="Sample id for a sample-based figure "
                                                                         "(repeatable). Default: per shown class "
                                                                         "(up to 2) the image the filters respond "
                                                                         "to most.")] = None,
    epoch: Annotated[Optional[list[int]], typer.Option("--epoch", help="Epoch to show (repeatable). Default: "
                                                                       "all, or 8 evenly spaced. At most 16.")] = None,
    results: Annotated[Optional[Path], typer.Option(help="Results folder of `ftdyn analyze` that includes this "
                                                         "store: rank filters by their per-filter distance.")] = None,
    n_filters: Annotated[int, typer.Option(help="Filters to choose when no --filter is given (capped at 16 and "
                                                "at the layer's filters).")] = 4,
) -> None:
    """Class-based (receptive-field averages) and sample-based (heatmap) figures of one layer."""
    from .viz import visualize as run_visualize

    paths = run_visualize(store, layer=layer, filters=filter_, classes=class_, samples=sample, results=results,
                          out=out, epochs=epoch, n_filters=n_filters)
    for path in paths:
        typer.echo(str(path))


@app.command()
@user_errors
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder written by `ftdyn analyze`.")],
    store: Annotated[Optional[list[Path]], typer.Option("--store", help="Activation store (repeatable): its "
                                                                        "manifest gives the accuracy table and "
                                                                        "its default class/sample figures are "
                                                                        "(re)made. Default: the stores named in "
                                                                        "the results, where they exist.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder for report.html and figures/ "
                                                     "(default: RESULTS_DIR).")] = None,
) -> None:
    """Write report.html: experiments, accuracies, reusability, metric agreement, curves and figures."""
    from .reporting import report as run_report

    typer.echo(str(run_report(results_dir, stores=store, out=out)))


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
    typer.echo(f"model:       {details['model']} ({details['architecture']}), dataset {details['dataset']}")
    typer.echo(f"probe:       {details['samples']} images, {len(details['classes'])} classes, stored as "
               f"{details['dtype']}")
    typer.echo(f"size:        {human_bytes(details['bytes_on_disk'])} on disk")
    typer.echo(f"complete:    {'yes' if details['complete'] else 'no'} ({done}/{total} regions)")
    base = details["random_init_baseline"]
    if base:
        typer.echo(f"random init: seed {base['seed']} (not an epoch; the ceiling of relative distances), "
                   f"{'complete' if base['complete'] else 'incomplete: run the same extract again'}")
    typer.echo(f"layers ({len(details['layers'])}):")
    width = max(len(lay["layer"]) for lay in details["layers"])
    for lay in details["layers"]:
        shape = 'x'.join(map(str, lay['shape']))
        blocks = lay["shape"][0] // lay["channel_block"]
        line = f"  {lay['layer']:<{width}}  {shape:<12}" + (f"  stored in {blocks} channel blocks" if blocks > 1 else "")
        typer.echo(line.rstrip())
    typer.echo(f"checkpoints ({len(ckpts)}):")
    width = max(len(str(c["file"])) for c in ckpts)
    for c in ckpts:
        state = "complete" if c["complete"] else f"{c['regions_done']}/{c['regions']} regions"
        sha = (c.get("sha256") or "-")[:12]
        typer.echo(f"  epoch {c['epoch']:>3}  {c['file']:<{width}}  {sha:<12}  {state}")


def _train_option(name: str, **kwargs):
    """The `ftdyn train` option of TrainConfig field ``name``: its help text comes from the config."""
    return typer.Option(*kwargs.pop("decls", ()), help=help_text(TrainConfig, name), **kwargs)


@app.command()
@user_errors
def train(
    data_dir: Annotated[Path, typer.Argument(help="ImageFolder dataset: DATA_DIR/train/<class>/* and "
                                                  "DATA_DIR/val/<class>/*, or DATA_DIR/<class>/* with --val-split.")],
    arch: Annotated[str, _train_option("arch")],
    out: Annotated[Path, typer.Option(help="Output folder for the checkpoint series (epoch_000.pt ... "
                                           "and manifest.json).")],
    weights: Annotated[str, _train_option("weights")] = default(TrainConfig, "weights"),
    init: Annotated[Optional[Path], _train_option("init")] = default(TrainConfig, "init"),
    epochs: Annotated[int, _train_option("epochs")] = default(TrainConfig, "epochs"),
    batch_size: Annotated[int, _train_option("batch_size")] = default(TrainConfig, "batch_size"),
    lr: Annotated[float, _train_option("lr")] = default(TrainConfig, "lr"),
    crop_scale: Annotated[float, _train_option("crop_scale")] = default(TrainConfig, "crop_scale"),
    optimizer: Annotated[str, _train_option("optimizer")] = default(TrainConfig, "optimizer"),
    val_split: Annotated[Optional[float], _train_option("val_split")] = default(TrainConfig, "val_split"),
    input_size: Annotated[int, _train_option("input_size")] = default(TrainConfig, "input_size"),
    seed: Annotated[int, _train_option("seed")] = default(TrainConfig, "seed"),
    device: Annotated[str, _train_option("device")] = default(TrainConfig, "device"),
    workers: Annotated[int, _train_option("num_workers")] = default(TrainConfig, "num_workers"),
    resume: Annotated[bool, _train_option("resume", decls=("--resume",))] = default(TrainConfig, "resume"),
    overwrite: Annotated[bool, _train_option("overwrite", decls=("--overwrite",))] = default(TrainConfig,
                                                                                             "overwrite"),
    trust_checkpoint: Annotated[bool, _train_option("trust_checkpoint", decls=("--trust-checkpoint",))
                                ] = default(TrainConfig, "trust_checkpoint"),
    state_prefix: Annotated[Optional[str], _train_option("state_prefix")] = default(TrainConfig, "state_prefix"),
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars or per-epoch lines.")
                           ] = not default(TrainConfig, "progress"),
) -> None:
    """Fine-tune ARCH on DATA_DIR (every layer, new head) and save one checkpoint per epoch.

    Paper defaults: Adam, batch size 196, lr 1e-4, input 224. epoch_000.pt is the
    source model with its new head before any update.
    """
    from .checkpoints import read_manifest
    from .training import train as run_training

    config = TrainConfig(arch=arch, weights=weights, init=init, epochs=epochs, batch_size=batch_size, lr=lr,
                         optimizer=optimizer, val_split=val_split, input_size=input_size, seed=seed, device=device,
                         num_workers=workers, resume=resume, overwrite=overwrite, trust_checkpoint=trust_checkpoint,
                         progress=not no_progress, crop_scale=crop_scale, state_prefix=state_prefix)
    folder = run_training(data_dir, out=out, config=config)
    manifest = read_manifest(folder) or {"epochs": []}
    entries = sorted(manifest["epochs"], key=lambda e: e["epoch"])
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    typer.echo(f"checkpoint series: {folder} ({len(entries)} checkpoints + manifest.json)")
    typer.echo(f"{'epoch':>5}  {'train_loss':>10}  {'train_acc':>9}  {'val_loss':>8}  {'val_acc':>7}")
    for e in entries:
        typer.echo(f"{e['epoch']:>5}  {fmt(e.get('train_loss')):>10}  {fmt(e.get('train_acc')):>9}  "
                   f"{fmt(e.get('val_loss')):>8}  {fmt(e.get('val_acc')):>7}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Argument(help="Output folder (data, checkpoint series, stores, results, report).")] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="A tiny run for tests (seconds instead of minutes).")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the dataset draws and training.")] = 0,
    data_only: Annotated[bool, typer.Option("--data-only", help="Only prepare the target datasets (ImageFolder trees under OUT_DIR/data) and stop.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Fine-tune ImageNet MobileNetV2 on three real datasets and write a report (a few minutes on a CPU)."""
    from .demos import demo as run_demo

    run_demo(out, quick=quick, device=device, seed=seed, data_only=data_only, progress=not no_progress)
