"""The layers of the README's Development diagram, checked against the imports of ``ftdyn/``.

Each module belongs to one layer; a module may import modules of its own layer or of layers
listed before it, never after it, and the modules' imports have no circle. A new module must
be placed in a layer here (and in the README's diagram).
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import ftdyn

PACKAGE = Path(ftdyn.__file__).parent

#: Lowest first, as in the README's diagram.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation",
        {
            "ftdyn",
            "ftdyn._version",
            "ftdyn._signature",
            "ftdyn.errors",
            "ftdyn.config",
            "ftdyn.progress",
            "ftdyn.devices",
            "ftdyn.outputs",
            "ftdyn.folders",
            "ftdyn.runtime",
        },
    ),
    ("model zoo", {"ftdyn.zoo_timm", "ftdyn.tokens", "ftdyn.models", "ftdyn.receptive"}),
    ("checkpoint loading", {"ftdyn.checkpoints", "ftdyn.offline"}),
    ("data", {"ftdyn.data"}),
    ("data contracts", {"ftdyn.store", "ftdyn.results"}),
    ("training / extraction", {"ftdyn.training", "ftdyn.extraction"}),
    ("metrics", {"ftdyn.metrics", "ftdyn.views", "ftdyn.summary"}),
    ("analysis", {"ftdyn.analysis"}),
    ("figures / report", {"ftdyn.viz", "ftdyn.reporting"}),
    ("demo", {"ftdyn.demos"}),
    ("CLI", {"ftdyn.cli", "ftdyn.__main__"}),
]


def _module_name(path: Path) -> str:
    parts = ["ftdyn", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The ftdyn modules ``name`` imports (anywhere in the file, function bodies included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x` imports the module x when there is one
                found.add(
                    f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def _layer(name: str) -> int:
    """Index of the layer of module ``name`` (a submodule belongs to its package's layer)."""
    for candidate in (name, *(name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1))):
        for index, (_, members) in enumerate(LAYERS):
            if candidate in members:
                return index
    raise AssertionError(
        f"{name} is in no layer of tests/test_architecture.py: place it (and in the README)"
    )


def test_every_module_imports_only_its_own_or_lower_layers():
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
        for m in sorted(MODULES)
        for t in sorted(_imports(m))
        if t != "ftdyn" and _layer(t) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_the_imports_have_no_circle():
    # the package root re-exports the API lazily (on first attribute access), so its edges do not
    # count; a subpackage's __init__ that imports its submodules is one more module: a submodule
    # importing it back (function-local imports included) is a circle
    graph = {m: _imports(m) - {"ftdyn"} for m in MODULES if m != "ftdyn"}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


#: the most parameters a function of ftdyn.analysis takes (positional and keyword-only, ``self``
#: and ``cls`` not counted): more are bundled into a request dataclass
MAX_ANALYSIS_PARAMETERS = 8


def test_analysis_functions_take_few_parameters():
    crowded = []
    for name in sorted(m for m in MODULES if m.startswith("ftdyn.analysis")):
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_ANALYSIS_PARAMETERS:
                    what = getattr(node, "name", "lambda")
                    crowded.append(f"{name}:{node.lineno} {what} takes {count} parameters")
    assert not crowded, "\n".join(crowded)
