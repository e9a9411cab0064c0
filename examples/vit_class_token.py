"""A vision transformer fine-tuned: how far its blocks and its class token move from the source.

A ViT's block output is one token per image patch (stored as a map on the patch grid) plus
the class token its head reads. This script fine-tunes a timm ViT on your dataset, stores
each default block's patch tokens *and* its class token (``--layer blocks.11:class``), and
measures both with layer-level distances (the ``channels`` view: every channel at once, the
view that suits a transformer's residual stream)::

    python examples/vit_class_token.py --data /data/target --out vit-run \\
        --arch timm/vit_small_patch16_224 --weights vit_small_augreg.safetensors

``--weights``: the source model, a checkpoint file (e.g. timm's ``model.safetensors``), a
timm pretrained tag (downloaded by timm), or ``none`` (random init: nothing to reuse). The
dataset is an ImageFolder with ``train/<class>/*`` and ``val/<class>/*``.

Output: ``OUT/series/`` (one checkpoint per epoch, epoch 0 = the source with its new head),
``OUT/store.zarr``, ``OUT/results/`` (``distances.csv``, ``results.zarr``, ``report.html``),
and on stdout, per epoch, the linear-CKA distance from the source of every block's patch
tokens and of its class token. Read the class token's row as "how far the embedding the head
reads has moved"; the patch tokens' as "how far the layer's whole representation has moved".
Re-running resumes every stage.

Toy run: ``--weights none --input-size 32 --epochs 1 --per-class 2 --batch-size 8``
(see tests/test_examples.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import ftdyn
from ftdyn.errors import FtdynError
from ftdyn.models import build_model, default_layers
from ftdyn.tokens import PREFIX_TOKEN_SEPARATOR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="ImageFolder with train/ and val/")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--arch",
        default="timm/vit_small_patch16_224",
        help="a timm token model with a class token (default: %(default)s)",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="the source model: a checkpoint file, a timm pretrained tag, or none",
    )
    p.add_argument("--epochs", type=int, default=5, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-4, help="default: %(default)s")
    p.add_argument("--input-size", type=int, default=224, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument(
        "--per-class", type=int, default=10, help="probe images per class (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def layers_with_class_tokens(arch: str, input_size: int) -> list[str]:
    """The architecture's default blocks, each followed by its class token."""
    blocks = default_layers(build_model(arch), arch, input_size)
    # the class token of a block's output is layer BLOCK:class
    return [name for block in blocks for name in (block, f"{block}{PREFIX_TOKEN_SEPARATOR}class")]


def run(args: argparse.Namespace) -> Path:
    """Fine-tune, extract, analyze, report; returns the path of report.html."""
    out = args.out.expanduser().resolve()  # absolute: the results record the store path
    progress = not args.quiet
    series = ftdyn.train(
        args.data,
        arch=args.arch,
        weights=args.weights,
        epochs=args.epochs,
        lr=args.lr,
        input_size=args.input_size,
        batch_size=args.batch_size,
        device=args.device,
        out=out / "series",
        resume=True,
        progress=progress,
    )
    store = ftdyn.extract(
        series,
        data=args.data / "val",
        out=out / "store.zarr",
        layers=layers_with_class_tokens(args.arch, args.input_size),
        per_class=args.per_class,
        device=args.device,
        progress=progress,
    )
    # layer-level distances for patch tokens and class tokens alike
    results = ftdyn.analyze(
        [store],
        out=out / "results",
        metrics=["cka", "procrustes"],
        views="channels",
        overwrite=True,
        progress=progress,
    )
    page = ftdyn.report(out / "results", stores=[store])
    print_class_token_table(results)
    print(f"report: {page}", flush=True)
    return Path(page)


def print_class_token_table(results) -> None:
    """Per epoch, the CKA distance from the source of each layer (patch tokens and class
    tokens side by side)."""
    exp = str(results["experiment"].values[0])
    layers = [str(v) for v in results["layer"].sel(experiment=exp).values if str(v)]
    cka = results["distance"].sel(experiment=exp, metric="cka")
    print(f"\n{exp}: 1 - linear CKA from the source (channels view)")
    print(f"{'epoch':>5}" + "".join(f"{layer:>18}" for layer in layers))
    for epoch in results["epoch"].values:
        values = cka.sel(epoch=epoch).values[: len(layers)]
        print(f"{int(epoch):>5}" + "".join(f"{v:>18.4f}" for v in values))


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
