"""The built-in demo: the paper's study in miniature, on generated images, on a CPU.

``demo(out)`` runs the whole pipeline with the same API a user calls:

1. generate the four built-in domains (:mod:`ftdyn.domains`): a ``source`` and three
   targets, ``similar`` (new object classes, like AwA2), ``scene`` (same images,
   labelled by background, like 15-Scene) and ``dissimilar`` (objects on white, like
   Fruits-360);
2. pre-train a source model from random init on ``source`` (there are no ImageNet
   weights offline), then fine-tune it on each target from its last checkpoint;
3. extract the default layers' ReLU activations on each target's validation split;
4. analyze the three stores together, draw the figures and write the report;
5. print the findings table: per target and metric, the distance of the shallowest
   and deepest layer at the last epoch and the layer-averaged reusability.

Every stage resumes, so running the demo again finishes an interrupted run or does
nothing. Nothing here tunes a metric towards a finding: the table states what came out.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import check_seed
from .devices import resolve_device
from .errors import check_output_folder


@dataclass(frozen=True)
class DemoSize:
    n_classes: int
    n_source_train: int  # images per class of the source domain (pre-training from scratch needs more)
    n_train: int  # images per class of each target
    n_val: int
    image_size: int
    source_epochs: int
    target_epochs: int
    batch_size: int
    probe_per_class: int


#: the default size finishes in a few minutes on 2 CPU cores; ``quick`` is for tests
SIZES = {
    # 40 probe images per class: the deepest ResNet18 layer (512 channels, 2x2 at 64 px) then has
    # 960 rows in the channels view, so PWSM's full whitening is not degenerate (needs rows > columns)
    "default": DemoSize(n_classes=6, n_source_train=150, n_train=60, n_val=40, image_size=64, source_epochs=12,
                        target_epochs=6,
                        batch_size=32, probe_per_class=40),
    "quick": DemoSize(n_classes=3, n_source_train=8, n_train=8, n_val=4, image_size=32, source_epochs=1, target_epochs=2,
                      batch_size=8, probe_per_class=4),
}
ARCH = "resnet18"
SOURCE_LR = 1e-3  # from random init the source needs a larger step than fine-tuning
# the ImageNet crop (down to 8 % of the area) often cuts the small objects out of 64 px images
CROP_SCALE = 0.5
TARGET_LR = 1e-4  # the paper's fine-tuning learning rate


def demo(out: str | os.PathLike = "demo-out", *, quick: bool = False, device: str = "auto", seed: int = 0,
         arch: str = ARCH, progress: bool = True) -> Path:
    """Run the demo into ``out``; returns the path of ``report.html``."""
    from .analysis import analyze
    from .domains import SOURCE, TARGETS, generate_domain
    from .extraction import extract
    from .reporting import report
    from .training import train

    out = Path(out)
    check_output_folder(out, flag="OUT_DIR")
    resolve_device(device)  # a bad --device or --seed fails now, not after the data is generated
    seed = check_seed(seed)
    size = SIZES["quick" if quick else "default"]
    started = time.perf_counter()
    data, series, stores = out / "data", out / "series", out / "stores"

    def step(text: str) -> None:
        print(f"[demo {time.perf_counter() - started:6.1f}s] {text}", flush=True)

    step(f"generating the built-in domains into {data}")
    for name in (SOURCE, *TARGETS):
        n_train = size.n_source_train if name == SOURCE else size.n_train
        generate_domain(name, data / name, n_train_per_class=n_train, n_val_per_class=size.n_val,
                        image_size=size.image_size, seed=seed, n_classes=size.n_classes)

    common = dict(arch=arch, batch_size=size.batch_size, input_size=size.image_size, seed=seed, device=device,
                  progress=progress, resume=True, crop_scale=CROP_SCALE)
    step(f"pre-training the source model ({arch}, random init) on '{SOURCE}'")
    source_series = train(data / SOURCE, out=series / SOURCE, weights="none", epochs=size.source_epochs,
                          lr=SOURCE_LR, **common)
    source_ckpt = source_series / f"epoch_{size.source_epochs:03d}.pt"

    store_paths = []
    for target in TARGETS:
        step(f"fine-tuning on '{target}' from the source model")
        target_series = train(data / target, out=series / target, init=source_ckpt, epochs=size.target_epochs,
                              lr=TARGET_LR, **common)
        step(f"extracting activations of '{target}'")
        store_paths.append(extract(target_series, data=data / target / "val", out=stores / f"{target}.zarr",
                                   per_class=size.probe_per_class, device=device, model_name=arch,
                                   dataset_name=target, progress=progress))

    step("analyzing the three stores together")
    results_dir = out / "results"
    results = analyze(store_paths, out=results_dir, progress=progress)
    step("drawing figures and writing the report")
    page = report(results_dir, stores=store_paths)
    table = findings(results)
    (results_dir / "findings.json").write_text(json.dumps(
        {"size": asdict(size), "arch": arch, "seconds": round(time.perf_counter() - started, 1), "findings": table},
        indent=2))
    print(format_findings(table))
    step(f"done; open {page}")
    return page


def findings(results) -> list[dict]:
    """Per experiment and metric: shallowest vs deepest layer at the last epoch, and reusability."""
    rows = []
    for experiment in results["experiment"].values:
        for metric in results["metric"].values:
            dist = results["distance"].sel(experiment=experiment, metric=metric)
            layers = [str(l) for l in results["layer"].sel(experiment=experiment).values if str(l)]
            last = dist.isel(layer_index=slice(0, len(layers))).dropna("epoch", how="all").isel(epoch=-1)
            values = last.values
            rows.append({
                "experiment": str(experiment),
                "metric": str(metric),
                "view": str(results["view"].sel(metric=metric).values),
                "epoch": int(last["epoch"].values),
                "shallowest": {"layer": layers[0], "distance": float(values[0])},
                "deepest": {"layer": layers[-1], "distance": float(values[-1])},
                "early_closer_than_deep": bool(values[0] < values[-1]),
                "increasing_with_depth": bool(np.all(np.diff(values[np.isfinite(values)]) >= 0)),
                "reusability_mean": float(results["reusability_mean"].sel(experiment=experiment, metric=metric)),
                "reusability_std": float(results["reusability_std"].sel(experiment=experiment, metric=metric)),
            })
    return rows


def format_findings(rows: list[dict]) -> str:
    lines = [f"{'experiment':<28} {'metric':<11} {'shallow':>8} {'deep':>8} {'early<deep':>10} {'reusability':>16}"]
    for r in rows:
        lines.append(f"{r['experiment']:<28} {r['metric']:<11} {r['shallowest']['distance']:8.4f} "
                     f"{r['deepest']['distance']:8.4f} {str(r['early_closer_than_deep']):>10} "
                     f"{r['reusability_mean']:9.4f}±{r['reusability_std']:.4f}")
    for metric in dict.fromkeys(r["metric"] for r in rows):
        ranked = sorted((r for r in rows if r["metric"] == metric), key=lambda r: -r["reusability_mean"])
        lines.append(f"{metric}: most drift -> least: " + ", ".join(r["experiment"] for r in ranked))
    return "\n".join(lines)
