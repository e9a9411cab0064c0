"""What every figure module shares: file names, grids with fixed margins, saving without
timestamps, and the figure index (``figures.json``) with the caption of every figure written.

Below :mod:`ftdyn.viz` and its figure modules (:mod:`.curves`, :mod:`.heatmaps`,
:mod:`.patches`, :mod:`.interpret`), which import it; it imports none of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FtdynError

#: Folder under a results/report folder that holds the figures (what ``report`` reads).
FIGURES_DIR = "figures"
#: Index of the figures in a folder, with captions.
INDEX_NAME = "figures.json"


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^0-9A-Za-z.+-]+", "_", str(text)).strip("_.") or "x"


def epoch_label(epoch: int) -> str:
    return "source (epoch 0)" if int(epoch) == 0 else f"epoch {int(epoch)}"


def grid_figure(
    body: tuple[float, float],
    margins: tuple[float, float, float],
    title: str | None,
    space: tuple[float, float] = (0.06, 0.06),
):
    """A Figure for a grid of axes with fixed margins in inches instead of a constrained layout
    (which took most of the drawing time of the many-axes grids): ``body`` (width, height) of
    the axes, ``margins`` (left, right, bottom), the top sized for ``title``, which goes on two
    lines, split at its " · ", where one line of 10 pt text would be wider than the figure;
    ``space`` (horizontal, vertical) between the axes, a fraction of their size."""
    from matplotlib.figure import Figure

    left, right, bottom = margins
    width = left + body[0] + right
    if title and len(title) * 0.085 > width:  # ~0.085 in per character at 10 pt
        title = title.replace(" · ", "\n", 1)
    top = 0.4 + 0.18 * title.count("\n") + 0.15 if title else 0.3
    height = top + body[1] + bottom
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=space[0],
        hspace=space[1],
    )
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig


def save_figure(fig, path: Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix); no timestamps in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = (
        {"Date": None}
        if path.suffix == ".svg"
        else {"Software": None}
        if path.suffix == ".png"
        else None
    )
    fig.savefig(path, dpi=dpi, metadata=metadata)
    return path


def read_index(folder: str | Path) -> list[dict[str, Any]]:
    """Entries of ``folder/figures.json`` (``[]`` when there is none)."""
    index = Path(folder) / INDEX_NAME
    if not index.is_file():
        return []
    try:
        return list(json.loads(index.read_text()).get("figures", []))
    except (json.JSONDecodeError, AttributeError):
        raise FtdynError(
            f"{index}: not a readable figure index; delete it and re-run `ftdyn visualize`."
        ) from None


def record(folder: str | Path, entries: Iterable[dict[str, Any]]) -> None:
    """Add or replace (by ``file``) entries of ``folder/figures.json``.

    An entry: ``file`` (name of the PNG in ``folder``), ``formats`` (other files of
    the same figure, e.g. the SVG), ``kind`` (curves, by_layer, trajectory, class,
    sample, note), ``title``, ``caption``, and context (experiment, store, layer).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = {e.get("file") or f"note:{e.get('caption')}": e for e in read_index(folder)}
    for e in entries:
        current[e.get("file") or f"note:{e.get('caption')}"] = e
    tmp = folder / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps({"figures": list(current.values())}, indent=1, default=_jsonable))
    tmp.replace(folder / INDEX_NAME)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
