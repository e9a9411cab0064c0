"""The cost of the corrected estimators against the plug-in ones on the same stores.

Runs ``ftdyn.analyze`` on the given stores (e.g. the demo's ``demo-out/stores/*.zarr``) with the
demo's analysis settings (default preset, ``--bootstrap 100 --bootstrap-metric cka`` in 8
groups, 1 GB memory limit), once with ``estimator="plugin"`` and once with
``estimator="corrected"``, alternating over ``--repeat`` rounds after a warm-up, each run into a
fresh folder, and reports the wall-clock and CPU seconds of each and their ratio (the goal:
corrected ≤ 2× plug-in). The analysis alone: no figures, no report.

    python benchmarks/bench_estimators.py demo-out/stores/*.zarr --repeat 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results beside this script
from _results import command_line, write_result

import ftdyn

SETTINGS = dict(bootstrap=100, bootstrap_metrics=["cka"], bootstrap_groups=8)


def timed(stores: list[str], estimator: str, folder: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one analysis."""
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ftdyn.analyze(
            stores,
            out=folder,
            progress=False,
            estimator=estimator,
            memory_limit="1GB",
            **SETTINGS,
        )
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    runs: dict[str, list[tuple[float, float]]] = {"plugin": [], "corrected": []}
    with tempfile.TemporaryDirectory() as tmp:
        timed(args.stores, "plugin", Path(tmp) / "warm-up")
        for r in range(args.repeat):
            order = ("plugin", "corrected") if r % 2 == 0 else ("corrected", "plugin")
            for estimator in order:
                runs[estimator].append(timed(args.stores, estimator, Path(tmp) / f"{estimator}{r}"))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    metrics = {
        "wall_s_plugin": round(wall["plugin"], 1),
        "wall_s_corrected": round(wall["corrected"], 1),
        "cpu_s_plugin": round(cpu["plugin"], 1),
        "cpu_s_corrected": round(cpu["corrected"], 1),
        "wall_ratio_corrected_over_plugin": round(wall["corrected"] / wall["plugin"], 2),
        "cpu_ratio_corrected_over_plugin": round(cpu["corrected"] / cpu["plugin"], 2),
        "rounds": args.repeat,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for key, value in metrics.items():
        print(f"{key}: {value}")
    write_result("bench_estimators", metrics, command_line())


if __name__ == "__main__":
    main()
