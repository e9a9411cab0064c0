"""The one exception type users see, and the one warning category.

Every expected failure (a bad path, an unknown name, an incompatible file) raises
:class:`FtdynError` with a one-line message that names the file or flag and says
what to do. The CLI prints that line and exits with code 2; anything else is a bug
and keeps its traceback. A caveat about the data or the numbers is a
:class:`FtdynWarning` (see :mod:`ftdyn.progress`).
"""

import os
from pathlib import Path


class FtdynError(Exception):
    """A user-facing error whose message is a single actionable line."""


class FtdynWarning(UserWarning):
    """A caveat about the data or the numbers (a degenerate estimator, a layer that has not
    converged, ...), one line; ``warnings.filterwarnings("ignore", category=FtdynWarning)``
    silences them."""


class ConvergenceWarning(FtdynWarning):
    """Layers whose distance has not converged on the probe set: their numbers are valid, only
    imprecise, so the command line words this apart from the ``warning:`` lines."""


def check_output_folder(out, *, flag: str = "--out", inputs=(), may_be_store: bool = False) -> None:
    """Refuse an output folder before any work is done (so nothing is computed only to fail at
    the end): a path through a file; a folder inside one of ``inputs`` (stores, data folders,
    whose contents it would change) or inside any Zarr store (its files would become part of
    the store; the folder itself may be one with ``may_be_store``, as extract's --out is);
    a location that cannot be written."""
    out = Path(out).expanduser().resolve()
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise FtdynError(f"{flag}: {folder} is a file, not a folder; give a folder path (it is created if "
                             "missing).")
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if out == item or item in out.parents:
            raise FtdynError(f"{flag}: {out} is inside the input {item}; write the output elsewhere.")
    for folder in (out.parents if may_be_store else (out, *out.parents)):
        # zarr.json marks a Zarr v3 store or group (activation stores, results.zarr); .zgroup a v2 one
        if (folder / "zarr.json").is_file() or (folder / ".zgroup").is_file():
            raise FtdynError(f"{flag}: inside the Zarr store {folder}; writing there would add files to the store. "
                             "Give a folder outside it.")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FtdynError(f"{flag}: cannot write to {existing} (read-only or no permission); choose another folder.")
