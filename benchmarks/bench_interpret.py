"""Benchmark the extra cost of the interpretation (ceiling, convergence, paired bootstrap, probes).

On the given stores (e.g. the demo's ``demo-out/stores/*.zarr``, extracted with a random-init
baseline), runs ``ftdyn.analyze`` in this process, each run into a fresh folder: a warm-up,
then per round

1. ``plain``: what ``analyze`` cost before the interpretation existed: no bootstrap, and the
   interpretation's parts of the computation switched off for this run only (the random-init
   baseline as one more checkpoint of the pass, the convergence check's own run for row-side
   views without groups of images and their groups in the main pass, the pooled features
   (kept by row-side leaves or read by tasks of their own) and the linear probes);
2. ``ceiling_only``: the same with the random-init baseline (item 1's ceiling) as one more
   checkpoint of every pass, as the interpreted run has it: the part of the cost that no plan
   can remove (one more distance per metric and layer), ≈ 1/(T−1) more pairs on a series of
   T checkpoints;
3. ``bootstrap_only``: plain with the demo's paired bootstrap (``--bootstrap N
   --bootstrap-metric cka``, 8 groups), to tell its share from the rest (the convergence
   subsets of the views with bootstrap groups are still evaluated there: they come with the
   groups' statistics);
4. ``interpreted``: the demo's settings, everything on.

``plain`` and ``interpreted`` are also timed as the ``ftdyn analyze`` command runs them by
default: the analysis, then ``report.html`` with its figures (``ftdyn.reporting.report``, as
the CLI calls it; ``--no-report`` leaves it out).

Prints and (``--json``) writes the wall-clock and CPU seconds of each part, the ratios
interpreted / plain of the analysis alone and of the command (analysis + report; the
goal: ≤ 1.5× the plain ``analyze`` time), and the CPU ratio ceiling_only / plain (the floor).
The warm-up (a plain run and its report, not measured) takes the start-up costs that the
first analysis and the first report in a process pay. Wall-clock times on a shared machine
vary: run it when the cores are quiet, report the load average printed with it, and use
``--repeat N`` (N rounds in alternating order; the ratios are the medians over the rounds,
every round kept). Like the CLI, it asks torch for transparent huge pages
(:func:`ftdyn.runtime.prefer_huge_pages`; ``THP_MEM_ALLOC_ENABLE=0`` in the environment: not).

    python benchmarks/bench_interpret.py demo-out/stores/*.zarr --repeat 3 [--json out.json]
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
from _results import command_line, write_result

import ftdyn
from ftdyn import runtime

runtime.prefer_huge_pages()  # as the CLI does, before torch loads

from ftdyn import demos
from ftdyn.analysis import interpret as AI
from ftdyn.analysis import plan as AP
from ftdyn.analysis import run as AR
from ftdyn.reporting import report


@contextlib.contextmanager
def without_interpretation(ceiling: bool = False):
    """The analysis as it was before the interpretation: no baseline among the checkpoints (with
    ``ceiling``: the baseline and its ceiling kept), no convergence run, no pooled features nor
    probes; NaN in their place (patched into ``ftdyn.analysis`` for the duration of the
    block)."""

    def nan(exps, args):
        layers = max(len(e.layers) for e in exps)
        return np.full((len(exps), len(args.metrics), layers, len(AP.NESTED_FRACTIONS)), np.nan)

    def layer_keys(exps):
        return [(e, l) for e, exp in enumerate(exps) for l in range(len(exp.layers))]

    def no_probes(exps, args, epochs, pooled):
        layers = max(len(e.layers) for e in exps)
        return {
            "probe_accuracy": np.full((len(exps), layers, len(epochs)), np.nan),
            "probe_accuracy_random_init": np.full((len(exps), layers), np.nan),
            "probe_chance": np.full(len(exps), np.nan),
        }

    no_ceiling = [
        (AR, "with_baseline", lambda exps: exps),
        (
            AR,
            "ceilings",
            lambda exps, engine, args, recs: {"ceiling": nan(exps, args)[..., 0], "missing": []},
        ),
    ]
    patches = [
        *([] if ceiling else no_ceiling),
        (AR, "convergence_plan", lambda exps, args, *rest: (exps, args, 1 << 30, [])),
        (AR, "convergence", lambda exps, args, *rest: nan(exps, args)),
        (AR, "build_pooled", lambda exps, jobs: dict.fromkeys(layer_keys(exps))),
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


def run(
    stores: list[str], out: Path, part: str = "interpreted", with_report: bool = False, **kw
) -> dict:
    """Time one analysis into ``out``: ``part`` "plain", "ceiling" (plain + the baseline's
    ceiling) or "interpreted" (everything the options ask for); ``with_report``: then the
    report of its results, as ``ftdyn analyze`` writes it (``command_*``: both)."""
    with (
        contextlib.nullcontext()
        if part == "interpreted"
        else without_interpretation(ceiling=part == "ceiling")
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        ftdyn.analyze(stores, out=out, progress=False, overwrite=True, **kw)
        # CPU seconds of all threads: less sensitive than wall time to a busy host
        times = {
            "total_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
        }
    if with_report:
        t1, c1 = time.perf_counter(), time.process_time()
        report(out, stores=stores)
        times["report_s"] = round(time.perf_counter() - t1, 2)
        times["report_cpu_s"] = round(time.process_time() - c1, 2)
        times["command_s"] = round(times["total_s"] + times["report_s"], 2)
        times["command_cpu_s"] = round(times["cpu_s"] + times["report_cpu_s"], 2)
    return times


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
        default=demos.BOOTSTRAP_GROUPS,
        help="groups of images of the bootstrap (default: the demo's)",
    )
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="time the analysis only, not the report that `ftdyn analyze` writes after it",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the runs (alternating their order; the ratios' medians are reported)",
    )
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    boot = {
        "bootstrap": a.bootstrap,
        "bootstrap_metrics": a.bootstrap_metric or list(demos.BOOTSTRAP_METRICS),
        "bootstrap_groups": a.bootstrap_groups,
    }
    load = os.getloadavg()
    warm_up(a)
    rounds = [one_round(a, boot, reverse=r % 2 == 1) for r in range(max(1, a.repeat))]
    result = {
        "stores": a.stores,
        **boot,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        **rounds[0],
        **summary(rounds),
    }
    if len(rounds) > 1:
        result["rounds"] = rounds
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    write_result("bench_interpret", result, command_line())


def warm_up(a) -> None:
    """One unmeasured plain run (and its report): the first analysis in a process also pays for
    opening the stores' arrays (kept open), the linear-algebra libraries' start-up and the OS's
    file cache, the first report for matplotlib's start-up, which would otherwise count against
    whichever run comes first."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-interpret-"))
    try:
        run(a.stores, tmp / "warm-up", "plain", a.report, memory_limit=a.memory_limit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def one_round(a, boot: dict, reverse: bool) -> dict:
    """The times of one round: plain, plain + the ceiling alone (item 1's baseline), plain + the
    paired bootstrap alone (item 3) and everything (items 1-4), each into a fresh folder (plain
    and everything with their reports unless ``--no-report``); in reverse order on alternate
    rounds, so that a host whose speed drifts favours neither side."""
    runs = [("interpreted", "interpreted", a.report, boot)]
    if not a.skip_plain:
        runs = [
            ("plain", "plain", a.report, {}),
            ("ceiling_only", "ceiling", False, {}),
            ("bootstrap_only", "plain", False, boot),
            *runs,
        ]
    times = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-interpret-"))
    try:
        for name, part, with_report, kw in reversed(runs) if reverse else runs:
            times[name] = run(
                a.stores, tmp / name, part, with_report, memory_limit=a.memory_limit, **kw
            )
            print(f"{name}:", json.dumps(times[name]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: times[name] for name, *_ in runs}


def summary(rounds: list[dict]) -> dict:
    """The ratios interpreted / plain (the analysis alone and, when timed, the command: analysis
    + report) and (the floor that no plan removes) ceiling_only / plain, in wall-clock and CPU
    seconds, medians over the rounds."""

    def ratio(name: str, key: str) -> float:
        values = [
            r.get(name, {}).get(key, np.nan) / r.get("plain", {}).get(key, np.nan) for r in rounds
        ]
        return round(float(np.median(values)), 2)

    ratios = {
        "ratio_interpreted_over_plain": ratio("interpreted", "total_s"),
        "cpu_ratio_interpreted_over_plain": ratio("interpreted", "cpu_s"),
        "cpu_ratio_ceiling_only_over_plain": ratio("ceiling_only", "cpu_s"),
    }
    if "command_s" in rounds[0].get("plain", {}):
        ratios["command_ratio_interpreted_over_plain"] = ratio("interpreted", "command_s")
        ratios["command_cpu_ratio_interpreted_over_plain"] = ratio("interpreted", "command_cpu_s")
    return ratios


if __name__ == "__main__":
    main()
