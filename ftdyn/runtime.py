"""Process settings that the heavy commands make before torch allocates memory (no torch import
here: torch reads them once, at its first allocation)."""

from __future__ import annotations

import os

#: torch's CPU allocator backs its blocks of 2 MB and more with transparent huge pages when this
#: environment variable is 1
TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> None:
    """Ask torch to back its large CPU blocks with transparent huge pages, unless the environment
    says otherwise (``THP_MEM_ALLOC_ENABLE=0``). The analysis allocates its float64 blocks anew in
    every task and gives the freed heap back to the OS when the task ends (which keeps its
    resident memory near ``memory_limit``), so with 4 KB pages the kernel's page faults took a
    large share of its time: 9 of 66 CPU s of the demo's analysis without the interpretation,
    18 of 106 with it, 6 and 11 with huge pages. No effect once torch has allocated, nor where
    the kernel does not offer transparent huge pages (it then falls back to normal pages)."""
    os.environ.setdefault(TORCH_HUGE_PAGES, "1")
