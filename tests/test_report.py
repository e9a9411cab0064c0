"""The HTML report: content, self-containment, and a real headless Chromium load + screenshot."""

import csv
import re
import subprocess

import pytest
from helpers import (
    EXPERIMENTS,
    HEADLESS_FLAGS,
    METRICS,
    chromium_path,
    make_figure_store,
    make_results,
    png_shape,
)
from typer.testing import CliRunner

from ftdyn.reporting import CSP, report
from ftdyn.results import save_results_store
from ftdyn.viz import read_index


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store with a manifest, results naming it, an agreement CSV; the report built from the
    folder alone."""
    root = tmp_path_factory.mktemp("report")
    store, _, _ = make_figure_store(root / "toy.zarr")
    results_dir = root / "results"
    save_results_store(make_results(store_paths=(store, "")), results_dir / "results.zarr")
    with (results_dir / "agreement_summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric_a", "metric_b", "mean_r", "std_r", "n"])
        w.writerow(["procrustes", "pwsm", "0.8312", "0.4301", "3"])
    path = report(results_dir)
    return {
        "root": root,
        "store": store,
        "results": results_dir,
        "path": path,
        "html": path.read_text(),
    }


def test_report_sections_tables_and_figures(built):
    page, figdir = built["html"], built["results"] / "figures"
    assert built["path"] == built["results"] / "report.html"
    for sid in (
        "experiments",
        "accuracy",
        "reusability",
        "agreement",
        "curves",
        "trajectories",
        "class-based",
        "sample-based",
        "method",
    ):
        assert f'<section id="{sid}">' in page
    # Table 1 from the store's manifest: epoch 0 val acc 40 %, last epoch (2) train 70 %, val 60 %
    table1 = page[page.index('id="accuracy"') : page.index('id="reusability"')]
    assert "40.0 %" in table1 and "70.0 %" in table1 and "60.0 % (epoch 2)" in table1
    assert "toynet/fruits" not in table1  # no store for it: no accuracies invented
    assert "±" in page[page.index('id="reusability"') : page.index('id="agreement"')]
    agreement = page[page.index('id="agreement"') : page.index('id="curves"')]
    assert (
        "0.831" in agreement
        and "agreement_summary.csv" in agreement
        and "r(pwsm, cka)" in agreement
    )
    # every figure in the index is embedded, numbered and captioned; default figures came from the
    # stores in results
    entries = [e for e in read_index(figdir) if e["kind"] != "note"]
    assert {e["kind"] for e in entries} == {"curves", "by_layer", "trajectory", "class", "sample"}
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == len(entries) and all(
        s.startswith("data:image/png;base64,") for s in images
    )
    assert page.count("<figcaption><b>Figure ") == len(entries)
    assert 'href="figures/distance_curves.svg"' in page
    cls = {e["file"]: e for e in entries}["class_toy_features_8.png"]["caption"]
    assert "from the results" in cls  # filters ranked by the results' per-filter distances
    assert "reference epoch 0" in page.lower() and "preset paper" in page
    # self-contained: a CSP that forbids loading anything, no scripts, no remote URLs
    assert f'content="{CSP}"' in page and "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


@pytest.mark.slow
def test_report_in_headless_chromium(built, tmp_path):
    exe = chromium_path()
    if exe is None:
        pytest.skip(
            "chromium not installed: install it with `apt-get install -y chromium` (Debian package)"
            " to load the report in a real browser"
        )
    flags = [
        exe,
        *HEADLESS_FLAGS,
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ]

    def run(*args, profile):
        proc = subprocess.run(
            [*flags, f"--user-data-dir={tmp_path / profile}", *args],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    # 1. the report as written: screenshot; the page has no script, so any console line is a browser
    #    complaint (blocked or failed load, CSP violation)
    shot = tmp_path / "report.png"
    proc = run(
        f"--screenshot={shot}", "--window-size=1280,4000", built["path"].as_uri(), profile="p1"
    )
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    assert shot.is_file() and png_shape(shot)[:2] == (4000, 1280)
    # 2. a copy with a check script: count images that did not decode, record errors, into the DOM
    check = """<script>
      window.__errors = [];
      addEventListener("error", e => __errors.push(String(e.message || (e.target && e.target.src ||
      "").slice(0, 60))),
        true);
      const err = console.error; console.error = (...a) => {
        __errors.push(a.join(" ")); err(...a); };
      addEventListener("load", () => {
        const imgs = [...document.images];
        const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
        document.body.setAttribute("data-images", imgs.length);
        document.body.setAttribute("data-broken", broken);
        document.body.setAttribute("data-errors", __errors.length);
        document.body.setAttribute("data-height", document.documentElement.scrollHeight);
      });
    </script>"""
    page = (
        built["html"]
        .replace(CSP, CSP + "; script-src 'unsafe-inline'")
        .replace("<head>", "<head>" + check, 1)
    )
    probe = built["path"].with_name("report_check.html")
    probe.write_text(page)
    try:
        proc = run("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile="p2")
    finally:
        probe.unlink()
    body = re.search(r"<body([^>]*)>", proc.stdout).group(1)
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body))
    assert int(attrs["images"]) == built["html"].count("<img ") > 10
    assert attrs["broken"] == "0" and attrs["errors"] == "0"
    assert int(attrs["height"]) > 4000
    print(f"screenshot: {shot}")


def test_report_without_stores_elsewhere_via_cli(tmp_path):
    """No store anywhere: no accuracies, no class/sample figures, still a complete page in
    another folder."""
    from ftdyn.cli import app

    results_dir = tmp_path / "results"
    save_results_store(
        make_results(experiments=EXPERIMENTS[:1], metrics=METRICS[:2], bootstrap=0),
        results_dir / "results.zarr",
    )
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(results_dir), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "site" / "report.html").read_text()
    assert result.output.strip() == str(tmp_path / "site" / "report.html")
    assert "No activation store was given or found" in page
    assert page.count("<figure ") == 2 + 2  # curves, by layer, 2 trajectory matrices
    assert page.count('<p class="empty">None.</p>') == 2  # no class-based, no sample-based figures
    # summary computed from agreement_r
    assert "agreement_summary.csv" not in page and "0.900" in page
    result = runner.invoke(
        app, ["report", str(results_dir), "--store", str(tmp_path / "nope.zarr")]
    )
    assert result.exit_code == 2 and "ftdyn: error: --store" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "run `ftdyn analyze` first" in result.output


@pytest.mark.parametrize("damage", ["index", "chunk"])
def test_report_on_damaged_results_is_one_line(tmp_path, damage):
    """A corrupt results index or chunk: one line naming the folder and saying to re-run analyze, no
    traceback."""
    from ftdyn.cli import app

    results_dir = tmp_path / "results"
    save_results_store(
        make_results(experiments=EXPERIMENTS[:1], metrics=METRICS[:1]), results_dir / "results.zarr"
    )
    if damage == "index":
        (results_dir / "results.zarr" / "zarr.json").write_text("garbage\n")
    else:
        chunk = next(
            p for p in (results_dir / "results.zarr" / "distance" / "c").rglob("*") if p.is_file()
        )
        chunk.write_bytes(b"xx")
    result = CliRunner().invoke(app, ["report", str(results_dir)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(
        f"ftdyn: error: {results_dir}: damaged results"
    )
    assert "re-run `ftdyn analyze`" in result.output
    assert not (results_dir / "report.html").exists() and not (results_dir / "figures").exists()


def test_report_out_must_be_a_folder_outside_zarr_stores(tmp_path):
    """--out an existing file, or inside an activation or results store: one line, nothing written
    anywhere."""
    from ftdyn.cli import app

    store, _, _ = make_figure_store(tmp_path / "toy.zarr")
    results_dir = tmp_path / "results"
    save_results_store(
        make_results(experiments=EXPERIMENTS[:1], metrics=METRICS[:1], store_paths=(store,)),
        results_dir / "results.zarr",
    )
    afile = tmp_path / "afile"
    afile.write_text("x")
    before = sorted(tmp_path.rglob("*"))
    runner = CliRunner()
    for out, says in [
        (afile, f"{afile} is a file, not a folder"),
        (afile / "site", f"{afile} is a file"),
        (store, f"inside the Zarr store {store}"),
        (store / "site", f"inside the Zarr store {store}"),
        (results_dir / "results.zarr", "inside the Zarr store"),
    ]:
        result = runner.invoke(app, ["report", str(results_dir), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith(
            f"ftdyn: error: --out {out}: "
        )
        assert says in result.output
    assert sorted(tmp_path.rglob("*")) == before and afile.read_text() == "x"
    # given results.zarr itself, the report goes beside it, not into the store
    result = runner.invoke(app, ["report", str(results_dir / "results.zarr")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(results_dir / "report.html")
    assert (results_dir / "figures" / "figures.json").is_file()
    assert sorted(p.name for p in (results_dir / "results.zarr").iterdir()) == sorted(
        p.name for p in before if p.parent == results_dir / "results.zarr"
    )


def test_report_refuses_a_store_not_among_the_results(tmp_path):
    from ftdyn.cli import app

    store, _, _ = make_figure_store(tmp_path / "toy.zarr")
    other, _, _ = make_figure_store(tmp_path / "other.zarr", epochs=(0, 1))
    results_dir = tmp_path / "results"
    save_results_store(
        make_results(experiments=EXPERIMENTS[:1], metrics=METRICS[:1], store_paths=(store,)),
        results_dir / "results.zarr",
    )
    runner = CliRunner()
    result = runner.invoke(
        app, ["report", str(results_dir), "--store", str(store), "--store", str(other)]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(
        f"ftdyn: error: --store {other}: not among the experiments of {results_dir} "
        f"[toynet/shapes ({store})]"
    )
    assert sorted(p.name for p in results_dir.iterdir()) == ["results.zarr"]
    result = runner.invoke(app, ["report", str(results_dir), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert {e["store"] for e in read_index(results_dir / "figures") if e["kind"] == "class"} == {
        str(store)
    }


@pytest.mark.slow
def test_stores_with_the_same_folder_name_keep_their_own_figures(tmp_path):
    """sA/s.zarr and sB/s.zarr: distinct figure files, both experiments' figures in the report."""
    sa, _, _ = make_figure_store(tmp_path / "sA" / "s.zarr")
    sb, _, _ = make_figure_store(tmp_path / "sB" / "s.zarr", epochs=(0, 1))
    results_dir = tmp_path / "results"
    save_results_store(
        make_results(metrics=METRICS[:1], store_paths=(sa, sb)), results_dir / "results.zarr"
    )
    page = report(results_dir).read_text()
    entries = [e for e in read_index(results_dir / "figures") if e["kind"] in ("class", "sample")]
    assert {(e["experiment"], e["store"]) for e in entries} == {
        ("toynet/shapes", str(sa)),
        ("toynet/fruits", str(sb)),
    }
    files = [e["file"] for e in entries if e["kind"] == "class"]
    assert len(files) == len(set(files)) == 4 and "class_s_features_3.png" in files
    assert all((results_dir / "figures" / f).is_file() for f in files)
    for kind in ("class-based", "sample-based"):
        section = page[page.index(f'<section id="{kind}">') :]
        section = section[: section.index("</section>")]
        assert "<summary>toynet/shapes (" in section and "<summary>toynet/fruits (" in section
    assert page.count("<img ") == len(read_index(results_dir / "figures")) - sum(
        e["kind"] == "note" for e in read_index(results_dir / "figures")
    )
    # re-made for one store: the same files are replaced, none added
    before = sorted(p.name for p in (results_dir / "figures").iterdir())
    report(results_dir, stores=[sb])
    assert sorted(p.name for p in (results_dir / "figures").iterdir()) == before
