"""The documentation: it builds without warnings, and its generated pages agree with the code."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pages = _load(DOCS / "_ext" / "ftdyn_pages.py", "ftdyn_pages")


def test_schema_pages_match_code():
    from ftdyn import results, store

    store_text, store_problems = pages.store_schema()
    results_text, results_problems = pages.results_schema()
    assert store_problems == [] and results_problems == []
    for name in (*store.REQUIRED_ATTRS, store.IMAGES, store.COMPLETE, store.RANDOM_INIT):
        assert f"`{name}`" in store_text, name
    assert f"`{store.baseline_var('V')}`" in store_text
    for name in (
        *results.REQUIRED_VARS,
        *results.OPTIONAL_VARS,
        *results.REQUIRED_ATTRS,
        *results.OPTIONAL_ATTRS,
    ):
        assert f"`{name}`" in results_text, name
    for name in results.REQUIRED_COORDS:
        assert f"`{name}`" in results_text, name
    for name, columns, _ in results.TABLES:
        row = next(line for line in results_text.splitlines() if f"`{name}`" in line)
        assert all(f"`{column}`" in row for column in columns), name


def test_a_schema_name_without_description_is_reported(monkeypatch):
    monkeypatch.delitem(pages.RESULTS_VARIABLES, "ceiling")
    monkeypatch.setitem(pages.STORE_REQUIRED_ATTRS, "no_such_attr", "made up")
    assert pages.results_schema()[1] == [
        "results variable: 'ceiling' is in the code but not described"
    ]
    assert pages.store_schema()[1] == [
        "store attr: 'no_such_attr' is described but not in the code"
    ]


def test_layers_page_lists_every_module_of_the_architecture_test():
    from test_architecture import LAYERS

    text = pages.layers_page()
    for layer, modules in LAYERS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {layer} |"))
        assert all(f"`{module}`" in row for module in modules), layer
    names = [line.split("|")[1].strip() for line in text.splitlines()[2:]]
    assert names == [layer for layer, _ in reversed(LAYERS)]


def test_benchmark_results_and_their_page(tmp_path, monkeypatch):
    results_module = _load(ROOT / "benchmarks" / "_results.py", "bench_results")
    monkeypatch.setattr(results_module, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "bench_fast.py").write_text('write_result("bench_fast", {}, "")\n')
    (tmp_path / "bench_never_run.py").write_text('write_result("bench_never_run", {}, "")\n')
    (tmp_path / "helper.py").write_text("x = 1\n")
    (tmp_path / "_results.py").write_text("def write_result(name, metrics, command): ...\n")
    path = results_module.write_result(
        "bench_fast",
        {"speedup": 12.5, "rows": [{"case": "early", "ours_s": 0.25}]},
        "python benchmarks/bench_fast.py --quick",
    )
    record = json.loads(path.read_text())
    assert path == tmp_path / "results" / "bench_fast.json"
    assert record["command"] == "python benchmarks/bench_fast.py --quick"
    assert record["host"]["cores"] >= 1 and record["host"]["cpu"]
    assert record["commit"] and record["date"]

    text = pages.benchmark_page(tmp_path)
    fast, never = text.split("## `bench_never_run`")
    assert "python benchmarks/bench_fast.py --quick" in fast
    assert "| `speedup` | 12.5 |" in fast and "| early | 0.25 |" in fast
    assert "No results yet" in never
    assert "helper" not in text and "_results" not in text


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    for page in (
        "index",
        "walkthrough",
        "store-format",
        "results-format",
        "metrics",
        "interpreting",
        "reliability",
        "scaling",
        "demo",
        "api",
        "benchmarks",
        "architecture",
        "development",
        "changelog",
    ):
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api.html").read_text()
    for name in (
        "ftdyn.train",
        "ftdyn.analyze",
        "ftdyn.open_results",
        "ftdyn.metrics.pwsm",
        "ftdyn.metrics.cka_distance",
    ):
        assert f'id="{name}"' in api, name
    assert "distances.csv" in (out / "results-format.html").read_text()
