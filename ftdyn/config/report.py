"""``ftdyn report``'s options: :class:`ReportConfig`, what the interactive report renders."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import FtdynError
from .base import _option, arg

#: Filters shown per gallery (most changed, most stable) of each layer by default.
GALLERY_FILTERS = 8
#: Filters rendered as images in a whole interactive report by default. Each costs about
#: (classes + samples) x epochs thumbnails of ~1 kB (5 x 8 at most by default), so 256 filters
#: keep a report near 10 MB whatever the store's size.
MAX_REPORT_FILTERS = 256


@dataclass(frozen=True)
class ReportConfig:
    """Everything ``ftdyn report`` / :func:`ftdyn.reporting.report` takes besides the results, the
    stores and the output folder."""

    interactive: bool = _option(
        True,
        "Also write explore.html: the interactive report (epoch slider, layer x epoch overview,"
        " per-filter galleries), one self-contained file.",
        flag="--interactive",
    )
    gallery_filters: int = _option(
        GALLERY_FILTERS,
        "Filters in each gallery of a layer in explore.html (the most changed and the most"
        " stable).",
    )
    max_filters: int = _option(
        MAX_REPORT_FILTERS,
        "Most filters rendered as images in the whole of explore.html (bounds its size): with"
        " more layers the galleries get fewer filters, then later layers none.",
    )

    def __post_init__(self) -> None:
        for name in ("gallery_filters", "max_filters"):
            value = int(getattr(self, name))
            if value < 1:
                raise FtdynError(f"{arg(name, value)}: must be at least 1.")
            object.__setattr__(self, name, value)  # frozen: normalize once, here
        object.__setattr__(self, "interactive", bool(self.interactive))

    def replace(self, **changes: Any) -> ReportConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)
