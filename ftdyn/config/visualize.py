"""``ftdyn visualize``'s options: :class:`VisualizeConfig` and the bounds of one figure."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import FtdynError
from .base import _names, _option, arg

#: Bounds of one ``visualize`` figure. Drawing time grows faster than the number of cells (about
#: 15 s for 48 rows x 16 columns), so a layer's hundreds of filters cannot all be shown.
MAX_FILTERS = 16


MAX_GRID_ROWS = 48  # class x filter rows of the class-based grid


MAX_EPOCHS = 16


#: Columns shown by default when a store has more checkpoints than this.
MAX_DEFAULT_EPOCHS = 8


#: Classes shown by default in the class-based grid.
DEFAULT_CLASSES = 3


#: Sample figures made by default.
DEFAULT_SAMPLES = 2


@dataclass(frozen=True)
class VisualizeConfig:
    """Everything ``ftdyn visualize`` / :func:`ftdyn.visualize` takes besides the store and the
    output folder.

    Lists left empty mean "choose automatically" and are stored as None; the choices are checked
    against the store when the figures are planned (:func:`ftdyn.viz.make_plan`).
    """

    layer: str | int = field(
        metadata={
            "help": (
                "Layer: module name (features.35), store variable (features_35) "
                "or index (0 = shallowest, -1 = deepest)."
            ),
            "flag": None,
        }
    )
    filters: tuple[int, ...] | None = _option(
        None,
        "Filter index (repeatable). Default: the --n-filters whose distance changed most. At most "
        f"{MAX_FILTERS}.",
        flag="--filter",
    )
    classes: tuple[str | int, ...] | None = _option(
        None,
        f"Class name or index (repeatable). Default: the first {DEFAULT_CLASSES} classes. At most "
        f"{MAX_GRID_ROWS} class x filter rows.",
        flag="--class",
    )
    samples: tuple[int, ...] | None = _option(
        None,
        "Sample id for a sample-based figure (repeatable). Default: per shown class (up to "
        f"{DEFAULT_SAMPLES}) the image the filters respond to most.",
        flag="--sample",
    )
    epochs: tuple[int, ...] | None = _option(
        None,
        f"Epoch to show (repeatable). Default: all, or {MAX_DEFAULT_EPOCHS} evenly spaced. At most "
        f"{MAX_EPOCHS}.",
        flag="--epoch",
    )
    results: Any = _option(
        None,
        "Results folder of `ftdyn analyze` that includes this store: rank filters by "
        "their per-filter distance.",
    )
    n_filters: int = _option(
        4,
        f"Filters to choose when no --filter is given (capped at {MAX_FILTERS} and at the "
        "layer's filters).",
    )

    def __post_init__(self) -> None:
        chosen = {
            name: _names(getattr(self, name))
            for name in ("filters", "classes", "samples", "epochs")
        }
        if chosen["filters"] is None and int(self.n_filters) < 1:
            raise FtdynError(f"{arg('n_filters', self.n_filters)}: must be at least 1.")
        for name, value in {**chosen, "n_filters": int(self.n_filters)}.items():
            object.__setattr__(self, name, value)  # frozen: normalize once, here

    def replace(self, **changes: Any) -> VisualizeConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)
