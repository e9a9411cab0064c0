"""Process settings that the heavy commands make before torch allocates memory (no torch import
here: torch reads them once, at its first allocation), and the connection to an existing Dask
cluster that ``analyze`` and ``extract`` share (``--scheduler``)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

from .config import arg
from .errors import FtdynError

#: torch's CPU allocator backs its blocks of 2 MB and more with transparent huge pages when this
#: environment variable is 1
TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"

#: how long connecting to a ``--scheduler`` may take before it is reported as unreachable
CONNECT_TIMEOUT = "10s"


def prefer_huge_pages() -> None:
    """Ask torch to back its large CPU blocks with transparent huge pages, unless the environment
    says otherwise (``THP_MEM_ALLOC_ENABLE=0``). The analysis allocates its float64 blocks anew in
    every task and gives the freed heap back to the OS when the task ends (which keeps its
    resident memory near ``memory_limit``), so with 4 KB pages the kernel's page faults took a
    large share of its time: 9 of 66 CPU s of the demo's analysis without the interpretation,
    18 of 106 with it, 6 and 11 with huge pages. No effect once torch has allocated, nor where
    the kernel does not offer transparent huge pages (it then falls back to normal pages)."""
    os.environ.setdefault(TORCH_HUGE_PAGES, "1")


def require_distributed(scheduler: Any) -> None:
    """One line naming ``--scheduler`` and the install when ``scheduler`` is a cluster's address
    and the optional package ``distributed`` is missing (checked before any work starts)."""
    if isinstance(scheduler, str) and importlib.util.find_spec("distributed") is None:
        raise FtdynError(
            f"{arg('scheduler')}: running on a Dask cluster needs the optional package"
            " 'distributed'; install it with `pip install 'ftdyn[distributed]'` (or `pip install"
            " distributed`)."
        )


@contextlib.contextmanager
def dask_client(scheduler: Any) -> Iterator[Any]:
    """The ``distributed.Client`` of ``scheduler`` for the block: an address (``tcp://HOST:PORT``)
    is connected (one line naming ``--scheduler`` when that fails within
    :data:`CONNECT_TIMEOUT`) and closed at the end; a ``Client`` is used as it is, and left
    open."""
    require_distributed(scheduler)
    own = isinstance(scheduler, str)
    if own:
        from distributed import Client

        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # any connection failure is a user error
            raise FtdynError(
                f"{arg('scheduler')}: cannot connect to {scheduler} ({type(exc).__name__}: {exc})."
            ) from None
    else:
        client = scheduler
    try:
        yield client
    finally:
        if own:
            client.close()
