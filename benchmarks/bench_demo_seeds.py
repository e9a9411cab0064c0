"""Run the demo with several seeds and say which findings hold across them.

Each seed redraws the target datasets' images (and the train/val split) and the training
order. Prints, per seed and target, the fine-tuned accuracy, the epoch-0 linear probe of the
deepest layer and every metric's layer-wise distances at the last epoch, then a summary:
per (target, metric) in how many seeds early layers stay closer than deep ones and the
distances grow with depth, and per metric in how many seeds the targets drift in the
same order. Writes ``OUT/seeds.json``.

Run (about 3 x 5 minutes on 2 CPU cores; every seed resumes):
``python benchmarks/bench_demo_seeds.py --out seeds-out --seeds 0 1 2``
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from _results import command_line, write_result

from ftdyn.demos import demo


def run_seed(out: Path, seed: int, device: str, reuse: bool) -> dict:
    path = out / f"seed{seed}" / "results" / "findings.json"
    # a finished demo run of this seed, e.g. copied from an earlier measurement
    if reuse and path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    demo(out / f"seed{seed}", seed=seed, device=device, progress=False)
    found = json.loads(path.read_text())
    found["wall_s"] = round(time.perf_counter() - t0, 1)
    return found


def summarize(per_seed: dict[int, dict]) -> dict:
    holds: Counter = Counter()
    order: dict[str, Counter] = {}
    for found in per_seed.values():
        by_metric: dict[str, list] = {}
        for row in found["findings"]:
            key = f"{row['experiment'].split('/')[-1]} {row['metric']}"
            holds[key + " early<deep"] += row["early_closer_than_deep"]
            holds[key + " increasing"] += row["increasing_with_depth"]
            by_metric.setdefault(row["metric"], []).append(
                (row["reusability_mean"], row["experiment"])
            )
        for metric, rows in by_metric.items():
            ranking = " > ".join(e.split("/")[-1] for _, e in sorted(rows, reverse=True))
            order.setdefault(metric, Counter())[ranking] += 1
    return {
        "seeds": len(per_seed),
        "holds": dict(holds),
        "drift_order": {m: dict(c) for m, c in order.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("seeds-out"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--reuse", action="store_true", help="take OUT/seedN/results/findings.json when it exists"
    )
    args = p.parse_args()
    per_seed = {seed: run_seed(args.out, seed, args.device, args.reuse) for seed in args.seeds}
    for seed, found in per_seed.items():
        for name, info in found["targets"].items():
            deepest = list(info["linear_probe"])[-1]
            print(
                f"seed {seed} {name}: val acc {info['val_acc']:.3f} (chance {info['chance']:.3f}),"
                f" probe@0 {deepest} {info['linear_probe'][deepest]['epoch0']:.3f}"
            )
        for row in found["findings"]:
            print(
                f"seed {seed} {row['experiment']} {row['metric']}: "
                + " ".join(f"{v:.3f}" for v in row["layers"].values())
                + f" | reusability {row['reusability_mean']:.3f}±{row['reusability_std']:.3f}"
            )
    summary = summarize(per_seed)
    print(json.dumps(summary, indent=1))
    (args.out / "seeds.json").write_text(
        json.dumps({"per_seed": per_seed, "summary": summary}, indent=1)
    )
    write_result("bench_demo_seeds", summary, command_line())


if __name__ == "__main__":
    main()
