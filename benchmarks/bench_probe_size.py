"""Do the default distances depend on how many probe images were extracted?

Extracts a demo target's series again with fewer probe images (``--per-class``, default 10:
80 images for the demo's 8 classes), analyzes both stores with the default estimators and
``--bootstrap`` replicates of every metric, and counts the (metric, layer, epoch) whose 95 %
intervals at the two sizes overlap: over all of them, and over those that neither size marks
unreliable. An unreliable value has no bootstrap interval; its interval here is the bias bracket
between it and its held-out value.

    python benchmarks/bench_probe_size.py demo-out --target photos --per-class 10 --out size-out
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results beside this script
from _results import command_line, write_result

import ftdyn
from ftdyn.demos.pipeline import SIZES


def interval(results, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per (layer, epoch after the reference) of a result's first experiment: the
    bootstrap interval of a reliable value; for an unreliable one, the span of its value, its
    held-out value and any interval (the bias bracket of ftdyn.metrics.heldout)."""
    at = dict(metric=metric)
    value, low, high = (
        results[k].sel(**at).values[0, :, 1:] for k in ("distance", "ci_low", "ci_high")
    )
    odd = results["unreliable"].sel(**at).values[0][:, None]
    held = results["heldout_distance"].sel(**at).values[0, :, 1:]
    with warnings.catch_warnings():  # all-NaN spans stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        span = np.stack([value, held, low, high])
        low = np.where(odd, np.nanmin(span, axis=0), low)
        high = np.where(odd, np.nanmax(span, axis=0), high)
    return low, high


def overlap(small, large) -> tuple[int, int, int, int]:
    """(agreeing, compared, agreeing among the reliable, reliable) cells of two results: their
    intervals (:func:`interval`) overlap."""
    counts = np.zeros(4, dtype=int)
    for metric in small["metric"].values:
        reliable = ~(
            small["unreliable"].sel(metric=metric).values[0]
            | large["unreliable"].sel(metric=metric).values[0]
        )
        d = [*interval(small, metric), *interval(large, metric)]
        both = np.isfinite(small["distance"].sel(metric=metric).values[0, :, 1:]) & np.isfinite(
            large["distance"].sel(metric=metric).values[0, :, 1:]
        )
        agree = (np.maximum(d[0], d[2]) <= np.minimum(d[1], d[3])) & both
        trusted = both & np.asarray(reliable)[:, None]
        counts += [agree.sum(), both.sum(), (agree & trusted).sum(), trusted.sum()]
    return tuple(int(c) for c in counts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="the output folder of `ftdyn demo`")
    parser.add_argument("--target", default="photos")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("size-out"))
    args = parser.parse_args(argv)
    small_store = args.out / f"{args.target}-{args.per_class}.zarr"
    warnings.simplefilter("ignore")
    ftdyn.extract(
        args.demo / "series" / args.target,
        data=args.demo / "data" / args.target / "val",
        out=small_store,
        per_class=args.per_class,
        layers=list(SIZES["default"].layers),
        model_name="mobilenet_v2",
        dataset_name=f"{args.target}-{args.per_class}",
        random_init_baseline=True,
        progress=False,
    )
    options = dict(bootstrap=args.bootstrap, progress=False, overwrite=True)
    small = ftdyn.analyze(small_store, out=args.out / "small", **options)
    large_store = args.demo / "stores" / f"{args.target}.zarr"
    large = ftdyn.analyze(large_store, out=args.out / "all", **options)
    agree, total, agree_reliable, reliable = overlap(small, large)
    metrics = {
        "images_small": int(ftdyn.open_store(small_store).sizes["sample"]),
        "images_all": int(ftdyn.open_store(large_store).sizes["sample"]),
        "cells_agreeing": agree,
        "cells": total,
        "cells_agreeing_reliable_at_both": agree_reliable,
        "cells_reliable_at_both": reliable,
    }
    for key, value in metrics.items():
        print(f"{key}: {value}")
    write_result("bench_probe_size", metrics, command_line())


if __name__ == "__main__":
    main()
