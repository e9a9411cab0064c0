"""A longer fine-tuning series of one demo target, for ``bench_interpret.py`` beyond the demo's 4
checkpoints.

Fine-tunes and extracts one target exactly as ``ftdyn demo`` does (same model, weights, images,
layers, learning rate, probe set and random-init baseline), only for more epochs. The demo's
4-checkpoint series is the interpretation's costliest case: its random-init baseline is one
more checkpoint in every pass (+1/4 there, +1/12 on 12 checkpoints).

Run after ``ftdyn demo demo-out`` (it reads the demo's data folder; about 1.5 minutes on 2 CPU
cores for 11 epochs; it resumes), then benchmark the store it prints::

    python benchmarks/long_series.py demo-out/data/fashion --epochs 11 --out long-out
    python benchmarks/bench_interpret.py long-out/stores/fashion.zarr --repeat 3
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ftdyn.demos import pipeline


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", type=Path, help="a target of the demo: demo-out/data/<target>")
    ap.add_argument("--epochs", type=int, default=11)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    size = dataclasses.replace(pipeline.SIZES["default"], epochs=a.epochs)
    weights = pipeline.source_weights(print)
    stores, _ = pipeline._train_and_extract(
        {a.data.name: a.data},
        weights,
        a.out,
        size,
        seed=a.seed,
        device=a.device,
        progress=False,
        step=print,
    )
    print(stores[0])


if __name__ == "__main__":
    main()
