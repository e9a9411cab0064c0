"""Interpretable distances: random-init ceiling, paired significance, linear probes (issue #16)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import ftdyn
from ftdyn import demos
from ftdyn import metrics as M
from ftdyn.analysis import interpret as AI
from ftdyn.analysis import plan as AP
from ftdyn.metrics.probe import linear_probe
from ftdyn.store import (
    LayerSpec,
    StoreSpec,
    StoreWriter,
    add_random_init,
    create_store,
    has_random_init,
    open_store,
    write_random_init,
)

N = 24
LAYERS = [LayerSpec("features.3", 4, 6, 6), LayerSpec("layer2.relu", 6, 3, 3)]


def make_store(
    path, acts_per_epoch: list[dict], *, baseline: dict | None = None, labels=None, spc=8, seed=0
):
    """A store holding exactly the given activations ({layer: (n, c, h, w)} per epoch 0, 1, ...)."""
    n = len(next(iter(acts_per_epoch[0].values())))
    layers = [LayerSpec(name, *a.shape[1:]) for name, a in acts_per_epoch[0].items()]
    rng = np.random.default_rng(seed)
    spec = StoreSpec(
        architecture="resnet18",
        layers=layers,
        checkpoints=[
            {"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": f"{e:064d}"}
            for e in range(len(acts_per_epoch))
        ],
        images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(n) % 3 if labels is None else labels,
        class_names=["a", "b", "c"],
        image_paths=[f"img/{i}.png" for i in range(n)],
        input_size=8,
        normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
        probe={"seed": seed},
        dtype="float32",
        samples_per_chunk=spc,
        model="m",
        dataset="toy",
    )
    path = create_store(path, spec)
    writer = StoreWriter(path)
    for i, acts in enumerate(acts_per_epoch):
        for c in range(writer.n_chunks):
            rows = writer.chunk_slice(c)
            writer.write_region(i, c, {k: v[rows] for k, v in acts.items()})
    if baseline is not None:
        add_random_init(path, seed=3, architecture="resnet18", init="test")
        for c in range(writer.n_chunks):
            rows = writer.chunk_slice(c)
            write_random_init(path, c, {k: v[rows] for k, v in baseline.items()})
    return path


def _acts(rng, n=N, layers=LAYERS, scale=1.0):
    return {
        l.name: (
            np.maximum(rng.normal(size=(n, l.channels, l.height, l.width)) + 0.5, 0).astype(
                "float32"
            )
            * scale
        )
        for l in layers
    }


def _drift(acts, rng, noise):
    return {
        k: np.maximum(v + noise * rng.normal(size=v.shape), 0).astype("float32")
        for k, v in acts.items()
    }


def test_baseline_arrays_are_laid_out_like_the_checkpoints(tmp_path):
    """A layer large enough for inner chunks: its baseline is sharded the same way, so that a
    filter group's task decodes only its channels of the baseline too."""
    import zarr

    rng = np.random.default_rng(0)
    layer = [LayerSpec("big", 64, 32, 32)]
    acts = _acts(rng, n=8, layers=layer)
    path = make_store(tmp_path / "s.zarr", [acts, acts], baseline=_acts(rng, n=8, layers=layer))
    group = zarr.open_group(path, mode="r")
    var = group.attrs["layer_variables"]["big"]
    stored, baseline = group[var], group["random_init__" + var]
    assert stored.shards is not None and stored.chunks[2] < 64  # the case this is about
    assert (baseline.shards, baseline.chunks) == ((1, *stored.shards[1:]), stored.chunks)


def test_unchanged_series_is_zero_and_random_checkpoint_is_one(tmp_path):
    rng = np.random.default_rng(0)
    src, rand = _acts(rng), _acts(rng)
    path = make_store(tmp_path / "s.zarr", [src, src, src, rand], baseline=rand)
    assert has_random_init(path)
    ds = ftdyn.analyze(
        path, out=tmp_path / "r", progress=False, bootstrap=20, seed=2, estimator="plugin"
    )
    rel = ds["relative_distance"].values[0]  # (metric, layer, epoch)
    assert np.isfinite(rel).all()
    np.testing.assert_allclose(rel[:, :, :3], 0, atol=1e-6)  # checkpoints equal to the source
    np.testing.assert_allclose(rel[:, :, 3], 1, atol=1e-6)  # a checkpoint that is the random init
    # the ceiling is the same engine's distance to the baseline, checked against the direct metric
    x, y = src["layer2.relu"], rand["layer2.relu"]
    flat = lambda a: a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])  # channels view: (n*h*w, c)
    want = float(M.pwsm(flat(x).astype(np.float64), flat(y).astype(np.float64)))
    assert float(ds["ceiling"].sel(metric="pwsm").values[0, 1]) == pytest.approx(want, abs=1e-9)
    lo, hi = ds["delta_ci_low"].values[0], ds["delta_ci_high"].values[0]
    odd = ds["unreliable"].values[0]  # (metric, layer): no replicates, no paired steps
    assert np.isnan(lo[odd]).all()
    lo, hi = lo[~odd], hi[~odd]
    assert (lo[:, 1:3] <= 1e-9).all() and (hi[:, 1:3] >= -1e-9).all()  # equal epochs: 0 inside
    assert (lo[:, 3] > 0).all()  # the jump to the random network is a significant step
    assert np.isnan(lo[:, 0]).all()
    assert "relative_distance = distance / ceiling" in ds.attrs["relative_note"]
    with open(tmp_path / "r" / "relative_distances.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 4 and float(rows[-1]["relative_distance"]) == pytest.approx(
        1, abs=1e-6
    )


def test_without_baseline_relative_values_are_nan_and_the_note_says_how(tmp_path):
    rng = np.random.default_rng(1)
    src = _acts(rng)
    path = make_store(tmp_path / "s.zarr", [src, _drift(src, rng, 0.3)])
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False)
    assert np.isnan(ds["ceiling"].values).all() and np.isnan(ds["relative_distance"].values).all()
    assert "--random-init-baseline" in ds.attrs["relative_note"]
    assert np.isfinite(ds["distance"].values).all()  # the distances themselves are untouched
    assert np.isnan(ds["delta_ci_low"].values).all()  # no bootstrap asked


def test_distances_do_not_change_with_a_baseline(tmp_path):
    rng = np.random.default_rng(2)
    src = _acts(rng)
    series = [src, _drift(src, rng, 0.2), _drift(src, rng, 0.5)]
    a = ftdyn.analyze(make_store(tmp_path / "a.zarr", series), out=tmp_path / "ra", progress=False)
    b = ftdyn.analyze(
        make_store(tmp_path / "b.zarr", series, baseline=_acts(rng)),
        out=tmp_path / "rb",
        progress=False,
    )
    # the baseline is one more checkpoint in the batch of pairs: the same values to rounding
    np.testing.assert_allclose(a["distance"].values, b["distance"].values, rtol=0, atol=1e-12)
    assert np.isfinite(b["relative_distance"].values).all()


def test_layer_order_p_separates_a_drifting_layer_from_a_stable_one(tmp_path):
    rng = np.random.default_rng(3)
    n = 64
    src = _acts(rng, n=n)
    last = {
        "features.3": np.maximum(
            src["features.3"] + 0.02 * rng.normal(size=src["features.3"].shape), 0
        ),
        "layer2.relu": np.maximum(
            src["layer2.relu"] + 1.5 * rng.normal(size=src["layer2.relu"].shape), 0
        ),
    }
    last = {k: v.astype("float32") for k, v in last.items()}
    path = make_store(tmp_path / "s.zarr", [src, last], labels=np.arange(n) % 3)
    ds = ftdyn.analyze(
        path, out=tmp_path / "r", progress=False, bootstrap=50, metrics=["pwsm", "cka"]
    )
    p = ds["layer_order_p"].values[0]  # (metric, layer, layer_other)
    assert (p[:, 0, 1] < 0.05).all() and (p[:, 1, 0] < 0.05).all()
    assert np.isnan(p[:, 0, 0]).all()
    # replicates of cka only: the same cka numbers (shared draws), nothing for pwsm
    only = ftdyn.analyze(
        path,
        out=tmp_path / "c",
        progress=False,
        bootstrap=50,
        metrics=["pwsm", "cka"],
        bootstrap_metrics=["cka"],
    )
    np.testing.assert_array_equal(only["layer_order_p"].values[0, 1], p[1])
    np.testing.assert_array_equal(only["ci_low"].values[0, 1], ds["ci_low"].values[0, 1])
    assert (
        np.isnan(only["layer_order_p"].values[0, 0]).all()
        and np.isnan(only["ci_low"].values[0, 0]).all()
    )
    assert np.isfinite(only["convergence"].values[0]).all()  # convergence is for every metric


def test_paired_intervals_are_narrower_than_unpaired_on_correlated_epochs(tmp_path):
    """Epochs 1 and 2 differ a little while both are far from the source: the paired interval of
    their step is far narrower than the one from two independent resamples."""
    rng = np.random.default_rng(4)
    n = 64
    src = _acts(rng, n=n, layers=LAYERS[1:])
    e1 = _drift(src, rng, 0.8)
    e2 = {
        k: np.maximum(v + 0.05 * rng.normal(size=v.shape), 0).astype("float32")
        for k, v in e1.items()
    }
    path = make_store(tmp_path / "s.zarr", [src, e1, e2], labels=np.arange(n) % 3)
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False, bootstrap=200, metrics=["pwsm"])
    paired = float(ds["delta_ci_high"].values[0, 0, 0, 2] - ds["delta_ci_low"].values[0, 0, 0, 2])
    # unpaired: the difference of two independent replicates of the same marginals
    lo, hi = ds["ci_low"].values[0, 0, 0], ds["ci_high"].values[0, 0, 0]
    unpaired = float(np.hypot(hi[1] - lo[1], hi[2] - lo[2]))
    assert paired < 0.5 * unpaired


def test_probe_accuracy_separable_and_shuffled(tmp_path):
    rng = np.random.default_rng(5)
    n, c = 60, 3
    labels = np.repeat(np.arange(3), n // 3)
    # "colour" at the first ReLU: channel k is bright for class k (pooled features separate the
    # classes)
    sep = rng.normal(size=(n, c, 4, 4)) * 0.3 + 2.0 * np.eye(c)[labels][:, :, None, None]
    sep = np.maximum(sep, 0).astype("float32")
    path = make_store(
        tmp_path / "s.zarr", [{"relu": sep}, {"relu": sep}], labels=labels, baseline={"relu": sep}
    )
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False, metrics=["cka"])
    assert (ds["probe_accuracy"].values[0, 0] > 0.95).all()
    assert float(ds["probe_chance"].values[0]) == pytest.approx(1 / 3)
    assert float(ds["probe_accuracy_random_init"].values[0, 0]) > 0.95
    shuffled = rng.permutation(labels)
    path2 = make_store(tmp_path / "t.zarr", [{"relu": sep}, {"relu": sep}], labels=shuffled)
    ds2 = ftdyn.analyze(path2, out=tmp_path / "r2", progress=False, metrics=["cka"])
    assert (np.abs(ds2["probe_accuracy"].values[0, 0] - 1 / 3) < 0.2).all()
    # the stored value is the probe of the pooled features, computed independently here
    pooled = sep.astype(np.float64).mean(axis=(2, 3))
    assert (
        float(ds["probe_accuracy"].values[0, 0, 0])
        == linear_probe(pooled, labels, folds=5, seed=0).accuracy
    )
    with open(tmp_path / "r" / "probes.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_paired_delta_and_order_p_helpers():
    reps = np.array([[0.0, 1.0, 1.5], [0.0, 1.2, 1.6], [0.0, 0.9, 1.4]])
    lo, hi = AI.paired_deltas(reps)
    assert np.isnan(lo[0]) and lo[1] >= 0.9 - 1e-12 and hi[2] <= 0.6 + 1e-12
    assert AI.order_p(np.ones(10), np.zeros(10)) == 0.0
    assert AI.order_p(np.array([1.0, -1.0]), np.zeros(2)) == 1.0
    assert np.isnan(AI.order_p(np.array([np.nan]), np.zeros(1)))
    rel = AI.relative(np.array([[0.0, 0.5, 1.0]]), np.array([0.5]))
    np.testing.assert_allclose(rel, [[0, 1, 2]])
    assert np.isnan(AI.relative(np.ones((1, 2)), np.array([0.0]))).all()


def test_open_store_ignores_the_baseline_as_an_epoch(tmp_path):
    rng = np.random.default_rng(6)
    src = _acts(rng)
    path = make_store(tmp_path / "s.zarr", [src, src], baseline=_acts(rng))
    ds = open_store(path)
    assert list(ds["checkpoint"].values) == [0, 1]
    assert ds.attrs["random_init_baseline"]["seed"] == 3
    with pytest.raises(ftdyn.FtdynError, match="seed 3"):
        add_random_init(path, seed=4, architecture="resnet18", init="test")


@pytest.mark.slow
def test_convergence_flags_a_layer_with_too_few_images_for_its_columns(
    tmp_path, capsys, cli_console
):
    """n = 768 images: 'narrow' has 4 columns per filter (plenty of images), 'wide' 784 (fewer
    images than
    columns: the biased estimators still drift with n); the debiased CKA converges on both."""
    rng = np.random.default_rng(7)
    n = 768
    src = {
        "narrow": np.maximum(rng.normal(size=(n, 2, 2, 2)) + 0.5, 0).astype("float32"),
        "wide": np.maximum(rng.normal(size=(n, 2, 28, 28)) + 0.5, 0).astype("float32"),
    }
    last = {
        k: np.maximum(v + rng.normal(size=v.shape), 0).astype("float32") for k, v in src.items()
    }
    path = make_store(tmp_path / "s.zarr", [src, last], labels=np.arange(n) % 3, spc=128)
    ds = ftdyn.analyze(
        path,
        out=tmp_path / "r",
        progress=False,
        metrics=["cka", "procrustes", "cka_debiased"],
        bootstrap=4,
        estimator="plugin",  # the plug-in CKA and Procrustes drift with n; cka_debiased does not
    )
    ok = ds["converged"].values[0]  # (metric, layer)
    # 'wide' has more columns than images: the plug-in values there are marked unreliable (and
    # get no bootstrap interval); the debiased CKA converges
    assert ok[:, 0].all() and ok[2, 1] and ds["unreliable"].values[0, :2, 1].all()
    conv = ds["convergence"].values[0]
    # all images
    np.testing.assert_allclose(conv[..., -1], ds["distance"].values[0][..., -1], rtol=1e-9)
    need = ds["images_needed"].values[0]
    assert np.isnan(need[:, 0]).all() and np.isnan(need[2, 1])
    err = capsys.readouterr().err
    # one short line: counts, images and where to look, not a list of layers
    (line,) = [l for l in err.splitlines() if "not converged" in l]
    hits = int(np.isfinite(need).sum())
    assert f"{hits} of 6 (experiment, metric, layer) distances not converged at {n} images" in line
    assert "convergence.csv" in line and "narrow" not in line and len(line) < 200
    # the debiased estimator against the direct metric on the pooled per-filter matrices
    x, y = src["narrow"].astype(np.float64), last["narrow"].astype(np.float64)
    per_filter = [
        float(M.cka_distance(x[:, c].reshape(n, -1), y[:, c].reshape(n, -1), debiased=True))
        for c in range(2)
    ]
    assert float(ds["distance"].sel(metric="cka_debiased").values[0, 0, 1]) == pytest.approx(
        np.mean(per_filter), abs=1e-9
    )
    with open(tmp_path / "r" / "convergence.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 3 and {r["converged"] for r in rows} == {"True", "False"}


def test_report_shows_relative_curves_probes_convergence_and_significance(tmp_path):
    from ftdyn.reporting import flat_steps, layer_order_findings, report
    from ftdyn.viz import read_index

    rng = np.random.default_rng(8)
    n = 48
    src = _acts(rng, n=n)
    e1 = {"features.3": src["features.3"], "layer2.relu": _drift(src, rng, 0.8)["layer2.relu"]}
    path = make_store(
        tmp_path / "s.zarr", [src, src, e1], labels=np.arange(n) % 3, baseline=_acts(rng, n=n)
    )
    ftdyn.analyze(path, out=tmp_path / "r", progress=False, bootstrap=30, metrics=["pwsm", "cka"])
    page = report(tmp_path / "r").read_text()
    assert "Interpreting the distances" in page and "relative_distance = distance / ceiling" in page
    kinds = {e["kind"]: e for e in read_index(tmp_path / "r" / "figures")}
    for kind, stem in (
        ("relative", "relative_curves"),
        ("probes", "probe_accuracy"),
        ("convergence", "convergence"),
    ):
        assert (
            kinds[kind]["file"] == f"{stem}.png"
            and (tmp_path / "r" / "figures" / f"{stem}.png").stat().st_size
        )
        assert f"{stem}.png" in page
    res = ftdyn.open_results(tmp_path / "r")
    found = layer_order_findings(res)
    # features.3 never moved, layer2.relu moved a lot: "early < deep" is significant for both
    # metrics
    assert {(f["metric"], f["significant"]) for f in found} == {("pwsm", True), ("cka", True)}
    flat = flat_steps(res)  # epoch 1 equals epoch 0 everywhere; epoch 2 equals it for features.3
    assert {(f["layer"], f["epoch"]) for f in flat} >= {
        ("features.3", 1),
        ("layer2.relu", 1),
        ("features.3", 2),
    }
    assert ("layer2.relu", 2) not in {(f["layer"], f["epoch"]) for f in flat}


def test_demo_findings_carry_relative_drift_significance_and_convergence(tmp_path):

    rng = np.random.default_rng(9)
    n = 48
    src = _acts(rng, n=n)
    moved = {"features.3": src["features.3"], "layer2.relu": _drift(src, rng, 0.8)["layer2.relu"]}
    path = make_store(
        tmp_path / "s.zarr", [src, src, moved], labels=np.arange(n) % 3, baseline=_acts(rng, n=n)
    )
    res = ftdyn.analyze(
        path, out=tmp_path / "r", progress=False, bootstrap=30, bootstrap_metrics=["cka"]
    )
    rows = {r["metric"]: r for r in demos.findings(res)}
    cka, pwsm = rows["cka"], rows["pwsm"]
    assert cka["early_closer_than_deep_significant"] and cka["early_closer_than_deep_p"] < 0.05
    assert (
        pwsm["early_closer_than_deep_p"] is None and not pwsm["early_closer_than_deep_significant"]
    )
    rel = res["relative_distance"].sel(metric="cka", epoch=2).values[0]
    assert cka["relative"] == {
        "features.3": pytest.approx(rel[0]),
        "layer2.relu": pytest.approx(rel[1]),
    }
    assert {"layer": "features.3", "epoch": 1} in cka["steps_not_distinguishable_from_0"]
    assert {"layer": "layer2.relu", "epoch": 2} not in cka["steps_not_distinguishable_from_0"]
    assert set(cka["not_converged"]) <= {"features.3", "layer2.relu"}
    text = demos.format_findings(list(rows.values()))
    assert "relative" in text and "0.000" in text  # the p of a significant order is printed


def test_bootstrap_groups_are_shared_by_the_row_and_gram_sides(tmp_path):
    """4 groups: the Gram-side layer (features.3: 36 columns > 24 images) and the row-side one
    resample the same images, so their replicates are paired; the point values do not change.
    (With 8 groups layer2.relu's CKA would take the Gram side too: its 3 Grams of 24 × 24 are
    smaller than 8 groups' 5 statistics of 9 × 9 per filter.)"""
    rng = np.random.default_rng(10)
    src = _acts(rng)
    path = make_store(tmp_path / "s.zarr", [src, _drift(src, rng, 0.3), _drift(src, rng, 0.6)])
    # the debiased CKA: no column limit, so both layers are trusted and get replicates
    debiased = dict(progress=False, metrics=["cka"])
    a = ftdyn.analyze(path, out=tmp_path / "a", bootstrap=20, bootstrap_groups=4, **debiased)
    b = ftdyn.analyze(path, out=tmp_path / "b", **debiased)
    # summed per group
    np.testing.assert_allclose(a["distance"].values, b["distance"].values, atol=1e-12)
    # Gram side: resamples single images
    assert json.loads(a.attrs["plan"])[0]["bootstrap_units"] == "images"
    assert json.loads(a.attrs["plan"])[1]["bootstrap_units"] == 4
    assert np.isfinite(a["layer_order_p"].values[0, 0, 0, 1])
    with pytest.raises(ftdyn.FtdynError, match=r"^bootstrap_groups"):
        ftdyn.analyze(path, out=tmp_path / "c", progress=False, bootstrap=20, bootstrap_groups=1)


def _unit_data(n=96, units=8, filters=6, cols=6, T=3):
    """Per-filter activations (T, n, filters, cols) with a dead filter, a constant one, one active
    only in two images of one unit (exactly zero in every replicate that misses it) and one
    almost zero except in three images."""
    from ftdyn import summary as S

    rng = np.random.default_rng(1)
    unit = S.shared_units(n, units, 0, 0)
    base = np.maximum(rng.normal(0.5, 1.0, (n, filters, cols)), 0)
    X = np.stack([np.maximum(base + 0.4 * t * rng.normal(size=base.shape), 0) for t in range(T)])
    X[:, :, 1] = 0.0
    X[2, :, 2] = 1.5
    X[:, :, 3] = 0.0
    X[:, np.flatnonzero(unit == 3)[:2], 3] = rng.uniform(3.0, 5.0, (T, 2, cols))
    X[:, :, 4] *= 1e-3  # tiny except in three images: the resamples that miss them cancel digits
    X[:, np.flatnonzero(unit == 1)[:3], 4] += 50.0
    return X, unit, S.shared_counts(units, 60, 0, 0)


def test_cka_replicates_from_unit_coefficients_equal_resampled_ones():
    """Row and Gram side: the O(U³) CKA replicates equal CKA of each resample computed directly,
    also for a filter that is dead in some resamples only."""
    import torch

    from ftdyn import summary as S
    from ftdyn.analysis.grams import _Gram, _gram_cka_replicates
    from ftdyn.analysis.rows import RowAccumulator, _cka_replicates

    X, unit, counts = _unit_data()
    T, _n, B, p = X.shape
    Xt = torch.from_numpy(X).permute(0, 2, 1, 3)  # (T, B, n, p)
    idx = S.shared_indices(unit, counts)
    direct = np.array(
        [
            [
                [
                    (
                        1 - M.linear_cka(Xt[0, f, ii].numpy(), Xt[t, f, ii].numpy())
                        if np.ptp(Xt[0, f, ii].numpy()) and np.ptp(Xt[t, f, ii].numpy())
                        else np.nan
                    )
                    for f in range(B)
                ]
                for t in range(T)
            ]
            for ii in idx
        ]
    )
    # row side: per-unit statistics as row_leaf accumulates them (reference pairs)
    acc = RowAccumulator.zeros(8, T, (B,), p, all_pairs=False, device="cpu")
    for u in range(8):
        rows = torch.from_numpy(np.flatnonzero(unit == u))
        x0 = Xt[0][:, rows]
        acc.n[u] = len(rows)
        acc.xx[u] = x0.mT @ x0
        for t in range(T):
            xt = Xt[t][:, rows]
            acc.s[u, t], acc.xy[u, t], acc.yy[u, t] = xt.sum(1), x0.mT @ xt, xt.mT @ xt
    K = [Xt[t] @ Xt[t].mT for t in range(T)]
    grams = [_Gram(k) for k in K]
    # two filters at a time: the replicates are computed in parts of the filter group
    block = 2 * K[0].shape[-1] ** 2 * K[0].element_size()
    gram = _gram_cka_replicates(grams[0], {t: grams[t] for t in range(1, T)}, unit, counts, block)
    rows = _cka_replicates(acc, 0, list(range(1, T)), counts)
    for t in range(1, T):
        row = rows[t]
        assert np.array_equal(np.isnan(row), np.isnan(direct[:, t])) and np.isnan(row[:, 3]).any()
        np.testing.assert_allclose(row, direct[:, t], rtol=0, atol=1e-10)
        np.testing.assert_allclose(gram[t], direct[:, t], rtol=0, atol=1e-10)


@pytest.mark.parametrize("bootstrap, split", [(0, False), (12, False), (12, True)])
def test_convergence_subsets_equal_the_metrics_on_those_images(
    tmp_path, monkeypatch, bootstrap, split
):
    """Every fraction of ``convergence`` is the metric computed directly on the images of its
    nested subset: the row-side subsets come from the main pass's groups (the bootstrap's 8, or
    without one the convergence check's 4 where they take no extra pass) or from the
    convergence run's own (4, the first 2 kept); the Gram side (features.3:
    36 columns > 24 images) cuts its subsets out of the Grams. The baseline is no epoch.
    ``split``: CKA alone bootstrapped and filter groups of 2, so each per-filter view gets a
    job for CKA (on the Gram side, whose Grams also give Procrustes' subsets) and one for
    Procrustes (on the row side, no groups of images)."""
    from ftdyn.analysis.plan import nested_subsets, nested_units

    rng = np.random.default_rng(11)
    src = _acts(rng)
    series = [src, _drift(src, rng, 0.3), _drift(src, rng, 0.6)]
    path = make_store(tmp_path / "s.zarr", series, baseline=_acts(rng))
    options = dict(bootstrap=bootstrap, bootstrap_groups=8, estimator="plugin")
    if split:
        monkeypatch.setattr(AP, "MAX_FILTER_GROUP", 2)
        options["bootstrap_metrics"] = ["cka"]
    ds = ftdyn.analyze(path, out=tmp_path / "r", progress=False, seed=5, **options)
    # the default preset: pwsm on channels, Procrustes and CKA per filter
    metric = {"pwsm": M.pwsm, "procrustes": M.procrustes, "cka": M.cka_distance}
    plan = {
        (j["layer"], m): j for j in json.loads(ds.attrs["plan"]) for m in j["convergence_metrics"]
    }
    assert {j["side"] for j in plan.values()} == {"row", "gram"}
    if split:  # Procrustes' subsets from CKA's Gram-side job
        job = plan[(LAYERS[1].name, "procrustes")]
        assert job["side"] == "gram" and job["metrics"] == ["cka"]
    for l, layer in enumerate(LAYERS):
        x, y = (a[layer.name].astype(np.float64) for a in (src, series[-1]))
        for mi, m in enumerate(ds["metric"].values):
            view = str(ds["view"].values[mi])
            job = plan[(layer.name, m)]
            if job["side"] == "gram":
                groups = nested_units(ftdyn.config.AnalyzeConfig(**options), N)
            else:
                # the main pass's groups, else the convergence run's
                groups = job["image_groups"] if job["image_groups"] > 1 else 4
            subsets = nested_subsets(N, groups, 5, 0)
            for f, idx in enumerate(subsets):
                a, b = x[idx], y[idx]
                if view == "channels":  # one (images·h·w, channels) matrix
                    flat = lambda t: t.transpose(0, 2, 3, 1).reshape(-1, t.shape[1])
                    want = float(metric[m](flat(a), flat(b)))
                else:  # per filter: (images, h·w), then the mean over filters
                    want = np.mean(
                        [
                            float(
                                metric[m](
                                    a[:, c].reshape(len(idx), -1), b[:, c].reshape(len(idx), -1)
                                )
                            )
                            for c in range(layer.channels)
                        ]
                    )
                got = float(ds["convergence"].values[0, mi, l, f])
                assert got == pytest.approx(want, abs=1e-8), (m, layer.name, f)
    last = ds["distance"].values[0][..., -1]
    np.testing.assert_array_equal(ds["convergence"].values[0][..., -1], last)
    assert list(ds["epoch"].values) == [0, 1, 2]


@pytest.mark.parametrize("bootstrap", [0, 12])
def test_convergence_subset_too_small_for_the_metric_is_nan_not_a_number(tmp_path, bootstrap):
    """PWSM with α = 0 on 40 channels: 48 images have enough rows, half or a quarter of them do
    not (full whitening then aligns any two models): those fractions are NaN, never a distance,
    and the layer is neither converged nor given an image count."""
    rng = np.random.default_rng(12)
    src = {"wide": np.maximum(rng.normal(size=(48, 40, 1, 1)) + 0.5, 0).astype("float32")}
    path = make_store(tmp_path / "s.zarr", [src, _drift(src, rng, 0.5)], labels=np.arange(48) % 3)
    ds = ftdyn.analyze(
        path,
        out=tmp_path / "r",
        progress=False,
        metrics=["pwsm"],
        views="channels",
        bootstrap=bootstrap,
        bootstrap_groups=8,
    )
    conv = ds["convergence"].values[0, 0, 0]
    assert np.isnan(conv[:2]).all() and np.isfinite(conv[2])
    assert not ds["converged"].values[0, 0, 0] and np.isnan(ds["images_needed"].values[0, 0, 0])
    # the demo's findings call it undefined, not "not converged"
    (row,) = demos.findings(ds)
    assert row["convergence_undefined"] == ["wide"] and row["not_converged"] == []


def test_bootstrapped_metrics_in_a_job_of_their_own_give_the_same_results(tmp_path, monkeypatch):
    """Where keeping every metric's statistics per group of images would take several tasks,
    the bootstrapped metric (CKA) gets a job of its own (here on the Gram side) and Procrustes
    one without groups: distances, intervals, paired tests and convergence subsets are those of
    the single job, to rounding."""
    rng = np.random.default_rng(13)
    src = _acts(rng)
    path = make_store(tmp_path / "s.zarr", [src, _drift(src, rng, 0.3), _drift(src, rng, 0.6)])
    options = dict(
        bootstrap=20, bootstrap_groups=8, bootstrap_metrics=["cka"], seed=3, estimator="plugin"
    )
    one = ftdyn.analyze(path, out=tmp_path / "one", progress=False, **options)
    monkeypatch.setattr(AP, "MAX_FILTER_GROUP", 2)
    split = ftdyn.analyze(path, out=tmp_path / "split", progress=False, **options)
    jobs = [
        (j["layer"], j["metrics"], j["side"], j["image_groups"], j["convergence_metrics"])
        for j in json.loads(split.attrs["plan"])
    ]
    assert (LAYERS[1].name, ["cka"], "gram", None, ["procrustes", "cka"]) in jobs
    # Procrustes' subsets come from the Grams: its statistics keep no groups of images
    assert (LAYERS[1].name, ["procrustes"], "row", 1, []) in jobs
    assert len(jobs) == len(json.loads(one.attrs["plan"])) + 1
    for var in ("distance", "ci_low", "ci_high", "delta_ci_low", "layer_order_p", "convergence"):
        np.testing.assert_allclose(split[var].values, one[var].values, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bootstrap", [0, 12])
def test_pooled_features_kept_while_reading_equal_the_stored_means(
    tmp_path, monkeypatch, bootstrap
):
    """The probes' pooled features come from the row-side leaves as they read (over filter
    groups, checkpoint passes, sample chunks and groups of images) and equal the spatial means
    of the stored activations at every epoch and the baseline; a layer that no row-side job
    reads gets them from a task of its own."""
    rng = np.random.default_rng(21)
    epochs = [_acts(rng, n=40)]  # more images than columns: Procrustes on the row side
    epochs += [_drift(epochs[0], rng, 0.2 * (k + 1)) for k in range(3)]
    base = _acts(rng, n=40, scale=2.0)
    path = make_store(tmp_path / "s.zarr", epochs, baseline=base, spc=5)
    monkeypatch.setattr(AP, "MAX_FILTER_GROUP", 2)
    monkeypatch.setattr(AP, "MAX_CHECKPOINTS_PER_PASS", 2)
    seen = {}
    probes = AI.probes

    def spy(exps, args, epochs, pooled):
        seen["pooled"] = pooled
        return probes(exps, args, epochs, pooled)

    def assert_stored_means():
        for l, layer in enumerate(LAYERS):
            want = np.stack([a[layer.name] for a in [*epochs, base]]).astype(np.float64)
            np.testing.assert_array_equal(seen["pooled"][l], want.mean(axis=(-2, -1)))

    monkeypatch.setattr(AI, "probes", spy)
    ds = ftdyn.analyze(
        path, out=tmp_path / "r", progress=False, bootstrap=bootstrap, metrics=["procrustes"]
    )
    plan = json.loads(ds.attrs["plan"])
    assert all(p["pooled_features"] for p in plan) and len(plan) == len(LAYERS)
    assert max(p["filter_groups"] * p["checkpoint_passes"] for p in plan) > 2
    assert_stored_means()
    # the Gram side reads whole images: its layers' features come from a task of their own
    monkeypatch.setattr(AP, "MAX_FILTER_GROUP", None)
    ds2 = ftdyn.analyze(path, out=tmp_path / "g", progress=False, metrics=["cka_debiased"])
    assert not any(p["pooled_features"] for p in json.loads(ds2.attrs["plan"]))
    assert_stored_means()
