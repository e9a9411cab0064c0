"""The whole demo's cost: wall-clock, CPU time and peak memory of ``ftdyn demo OUT``, and the
time of each of its stages (fine-tuning and extraction of the runs, the analysis, the figures
and reports), read from the stage lines the demo logs.

Runs the command as a child (through a small wrapper process, so the peak RSS is the demo's own)
into ``--out``, which must not hold an earlier run: every stage of the demo resumes, so a
finished folder would time nothing. The goal (issue #33): about 5 minutes on 2 cores.

    python benchmarks/bench_demo.py --out demo-bench
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _results beside this script
from _results import command_line, run_measured, write_result

#: a stage line: "ftdyn: [demo   46.6s] analyzing the 6 stores together"
STAGE_LINE = re.compile(r"\[demo\s+([0-9.]+)s\] (.*)")
#: the stages reported, by the first words of the line that starts them
STAGES = {
    "preparing": "data_s",
    "fine-tuning": "train_and_extract_s",
    "analyzing": "analysis_s",
    "drawing": "report_s",
}


def stage_seconds(log: str) -> dict[str, float]:
    """Seconds per stage from the demo's stage lines: each stage lasts until the next one
    starts (the training and extraction lines of all runs count as one stage)."""
    marks = [(float(m[1]), m[2]) for m in STAGE_LINE.finditer(log)]
    seconds: dict[str, float] = {}
    for (start, text), (end, _) in itertools.pairwise(marks):
        key = next((k for w, k in STAGES.items() if text.startswith(w)), "train_and_extract_s")
        seconds[key] = round(seconds.get(key, 0.0) + end - start, 1)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="a new folder for the demo")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} is not empty: the demo would resume, not run")
    result, proc = run_measured([sys.executable, "-m", "ftdyn", "demo", str(args.out)])
    if result["code"] != 0:
        raise SystemExit(f"the demo failed:\n{proc.stderr[-3000:]}")
    findings = json.loads((args.out / "results" / "findings.json").read_text())
    summary = {
        "wall_s": round(result["seconds"], 1),
        "cpu_s": round(result["cpu_s"], 1),
        "peak_rss_bytes": result["maxrss_bytes"],
        **stage_seconds(proc.stderr),
        "runs": len(findings["targets"]),
        "probe_images": findings["size"]["n_classes"] * findings["size"]["probe_per_class"],
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"demo: {summary['wall_s']:.0f} s wall, {summary['cpu_s']:.0f} CPU s, peak RSS"
        f" {summary['peak_rss_bytes'] / 1e9:.2f} GB; "
        + ", ".join(f"{k} {summary[k]:.0f}" for k in STAGES.values() if k in summary)
    )
    write_result("bench_demo", summary, command_line())
    return summary


if __name__ == "__main__":
    main()
