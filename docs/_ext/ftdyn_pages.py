"""Pages generated from the code at build time, so the docs cannot drift from it.

* ``_generated/store_schema.md`` and ``_generated/results_schema.md``: the store and results
  layouts from the schema constants of :mod:`ftdyn.store` and :mod:`ftdyn.results` (names,
  dimensions, CSV columns), with the descriptions below. A name the code has and the
  descriptions lack (or the reverse) stops the build with a warning naming it.
* ``_generated/benchmarks.md``: one table per benchmark script from ``benchmarks/results/``.
* ``_generated/layers.md``: the module layers from ``tests/test_architecture.py``, each
  subpackage with its submodules.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = Path(__file__).resolve().parents[1] / "_generated"

# --- the store (ftdyn.store) ------------------------------------------------------------------
# Descriptions only: the names come from the code. "V" stands for one layer's variable.
STORE_VARIABLES = {
    "V": (
        "checkpoint, sample, V_channel, V_y, V_x",
        "float16 (or float32)",
        "activations of one layer (the ReLU outputs for the paper's layers), always (channel, "
        "y, x); attrs `layer` (module name), `layer_index`, `receptive_field` {size, jump, "
        "start} (y, x) in input pixels; a token model's layer also `tokens` {grid, prefix_tokens}",
    ),
    "images": (
        "sample, image_y, image_x, rgb",
        "uint8",
        "probe images after resize/crop, before normalization, RGB",
    ),
    "complete": (
        "checkpoint, chunk",
        "uint8",
        "1 once a (checkpoint, sample chunk) region is written for every layer",
    ),
    "random_init__V": (
        "random_init, sample, V_channel, V_y, V_x",
        "as `V`",
        "optional (`ftdyn extract --random-init-baseline`): the same layer of a seeded, "
        "randomly initialized model of the same architecture on the same probe images; *not* "
        "an epoch; the ceiling of relative distances",
    ),
    "random_init_complete": (
        "random_init, chunk",
        "uint8",
        "optional: 1 once a sample chunk of the baseline is written",
    ),
}
STORE_COORDS = {
    "checkpoint": "int: the epoch (0 = the source model)",
    "sample": "int: probe image id",
    "label": "int, on `sample`: class label",
    "image_path": "str, on `sample`: source file of the image",
    "class": "str: class names",
}
STORE_REQUIRED_ATTRS = {
    "ftdyn_store_format": "format number of the layout (1)",
    "ftdyn_version": "version of ftdyn that wrote the store",
    "architecture": "architecture name (`resnet50`, `timm/convnext_atto`)",
    "model": "model label used in experiment names",
    "dataset": "dataset label used in experiment names",
    "layers": "module names, shallow → deep",
    "layer_variables": "{module name: variable name}; non-alphanumerics become `_`",
    "receptive_fields": "{module name: {size, jump, start}} in input pixels (where traceable)",
    "checkpoints": "[{epoch, file, sha256, ...}]: which file gave each epoch, and which copy",
    "samples_per_chunk": "samples per chunk (the sample axis of a region)",
    "dtype": "float16 or float32",
    "input_size": "input size in pixels",
    "normalization": "mean and std, and where they came from",
    "probe": "seed, per-class / max-samples, data folder and its fingerprint",
}
STORE_OPTIONAL_ATTRS = {
    "num_classes": "classes of the model's head",
    "codec": "zstd or lz4",
    "manifest": "the training manifest (a series from `ftdyn train`): accuracies per epoch",
    "runs": "device and speed of each extraction run",
    "random_init_baseline": "{seed, architecture, init} of the baseline, when stored",
    "token_layers": "a token model's layers (ViT, Swin, ...): {module: {grid, prefix_tokens}}, "
    "the patch tokens' grid (token i is cell (i // x, i % x)) and the kinds of the prefix tokens "
    "dropped from the map (class, register, distillation)",
}

# --- the results (ftdyn.results) --------------------------------------------------------------
RESULTS_VARIABLES = {
    "distance": "distance from the reference epoch; per-filter views: NaN-aware mean over "
    "filters; NaN where not computed",
    "ci_low": "lower end of the 95 % bootstrap interval over images (NaN without --bootstrap)",
    "ci_high": "upper end of the same interval",
    "n_filters": "filters in the layer",
    "n_nan": "undefined values (dead filters; 1 for an undefined whole-layer value)",
    "filter_distance": "the per-filter vector S_l (as long as the widest layer; NaN beyond)",
    "trajectory": "checkpoint × checkpoint distances (NaN where not computed: `--trajectory`)",
    "reusability_mean": "mean over epochs (reference excluded) of the layer-averaged distance: "
    "the paper's Table 2",
    "reusability_std": "the std of the same",
    "layer_reusability_mean": "the same per layer",
    "layer_reusability_std": "the same per layer",
    "agreement_r": "Pearson r between two metrics across epochs (reference excluded)",
    "agreement_paper_code": "`--preset paper-code`: the published code's r between CKA and "
    "Procrustes across filters per (epoch, layer, class)",
    "agreement_paper_code_mean": "its plain mean over layers, epochs and classes",
    "agreement_paper_code_std": "its std",
    "ceiling": "distance between the reference and the store's random-init baseline",
    "relative_distance": "distance / ceiling: 0 = unchanged, 1 = as far as an untrained network",
    "relative_reusability_mean": "Table 2 on relative distances",
    "relative_reusability_std": "its std",
    "delta_ci_low": "paired 95 % interval of distance(t) − distance(t−1), low end",
    "delta_ci_high": "its high end",
    "layer_order_p": "paired bootstrap p-value that two layers' last-epoch distances differ",
    "probe_accuracy": "5-fold ridge-classifier accuracy on the pooled activations",
    "probe_accuracy_random_init": "the same on the random-init baseline",
    "probe_chance": "the most frequent class's share",
    "convergence": "last-epoch distance on nested subsets of the images (`fraction` 0.25, 0.5, 1)",
    "converged": "change from half the images to all within max(the bootstrap half-width, "
    "else the subsets' noise; 2 % of the ceiling, else of the metric's range)",
    "images_needed": "images needed at the observed rate (NaN when converged or undefined)",
    "column_ratio": "columns per row of the metric's view (filter: h·w / images; channels: "
    "channels / (images·h·w))",
    "unreliable": "the value cannot be trusted at that shape (degenerate, or above the "
    "estimator's column/row limit); absent: all reliable",
    "heldout_distance": "above the column/row limit: the held-out (cross-validated) Procrustes "
    "or PWSM, biased away from 0 as the plug-in value is toward it, so [distance, "
    "heldout_distance] brackets the population distance; NaN elsewhere",
    "run_distance": "run A against run B at the same epoch (stores with the same probe images; "
    "NaN where not compared)",
    "run_ci_low": "lower end of its bootstrap interval",
    "run_ci_high": "upper end of its bootstrap interval",
    "floor": "seed floor: the mean run_distance to the experiment's replicates (NaN without)",
    "floor_ci_low": "lower end of the floor's bootstrap interval",
    "floor_ci_high": "upper end of the floor's bootstrap interval",
    "drift_above_floor": "distance − floor",
    "drift_above_floor_p": "one-sided paired bootstrap p of distance ≤ floor (floor 0 without "
    "replicates; NaN without a bootstrap of the metric)",
    "departure_epoch": "first epoch after the reference with drift_above_floor_p < 0.05 (NaN: "
    "none, no bootstrap, or unreliable)",
}
RESULTS_ATTRS = {
    "ftdyn_results_format": "format number of the layout (1)",
    "ftdyn_version": "version of ftdyn that wrote the results",
    "reference_epoch": "the epoch distances are measured from (default 0)",
    "preset": "default or paper-code",
    "bootstrap": "number of bootstrap replicates (0 = off)",
    "arguments": "JSON of the analysis's arguments",
}
RESULTS_OPTIONAL_ATTRS = {
    "estimators": '{metric: "debiased" | "jackknife" | "plugin"}: the estimator of each metric',
    "unreliable_reasons": '{"experiment/metric/layer": one-line reason} of the unreliable values',
}
RESULTS_TABLES = {
    "distances.csv": "one row per (experiment, layer, epoch, metric): `value` is the distance "
    "from the reference epoch, `ci_low`/`ci_high` its bootstrap interval (empty without it), "
    "`unreliable`/`reason` whether it cannot be trusted at its view's shape and why",
    "reusability.csv": "mean ± std over epochs of the layer-averaged distance: the paper's Table 2",
    "agreement.csv": "Pearson r of two metrics across epochs per layer (empty with fewer than "
    "3 epochs or a constant curve)",
    "agreement_summary.csv": "the same summarized over layers and experiments (population "
    "std); not the paper's across-filter r, which `--preset paper-code` computes",
    "relative_distances.csv": "relative distance, ceiling and paired step intervals",
    "probes.csv": "linear-probe accuracy per layer and epoch, on the baseline, and chance",
    "layer_order.csv": "paired bootstrap p-value of each pair of layers' last-epoch distances",
    "convergence.csv": "last-epoch distance on nested subsets of the images, and whether it "
    "converged",
    "floor.csv": "the rows of distances.csv with the seed floor, its interval, the drift above "
    "it, its p-value and the layer's departure epoch",
    "runs.csv": "one row per pair of runs compared, layer, epoch and metric: run_distance and "
    "its interval",
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _mismatch(what: str, in_code, described) -> list[str]:
    """Drift between the code's names and the descriptions, one message per name."""
    return [
        f"{what}: '{n}' is in the code but not described" for n in in_code if n not in described
    ] + [f"{what}: '{n}' is described but not in the code" for n in described if n not in in_code]


def store_schema() -> tuple[str, list[str]]:
    """The store-format tables and the drift messages (empty when the two agree)."""
    from ftdyn import store

    variables = {
        "V": "V",
        store.IMAGES: store.IMAGES,
        store.COMPLETE: store.COMPLETE,
        store.baseline_var("V"): store.baseline_var("V"),
        store.RANDOM_INIT_COMPLETE: store.RANDOM_INIT_COMPLETE,
    }
    problems = _mismatch("store variable", variables, STORE_VARIABLES)
    problems += _mismatch("store attr", store.REQUIRED_ATTRS, STORE_REQUIRED_ATTRS)
    for name in (store.RANDOM_INIT, store.TOKEN_LAYERS):
        if name not in STORE_OPTIONAL_ATTRS:
            problems.append(f"store attr: '{name}' is in the code but not described")
    text = f"Format {store.STORE_FORMAT}.\n\n**Variables** (`V` is one layer's variable):\n\n"
    text += _table(
        ["name", "dims", "type", "what"],
        [[f"`{n}`", *STORE_VARIABLES[n]] for n in variables if n in STORE_VARIABLES],
    )
    text += "\n**Coordinates**:\n\n"
    text += _table(["name", "what"], [[f"`{n}`", d] for n, d in STORE_COORDS.items()])
    text += "\n**Root attributes** (required: checked on open):\n\n"
    text += _table(
        ["name", "required", "what"],
        [[f"`{n}`", "yes", STORE_REQUIRED_ATTRS.get(n, "")] for n in store.REQUIRED_ATTRS]
        + [[f"`{n}`", "no", d] for n, d in STORE_OPTIONAL_ATTRS.items()],
    )
    return text, problems


def results_schema() -> tuple[str, list[str]]:
    """The results-format tables and the drift messages (empty when the two agree)."""
    from ftdyn import results

    variables = {**results.REQUIRED_VARS, **results.OPTIONAL_VARS}
    problems = _mismatch("results variable", variables, RESULTS_VARIABLES)
    problems += _mismatch("results attr", results.REQUIRED_ATTRS, RESULTS_ATTRS)
    problems += _mismatch("results attr", results.OPTIONAL_ATTRS, RESULTS_OPTIONAL_ATTRS)
    problems += _mismatch("results table", results.TABLE_NAMES, RESULTS_TABLES)
    text = (
        f"Format {results.RESULTS_FORMAT}: `{results.RESULTS_STORE}`.\n\n"
        "**Variables** (optional ones are written only when computed, and checked when "
        "present):\n\n"
    )
    text += _table(
        ["name", "dims", "required", "what"],
        [
            [
                f"`{n}`",
                ", ".join(d),
                "yes" if n in results.REQUIRED_VARS else "no",
                RESULTS_VARIABLES.get(n, ""),
            ]
            for n, d in variables.items()
        ],
    )
    text += "\n**Coordinates** (required): "
    text += ", ".join(f"`{c}`" for c in results.REQUIRED_COORDS) + ".\n\n"
    text += "**Attributes** (optional ones are checked when present):\n\n"
    text += _table(
        ["name", "required", "what"],
        [[f"`{n}`", "yes", RESULTS_ATTRS.get(n, "")] for n in results.REQUIRED_ATTRS]
        + [[f"`{n}`", "no", RESULTS_OPTIONAL_ATTRS.get(n, "")] for n in results.OPTIONAL_ATTRS],
    )
    text += "\n**CSV tables** beside `results.zarr` (empty cell = NaN):\n\n"
    text += _table(
        ["file", "columns", "what"],
        [
            [f"`{name}`", ", ".join(f"`{c}`" for c in columns), RESULTS_TABLES.get(name, "")]
            for name, columns, _ in results.TABLES
        ],
    )
    return text, problems


# --- benchmarks -------------------------------------------------------------------------------
def _flat(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def benchmark_page(bench_dir: Path = ROOT / "benchmarks") -> str:
    """A section per benchmark script that writes a result file: its table, or "no results
    yet"."""
    # the scripts that call the writer; _results.py (the writer itself) is not one
    names = sorted(
        p.stem
        for p in bench_dir.glob("*.py")
        if not p.name.startswith("_") and "write_result(" in p.read_text()
    )
    parts = []
    for name in names:
        parts.append(f"## `{name}`\n")
        path = bench_dir / "results" / f"{name}.json"
        if not path.is_file():
            parts.append(
                f"No results yet: run `python benchmarks/{name}.py` (its docstring "
                "gives the options).\n"
            )
            continue
        record = json.loads(path.read_text())
        host = record.get("host", {})
        parts.append(
            f"`{record.get('command', '')}` on {host.get('cpu', 'unknown')} "
            f"({host.get('cores', '?')} cores), {record.get('date', '')}, "
            f"commit `{str(record.get('commit', 'unknown'))[:12]}`.\n"
        )
        metrics = record.get("metrics", {})
        rows = metrics.get("rows") if isinstance(metrics.get("rows"), list) else None
        scalars = {k: v for k, v in metrics.items() if k != "rows" or rows is None}
        if scalars:
            parts.append(_table(["value", ""], [[f"`{k}`", _flat(v)] for k, v in scalars.items()]))
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            parts.append("\n" + _table(keys, [[_flat(r.get(k, "")) for k in keys] for r in rows]))
    return "\n".join(parts)


# --- architecture -----------------------------------------------------------------------------
def layers_page(test_file: Path = ROOT / "tests" / "test_architecture.py") -> str:
    """The layers of tests/test_architecture.py, top (CLI) to bottom (foundation)."""
    tree = ast.parse(test_file.read_text())
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "LAYERS" and node.value is not None:
            layers = ast.literal_eval(node.value)
            break
    else:
        raise RuntimeError(f"{test_file}: no LAYERS table")
    rows = [
        [name, ", ".join(_with_submodules(m) for m in sorted(members))]
        for name, members in reversed(layers)
    ]
    header = ["layer (top imports bottom)", "modules (a package's submodules in brackets)"]
    return _table(header, rows)


def _with_submodules(module: str) -> str:
    """A module's table cell: a subpackage with its submodules (`ftdyn.store` (`.schema`, ...));
    the package root alone, since its submodules are the other cells."""
    folder = ROOT.joinpath(*module.split("."))
    if module == "ftdyn" or not folder.is_dir():
        return f"`{module}`"
    names = sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__")
    return f"`{module}` (" + ", ".join(f"`.{name}`" for name in names) + ")"


def write_pages(out: Path = GENERATED) -> list[str]:
    """Write every generated page; returns the drift messages."""
    out.mkdir(exist_ok=True)
    store_text, store_problems = store_schema()
    results_text, results_problems = results_schema()
    (out / "store_schema.md").write_text(store_text)
    (out / "results_schema.md").write_text(results_text)
    (out / "benchmarks.md").write_text(benchmark_page())
    (out / "layers.md").write_text(layers_page())
    return store_problems + results_problems


def _generate(app, config) -> None:
    from sphinx.util import logging

    for problem in write_pages():
        logging.getLogger(__name__).warning("schema docs out of date: %s", problem)


def setup(app):
    app.connect("config-inited", _generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
