"""Benchmark the extra cost of the interpretation (ceiling, convergence, paired bootstrap, probes).

On the given stores (e.g. the demo's ``demo-out/stores/*.zarr``, extracted with a random-init
baseline), runs ``ftdyn.analyze`` three times in this process, each into a fresh folder:

1. ``plain``: what ``analyze`` cost before the interpretation existed: no bootstrap, and the
   interpretation's parts of the computation switched off for this run only (the random-init
   baseline as one more checkpoint of the pass, the convergence check's own run for row-side
   views without groups of images and their groups in the main pass, the pooled features
   (kept by row-side leaves or read by tasks of their own) and the linear probes);
2. ``bootstrap_only``: the same with the demo's paired bootstrap (``--bootstrap N
   --bootstrap-metric cka``, 8 groups), to tell its share from the rest (the convergence
   subsets of the views with bootstrap groups are still evaluated there: they come with the
   groups' statistics);
3. ``interpreted``: the demo's settings, everything on.

Prints and (``--json``) writes the wall-clock and CPU seconds of each part and the ratios
interpreted / plain (goal ≤ 1.5). Wall-clock times on a shared machine vary: run it when the
cores are quiet, and report the load average printed with it.

    python benchmarks/bench_interpret.py demo-out/stores/*.zarr --bootstrap 100 [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import ftdyn
from ftdyn import demos as D
from ftdyn.analysis import interpret as AI
from ftdyn.analysis import plan as AP
from ftdyn.analysis import run as AR


@contextlib.contextmanager
def without_interpretation():
    """The analysis as it was before the interpretation: no baseline among the checkpoints, no
    convergence run, no pooled features nor probes; NaN in their place (patched into
    ``ftdyn.analysis`` for the duration of the block)."""

    def nan(exps, args):
        layers = max(len(e.layers) for e in exps)
        return np.full((len(exps), len(args.metrics), layers, len(AP.NESTED_FRACTIONS)), np.nan)

    def layers(exps):
        return [(e, l) for e, exp in enumerate(exps) for l in range(len(exp.layers))]

    def no_probes(exps, args, epochs, pooled):
        layers = max(len(e.layers) for e in exps)
        return {
            "probe_accuracy": np.full((len(exps), layers, len(epochs)), np.nan),
            "probe_accuracy_random_init": np.full((len(exps), layers), np.nan),
            "probe_chance": np.full(len(exps), np.nan),
        }

    patches = [
        (AR, "with_baseline", lambda exps: exps),
        (AR, "convergence_plan", lambda exps, args, *rest: (exps, args, 1 << 30, [])),
        (
            AR,
            "ceilings",
            lambda exps, engine, args, recs: {"ceiling": nan(exps, args)[..., 0], "missing": []},
        ),
        (AR, "convergence", lambda exps, args, *rest: nan(exps, args)),
        (AR, "build_pooled", lambda exps, jobs: dict.fromkeys(layers(exps))),
        (AP, "NESTED_IN_PASS", False),
        (AP, "POOLED_IN_PASS", False),
        (AI, "probes", no_probes),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, func in patches:
            setattr(module, name, func)
        yield
    finally:
        for module, name, func in saved:
            setattr(module, name, func)


def run(stores: list[str], out: Path, plain: bool = False, **kw) -> dict:
    with without_interpretation() if plain else contextlib.nullcontext():
        t0, c0 = time.perf_counter(), time.process_time()
        ftdyn.analyze(stores, out=out, progress=False, overwrite=True, **kw)
        # CPU seconds of all threads: less sensitive than wall time to a busy host
        return {
            "total_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
        }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--bootstrap-metric", action="append", default=None, help="default: the demo's")
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument(
        "--bootstrap-groups",
        type=int,
        default=D.BOOTSTRAP_GROUPS,
        help="groups of images of the bootstrap (default: the demo's)",
    )
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-interpret-"))
    boot = {
        "bootstrap": a.bootstrap,
        "bootstrap_metrics": a.bootstrap_metric or list(D.BOOTSTRAP_METRICS),
        "bootstrap_groups": a.bootstrap_groups,
    }
    times = {}
    try:
        load = os.getloadavg()
        # plain; plain + the paired bootstrap alone (item 3); everything (items 1-4)
        for name, plain, kw in [("plain", True, {}), ("bootstrap_only", True, boot)]:
            if not a.skip_plain:
                times[name] = run(a.stores, tmp / name, plain, memory_limit=a.memory_limit, **kw)
                print(f"{name}:", json.dumps(times[name]), flush=True)
        times["interpreted"] = run(a.stores, tmp / "full", memory_limit=a.memory_limit, **boot)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plain_s = times.get("plain", {}).get("total_s", float("nan"))
    result = {
        "stores": a.stores,
        **boot,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        **times,
        "ratio_interpreted_over_plain": round(times["interpreted"]["total_s"] / plain_s, 2),
        "cpu_ratio_interpreted_over_plain": round(
            times["interpreted"]["cpu_s"] / times.get("plain", {}).get("cpu_s", float("nan")), 2
        ),
    }
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
