"""What a notebook user sees of the Python API: ``dir(ftdyn)``, the options in ``help()``, the
public names of ``ftdyn.metrics``."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

import ftdyn
from ftdyn import FtdynError
from ftdyn.config import AnalyzeConfig, ExtractConfig, TrainConfig, VisualizeConfig

API = ["train", "extract", "analyze", "report", "visualize", "info", "demo"]
API += ["open_store", "open_results"]


def test_dir_lists_the_api_version_and_errors():
    assert set(dir(ftdyn)) == {*API, "__version__", "FtdynError", "FtdynWarning"}
    assert set(dir(ftdyn)) == set(ftdyn.__all__)
    assert all(callable(getattr(ftdyn, name)) for name in API)


@pytest.mark.slow
def test_import_ftdyn_loads_no_torch():
    code = "import sys, ftdyn; dir(ftdyn); print('torch' in sys.modules, 'xarray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "name, config_type",
    [
        ("train", TrainConfig),
        ("extract", ExtractConfig),
        ("analyze", AnalyzeConfig),
        ("visualize", VisualizeConfig),
    ],
)
def test_signature_shows_every_option_with_its_config_default(name, config_type):
    function = getattr(ftdyn, name)
    parameters = inspect.signature(function).parameters
    public = [f for f in dataclasses.fields(config_type) if not f.metadata.get("internal")]
    assert public
    for option in public:
        parameter = parameters[option.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        if option.default is dataclasses.MISSING:
            assert parameter.default is inspect.Parameter.empty, option.name
        else:
            assert parameter.default == option.default, option.name
    # the function's own parameters come first and **options is gone
    assert "config" in parameters and "out" in parameters
    assert list(parameters).index("config") < list(parameters).index(public[0].name)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    # help() shows the signature, and the docstring lists the options with their help
    shown = str(inspect.signature(function))
    assert all(f"{option.name}:" in shown for option in public)
    assert all(f"* {option.name} (" in function.__doc__ for option in public)


def test_fields_set_by_ftdyn_itself_are_not_shown():
    internal = [f.name for f in dataclasses.fields(AnalyzeConfig) if f.metadata.get("internal")]
    assert internal
    assert not set(internal) & set(inspect.signature(ftdyn.analyze).parameters)


def test_the_shown_signature_is_what_the_function_accepts(tmp_path):
    """Binding the shown signature refuses what the config refuses: an unknown option, a missing
    required one."""
    signature = inspect.signature(ftdyn.train)
    signature.bind("data", out=tmp_path, arch="resnet18", epochs=1)
    with pytest.raises(TypeError, match="epoch"):
        signature.bind("data", out=tmp_path, arch="resnet18", epoch=1)
    with pytest.raises(TypeError, match="arch"):
        signature.bind("data", out=tmp_path)


def test_metrics_exports_the_public_metrics_only():
    from ftdyn import metrics
    from ftdyn.metrics import _linalg, paper_code, registry, stats

    assert sorted(metrics.__all__) == dir(metrics)
    assert set(metrics.__all__) == {
        "pwsm",
        "procrustes",
        "linear_cka",
        "cka_distance",
        "procrustes_rows",
        "cka_distance_rows",
        "degenerate_reason",
        "estimate",
        "size_reliability",
        "get_metric",
        "METRICS",
        "MetricInfo",
    }
    assert all(callable(getattr(metrics, name)) for name in metrics.__all__ if name != "METRICS")
    # the streamed statistics and the numerical internals live in their submodules, and the
    # package still serves them by their former flat names
    for module, name in [
        (stats, "RowStats"),
        (stats, "row_stats"),
        (stats, "merge"),
        (stats, "choose_side"),
        (stats, "dead_mask"),
        (registry, "diagonal_self_products"),
        (paper_code, "ROW_CENTERED"),
        (_linalg, "EIG_CLIP"),
    ]:
        assert name not in dir(metrics)
        assert getattr(metrics, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = metrics.nonsense


def test_results_zarr_opens_in_plain_xarray_without_warning(tmp_path):
    from helpers import make_results

    from ftdyn.results import open_results, save_results_store

    results = make_results(store_paths=("a.zarr", "b.zarr"))
    save_results_store(results, tmp_path / "results.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(tmp_path / "results.zarr")
    assert set(plain.data_vars) == set(results.data_vars)
    np.testing.assert_array_equal(plain["distance"].values, results["distance"].values)
    # open_results still validates what it reads
    assert open_results(tmp_path)["distance"].equals(results["distance"])
    plain.close()
    # from the arrays' own metadata, not the consolidated copy: damage there is seen
    (tmp_path / "results.zarr" / "distance" / "zarr.json").write_text("{not json")
    with pytest.raises(FtdynError, match="damaged results"):
        open_results(tmp_path)
