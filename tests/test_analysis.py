"""The analyze stage: out-of-core results equal in-memory metrics; outputs, reuse, errors,
clusters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import LAYERS, NOISE, N, make_planted_store, trusted_intervals
from typer.testing import CliRunner

import ftdyn
import ftdyn.analysis as A
from ftdyn import devices
from ftdyn import metrics as M
from ftdyn import views as V
from ftdyn.analysis import inputs as AI
from ftdyn.analysis import plan as AP
from ftdyn.analysis import run as AR
from ftdyn.analysis import tasks as AT
from ftdyn.cli import app
from ftdyn.config import AnalyzeConfig
from ftdyn.errors import FtdynError
from ftdyn.results import (
    AGREEMENT_COLUMNS,
    AGREEMENT_SUMMARY_COLUMNS,
    DISTANCE_COLUMNS,
    REUSABILITY_COLUMNS,
    open_results,
    validate_results,
)
from ftdyn.store import LayerSpec, StoreWriter


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_store(tmp_path_factory.mktemp("planted") / "s.zarr")


def expected(data, layer, view, metric, a=0, b=None, average="images", labels=None):
    """In-memory reference: the metric on the whole layer's matrices; per-filter views -> vector."""
    X, Y = data[a][layer], data[b][layer]
    fn = {
        "pwsm": lambda x, y: M.pwsm(x, y, 0.0),
        "procrustes": M.procrustes,
        "cka": M.cka_distance,
    }[metric]
    _, rows, cols = V.matrix_shape(view, *X.shape)
    # degenerate (0 for any pair): left undefined
    if rows - 1 <= 1 or (metric == "pwsm" and rows - 1 <= cols):
        return np.full((X.shape[1],) if V.is_per_filter(view) else (), np.nan)
    if view == "map":
        vals = np.asarray(fn(V.map_(X), V.map_(Y)))  # (n, C)
        if average == "class":
            per_class = np.stack([np.nanmean(vals[labels == c], axis=0) for c in np.unique(labels)])
            return np.nanmean(per_class, axis=0)
        return np.nanmean(vals, axis=0)
    mx, my = V.to_matrices(view, X), V.to_matrices(view, Y)
    return np.asarray(fn(mx, my))


@pytest.mark.parametrize("view", V.VIEWS)
def test_results_equal_in_memory_metrics(planted, tmp_path, view):
    path, data = planted
    ds = ftdyn.analyze(
        path,
        out=tmp_path / "r",
        views=view,
        trajectory="all",
        progress=False,
        workers=2,
        estimator="plugin",
    )
    validate_results(ds)
    assert list(ds["metric"].values) == ["pwsm", "procrustes", "cka"]
    assert set(ds["view"].values) == {view}
    for l, spec in enumerate(LAYERS):
        for mi, metric in enumerate(ds["metric"].values):
            for e in range(len(NOISE)):
                want = expected(data, spec.name, view, metric, 0, e)
                got = ds["distance"].values[0, mi, l, e]
                if V.is_per_filter(view):
                    np.testing.assert_allclose(
                        ds["filter_distance"].values[0, mi, l, e, : spec.channels],
                        want,
                        atol=1e-6,
                        err_msg=f"{view} {metric} {spec.name} {e}",
                    )
                    want = np.nanmean(want)
                assert got == pytest.approx(float(want), abs=1e-6, nan_ok=True), (
                    view,
                    metric,
                    spec.name,
                    e,
                )
                for b in range(len(NOISE)):  # every pair of checkpoints
                    pair = expected(data, spec.name, view, metric, e, b)
                    pair = np.nanmean(pair) if pair.ndim else pair
                    assert ds["trajectory"].values[0, mi, l, e, b] == pytest.approx(
                        float(pair), abs=1e-6, nan_ok=True
                    )


def test_the_gpu_route_simulated_on_the_cpu_equals_the_cpu_route(planted, tmp_path, monkeypatch):
    """What only a CUDA device takes - the statistics in a memory pool of their own beside
    --memory-limit, the device's block sizes, the eigh route of the nuclear norm - runs on the CPU
    with a simulated device memory, and gives the CPU route's numbers on every side."""
    path, _ = planted
    cpu_device = torch.device("cpu")
    kw = dict(trajectory="all", bootstrap=3, progress=False, workers=2, memory_limit="256MB")
    variables = ("distance", "filter_distance", "trajectory", "ci_low", "ci_high")
    for views in ("channels", "filter", "map", "flat"):
        cpu = ftdyn.analyze(path, out=tmp_path / f"cpu-{views}", views=views, **kw)
        cpu_plan = AR.make_plan(path, out=tmp_path / "plan", views=views, **kw).summary()
        with monkeypatch.context() as simulated:
            simulated.setattr(devices, "SIMULATED_DEVICE_MEMORY", 64 * 2**20)
            assert devices.route(cpu_device) == "cuda"
            assert AP.device_budget(cpu_device) == int(0.8 * 64 * 2**20)
            sim_plan = AR.make_plan(path, out=tmp_path / "plan", views=views, **kw).summary()
            sim = ftdyn.analyze(path, out=tmp_path / f"sim-{views}", views=views, **kw)
        # the host holds only the raw chunks, the device pool the statistics
        host = [j["task_bytes_estimate"] for j in sim_plan]
        assert host != [j["task_bytes_estimate"] for j in cpu_plan]
        for var in (*variables, "probe_accuracy"):
            np.testing.assert_allclose(
                sim[var].values,
                cpu[var].values,
                atol=1e-7,  # arccos near 1: 1e-8 at the reference
                equal_nan=True,
                err_msg=f"{views} {var}",
            )
    assert devices.route(cpu_device) == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(planted, tmp_path):
    """Every side (row, Gram, map), all pairs and bootstrap on the GPU give the CPU's numbers."""
    path, _ = planted
    for views in ("channels", "filter", "map", "flat"):
        kw = dict(views=views, trajectory="all", bootstrap=3, progress=False, workers=2)
        cpu = ftdyn.analyze(path, out=tmp_path / f"cpu-{views}", device="cpu", **kw)
        gpu = ftdyn.analyze(path, out=tmp_path / f"gpu-{views}", device="cuda", **kw)
        assert cpu.attrs["device"] == "cpu" and gpu.attrs["device"].startswith("cuda")
        # probe_accuracy: the pooled features are taken on the GPU as its row-side leaves read
        variables = ("distance", "filter_distance", "trajectory", "ci_low", "ci_high")
        for var in (*variables, "probe_accuracy"):
            np.testing.assert_allclose(
                gpu[var].values,
                cpu[var].values,
                atol=1e-7,
                equal_nan=True,
                err_msg=f"{views} {var}",
            )
    kw = dict(preset="paper-code", progress=False, workers=2)  # row-centered map metrics on the GPU
    cpu = ftdyn.analyze(path, out=tmp_path / "cpu-paper", device="cpu", **kw)
    gpu = ftdyn.analyze(path, out=tmp_path / "gpu-paper", device="cuda", **kw)
    for var in ("distance", "filter_distance", "agreement_paper_code"):
        np.testing.assert_allclose(
            gpu[var].values, cpu[var].values, atol=1e-7, equal_nan=True, err_msg=var
        )


@pytest.mark.slow
def test_default_preset_sides_panels_and_filter_groups(planted, tmp_path, monkeypatch):
    """Defaults: pwsm/channels, procrustes+cka/filter; forcing 1-chunk Gram panels and 1-filter
    groups (several passes) gives the same numbers."""
    path, data = planted
    ds = ftdyn.analyze(path, out=tmp_path / "a", progress=False)
    assert dict(zip(ds["metric"].values, ds["view"].values, strict=True)) == {
        "pwsm": "channels",
        "procrustes": "filter",
        "cka": "filter",
    }
    plan = json.loads(ds.attrs["plan"])
    sides = {(p["layer"], p["view"]): p["side"] for p in plan}
    assert sides[("features.3", "filter")] == "gram" and sides[("layer2.relu", "filter")] == "row"
    monkeypatch.setattr(AP, "MAX_PANEL_CHUNKS", 1)
    monkeypatch.setattr(AP, "MAX_FILTER_GROUP", 1)
    ds2 = ftdyn.analyze(path, out=tmp_path / "b", progress=False, workers=1)
    plan2 = json.loads(ds2.attrs["plan"])
    assert (
        max(p["gram_panels"] or 0 for p in plan2) == 3
        and max(p["filter_groups"] for p in plan2) == 6
    )
    for var in ("distance", "filter_distance", "trajectory"):
        np.testing.assert_allclose(ds2[var].values, ds[var].values, atol=1e-9, equal_nan=True)
    # reference + 2 checkpoints per pass, with bootstrap
    monkeypatch.setattr(AP, "MAX_CHECKPOINTS_PER_PASS", 2)
    ds3 = ftdyn.analyze(
        path, out=tmp_path / "c", progress=False, trajectory="reference", bootstrap=4
    )
    assert max(p["checkpoint_passes"] or 0 for p in json.loads(ds3.attrs["plan"])) == 2
    # arccos near 1: ~1e-8
    np.testing.assert_allclose(ds3["distance"].values, ds["distance"].values, atol=1e-7)
    trusted, untrusted = trusted_intervals(ds3)
    assert np.isfinite(trusted).all() and np.isnan(untrusted).all()
    plugin = ftdyn.analyze(
        path, out=tmp_path / "d", progress=False, metrics=["pwsm"], estimator="plugin"
    )
    for e in range(len(NOISE)):
        assert plugin["distance"].sel(metric="pwsm").values[0, 0, e] == pytest.approx(
            expected(data, "features.3", "channels", "pwsm", 0, e), abs=1e-6
        )


def test_procrustes_alone_keeps_the_diagonals_and_gives_the_same_numbers(planted, tmp_path):
    """A row-side job of Procrustes alone accumulates only the diagonals of XᵀX and YᵀY (the
    plan records it); its distances are the in-memory ones, and its bootstrap runs on them."""
    path, data = planted
    ds = ftdyn.analyze(
        path,
        out=tmp_path / "p",
        metrics=["procrustes"],
        views="channels",
        bootstrap=4,
        progress=False,
        estimator="plugin",
    )
    rows = [p for p in json.loads(ds.attrs["plan"]) if p["side"] == "row"]
    assert rows and {p["self_products"] for p in rows} == {"diagonal"}
    both = ftdyn.analyze(
        path,
        out=tmp_path / "b",
        metrics=["procrustes", "cka"],
        views="channels",
        progress=False,
        estimator="plugin",
    )
    assert {p["self_products"] for p in json.loads(both.attrs["plan"])} == {"full"}
    for l, spec in enumerate(LAYERS):
        for e in range(len(NOISE)):
            want = expected(data, spec.name, "channels", "procrustes", 0, e)
            assert ds["distance"].values[0, 0, l, e] == pytest.approx(float(want), abs=1e-9)
    np.testing.assert_allclose(
        ds["distance"].values, both["distance"].sel(metric=["procrustes"]).values, atol=1e-12
    )
    low = ds["ci_low"].values[..., 1:]
    trusted = ~np.broadcast_to(ds["unreliable"].values[..., None], low.shape)
    assert np.isfinite(low[trusted]).all()  # an unreliable value gets no interval


def published_maps(M1, M2):
    """The published code's per-(image, filter) similarities, written from its formulas: each
    (h, w) map centered by its *row* means, scaled to unit Frobenius norm; Procrustes
    ||A^T B||_*, linear CKA ||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F). A dead map is 0/0 = NaN."""
    n, C = M1.shape[:2]
    proc, cka = np.full((n, C), np.nan), np.full((n, C), np.nan)
    for i in range(n):
        for f in range(C):
            A = M1[i, f] - M1[i, f].mean(axis=1, keepdims=True)
            B = M2[i, f] - M2[i, f].mean(axis=1, keepdims=True)
            if np.linalg.norm(A) == 0 or np.linalg.norm(B) == 0:
                continue
            A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
            proc[i, f] = np.linalg.svd(A.T @ B, compute_uv=False).sum()
            cka[i, f] = np.linalg.norm(A.T @ B) ** 2 / (
                np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B)
            )
    return proc, cka


def published_layer(sim, labels):
    """Per class the NaN-aware mean over its images of each filter -> (class, filter) cells;
    the layer's similarity is the NaN-aware mean over all cells. Returns (cells, 1 - layer)."""
    cells = np.array(
        [
            [
                (
                    np.nanmean(sim[labels == c, f])
                    if np.isfinite(sim[labels == c, f]).any()
                    else np.nan
                )
                for f in range(sim.shape[1])
            ]
            for c in np.unique(labels)
        ]
    )
    return cells, 1.0 - np.nanmean(cells)


def published_agreement(data, layers, labels, epochs):
    """Pearson r of CKA vs Procrustes across filters per (epoch, layer, class): np.corrcoef, no
    NaN handling; its summary a plain mean."""
    r = {}
    for e in epochs[1:]:
        for name in layers:
            proc, cka = published_maps(
                data[0][name].astype(np.float64), data[e][name].astype(np.float64)
            )
            pc, cc = published_layer(proc, labels)[0], published_layer(cka, labels)[0]
            for k in range(len(pc)):
                with np.errstate(invalid="ignore", divide="ignore"):
                    r[(e, name, k)] = np.corrcoef(cc[k], pc[k])[0, 1]
    return r


def _dead_class_maps(path, data, tmp_path):
    """A copy of the planted store where filter 1 of features.3 is dead in every image of class 0
    (whole (class, filter) cells NaN) and image 1's filter 2 is dead at epoch 2 only."""
    import shutil

    out = Path(shutil.copytree(path, tmp_path / "dead.zarr"))
    labels = np.arange(N) % 3
    new = {e: {k: v.copy() for k, v in acts.items()} for e, acts in data.items()}
    for e in new:
        new[e]["features.3"][labels == 0, 1] = 0
    new[2]["features.3"][1, 2] = 0
    writer = StoreWriter(out)
    for e in new:
        for c in range(writer.n_chunks):
            rows = writer.chunk_slice(c)
            writer.write_region(e, c, {k: v[rows] for k, v in new[e].items()})
    return out, new


def test_paper_code_reproduces_the_published_formulas(planted, tmp_path):
    """paper-code equals an independent implementation of the published code (row centering,
    per-class cells then the mean over all cells, Pearson across filters with NaN propagation),
    to 1e-4 in float64 (here ~1e-12); ftdyn's default column centering gives other numbers."""
    path, data = planted
    labels = np.arange(N) % 3
    names = [l.name for l in LAYERS]
    for store, acts, finite_summary in (
        (path, data, True),
        (*_dead_class_maps(path, data, tmp_path), False),
    ):
        ds = ftdyn.analyze(
            store, out=tmp_path / f"p{finite_summary}", preset="paper-code", progress=False
        )
        assert list(ds["metric"].values) == ["pwsm", "procrustes", "cka"]
        assert (
            list(ds["view"].values) == ["channels", "map", "map"]
            and ds.attrs["map_center"] == "rows"
        )
        for l, name in enumerate(names):
            for e in range(1, len(NOISE)):
                proc, cka = published_maps(
                    acts[0][name].astype(np.float64), acts[e][name].astype(np.float64)
                )
                for metric, sim in (("procrustes", proc), ("cka", cka)):
                    cells, want = published_layer(sim, labels)
                    got = ds["distance"].sel(metric=metric).values[0, l, e]
                    assert got == pytest.approx(want, abs=1e-10), (metric, name, e)
                    per_filter = 1.0 - np.nanmean(cells, axis=0)  # per filter: mean over classes
                    np.testing.assert_allclose(
                        ds["filter_distance"].sel(metric=metric).values[0, l, e, : len(cells[0])],
                        per_filter,
                        atol=1e-10,
                    )
                    if metric == "procrustes":  # row vs column centering: not the same metric
                        column = np.nanmean(
                            np.asarray(M.procrustes(V.map_(acts[0][name]), V.map_(acts[e][name])))
                        )
                        assert abs(column - want) > 1e-3
        ref = published_agreement(acts, names, labels, list(range(len(NOISE))))
        got = ds["agreement_paper_code"].values[0]
        for (e, name, k), r in ref.items():
            assert got[names.index(name), e, k] == pytest.approx(r, abs=1e-10, nan_ok=True), (
                e,
                name,
                k,
            )
        assert np.isnan(got[:, 0]).all()  # the reference epoch is not part of it
        summary = float(ds["agreement_paper_code_mean"].values[0])
        assert np.isfinite(summary) == finite_summary
        assert summary == pytest.approx(np.mean(list(ref.values())), abs=1e-10, nan_ok=True)
        from ftdyn.reporting import sections

        html = sections._agreement_section(ds, tmp_path / f"p{finite_summary}")
        assert (
            "published r(cka, procrustes)" in html
            and (f"{summary:.3f}" if finite_summary else "—") in html
        )
    dead = ds["distance"].sel(metric="procrustes").values[0, 0, 2]
    cells, _ = published_layer(
        published_maps(
            acts[0]["features.3"].astype(np.float64), acts[2]["features.3"].astype(np.float64)
        )[0],
        labels,
    )
    # the aggregation order matters here
    assert abs(dead - (1 - np.nanmean(np.nanmean(cells, axis=0)))) > 1e-6


def test_zero_for_identical_and_growing_with_perturbation(tmp_path):
    path, _ = make_planted_store(tmp_path / "s.zarr", noise=(0.0, 0.0, 0.05, 0.2, 0.8))
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False)
    d = ds["distance"].values[0]  # (metric, layer, epoch)
    np.testing.assert_allclose(d[:, :, :2], 0.0, atol=1e-6)  # epoch 1 is identical to the source
    assert (np.diff(d[:, :, 1:], axis=-1) > 0).all()  # strictly growing with the noise level
    # identical checkpoints give an exactly symmetric, zero-diagonal trajectory
    traj = ds["trajectory"].values[0]
    np.testing.assert_allclose(traj, np.swapaxes(traj, -1, -2), atol=1e-12, equal_nan=True)


def test_dead_filters_are_nan_and_counted(tmp_path):
    path, data = make_planted_store(tmp_path / "s.zarr", dead_filter=2)
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False, estimator="plugin")
    filt = ds["filter_distance"].sel(metric="procrustes").values[0]  # (layer, epoch, filter)
    assert np.isnan(filt[:, 1:, 2]).all() and np.isfinite(filt[0, 1:, :2]).all()
    n_nan = ds["n_nan"].sel(metric="procrustes").values[0]
    assert (n_nan == 1).all()
    assert ds["distance"].sel(metric="procrustes").values[0, 1, 3] == pytest.approx(
        np.nanmean(expected(data, "layer2.relu", "filter", "procrustes", 0, 3)), abs=1e-6
    )
    with open(tmp_path / "r" / "distances.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "procrustes"]
    assert {r["n_nan"] for r in rows} == {"1"} and {r["n_filters"] for r in rows} == {"4", "6"}


def test_csv_columns_and_bootstrap_intervals(planted, tmp_path):
    path, _ = planted
    out = tmp_path / "r"
    ds = ftdyn.analyze(path, out=out, progress=False)
    for name, cols in [
        ("distances.csv", DISTANCE_COLUMNS),
        ("reusability.csv", REUSABILITY_COLUMNS),
        ("agreement.csv", AGREEMENT_COLUMNS),
        ("agreement_summary.csv", AGREEMENT_SUMMARY_COLUMNS),
    ]:
        with open(out / name) as f:
            header = next(csv.reader(f))
        assert tuple(header) == cols
    assert (
        ",".join(DISTANCE_COLUMNS)
        == "experiment,model,dataset,layer,layer_index,epoch,metric,view,value,"
        "ci_low,ci_high,heldout,n_filters,n_nan,unreliable,reason"
    )
    with open(out / "distances.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 * 3 and all(r["ci_low"] == "" and r["ci_high"] == "" for r in rows)
    assert {r["experiment"] for r in rows} == {"resnet18/toy"}
    r = next(
        r
        for r in rows
        if r["layer"] == "layer2.relu" and r["epoch"] == "2" and r["metric"] == "cka"
    )
    assert float(r["value"]) == pytest.approx(
        float(ds["distance"].sel(metric="cka").values[0, 1, 2]), abs=1e-12
    )
    with open(out / "reusability.csv") as f:
        reu = list(csv.DictReader(f))
    d = ds["distance"].values[0]
    want = d[:, :, 1:].mean(axis=1)  # layer-averaged, reference excluded
    assert [float(x["mean"]) for x in reu] == pytest.approx(list(want.mean(-1)), abs=1e-12)
    assert [float(x["std"]) for x in reu] == pytest.approx(list(want.std(-1)), abs=1e-12)
    r_pc = np.corrcoef(d[0, 0, 1:], d[1, 0, 1:])[0, 1]
    assert float(ds["agreement_r"].values[0, 0, 0, 1]) == pytest.approx(r_pc, abs=1e-9)

    # the same seed: the same jackknife groups of images, so the same estimates
    boot = ftdyn.analyze(path, out=tmp_path / "b", progress=False, bootstrap=30)
    # the unreliable Procrustes (36 and 9 positions per filter for 30 images) gets no interval
    odd = boot["unreliable"].values[0]
    assert odd.tolist() == [[False, False], [True, True], [False, False]]
    assert np.isnan(boot["ci_low"].values[0][odd]).all()
    lo, hi = boot["ci_low"].values[0][~odd], boot["ci_high"].values[0][~odd]
    assert np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi + 1e-12).all()
    assert (hi[:, 1:] > lo[:, 1:]).all()  # non-degenerate away from the reference
    value = boot["distance"].values[0][~odd]
    assert ((lo <= value + 1e-12) & (value <= hi + 1e-12)).all()  # intervals hold their estimate
    # bootstrap groups re-sum the statistics in another order: the same values, except that PWSM,
    # an arccos, resolves only √(2ε) ≈ 1.5e-8 near 0, so the reference against itself reads 0 or
    # that (as the rounding of the order falls; it differed between CI runs)
    np.testing.assert_allclose(
        boot["distance"].values[..., 1:], ds["distance"].values[..., 1:], atol=1e-12
    )
    np.testing.assert_allclose(
        boot["distance"].values[..., 0], ds["distance"].values[..., 0], atol=2e-8
    )
    again = ftdyn.analyze(path, out=tmp_path / "b2", progress=False, bootstrap=30)
    np.testing.assert_array_equal(again["ci_low"].values[0][~odd], lo)  # seeded: reproducible
    with open(tmp_path / "b" / "distances.csv") as f:
        assert all((r["ci_low"] != "") == (r["unreliable"] == "False") for r in csv.DictReader(f))


def test_rerun_reuses_and_overwrite(planted, tmp_path, capsys, cli_console):
    path, _ = planted
    out = tmp_path / "r"
    ftdyn.analyze(path, out=out, progress=False, layers=["layer2.relu"])
    stamp = (out / "results.zarr" / "zarr.json").stat().st_mtime_ns
    capsys.readouterr()
    # same analysis
    again = ftdyn.analyze(path, out=out, progress=False, layers=["layer2_relu"], workers=1)
    assert "up to date" in capsys.readouterr().err
    assert (out / "results.zarr" / "zarr.json").stat().st_mtime_ns == stamp
    assert list(again["layer"].values[0]) == ["layer2.relu"]
    with pytest.raises(FtdynError, match="pass overwrite to"):
        ftdyn.analyze(path, out=out, progress=False, metrics=["cka"])
    ds = ftdyn.analyze(path, out=out, progress=False, metrics=["cka"], overwrite=True)
    assert list(ds["metric"].values) == ["cka"] and list(ds["layer"].values[0]) == [
        "features.3",
        "layer2.relu",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            ".ftdyn-sets",
            "results.zarr",
            "distances.csv",
            "reusability.csv",
            "agreement.csv",
            "agreement_summary.csv",
            "relative_distances.csv",
            "probes.csv",
            "layer_order.csv",
            "convergence.csv",
            "floor.csv",
            "runs.csv",
        ]
    )
    # the current link and the one set: the old one is gone
    assert len(list((out / ".ftdyn-sets").iterdir())) == 2


def test_interrupt_leaves_nothing_half_written(planted, tmp_path, monkeypatch):
    path, _ = planted
    out = tmp_path / "r"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AR, "write_tables", boom)
    with pytest.raises(KeyboardInterrupt):
        ftdyn.analyze(path, out=out, progress=False)
    assert not out.exists()  # no product, no half-written set, no folder


def test_incomplete_store_and_allow_partial(tmp_path):
    path, data = make_planted_store(
        tmp_path / "s.zarr", complete=lambda i, c: not (i == 2 and c == 1)
    )
    with pytest.raises(FtdynError, match=r"checkpoints 2 are not fully extracted.*allow_partial"):
        ftdyn.analyze(path, out=tmp_path / "r", progress=False)
    ds = ftdyn.analyze(
        path,
        out=tmp_path / "r",
        progress=False,
        allow_partial=True,
        metrics=["pwsm"],
        estimator="plugin",
    )
    assert list(ds["epoch"].values) == [0, 1, 3]
    assert ds["distance"].values[0, 0, 0, 2] == pytest.approx(
        expected(data, "features.3", "channels", "pwsm", 0, 3), abs=1e-6
    )


def test_several_stores_and_names(tmp_path):
    p1, _ = make_planted_store(tmp_path / "a.zarr", dataset="awa2", seed=1)
    p2, _ = make_planted_store(tmp_path / "b.zarr", noise=(0.0, 0.5, 1.0), dataset="fruits", seed=2)
    ds = ftdyn.analyze([p1, p2], out=tmp_path / "r", progress=False, reference=0)
    assert list(ds["experiment"].values) == ["resnet18/awa2", "resnet18/fruits"]
    assert list(ds["dataset"].values) == ["awa2", "fruits"]
    assert (
        bool(ds["has_epoch"].values[1, 3]) is False
        and np.isnan(ds["distance"].values[1, :, :, 3]).all()
    )
    with open(tmp_path / "r" / "distances.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * (4 + 3)
    with open(tmp_path / "r" / "agreement_summary.csv") as f:
        summ = list(csv.DictReader(f))
    assert [(r["metric_a"], r["metric_b"]) for r in summ] == [
        ("pwsm", "procrustes"),
        ("pwsm", "cka"),
        ("procrustes", "cka"),
    ]
    # 2 layers of the first; the second has only 2 epochs (< 3)
    assert all(int(r["n"]) == 2 for r in summ)
    named = ftdyn.analyze(
        [p1, p2], out=tmp_path / "n", progress=False, experiment_names=["A", "B"], metrics=["cka"]
    )
    assert list(named["experiment"].values) == ["A", "B"]
    with pytest.raises(FtdynError, match="distinct experiment_names"):
        ftdyn.analyze([p1, p1], out=tmp_path / "d", progress=False)


def test_local_cluster_equals_threads(planted, tmp_path):
    distributed = pytest.importorskip("distributed")
    path, _ = planted
    threaded = ftdyn.analyze(path, out=tmp_path / "t", progress=False, bootstrap=5)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cl:
        clustered = ftdyn.analyze(
            path, out=tmp_path / "c", progress=False, bootstrap=5, scheduler=cl.scheduler_address
        )
    for var in ("distance", "filter_distance", "trajectory", "ci_low", "ci_high", "agreement_r"):
        np.testing.assert_allclose(
            clustered[var].values, threaded[var].values, atol=1e-12, equal_nan=True
        )


def test_memory_limit_parsing_and_threads(planted, tmp_path):
    assert (
        A.parse_memory("1GB") == 10**9
        and A.parse_memory("2GiB") == 2 * 2**30
        and A.parse_memory(None) is None
    )
    with pytest.raises(FtdynError, match=r"^memory_limit"):
        A.parse_memory("lots")
    with pytest.raises(FtdynError, match="too small"):
        A.parse_memory("1MB")
    path, _ = planted
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False, memory_limit="100MB", workers=64)
    # threads lowered to fit
    assert ds.attrs["memory_limit"] == 10**8 and 1 <= ds.attrs["threads"] < 64
    assert all(
        p["task_bytes_estimate"] * ds.attrs["threads"] <= 10**8
        for p in json.loads(ds.attrs["plan"])
    )


def test_sharded_store_gives_the_same_results(planted, tmp_path, monkeypatch):
    """A store whose regions are shards of 1-channel inner chunks (what large layers get):
    filter groups decode only their channels, the numbers do not change."""
    import zarr

    from ftdyn.store import schema

    path, _ = planted
    # toy layers are small: force the inner split
    monkeypatch.setattr(schema, "_MIN_INNER_CHUNK_BYTES", 0)
    sharded, _ = make_planted_store(tmp_path / "sharded.zarr")
    arr = zarr.open_group(str(sharded), mode="r")["features_3"]
    assert arr.shards == (1, 5, 4, 6, 6) and arr.chunks == (1, 5, 1, 6, 6)
    monkeypatch.setattr(AP, "MAX_FILTER_GROUP", 2)
    for views in ("filter", "map", "channels"):
        kw = dict(views=views, trajectory="all", progress=False, workers=2)
        want = ftdyn.analyze(path, out=tmp_path / f"plain-{views}", **kw)
        got = ftdyn.analyze(sharded, out=tmp_path / f"sharded-{views}", **kw)
        for var in ("distance", "filter_distance", "trajectory"):
            np.testing.assert_allclose(
                got[var].values, want[var].values, atol=1e-12, equal_nan=True
            )
    src = AI.open_experiments([sharded], AnalyzeConfig())[0].layers[0][1]
    assert src.channel_block == 1 and src.decoded_fraction(2) == 0.5


def test_split_memory_plan_gives_the_same_results(planted, tmp_path, monkeypatch):
    """The GPU plan (host budget for chunks, a separate pool for the statistics) run end to end,
    here with the CPU as the statistics device: same numbers, tasks sized to the host limit."""
    path, _ = planted
    kw = dict(trajectory="all", bootstrap=3, progress=False, workers=2)
    want = {
        v: ftdyn.analyze(path, out=tmp_path / f"one-{v}", views=v, **kw)
        for v in ("channels", "filter", "map")
    }
    monkeypatch.setattr(AP, "device_budget", lambda dev: 10**9)
    for view, ds in want.items():
        got = ftdyn.analyze(
            path, out=tmp_path / f"split-{view}", views=view, memory_limit="100MB", **kw
        )
        assert all(
            p["task_bytes_estimate"] * got.attrs["threads"] <= 10**8
            for p in json.loads(got.attrs["plan"])
        )
        for var in ("distance", "filter_distance", "trajectory", "ci_low", "ci_high"):
            np.testing.assert_allclose(got[var].values, ds[var].values, atol=1e-9, equal_nan=True)


def test_plan_with_gpu_memory_reads_the_store_once():
    """A 4 GB layer (4982 images, 128 filters of 28x28) within 1 GB: on the CPU the per-filter
    statistics (128 x 7 x 784^2 float64 = 4.4 GB) need many filter groups, each re-reading the
    store; with the statistics in (64 GB of) GPU memory the plan reads every chunk once and the
    limit bounds only what tasks hold in host memory."""
    src = AI.Source("unused.zarr", "features_26", 167, 4982, 128, 28, 28, 2)
    args = AnalyzeConfig(metrics=["procrustes", "cka"], views="filter", estimator="plugin")
    budget = 10**9 - AP.RESERVE
    spec = AP.JobSpec(0, 0, src, "filter", ("procrustes", "cka"), epochs=4, ref=0)
    cpu = AP.plan_job(args, spec, AP.Budget(budget, threads=2))
    gpu = AP.plan_job(args, spec, AP.Budget(budget, threads=2, device=64 * 10**9))
    slab = src.n * src.image_bytes
    assert cpu.side == gpu.side == "row" and len(cpu.groups) >= 16 and cpu.task_bytes * 2 <= budget
    assert len(gpu.groups) == 1 and gpu.ckpt_groups == [[1, 2, 3]] and gpu.read_bytes == 4 * slab
    assert gpu.task_bytes * 2 <= budget  # host part only: raw chunks and decode buffers
    # statistics of one filter exceed a tiny GPU
    with pytest.raises(FtdynError, match="GPU memory"):
        AP.plan_job(args, spec, AP.Budget(budget, threads=2, device=10**6))


def _one_line_error(args):
    result = CliRunner().invoke(app, args)
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == 2, (args, result.output)
    assert "Traceback" not in result.output and "Traceback" not in text
    # caveats about the numbers (ftdyn: warning: ...) may precede the error
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("ftdyn: warning:")]
    assert len(lines) == 1 and lines[0].startswith("ftdyn: error:"), lines
    return lines[0]


def test_bad_inputs_one_line(planted, tmp_path):
    path, _ = planted
    out = ["--out", str(tmp_path / "r"), "--no-progress"]
    assert "not an ftdyn activation store" in _one_line_error(["analyze", str(tmp_path), *out])
    assert "no such store" in _one_line_error(["analyze", str(tmp_path / "missing.zarr"), *out])
    assert "unknown metric 'euclid'" in _one_line_error(
        ["analyze", str(path), "--metric", "euclid", *out]
    )
    assert "unknown view 'pixels'" in _one_line_error(
        ["analyze", str(path), "--view", "pixels", *out]
    )
    assert "unknown view" in _one_line_error(["analyze", str(path), "--view", "cka=pixels", *out])
    assert "'conv9' is not a layer" in _one_line_error(
        ["analyze", str(path), "--layer", "conv9", *out]
    )
    assert "outside [0, 1]" in _one_line_error(["analyze", str(path), "--alpha", "1.5", *out])
    assert "epoch 7 is not in the store" in _one_line_error(
        ["analyze", str(path), "--reference", "7", *out]
    )
    assert "unknown preset" in _one_line_error(["analyze", str(path), "--preset", "paper", *out])
    assert "--memory-limit" in _one_line_error(["analyze", str(path), "--memory-limit", "x", *out])
    assert "MPS does not support" in _one_line_error(
        ["analyze", str(path), "--device", "mps", *out]
    )
    assert "not a device" in _one_line_error(["analyze", str(path), "--device", "gpu0", *out])
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _one_line_error(
            ["analyze", str(path), "--device", "cuda", *out]
        )
    bad = tmp_path / "old.zarr"
    import shutil

    shutil.copytree(path, bad)
    meta = json.loads((bad / "zarr.json").read_text())
    meta["attributes"]["ftdyn_store_format"] = 99
    (bad / "zarr.json").write_text(json.dumps(meta))
    assert "store format 99" in _one_line_error(["analyze", str(bad), *out])
    part, _ = make_planted_store(tmp_path / "part.zarr", complete=lambda i, c: i < 3)
    assert "checkpoints 3 are not fully extracted" in _one_line_error(["analyze", str(part), *out])
    lone, _ = make_planted_store(tmp_path / "lone.zarr", complete=lambda i, c: i < 1)
    assert "nothing to compare" in _one_line_error(["analyze", str(lone), "--allow-partial", *out])
    assert "--workers" in _one_line_error(["analyze", str(path), "--workers", "0", *out])
    assert "--seed" in _one_line_error(
        ["analyze", str(path), "--seed", "-1", "--bootstrap", "2", *out]
    )
    assert "--bootstrap" in _one_line_error(["analyze", str(path), "--bootstrap", "1", *out])
    assert "a view twice" in _one_line_error(
        ["analyze", str(path), "--view", "cka=filter", "--view", "cka=map", *out]
    )
    assert "inside the input" in _one_line_error(
        ["analyze", str(path), "--out", str(path / "results")]
    )
    assert not (path / "results").exists()


def test_file_system_errors_are_one_line(planted, tmp_path, monkeypatch):
    """A disk that fills up or turns read-only mid-run is the user's to fix: one line, no
    traceback."""
    import errno

    path, _ = planted

    def full(ds, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "distances.csv"))

    monkeypatch.setattr(AR, "_write", full)
    line = _one_line_error(["analyze", str(path), "--out", str(tmp_path / "r"), "--no-progress"])
    assert (
        "distances.csv" in line
        and "No space left on device" in line
        and "re-run the same command" in line
    )


def test_damaged_stores_are_one_line(planted, tmp_path):
    """Chunk files lost, altered or a whole array gone after extraction: one line naming
    the store."""
    import shutil

    path, _ = planted
    out = ["--out", str(tmp_path / "r"), "--no-progress", "--no-report"]

    def flip(f):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))

    cases = {
        "missing": (lambda f: f.unlink(), "chunk files of 1 finished region(s) are missing"),
        "truncated": (lambda f: f.write_bytes(f.read_bytes()[:40]), "cannot be decoded"),
        "flipped": (flip, "cannot be decoded"),
    }  # caught by the chunks' CRC-32C
    for name, (damage, expected) in cases.items():
        bad = Path(shutil.copytree(path, tmp_path / f"{name}.zarr"))
        damage(next(f for f in sorted((bad / "features_3" / "c").rglob("*")) if f.is_file()))
        line = _one_line_error(["analyze", str(bad), *out])
        assert str(bad) in line and expected in line, line
        if name != "missing":
            assert "features_3" in line and "re-extract" in line, line
    assert "are missing" in _one_line_error(["info", str(tmp_path / "missing.zarr")])
    gone = Path(shutil.copytree(path, tmp_path / "gone.zarr"))
    shutil.rmtree(gone / "layer2_relu")
    assert "layer2_relu missing" in _one_line_error(["analyze", str(gone), *out])
    assert "layer2_relu missing" in _one_line_error(["info", str(gone)])


def test_cli_runs_and_reports(planted, tmp_path):
    path, _ = planted
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(path),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--metric",
            "cka",
            "--view",
            "pooled",
            "--name",
            "mine",
        ],
    )
    assert result.exit_code == 0, result.output
    ds = open_results(tmp_path / "r")
    assert list(ds["experiment"].values) == ["mine"] and list(ds["view"].values) == ["pooled"]
    assert (tmp_path / "r" / "report.html").stat().st_size > 0 and "report.html" in result.output
    again = CliRunner().invoke(
        app,
        [
            "analyze",
            str(path),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--metric",
            "cka",
            "--view",
            "pooled",
            "--name",
            "mine",
            "--no-report",
        ],
    )
    assert again.exit_code == 0 and "up to date" in (
        again.stderr if hasattr(again, "stderr") else again.output
    )


def test_degenerate_pwsm_is_flagged(planted, tmp_path, capsys, cli_console):
    """With alpha=0 and rows <= columns (flat view: 12 images x 144 columns) PWSM is 0 for any
    checkpoints; analyze says so and leaves those values undefined instead of a silent "no change".
    """
    path, _ = planted
    ds = ftdyn.analyze([path], out=tmp_path / "r", metrics=["pwsm"], views="flat", progress=False)
    assert "degenerate" in capsys.readouterr().err
    assert json.loads(ds.attrs["pwsm_degenerate"]) == [
        "resnet18/toy:features.3",
        "resnet18/toy:layer2.relu",
    ]
    pwsm = ds.sel(metric="pwsm")
    assert np.isnan(pwsm["distance"].values).all() and (pwsm["n_nan"].values == 1).all()
    assert (
        np.isnan(pwsm["trajectory"].values).all()
        and np.isnan(pwsm["reusability_mean"].values).all()
    )
    fine = ftdyn.analyze(
        [path], out=tmp_path / "c", metrics=["pwsm"], views="channels", progress=False
    )
    assert json.loads(fine.attrs["pwsm_degenerate"]) == []
    assert (fine["distance"].sel(metric="pwsm").isel(epoch=-1).values > 0.1).all()


def test_two_row_matrices_are_undefined_not_zero(tmp_path, capsys, cli_console):
    """2-pixel-high maps (map view) and 2 images (filter view): Procrustes and CKA would be 0
    whatever the checkpoints; analyze counts them as NaN, warns once per layer, lists them."""
    layers = [LayerSpec("features.3", 3, 2, 5), LayerSpec("layer2.relu", 4, 3, 3)]
    path, data = make_planted_store(tmp_path / "s.zarr", layers=layers)
    # the trap
    assert M.procrustes(V.map_(data[0]["features.3"]), V.map_(data[3]["features.3"])).max() < 1e-12
    ds = ftdyn.analyze(
        path, out=tmp_path / "m", metrics=["procrustes", "cka"], views="map", progress=False
    )
    err = capsys.readouterr().err
    degenerate = [line for line in err.splitlines() if "degenerate (0 whatever" in line]
    assert len(degenerate) == 1 and "features.3" in degenerate[0]
    assert "layer2.relu" not in degenerate[0]
    for m in ("procrustes", "cka"):
        assert json.loads(ds.attrs[f"{m}_degenerate"]) == ["resnet18/toy:features.3"]
        d = ds.sel(metric=m)
        assert np.isnan(d["distance"].values[0, 0]).all() and (d["n_nan"].values[0, 0] == 3).all()
        assert (d["distance"].values[0, 1, 1:] > 1e-3).all()  # 3 rows: a real value
    two = make_planted_store(tmp_path / "two.zarr", n=2, spc=1)[0]
    # default: procrustes, cka on filter
    ds = ftdyn.analyze(two, out=tmp_path / "f", progress=False)
    for m in ("procrustes", "cka"):
        assert np.isnan(ds["distance"].sel(metric=m).values).all()
        assert (ds["n_nan"].sel(metric=m).values == np.array([4, 6])[:, None]).all()
        assert len(json.loads(ds.attrs[f"{m}_degenerate"])) == 2


def test_pwsm_partial_whitening_is_not_flagged(planted, tmp_path, capsys, cli_console):
    """alpha=0.3 on the flat view (12 rows x 144 columns) is informative; only alpha=0 is
    degenerate."""
    path, data = planted
    ds = ftdyn.analyze(
        path,
        out=tmp_path / "r",
        metrics=["pwsm"],
        views="flat",
        alpha=0.3,
        progress=False,
        estimator="plugin",
    )
    assert "degenerate (0 whatever" not in capsys.readouterr().err
    assert json.loads(ds.attrs["pwsm_degenerate"]) == []
    # 144 columns per 12 images: informative, but no estimate is size-independent there
    assert ds["unreliable"].values[0, 0, 0]
    want = M.pwsm(V.flat(data[0]["features.3"]), V.flat(data[3]["features.3"]), 0.3)
    assert want > 0.1 and ds["distance"].values[0, 0, 0, 3] == pytest.approx(want, abs=1e-7)


def test_missing_chunk_and_stored_nonfinite_are_told_apart(tmp_path):
    """A deleted chunk file and a chunk holding inf/NaN (float16 overflow, a diverged checkpoint)
    give different one-line errors naming layer and *epoch* (store position 2 is epoch 5); no
    traceback, no results written."""
    import shutil

    path, data = make_planted_store(
        tmp_path / "s.zarr", dtype="float16", epochs=(0, 2, 5), noise=(0.0, 0.1, 0.3)
    )
    out = ["--out", str(tmp_path / "r"), "--no-progress", "--no-report"]
    hot = Path(shutil.copytree(path, tmp_path / "hot.zarr"))
    rows = slice(5, 10)
    over = {k: v[rows].copy() for k, v in data[5].items()}
    over["layer2.relu"][0, 1, 0, 0] = 7e4  # beyond float16's 65504: stored as inf
    StoreWriter(hot).write_region(2, 1, over)
    line = _one_line_error(["analyze", str(hot), *out])
    assert "layer layer2.relu" in line and "epoch 5" in line and "samples 5-9" in line, line
    assert (
        "1 infinite and 0 NaN" in line
        and "--dtype float32" in line
        and "file is missing" not in line
    ), line
    nan = Path(shutil.copytree(path, tmp_path / "nan.zarr"))
    bad = {k: v[rows].copy() for k, v in data[2].items()}
    bad["features.3"][2, 0] = np.nan
    StoreWriter(nan).write_region(1, 1, bad)
    line = _one_line_error(["analyze", str(nan), "--metric", "procrustes", "--view", "map", *out])
    assert (
        "layer features.3" in line and "epoch 2" in line and "36 NaN" in line and "diverged" in line
    ), line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    gone = Path(shutil.copytree(path, tmp_path / "gone.zarr"))
    (gone / "layer2_relu" / "c" / "2" / "1" / "0" / "0" / "0").unlink()
    line = _one_line_error(["analyze", str(gone), *out])
    assert "missing" in line and "checkpoints 5" in line and "infinite" not in line, line
    # removed while an analysis runs (after the store was opened): the read names it too
    exp = AI.open_experiments(path, AnalyzeConfig())[0]
    src = dict(exp.layers)["layer2.relu"]
    (path / "layer2_relu" / "c" / "2" / "1" / "0" / "0" / "0").unlink()
    with pytest.raises(
        FtdynError,
        match=r"layer2.relu \(array layer2_relu\), epoch 5, samples 5-9: the chunk "
        r"file is missing",
    ):
        AT.read_block(src, 2, 1)


def _not_a_terminal(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # rich would take stderr for a terminal
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_analyze_into_a_log_file_writes_lines_not_progress_bars(planted, tmp_path, monkeypatch):
    """`ftdyn analyze ... 2> log`: one line per finished stage and each caveat once, no carriage
    returns (Dask's bar wrote thousands of updates onto one line)."""
    import subprocess
    import sys

    _not_a_terminal(monkeypatch)
    path, _ = planted
    out = tmp_path / "r"
    command = [
        sys.executable,
        "-m",
        "ftdyn",
        "analyze",
        str(path),
        "--out",
        str(out),
        "--metric",
        "pwsm",
        "--view",
        "flat",
        "--no-report",
    ]
    log = tmp_path / "log"
    for _ in range(2):  # computed, then up to date
        with open(log, "a") as f:
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=f)
        assert done.returncode == 0, log.read_text()
    text = log.read_text()
    lines = text.splitlines()
    assert (
        "\r" not in text
        and "\x1b" not in text
        and all(line.startswith("ftdyn: ") for line in lines)
    ), text
    stages = [line for line in lines if "warning" not in line and "not converged" not in line]
    assert stages[0].startswith("ftdyn: distances computed (")
    assert stages[1:] == [
        f"ftdyn: results written to {out}",
        (
            f"ftdyn: {out} is up to date (same arguments and stores; every file verified); nothing"
            " to do."
        ),
    ]
    warned = [line for line in lines if line.startswith("ftdyn: warning: ")]
    degenerate = [line for line in warned if "degenerate (0 whatever the checkpoints)" in line]
    # each caveat once: the two degenerate layers, and the count of values that cannot be trusted
    assert len(degenerate) == 2 and len(warned) == 3
    assert sum("distances are unreliable" in line for line in warned) == 1


def test_a_python_caller_chooses_which_notes_and_caveats_it_sees(
    planted, tmp_path, monkeypatch, caplog, capsys
):
    """The library prints nothing itself: notes and stage lines go to the `ftdyn` loggers (seen with
    logging, silenced by level), caveats are FtdynWarnings (silenced with a warnings filter)."""
    import logging
    import warnings

    from ftdyn.errors import FtdynWarning

    _not_a_terminal(monkeypatch)
    path, _ = planted
    args = dict(metrics=["pwsm"], views="flat")
    with (
        caplog.at_level(logging.INFO, logger="ftdyn"),
        pytest.warns(FtdynWarning, match="degenerate"),
    ):
        ftdyn.analyze(path, out=tmp_path / "r", **args)
    assert [r.getMessage() for r in caplog.records][-1] == f"results written to {tmp_path / 'r'}"
    assert capsys.readouterr().err == ""
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="ftdyn"),
        warnings.catch_warnings(record=True) as seen,
    ):
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FtdynWarning)
        ftdyn.analyze(path, out=tmp_path / "s", **args)
    assert caplog.records == [] and [w for w in seen if issubclass(w.category, FtdynWarning)] == []
    assert capsys.readouterr().err == "" and json.loads(
        open_results(tmp_path / "s").attrs["pwsm_degenerate"]
    )


@pytest.mark.parametrize("terminal", [False, True])
def test_dask_progress_is_a_rich_bar_on_a_terminal_only(terminal, monkeypatch, capsys):
    import dask

    from ftdyn.progress import dask_progress

    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    with dask_progress("squares"):
        squares = dask.compute(
            *[dask.delayed(lambda x: x * x)(i) for i in range(5)], scheduler="threads"
        )
    assert squares == (0, 1, 4, 9, 16)
    err = capsys.readouterr().err
    assert ("squares" in err and "5/5" in err) if terminal else err == ""


@pytest.mark.parametrize("view", ["filter", "flat"])
def test_gram_panel_rows_equal_the_gram_of_the_layer(planted, view):
    """A Gram panel (several chunks, the last one short) against the later chunks: the rows of
    X·Xᵀ from the panel's first image on, filled in place."""
    path, data = planted
    src = dict(AI.open_experiments(path, AnalyzeConfig())[0].layers)["features.3"]
    X = torch.from_numpy(np.asarray(V.to_matrices(view, data[2]["features.3"]), dtype=np.float64))
    K = torch.matmul(X, X.mT)
    for panel, stream in (([0, 1], [2]), ([1], [2]), ([0], [1, 2]), ([2], [])):
        part = AT.gram_panel(AT.GramPanelRequest(src, 2, view, slice(None), panel, stream))
        r0, block = part.first_row, part.block
        r1 = src.rows(panel[-1]).stop
        assert r0 == src.rows(panel[0]).start and block.shape[-2:] == (r1 - r0, src.n - r0)
        torch.testing.assert_close(block, K[..., r0:r1, r0:], rtol=1e-12, atol=1e-9)
