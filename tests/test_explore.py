"""The interactive report (explore.html): what it holds, its cap on filters, and a real headless
Chromium driving it offline (slider, layer drill-down, enlarged filter, sorting)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import Browser, chromium_path, make_figure_store, make_results
from typer.testing import CliRunner

from ftdyn.config import ReportConfig
from ftdyn.errors import FtdynError
from ftdyn.reporting import EXPLORE_CSP, EXPLORE_NAME, report
from ftdyn.reporting.explore import plan_galleries, write_explore
from ftdyn.reporting.sections import _store_summaries, paired_tests_table
from ftdyn.results import open_results, save_results_store

REASON = "12.00 columns per row in the channels view"


def _results(store: Path):
    """make_results with pwsm unreliable in features.8 of the first experiment, and a floor."""
    res = make_results(store_paths=(store, ""))
    odd = np.zeros((2, 3, 2), dtype=bool)
    odd[0, 1, 1] = True
    return res.assign(
        unreliable=(("experiment", "metric", "layer_index"), odd),
        floor=xr.full_like(res["distance"], 0.004),
    ).assign_attrs(unreliable_reasons=json.dumps({"toynet/shapes/pwsm/features.8": REASON}))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    store, _, _ = make_figure_store(root / "toy.zarr")
    save_results_store(_results(store), root / "results" / "results.zarr")
    report(root / "results")
    page = (root / "results" / EXPLORE_NAME).read_text()
    return {"root": root, "store": store, "results": root / "results", "page": page}


def _cells(page: str, metric: str) -> str:
    """The heatmap of the first experiment's ``metric``."""
    start = page.index(f"<h4>{metric}: distance</h4>")
    return page[start : page.index("</table>", start)]


def test_explore_is_one_self_contained_page(built):
    page, static = built["page"], (built["results"] / "report.html").read_text()
    assert f'content="{EXPLORE_CSP}"' in page and "connect-src" not in EXPLORE_CSP
    assert not re.search(r'(src|href)="(https?:)?//', page) and "http://" not in page
    thumbs = json.loads(
        re.search(r'<script type="application/json" id="thumbs">(.*?)</script>', page).group(1)
    )
    assert thumbs and all(t.startswith("data:image/webp;base64,") for t in thumbs)
    assert f'<a href="{EXPLORE_NAME}">interactive report</a>' in static  # the static one links
    # one slider over the results' epochs, starting at the last
    assert 'type="range" id="epoch" min="0" max="3" value="3"' in page
    assert 'data-epochs="0 1 2 3"' in page


def test_overview_marks_unreliable_cells_and_shows_the_interval_and_floor(built):
    pwsm = _cells(built["page"], "pwsm")
    rows = pwsm.split("<tr>")[2:]  # features.3, features.8
    assert rows[0].count('class="value"') == 4 and "unreliable" not in rows[0]
    # never an ordinary cell: hatched, no number; the hover says why
    assert rows[1].count('class="unreliable"') == 4 and 'class="value"' not in rows[1]
    assert f"unreliable: {REASON}" in rows[1]
    # hover of a cell: value, bootstrap interval and the floor the results hold
    title = re.search(r'data-col="2" data-drill="0-0"[^>]*title="([^"]*)"', pwsm).group(1)
    distance = 0.05 * np.sqrt(2) * 1.2  # make_results' features.3 pwsm value at epoch 2
    assert f"distance {distance:.3f} [{distance - 0.01:.3f}, {distance + 0.01:.3f}]" in title
    assert "floor 0.004" in title and "ceiling" not in title  # no ceiling in these results
    # the curve of the unreliable layer: grey dashed segments, hollow markers
    curves = built["page"][built["page"].index("<h4>pwsm: distance per layer</h4>") :]
    curves = curves[: curves.index("</svg>")]
    # 3 segments, its legend entry and the legend's "unreliable" entry
    assert curves.count('<line class="unreliable"') == 3 + 2
    assert 'class="unreliable" cx=' in curves and 'fill="none"' in curves


def test_layer_view_has_the_histogram_and_the_most_changed_and_stable_filters(built):
    page = built["page"]
    drill = page[page.index('id="drill-0-0"') : page.index('id="drill-0-1"')]
    # cka's per-filter distances 0.1, 0.2, 0.9 (x the layer's value), filter 3 dead: 2 | 1 | 0
    changed = drill[drill.index("Most changed") : drill.index("Most stable")]
    stable = drill[drill.index("Most stable") :]
    assert re.findall(r"<figcaption>filter (\d) ·", changed) == ["2", "1"]
    assert re.findall(r"<figcaption>filter (\d) ·", stable) == ["0"]
    assert "largest per-filter cka distance" in drill and "1 undefined" in drill
    # per card: 2 classes and 2 samples, each with one thumbnail per store epoch (0, 1, 2)
    assert drill.count('class="row"') == 3 * 4
    assert all(len(f.split()) == 3 for f in re.findall(r'data-frames="([^"]*)"', drill))
    # the slider's epoch 3 is not in the store: the gallery shows its epoch 2
    assert 'data-epochs="0 1 2" data-frame-of="0 1 2 2"' in drill
    # the second experiment has no store: its layers have a histogram, no gallery
    other = page[page.index('id="drill-1-0"') :]
    assert "no activation store" in other[: other.index("</div></div>")]


def test_paired_tests_are_a_table_significant_first():
    found = [
        {
            "experiment": "e",
            "metric": "cka",
            "early": "a",
            "deep": "b",
            "d_early": 0.1,
            "d_deep": 0.2,
            "p": 0.3,
            "significant": False,
        },
        {
            "experiment": "e",
            "metric": "cka",
            "early": "a",
            "deep": "c",
            "d_early": 0.1,
            "d_deep": 0.5,
            "p": 0.01,
            "significant": True,
        },
    ]
    table = paired_tests_table(found)
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert "<li>" not in table and len(rows) == 2
    assert ">c<" in rows[0] and ">0.010<" in rows[0] and rows[0].endswith("<td>yes</td>")
    assert ">b<" in rows[1] and rows[1].endswith("<td>no</td>")


def test_the_filter_cap_bounds_the_galleries(built):
    res = open_results(built["results"])
    summaries = _store_summaries(res, [built["store"]])
    plan = plan_galleries(res, summaries, ReportConfig(max_filters=2))
    assert plan.per_gallery == 1 and plan.layers == {("toynet/shapes", "features.3")}
    out = built["root"] / "capped"
    out.mkdir()
    assert write_explore(res, built["results"], out, plan) == 2
    page = (out / EXPLORE_NAME).read_text()
    assert page.count('<figure class="card"') == 2
    assert "over the cap on filters" in page and "at most 2 filters are rendered" in page
    assert "max_filters=2" in page
    with pytest.raises(FtdynError, match="max_filters=0: must be at least 1"):
        ReportConfig(max_filters=0)


def test_no_interactive_and_the_cap_from_the_command_line(tmp_path):
    from ftdyn.cli import app

    results_dir = tmp_path / "results"
    save_results_store(make_results(bootstrap=0), results_dir / "results.zarr")
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(results_dir), "--no-interactive"])
    assert result.exit_code == 0, result.output
    assert not (results_dir / EXPLORE_NAME).exists()
    result = runner.invoke(app, ["report", str(results_dir), "--max-filters", "0"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("ftdyn: error: --max-filters 0: must be at least 1")


def _state(browser: Browser) -> dict:
    return browser.evaluate(
        """(() => {
          const now = document.querySelector("#drill-0-0 img.now");
          const open = [...document.querySelectorAll("#exp-0 .drill")].filter(d => !d.hidden);
          return {
            epoch: document.body.dataset.epoch,
            label: document.getElementById("epoch-label").textContent,
            marker: document.querySelector(".epoch-marker").getAttribute("x1"),
            markerEpoch: document.querySelector(".epoch-marker").dataset.epoch,
            column: [...document.querySelectorAll("#exp-0 table.heat th.current")].map(
              th => th.textContent),
            galleryEpoch: now.dataset.epoch,
            gallery: [...document.querySelectorAll("#drill-0-0 img.now")].map(i => i.src),
            shown: document.querySelector("#drill-0-0 .shown-epoch").textContent,
            source: document.querySelector("#drill-0-0 img.source").dataset.epoch,
            open: open.map(d => d.id),
            openTitle: open.map(d => d.querySelector("h3").textContent),
            broken: [...document.images].filter(
              i => i.src && (!i.complete || i.naturalWidth === 0)).length,
          };
        })()"""
    )


@pytest.mark.slow
def test_explore_in_headless_chromium_offline(built, tmp_path):
    exe = chromium_path()
    if exe is None:
        pytest.skip(
            "chromium not installed: install it with `apt-get install -y chromium` (Debian package)"
            " to drive the interactive report in a real browser"
        )
    browser = Browser(exe, tmp_path / "profile")
    try:
        browser.open((built["results"] / EXPLORE_NAME).resolve().as_uri())
        first = _state(browser)
        assert first["epoch"] == first["label"] == first["markerEpoch"] == "3"
        assert first["column"] == ["3"] * 3  # every heatmap of the experiment
        assert (first["galleryEpoch"], first["shown"], first["source"]) == ("2", "2", "0")
        assert first["open"] == ["drill-0-0"] and first["broken"] == 0
        # the slider, moved with the keyboard: epoch 1 everywhere
        browser.press("#epoch", "ArrowLeft")
        browser.press("#epoch", "ArrowLeft")
        moved = _state(browser)
        assert moved["epoch"] == moved["label"] == moved["markerEpoch"] == "1"
        assert moved["column"] == ["1"] * 3
        assert float(moved["marker"]) < float(first["marker"])
        assert (moved["galleryEpoch"], moved["shown"]) == ("1", "1")
        assert moved["gallery"] != first["gallery"] and moved["source"] == "0"
        # a click on the deeper layer's name opens its filters instead
        browser.click('#exp-0 button.layer[data-drill="0-1"]')
        clicked = _state(browser)
        assert clicked["open"] == ["drill-0-1"] and clicked["openTitle"] == [
            "features.8: its filters"
        ]
        assert browser.evaluate("document.querySelector('#drill-0-1 .card').offsetHeight") > 0
        # a click on a filter enlarges it: every row at every drawn epoch, all decoded
        browser.click("#drill-0-1 .card")
        enlarged = browser.evaluate(
            """(() => { const d = document.getElementById("enlarged");
              const imgs = [...d.querySelectorAll("img.big")];
              return [d.open, d.querySelector("h3").textContent, imgs.length,
                      imgs.filter(i => i.naturalWidth > 0).length]; })()"""
        )
        assert enlarged[0] and enlarged[1].startswith("features.8 · filter ")
        assert enlarged[2] == enlarged[3] == 4 * 3
        browser.evaluate("document.getElementById('enlarged').close()")
        # a table sorted by a click on its heading
        browser.click("#tables table thead th:nth-child(4)")  # reusability: procrustes
        column = browser.evaluate(
            "[...document.querySelector('#tables table').tBodies[0].rows].map(r => r.cells[0]"
            ".textContent)"
        )
        assert column == ["toynet/shapes", "toynet/fruits"]
        browser.click("#tables table thead th:nth-child(4)")
        column = browser.evaluate(
            "[...document.querySelector('#tables table').tBodies[0].rows].map(r => r.cells[0]"
            ".textContent)"
        )
        assert column == ["toynet/fruits", "toynet/shapes"]
        assert browser.problems() == []
    finally:
        browser.close()
