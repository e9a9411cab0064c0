"""The obvious bootstrap command at demo size: ``ftdyn analyze STORE --bootstrap 50`` with the
default metrics, its peak resident memory against the memory limit the plan used, wall-clock
and CPU time.

Runs the command as a child (through a small wrapper process, so that each run's peak RSS is its
own: ``ru_maxrss`` of the wrapper's children), once per ``--memory-limit`` given (``default``:
none, the plan's default of half the RAM), each into a fresh folder, and reads the limit and
thread count the plan used from the results (attrs ``memory_limit``, ``threads``). The goal
(issue #32): a peak within the limit, a few minutes on 2 cores.

    python benchmarks/bench_bootstrap.py demo-out/stores/photos.zarr --memory-limit default 2GB
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results beside this script
import xarray as xr
from _results import command_line, run_measured, write_result


def measure(store: str, limit: str, bootstrap: int, out: Path) -> dict:
    """One run of ``ftdyn analyze`` into ``out``: its peak RSS, times, and the plan's limit."""
    command = [sys.executable, "-m", "ftdyn", "analyze", store, "-o", str(out), "--no-progress"]
    command += ["--bootstrap", str(bootstrap)]
    if limit != "default":
        command += ["--memory-limit", limit]
    result, proc = run_measured(command)
    if result["code"] != 0:
        raise SystemExit(f"analyze failed:\n{proc.stderr[-3000:]}")
    with xr.open_zarr(out / "results.zarr") as ds:
        planned, threads = int(ds.attrs["memory_limit"]), int(ds.attrs["threads"])
    return {
        "memory_limit": limit,
        "planned_limit_bytes": planned,
        "threads": threads,
        "peak_rss_bytes": result["maxrss_bytes"],
        "peak_over_limit": round(result["maxrss_bytes"] / planned, 3),
        "wall_s": round(result["seconds"], 1),
        "cpu_s": round(result["cpu_s"], 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="one activation store (the demo's: 336 images)")
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument(
        "--memory-limit", nargs="+", default=["default"], help="limits to run ('default': none)"
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftdyn-bootstrap-") as tmp:
        for i, limit in enumerate(args.memory_limit):
            row = measure(args.store, limit, args.bootstrap, Path(tmp) / f"run{i}")
            print(
                f"--memory-limit {limit}: peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB ="
                f" {100 * row['peak_over_limit']:.0f} % of the planned"
                f" {row['planned_limit_bytes'] / 1e9:.2f} GB ({row['threads']} threads),"
                f" {row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} CPU s",
                flush=True,
            )
            rows.append(row)
    summary = {
        "store": Path(args.store).name,
        "bootstrap": args.bootstrap,
        "runs": rows,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    write_result("bench_bootstrap", summary, command_line())
    return summary


if __name__ == "__main__":
    main()
