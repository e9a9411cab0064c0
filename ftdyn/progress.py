"""What ftdyn tells its user while it works, on one path.

* **Notes** (a folder's epochs count from 0, a stale result is recomputed, ...): ``logging``,
  one logger per module (``logging.getLogger(__name__)``, all under ``ftdyn``). The library
  installs no handler, so a Python caller sees them only after ``logging.basicConfig(level=
  logging.INFO)`` and silences them with ``logging.getLogger("ftdyn").setLevel(logging.WARNING)``.
* **Caveats about the data or the numbers** (a degenerate estimator, a layer that has not
  converged, receptive fields not available, ...): :func:`warnings.warn` with
  :class:`~ftdyn.errors.FtdynWarning`, silenced with ``warnings.filterwarnings("ignore",
  category=FtdynWarning)``.
* **Progress of a long step**: a rich bar (:func:`progress_bar`, :func:`track`,
  :func:`dask_progress`) only when stderr is a terminal, nothing at all otherwise; one line per
  finished stage (:func:`stage`, INFO on the ``ftdyn.progress`` logger) either way.

:func:`console` is the command line's side of it: it shows all three as the one-line
``ftdyn: ...`` format (``ftdyn: note: ...``, ``ftdyn: warning: ...``, ``ftdyn: <stage>``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .errors import ConvergenceWarning, FtdynWarning

__all__ = ["console", "dask_progress", "progress_bar", "stage", "track"]

T = TypeVar("T")

_stages = logging.getLogger(__name__)


def stage(message: str) -> None:
    """One line for a finished stage of a long step (an epoch, a store written, the statistics
    computed)."""
    _stages.info(message)


def progress_bar(enabled: bool = True):
    """A rich :class:`~rich.progress.Progress` on stderr for the long steps of one command: live on
    a
    terminal when ``enabled``, else switched off (``bar.disable``: it draws nothing, not even at the
    end).
    Lines logged while it is live appear above it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # a terminal: a tty, or FORCE_COLOR / TTY_COMPATIBLE=1 (rich's test)
    output = Console(stderr=True)
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output,
        disable=not (enabled and output.is_terminal),
    )


def track(
    items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """``items`` one by one, with a bar over them on a terminal (``total``: their number, when
    ``items`` has no length)."""
    with progress_bar(enabled) as progress:
        yield from progress.track(items, total=total, description=description)


@contextlib.contextmanager
def dask_progress(description: str, enabled: bool = True) -> Iterator[None]:
    """A rich bar over the tasks of the Dask computations (local schedulers) run inside the block,
    on a terminal only; in a pipe Dask's own bar is never used, so nothing is printed."""
    from dask.callbacks import Callback

    progress = progress_bar(enabled)
    if progress.disable:
        yield
        return

    class _Tasks(Callback):
        def _start_state(self, dsk, state):
            self.task = progress.add_task(
                description,
                total=sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")),
            )

        def _posttask(self, key, result, dsk, state, worker_id):
            progress.advance(self.task)

    with progress, _Tasks():
        yield


# ------------------------------------------------------------------- the command line's side

#: the word after ``ftdyn:`` per kind of line; stage lines have none
_LABELS = {logging.INFO: "note: ", logging.WARNING: "warning: ", logging.ERROR: "error: "}


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        label = getattr(
            record, "label", "" if record.name == _stages.name else _LABELS.get(record.levelno, "")
        )
        return f"ftdyn: {label}{record.getMessage()}"


class _Stderr(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (a live rich bar or a test's capture
    replaces it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_OneLine())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        pass


@contextlib.contextmanager
def console() -> Iterator[None]:
    """Inside the block, ftdyn's notes, stage lines and caveats are printed on stderr as one line
    each
    (``ftdyn: note: ...``, ``ftdyn: ...``, ``ftdyn: warning: ...``); a caveat once per message and
    place.
    Other warnings keep Python's own display."""
    logger = logging.getLogger("ftdyn")
    handler, level, propagate = _Stderr(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, whatever the root logger does
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", FtdynWarning)
            shown_elsewhere = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, FtdynWarning):
                    logger.warning(
                        "%s",
                        message,
                        extra={
                            "label": (
                                ""
                                if issubclass(category, ConvergenceWarning)
                                else _LABELS[logging.WARNING]
                            )
                        },
                    )
                else:
                    shown_elsewhere(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
