"""The built-in demo end to end (quick size): the README's first command in miniature."""

import json

from typer.testing import CliRunner

from ftdyn.cli import app
from ftdyn.results import open_results


def test_quick_demo_runs_the_whole_pipeline_and_resumes(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"open {out / 'results' / 'report.html'}" in result.output
    results = open_results(out / "results")
    assert sorted(results["dataset"].values) == ["dissimilar", "scene", "similar"]
    assert set(results["metric"].values) == {"pwsm", "procrustes", "cka"}
    # the source model is epoch 0 of every target series: distance 0 there
    assert float(abs(results["distance"].sel(epoch=0)).max()) < 1e-6
    findings = json.loads((out / "results" / "findings.json").read_text())["findings"]
    assert len(findings) == 9 and all("early_closer_than_deep" in row for row in findings)
    html = (out / "results" / "report.html").read_text()
    assert "Table 1" in html and "Reusability" in html and html.count("data:image/png;base64") >= 3

    again = CliRunner().invoke(app, ["demo", str(out), "--quick", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output


def test_demo_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(app, ["demo", str(target), "--quick"])
    assert result.exit_code == 2 and "is a file" in result.output
