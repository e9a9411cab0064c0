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
