"""How closely ``analyze --memory-limit`` holds: peak RSS of the analysis per view vs the limit.

Generates a small synthetic float16 store (the one of :mod:`bench_analyze`) and runs, for each
view, one fresh subprocess with ``--memory-limit`` and (``--unlimited``, to show the limit
binds) one without. Reports the analysis's peak = the child's peak RSS (``ru_maxrss``) minus
the baseline child's (a process that only imports what analyze imports: the libraries, which
the limit does not cover), and that peak as a fraction of the limit (> 1: over the limit).

    python benchmarks/bench_memory_limit.py --size-gb 0.4 --memory-limit 256MB [--json out.json]

A few minutes on 2 CPU cores with the defaults (the store is ~3x the limit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import command_line, write_result  # beside this script
from bench_analyze import ANALYZE, BASELINE, ROOT, run_child  # beside this script

from ftdyn.config import parse_memory

METRICS = {
    "channels": ["pwsm"],
    "filter": ["procrustes", "cka"],
    "flat": ["cka"],
    "pooled": ["pwsm"],
}
UNLIMITED = None  # the default, half the machine's memory: far above what these runs want


def _generate(folder: Path, size_gb: float, shape: str, samples_per_chunk: int) -> dict:
    gen = [
        sys.executable,
        str(Path(__file__).with_name("bench_analyze.py")),
        "--generate-only",
        "--dir",
        str(folder),
        "--size-gb",
        str(size_gb),
        "--shape",
        shape,
        "--samples-per-chunk",
        str(samples_per_chunk),
    ]
    # a child: keeps this process's RSS small
    proc = subprocess.run(gen, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"store generation failed:\n{proc.stderr[-3000:]}")
    return json.loads(
        [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:]
    )


def _peak(
    store: Path, out: Path, view: str, limit: str | None, workers: int, baseline: int
) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # never measure an "up to date" re-run
    r = run_child(
        ANALYZE.format(
            root=str(ROOT), args=(str(store), str(out), view, METRICS[view], limit, workers, "cpu")
        )
    )
    return {
        "work_peak_bytes": r["maxrss_bytes"] - baseline,
        "seconds": r["seconds"],
        "threads": r["threads"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--size-gb",
        type=float,
        default=0.4,
        help="uncompressed float16 activations (4 checkpoints)",
    )
    p.add_argument("--shape", default="128,28,28", help="layer C,H,W")
    p.add_argument(
        "--samples-per-chunk",
        type=int,
        default=40,
        help="8 MB chunks with the default shape, so a small limit can be planned for",
    )
    p.add_argument("--memory-limit", default="256MB")
    p.add_argument("--views", default="channels,filter,pooled,flat")
    p.add_argument("--workers", type=int, default=None, help="default: CPU count")
    p.add_argument(
        "--unlimited", action="store_true", help="also run each view without --memory-limit"
    )
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    limit, workers = parse_memory(a.memory_limit), a.workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ftdyn-memlimit-") as tmp:
        info = _generate(Path(tmp), a.size_gb, a.shape, a.samples_per_chunk)
        store = Path(tmp) / "bench.zarr"
        baseline = run_child(BASELINE.format(root=str(ROOT), device="cpu"))["maxrss_bytes"]
        print(
            f"store: {info['activation_bytes'] / 1e6:.0f} MB of activations, {info['samples']}"
            f" samples, {info['chunks']} chunks; baseline process {baseline / 1e6:.0f} MB",
            flush=True,
        )
        rows = []
        for view in a.views.split(","):
            row = {
                "view": view,
                **_peak(store, Path(tmp) / "out", view, a.memory_limit, workers, baseline),
            }
            row["fraction_of_limit"] = row["work_peak_bytes"] / limit
            if a.unlimited:
                row["unlimited_work_peak_bytes"] = _peak(
                    store, Path(tmp) / "out", view, UNLIMITED, workers, baseline
                )["work_peak_bytes"]
            rows.append(row)
            free = (
                f"; without the limit {row['unlimited_work_peak_bytes'] / 1e6:.0f} MB"
                if a.unlimited
                else ""
            )
            print(
                f"{view:<9} work peak {row['work_peak_bytes'] / 1e6:6.0f} MB ="
                f" {100 * row['fraction_of_limit']:5.1f} % of --memory-limit {a.memory_limit}"
                f" ({row['threads']} threads, {row['seconds']:.1f} s){free}",
                flush=True,
            )
    summary = {
        "memory_limit": a.memory_limit,
        "limit_bytes": limit,
        "store": info,
        "baseline_maxrss_bytes": baseline,
        "views": rows,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    write_result("bench_memory_limit", summary, command_line())
    return summary


if __name__ == "__main__":
    main()
