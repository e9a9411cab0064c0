"""Where the benchmarks leave their numbers: ``benchmarks/results/<name>.json``.

Each file holds one run's values with what is needed to judge them (the host, the code's
commit, the date and the command); ``docs/benchmarks.md`` shows them as tables, so the
documentation quotes measured files rather than numbers copied by hand.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = RESULTS_DIR.parents[1]

#: runs the command as its child and prints its wall, CPU seconds and peak RSS (resource's
#: children), so that each measured run's peak is its own and not the benchmark's
_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
used = resource.getrusage(resource.RUSAGE_CHILDREN)
print("RESULT " + json.dumps({"code": code, "seconds": time.perf_counter() - start,
      "cpu_s": used.ru_utime + used.ru_stime, "maxrss_bytes": used.ru_maxrss * 1024}))
"""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=RESULTS_DIR.parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip() or "unknown"


def run_measured(command: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``command`` (with this checkout first on the path) through a wrapper process; returns
    its exit ``code``, wall ``seconds``, ``cpu_s`` and peak ``maxrss_bytes``, and the wrapper's
    completed process (the command's stderr is its ``stderr``)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT ") :]) if lines else {"code": proc.returncode}
    return result, proc


def command_line() -> str:
    """The command that started this script, as a user would type it again."""
    return " ".join(["python", *sys.argv])


def write_result(name: str, metrics: dict, command: str) -> Path:
    """Write ``metrics`` (JSON-serializable values) of benchmark ``name`` to
    ``benchmarks/results/<name>.json`` with the host, commit, date and ``command``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    record = {
        "name": name,
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "host": {"cpu": _cpu_model(), "cores": os.cpu_count()},
        "metrics": metrics,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path
