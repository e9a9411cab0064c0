"""Benchmark the extra cost of the interpretation (ceiling, convergence, paired bootstrap, probes).

On the given stores (e.g. the demo's ``demo-out/stores/*.zarr``, extracted with a random-init
baseline), runs ``ftdyn.analyze`` twice in this process, each into a fresh folder:

1. ``plain``: no bootstrap; the time of the interpretation steps inside it (the extra
   engine run on reference/last epoch/baseline with its nested subsets = ceiling +
   convergence, and the linear probes) is measured by wrapping those functions, so
   plain = total − those steps (what ``analyze`` cost before the interpretation existed);
2. ``interpreted``: the demo's settings, ``--bootstrap N --bootstrap-metric cka``.

Prints and (``--json``) writes the seconds of each part and the ratio interpreted / plain
(goal ≤ 1.5). Wall-clock times on a shared machine vary: run it once when the cores are
quiet, and report the load average printed with it.

    python benchmarks/bench_interpret.py demo-out/stores/*.zarr --bootstrap 100 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ftdyn
from ftdyn.analysis import interpret as AI
from ftdyn.analysis import plan as AP
from ftdyn.analysis import run as AR


class Timed:
    """Wrap ``module.name`` so that each call's wall time is added to ``self.seconds``."""

    def __init__(self, module, name: str):
        self.module, self.name, self.seconds = module, name, 0.0
        self.original = getattr(module, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(module, name, wrapper)

    def restore(self) -> None:
        setattr(self.module, self.name, self.original)


def run(stores: list[str], out: Path, **kw) -> dict:
    extra, probes = Timed(AR, "extra_pairs"), Timed(AI, "probes")
    try:
        t0 = time.perf_counter()
        ftdyn.analyze(stores, out=out, progress=False, overwrite=True, **kw)
        total = time.perf_counter() - t0
    finally:
        extra.restore()
        probes.restore()
    return {
        "total_s": round(total, 2),
        "ceiling_convergence_s": round(extra.seconds, 2),
        "probes_s": round(probes.seconds, 2),
        "core_s": round(total - extra.seconds - probes.seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument(
        "--bootstrap-metric", action="append", default=None, help="default: cka (the demo's)"
    )
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument(
        "--max-units",
        type=int,
        default=None,
        help="bootstrap groups of images (default: ftdyn's 32)",
    )
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-interpret-"))
    try:
        load = os.getloadavg()
        if a.max_units:
            AP.MAX_UNITS = a.max_units
        plain = (
            {"core_s": float("nan"), "total_s": float("nan")}
            if a.skip_plain
            else run(a.stores, tmp / "plain", memory_limit=a.memory_limit)
        )
        print("plain:", json.dumps(plain), flush=True)
        full = run(
            a.stores,
            tmp / "interpreted",
            memory_limit=a.memory_limit,
            bootstrap=a.bootstrap,
            bootstrap_metrics=a.bootstrap_metric or ["cka"],
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "stores": a.stores,
        "bootstrap": a.bootstrap,
        "max_units": a.max_units or AP.MAX_UNITS,
        "bootstrap_metrics": a.bootstrap_metric or ["cka"],
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        "plain": plain,
        "interpreted": full,
        "ratio_interpreted_over_plain": round(full["total_s"] / plain["core_s"], 2),
        "ratio_plain_with_interpretation_over_plain": round(plain["total_s"] / plain["core_s"], 2),
    }
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
