"""Analyze a checkpoint series that ftdyn did not train (e.g. PyTorch Lightning).

You fine-tuned a torchvision CNN with your own code and kept one checkpoint per
epoch. This script replays them on probe images, measures how far each epoch's
features moved from the source model, and writes the report::

    python examples/third_party_series.py --ckpts lightning_logs/version_0/checkpoints \\
        --arch resnet50 --source IMAGENET1K_V1 --data /data/target/val --out tp-run

Outputs: ``OUT/store.zarr`` (activations), ``OUT/results/`` (``distances.csv``,
``reusability.csv``, ``agreement.csv``, ``results.zarr``) and
``OUT/results/report.html``. Re-running resumes or extends the store (new epochs
appended) and reuses the analysis when nothing changed.

What a Lightning series looks like
    ``ModelCheckpoint(save_top_k=-1, every_n_epochs=1)`` writes
    ``epoch=0-step=120.ckpt``, ``epoch=1-step=240.ckpt``, ... Each file is a
    pickled dict::

        {"epoch": 0, "global_step": 120, "pytorch-lightning_version": "2.4.0",
         "state_dict": {"model.conv1.weight": ..., "model.fc.weight": ..., ...},
         "optimizer_states": [...], "lr_schedulers": [...], "callbacks": {...},
         "hyper_parameters": {...}, "loops": {...}}

    The state-dict keys carry the LightningModule attribute that holds the network
    (``self.model = torchvision.models.resnet50(...)`` -> ``model.``; ``net.``,
    ``backbone.`` ... work the same): ftdyn strips the prefix that makes the keys
    match ``--arch`` and drops keys outside it (a loss module's buffers). The
    ``epoch`` stored inside orders the files (0-based: ``epoch=0`` is the state after
    the first epoch), so with ``--source`` those files become epochs 1, 2, ...;
    without stored epochs the number after ``epoch`` in the file name is used.
    Lightning's ``last.ckpt`` duplicates the final epoch: move it out of the folder
    (duplicate epochs are refused as ambiguous).

Epoch 0 (``--source``)
    The model the fine-tuning started from: a torchvision weights name
    (``IMAGENET1K_V1``; downloaded once by torchvision) or a checkpoint file. Its
    classifier head may differ from the fine-tuned one; only the hooked layers are
    compared. Without ``--source`` the lowest-numbered file is the reference.

Safety
    Pickled checkpoints are loaded with ``torch.load(weights_only=True)``: tensors,
    numbers, strings and containers only, so a file cannot run code. A checkpoint
    that holds other objects (e.g. your own config class or a ``datetime``; the
    ``argparse.Namespace`` that timm and torchvision store as ``args`` is allowed) is
    refused with the names of the globals it would
    import. If you trust the files, pass ``--trust-checkpoint`` (passed through to
    ``ftdyn.extract``; never use it on files from strangers). ``.safetensors`` files
    need no trust.

Toy run: ``--input-size 32 --per-class 2 --batch-size 8`` (see tests/test_examples.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import ftdyn
from ftdyn.checkpoints import discover_series
from ftdyn.errors import FtdynError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--ckpts",
        type=Path,
        required=True,
        help="folder of checkpoints (.ckpt/.pt/.pth/.bin/.safetensors), one per epoch",
    )
    p.add_argument(
        "--arch", required=True, help="torchvision architecture of the checkpoints, e.g. resnet50"
    )
    p.add_argument(
        "--source",
        default=None,
        help="epoch 0: torchvision weights name (IMAGENET1K_V1) or a checkpoint file",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="probe images: an ImageFolder (<class>/<image>), e.g. the target's validation split",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (store.zarr, results/)")
    p.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="at most N probe images per class (default: all)",
    )
    p.add_argument(
        "--input-size", type=int, default=224, help="input size in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)"
    )
    p.add_argument(
        "--layer",
        action="append",
        default=None,
        help="module to capture (repeatable; default: the paper's layers for --arch)",
    )
    p.add_argument(
        "--name", default=None, help="dataset name shown in the report (default: from --data)"
    )
    p.add_argument(
        "--preset",
        default="default",
        choices=["default", "paper-code"],
        help="metric/view preset of the analysis (default: %(default)s)",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unpickling arbitrary objects (only for files you trust)",
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: %(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> Path:
    """Extract, analyze, report; returns the path of report.html."""
    out = args.out.expanduser().resolve()  # absolute: the results record the store path
    progress = not args.quiet

    # 1. how ftdyn reads the folder: the epoch order, before any forward pass
    entries = discover_series(
        args.ckpts, source=args.source, trust=args.trust_checkpoint, arch=args.arch
    )
    print(f"{args.ckpts}: {len(entries)} checkpoints in epoch order:")
    for entry in entries:
        print(f"  epoch {entry.epoch:>3}  {entry.label}")

    # 2. activations of every checkpoint on the same probe images
    store = out / "store.zarr"
    ftdyn.extract(
        args.ckpts,
        data=args.data,
        out=store,
        arch=args.arch,
        source=args.source,
        layers=args.layer,
        per_class=args.per_class,
        input_size=args.input_size,
        batch_size=args.batch_size,
        device=args.device,
        trust_checkpoint=args.trust_checkpoint,
        dataset_name=args.name,
        progress=progress,
    )

    # 3. distances from epoch 0, per layer and metric, then the report
    results = out / "results"
    ds = ftdyn.analyze([store], out=results, preset=args.preset, overwrite=True, progress=progress)
    page = ftdyn.report(results, stores=[store])

    exp = str(ds["experiment"].values[0])
    last = int(ds["epoch"].values[-1])
    print(f"\n{exp}: distance from epoch 0 at epoch {last} (lower = closer to the source)")
    layers = [str(v) for v in ds["layer"].sel(experiment=exp).values if str(v)]
    metrics = [str(m) for m in ds["metric"].values]
    print(f"{'layer':<24}" + "".join(f"{m:>12}" for m in metrics))
    for i, layer in enumerate(layers):
        vals = ds["distance"].sel(experiment=exp, layer_index=i, epoch=last).values
        print(f"{layer:<24}" + "".join(f"{v:>12.4f}" for v in vals))
    print(f"report: {page}", flush=True)
    return Path(page)


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
