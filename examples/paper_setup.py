"""The paper's setup on your own datasets: fine-tune, extract, analyze, report.

"An Empirical Study of Feature Dynamics During Fine-tuning" fine-tunes ImageNet
models (VGG19, ResNet50, DenseNet121) on three target datasets (AwA2, 15-Scene,
Fruits-360) with Adam, batch size 196, learning rate 1e-4 (1e-3 for Fruits) for
about 10 epochs, and compares every epoch's features with the source model layer
by layer. This script runs that grid on datasets you give as paths::

    python examples/paper_setup.py --out paper-run \\
        --dataset awa2=/data/awa2 --dataset scene15=/data/15scene \\
        --dataset fruits=/data/fruits360 --lr-for fruits=1e-3

Each dataset is an ImageFolder with ``train/<class>/*`` and ``val/<class>/*``. For
every architecture x dataset it

1. fine-tunes all layers with a new head from ``--weights`` (torchvision weights,
   default IMAGENET1K_V1, or ``none``) -> ``OUT/series/ARCH_DATASET/``
   (``epoch_000.pt`` = the source model, then one checkpoint per epoch);
2. replays the series on up to ``--per-class`` validation images per class and
   stores the default layers' activations -> ``OUT/stores/ARCH_DATASET.zarr``;

then analyzes all stores together and writes the report:
``OUT/results/report.html`` beside ``distances.csv``, ``reusability.csv`` (the
paper's Table 2), ``agreement.csv`` and ``results.zarr``.

Running the same command again skips what is done: training resumes from the last
complete epoch (or extends to a larger ``--epochs``), extraction resumes or extends
the store, and analysis is reused when nothing changed. Disk: a store holds
(epochs + 1) x probe images x all hooked activations in float16; VGG19 at 224 px is
about 10 MB per image and checkpoint before compression, so mind ``--per-class``.

Toy run (random init, tiny images, a minute on a CPU)::

    python examples/paper_setup.py --out toy --arch resnet18 --dataset toy=DATA \\
        --weights none --input-size 32 --epochs 1 --per-class 2 --batch-size 8
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import ftdyn
from ftdyn.errors import FtdynError

PAPER_ARCHS = ("vgg19", "resnet50", "densenet121")


def _pair(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise FtdynError(f"{what}: '{text}' is not NAME=VALUE.")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise FtdynError(
            f"{what}: name '{name}' may only hold letters, digits, '_', '.' and '-' "
            "(it names folders)."
        )
    return name, value


def parse_datasets(items: list[str]) -> dict[str, Path]:
    """``["awa2=/data/awa2", ...]`` -> {name: path}; checks train/ and val/ exist before
    any work."""
    datasets: dict[str, Path] = {}
    for item in items:
        name, value = _pair(item, "--dataset")
        if name in datasets:
            raise FtdynError(f"--dataset: '{name}' is given twice.")
        path = Path(value).expanduser().resolve()
        missing = [s for s in ("train", "val") if not (path / s).is_dir()]
        if missing:
            raise FtdynError(
                f"--dataset {name}: '{path}' has no {' and no '.join(s + '/' for s in missing)} "
                "folder; give an ImageFolder with train/<class>/ and val/<class>/."
            )
        datasets[name] = path
    return datasets


def parse_lrs(items: list[str], datasets: dict[str, Path], default: float) -> dict[str, float]:
    lrs = {name: default for name in datasets}
    for item in items:
        name, value = _pair(item, "--lr-for")
        if name not in datasets:
            raise FtdynError(
                f"--lr-for: '{name}' is not one of the --dataset names ({', '.join(datasets)})."
            )
        try:
            lrs[name] = float(value)
        except ValueError:
            raise FtdynError(f"--lr-for {name}: '{value}' is not a number.") from None
    return lrs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset",
        nargs="+",
        action="extend",
        required=True,
        metavar="NAME=PATH",
        help="target dataset(s): an ImageFolder with train/ and val/ (repeatable)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (series/, stores/, results/)"
    )
    p.add_argument(
        "--arch",
        nargs="+",
        default=list(PAPER_ARCHS),
        help="architectures (default: %(default)s; any torchvision CNN name works)",
    )
    p.add_argument(
        "--weights",
        default="IMAGENET1K_V1",
        help=(
            "source weights: torchvision weights name, a weights file, or none (default:"
            " %(default)s)"
        ),
    )
    p.add_argument(
        "--epochs", type=int, default=10, help="fine-tuning epochs (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=196, help="training batch size (paper: %(default)s)"
    )
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: %(default)s)")
    p.add_argument(
        "--lr-for",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=LR",
        help="learning rate for one dataset (paper: fruits=1e-3)",
    )
    p.add_argument(
        "--input-size", type=int, default=224, help="input size in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--per-class",
        type=int,
        default=10,
        help="probe images per class from val/ for extraction (default: %(default)s)",
    )
    p.add_argument(
        "--preset",
        default="default",
        choices=["default", "paper-code"],
        help="metric/view preset of the analysis (default: %(default)s)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        help="bootstrap replicates for 95%% intervals (default: 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=0, help="data-loading processes for training (default: 0)"
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: %(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> Path:
    """The whole grid; returns the path of report.html."""
    datasets = parse_datasets(args.dataset)
    lrs = parse_lrs(args.lr_for, datasets, args.lr)
    if args.per_class is not None and args.per_class < 1:
        raise FtdynError(f"--per-class: must be at least 1 (got {args.per_class}).")
    archs = list(dict.fromkeys(a.lower() for a in args.arch))
    out = args.out.expanduser().resolve()  # absolute: the results record the store paths
    progress = not args.quiet
    stores = []
    total = len(archs) * len(datasets)
    k = 0
    for name, path in datasets.items():
        for arch in archs:
            k += 1
            tag = f"{arch}_{name}"
            series = out / "series" / tag
            print(
                f"[{k}/{total}] {arch} on {name}: fine-tune {args.epochs} epoch(s) from"
                f" {args.weights} (lr {lrs[name]:g}) -> {series}",
                flush=True,
            )
            done = (
                series / "manifest.json"
            ).is_file()  # else at most a half-written epoch 0: start over
            ftdyn.train(
                path,
                arch=arch,
                out=series,
                weights=args.weights,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=lrs[name],
                input_size=args.input_size,
                seed=args.seed,
                device=args.device,
                num_workers=args.workers,
                resume=done,
                overwrite=not done,
                progress=progress,
            )
            store = out / "stores" / f"{tag}.zarr"
            print(
                f"[{k}/{total}] {arch} on {name}: extract the default layers on {path / 'val'} ->"
                f" {store}",
                flush=True,
            )
            ftdyn.extract(
                series,
                data=path / "val",
                out=store,
                per_class=args.per_class,
                device=args.device,
                model_name=arch,
                dataset_name=name,
                progress=progress,
            )
            stores.append(store)

    results = out / "results"
    print(f"analyze {len(stores)} store(s) together -> {results}", flush=True)
    before = _created(results)
    # overwrite=True: results of other arguments (e.g. fewer epochs) in OUT/results are this
    # script's own
    ds = ftdyn.analyze(
        stores,
        out=results,
        preset=args.preset,
        bootstrap=args.bootstrap,
        overwrite=True,
        progress=progress,
    )
    page = results / "report.html"
    if before is not None and ds.attrs.get("created") == before and page.is_file():
        print(f"{page}: up to date (analysis reused).", flush=True)
    # stores given explicitly: their class/sample figures are (re)drawn from the current stores
    else:
        page = ftdyn.report(results, stores=stores)
    print_reusability(ds)
    print(f"report: {page}", flush=True)
    return Path(page)


def _created(results: Path) -> str | None:
    """Creation time of the results already in ``results`` (None when there are none)."""
    try:
        return ftdyn.open_results(results).attrs.get("created")
    except FtdynError:
        return None


def print_reusability(ds) -> None:
    """The paper's Table 2: mean +- std over epochs of the layer-averaged distance."""
    metrics = [str(m) for m in ds["metric"].values]
    print("\nreusability (mean +- std over epochs; lower = features reused more)")
    print(f"{'experiment':<28}" + "".join(f"{m:>20}" for m in metrics))
    for e, exp in enumerate(ds["experiment"].values):
        cells = [
            f"{ds['reusability_mean'].values[e, m]:.3f} +- {ds['reusability_std'].values[e, m]:.3f}"
            for m in range(len(metrics))
        ]
        print(f"{exp!s:<28}" + "".join(f"{c:>20}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except FtdynError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # ftdyn's notes and stage lines
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.exit(main())
