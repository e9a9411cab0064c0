"""The one exception type users see.

Every expected failure (a bad path, an unknown name, an incompatible file) raises
:class:`FtdynError` with a one-line message that names the file or flag and says
what to do. The CLI prints that line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class FtdynError(Exception):
    """A user-facing error whose message is a single actionable line."""


def check_output_folder(out, *, flag: str = "--out", inputs=()) -> None:
    """Refuse an output folder that is a file, lies inside one of ``inputs`` (stores, data
    folders: writing there would corrupt them) or cannot be created/written, before any
    work is done (so that nothing is computed only to fail at the end)."""
    import os
    from pathlib import Path

    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FtdynError(f"{flag}: {out} is a file; give a folder.")
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if out == item or item in out.parents:
            raise FtdynError(f"{flag}: {out} is inside the input {item}; write the output elsewhere.")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FtdynError(f"{flag}: cannot write to {existing} (read-only or no permission); choose another folder.")
