"""How closely ``analyze --memory-limit`` holds: peak RSS of the Dask work per view vs the limit.

Runs :mod:`bench_analyze` (a synthetic float16 store larger than the limit, one fresh
subprocess per view) and reports, for each view, the work's peak = the child's peak RSS
minus the baseline child's (the imported libraries, which the limit does not cover), and
that peak as a fraction of the limit (> 1: over the limit).

    python benchmarks/bench_memory_limit.py --size-gb 1.5 --memory-limit 512MB [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_analyze  # noqa: E402 - beside this script

from ftdyn.analysis.inputs import parse_memory  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.5)
    p.add_argument("--memory-limit", default="512MB")
    p.add_argument("--views", default="channels,filter,pooled,flat")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    result = bench_analyze.main(["--size-gb", str(a.size_gb), "--memory-limit", a.memory_limit, "--views", a.views])
    limit = parse_memory(a.memory_limit)
    rows = [{"view": r["view"], "work_peak_bytes": r["peak_minus_baseline_bytes"],
             "fraction_of_limit": r["peak_minus_baseline_bytes"] / limit, "seconds": r["seconds"],
             "threads": r["threads"]} for r in result["analyze"]]
    for r in rows:
        print(f"{r['view']:<9} work peak {r['work_peak_bytes'] / 1e6:7.0f} MB = {100 * r['fraction_of_limit']:5.1f} % "
              f"of --memory-limit {a.memory_limit} ({r['threads']} threads, {r['seconds']:.1f} s)")
    summary = {"memory_limit": a.memory_limit, "limit_bytes": limit, "store": result["store"],
               "baseline_maxrss_bytes": result["baseline_maxrss_bytes"], "views": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
