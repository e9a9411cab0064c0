"""Runs compared: run-vs-run distances, the seed floor and departure epochs on planted runs.

A planted run: epoch e of a layer is ``source + drift[e] * (SHARED[layer] * D_target + D_seed)``
on the same probe images: the change a target asks for (the same for every seed) plus the
run's own. The ``shallow`` layer only changes with the seed (it does not respond to the target);
the ``deep`` one mostly with the target. So the controls have known answers: a run against itself
is 0 apart, two seeds give a floor between 0 and the random-init ceiling, the shallow layer never
rises above its floor, and a deep layer that changes only from epoch k on departs at k.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_cli

import ftdyn
from ftdyn.analysis.compare import departure, one_sided_p
from ftdyn.store import LayerSpec, StoreSpec, StoreWriter, add_random_init, create_store
from ftdyn.store.writing import write_random_init

N, C, H, W = 48, 6, 3, 3
EPOCHS = (0, 1, 2, 3)
LAYERS = ("shallow", "deep")


def _source(rng_seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    return {name: rng.normal(size=(N, C, H, W)) for name in LAYERS}


#: weight of the target's direction of change, per layer (the seed's own has weight 1)
SHARED = {"shallow": 0.0, "deep": 3.0}


def make_run(path, *, seed, drift, target=0, probe="probe-A", manifest_seed=None):
    """A store of a planted run: ``drift[layer][e]`` scales the layer's change at epoch e, the
    ``target``'s direction plus the ``seed``'s own; the source and the probe images are shared
    by all runs."""
    source = _source()
    toward = np.random.default_rng([target, 50])
    shared = {name: toward.normal(size=source[name].shape) for name in LAYERS}
    rng = np.random.default_rng([seed, 60])
    images = np.random.default_rng(1).integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    manifest = None
    if manifest_seed is not None:
        manifest = {
            "format": "ftdyn-series",
            "architecture": "toy",
            "hyperparameters": {"target": target},
            "seed": manifest_seed,
            "epochs": [{"epoch": e} for e in EPOCHS],
        }
    spec = StoreSpec(
        architecture="toy",
        layers=[
            LayerSpec(name, C, H, W, {"size": [1, 1], "jump": [1, 1], "start": [0, 0]})
            for name in LAYERS
        ],
        checkpoints=[
            {"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": f"{e:064d}"} for e in EPOCHS
        ],
        images=images,
        labels=np.arange(N) % 4,
        class_names=["a", "b", "c", "d"],
        image_paths=[f"img/{i}.png" for i in range(N)],
        input_size=4,
        normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
        probe={"seed": 0, "fingerprint": probe},
        dtype="float32",
        samples_per_chunk=16,
        model="toy",
        dataset="planted",
        manifest=manifest,
    )
    create_store(path, spec)
    writer = StoreWriter(path)
    direction = {
        name: SHARED[name] * shared[name] + rng.normal(size=source[name].shape) for name in LAYERS
    }
    for i, _ in enumerate(EPOCHS):
        acts = {
            name: (source[name] + drift[name][i] * direction[name]).astype(np.float32)
            for name in LAYERS
        }
        for chunk in range(writer.n_chunks):
            rows = writer.chunk_slice(chunk)
            writer.write_region(i, chunk, {k: v[rows] for k, v in acts.items()})
    add_random_init(path, seed=0, architecture="toy", init="planted")
    noise = np.random.default_rng(99)
    baseline = {name: noise.normal(size=(N, C, H, W)).astype(np.float32) for name in LAYERS}
    for chunk in range(writer.n_chunks):
        rows = writer.chunk_slice(chunk)
        write_random_init(path, chunk, {k: v[rows] for k, v in baseline.items()})
    return path


EARLY = {"shallow": (0, 0.1, 0.1, 0.1), "deep": (0, 0.1, 0.1, 0.1)}
#: the deep layer changes only from epoch 2 on
LATE = {"shallow": (0, 0.1, 0.1, 0.1), "deep": (0, 0, 0.3, 0.3)}

OPTIONS = dict(metrics=["cka"], bootstrap=30, progress=False, memory_limit="1GB")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two replicates of one condition and two of another (recognised from their training
    manifests), the first run written again without a manifest (``twin``), and a run of the
    second target without replicates (``solo``)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {
        "a1": dict(seed=1, drift=EARLY, manifest_seed=1),
        "a2": dict(seed=2, drift=EARLY, manifest_seed=2),
        "late1": dict(seed=3, drift=LATE, target=1, manifest_seed=3),
        "late2": dict(seed=4, drift=LATE, target=1, manifest_seed=4),
        "twin": dict(seed=1, drift=EARLY),
        "solo": dict(seed=5, drift=LATE, target=1),
    }
    stores = [make_run(root / f"{name}.zarr", **kw) for name, kw in runs.items()]
    return ftdyn.analyze(stores, out=root / "res", experiment_names=list(runs), **OPTIONS)


def _sel(da, **where):
    return da.sel(**where).values


def test_replicates_are_recognised_from_the_training_manifests(compared):
    assert compared.attrs["replicate_groups"] == '[["a1", "a2"], ["late1", "late2"]]'
    groups = ["a1,a2", "a1,a2", "late1,late2", "late1,late2", "", ""]
    assert list(compared["replicates"].values) == groups


def test_the_same_run_twice_is_zero_apart(compared):
    run = _sel(compared["run_distance"], experiment="a1", experiment_other="twin")
    assert np.allclose(run, 0.0, atol=1e-9)


def test_seeds_give_a_floor_above_zero_and_below_the_ceiling(compared):
    floor = compared["floor"].sel(experiment="a1", epoch=3)
    ceiling = compared["ceiling"].sel(experiment="a1")
    assert (floor > 0.001).all() and (floor < ceiling).all()
    # the floor is the distance between the replicates, seen from either side
    both = _sel(compared["run_distance"], experiment="a2", experiment_other="a1", epoch=3)
    assert np.allclose(floor.values, both)
    assert (compared["floor_ci_low"] <= compared["floor"]).sel(experiment="a1", epoch=3).all()
    assert np.isnan(compared["floor"].sel(experiment="solo")).all()  # no replicate


def test_a_layer_changed_only_by_the_seed_stays_at_its_floor(compared):
    shallow = compared.sel(experiment=["a1", "a2", "late1", "late2"], layer_index=0)
    assert (shallow["drift_above_floor"].sel(epoch=[1, 2, 3]) < 0).all()
    assert np.isnan(shallow["departure_epoch"]).all()


def test_a_layer_that_changes_from_epoch_k_departs_at_k(compared):
    deep = compared["departure_epoch"].sel(layer_index=1)
    assert (deep.sel(experiment=["a1", "a2"]) == 1).all()
    assert (deep.sel(experiment=["late1", "late2"]) == 2).all()
    # without replicates the floor is 0: the seed's own change at the shallow layer counts
    assert (compared["departure_epoch"].sel(experiment="solo", layer_index=0) == 1).all()
    # the other target is farther from a1 at the deep layer than a1's seed floor
    run = compared["run_distance"].sel(experiment="a1", experiment_other="late1", layer_index=1)
    assert (run.sel(epoch=3) > compared["floor"].sel(experiment="a1", layer_index=1, epoch=3)).all()


def test_runs_of_the_same_seed_declared_replicates_have_floor_zero(tmp_path):
    a = make_run(tmp_path / "a.zarr", seed=1, drift=EARLY)
    b = make_run(tmp_path / "b.zarr", seed=1, drift=EARLY)
    ds = ftdyn.analyze(
        [a, b], out=tmp_path / "res", experiment_names=["a", "b"], replicates=["a,b"], **OPTIONS
    )
    assert np.allclose(ds["floor"].sel(epoch=[1, 2, 3]).values, 0.0, atol=1e-9)


def test_stores_with_other_probe_images_are_not_compared(tmp_path):
    a = make_run(tmp_path / "a.zarr", seed=1, drift=EARLY)
    b = make_run(tmp_path / "b.zarr", seed=2, drift=EARLY, probe="probe-B")
    names = ("--name", "a", "--name", "b", "--no-progress", "--no-report")
    refused = run_cli("analyze", a, b, "-o", tmp_path / "res", *names, "--replicates", "a,b")
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip().splitlines()[-1] == (
        "ftdyn: error: --replicates: a and b cannot be compared: their probe images differ (another"
        " probe set, order or classes); replicates must be probed with the same images (same"
        " ftdyn extract --data, --per-class and --seed)."
    )
    assert not (tmp_path / "res").exists()
    # not asked for: analyzed each against its source, and not compared run to run
    done = run_cli("analyze", a, b, "-o", tmp_path / "res2", *names, "--metric", "cka")
    assert done.exit_code == 0, done.output
    ds = ftdyn.open_results(tmp_path / "res2")
    assert np.isnan(ds["run_distance"]).all() and ds.attrs["run_pairs"] == "[]"
    assert (tmp_path / "res2" / "runs.csv").read_text().count("\n") == 1  # the header


def test_one_sided_p_and_departure():
    reps = np.array([[0.1, -0.2, 0.3], [0.2, -0.1, 0.4], [0.3, 0.1, 0.5]])
    assert np.allclose(one_sided_p(reps), [0.25, 0.75, 0.25])
    assert departure(np.array([1.0, 0.5, 0.01, 0.2]), [0, 1, 2, 3], 0) == 2
    assert np.isnan(departure(np.array([0.0, 0.5, 0.2]), [0, 1, 2], 0))
