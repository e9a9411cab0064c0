"""Listing input folders (probe images, training data, checkpoint series) without following
anything hostile: what an entry is, found without opening it, and what was left out and why.

Reading a FIFO waits forever and a device (a link to ``/dev/zero``) never ends, so only regular
files are taken; a broken symlink or a symlink loop cannot be taken at all. The folder walks of
:mod:`ftdyn.data` (images) and :mod:`ftdyn.checkpoints` (weights files) classify each entry with
:func:`entry_mode` / :func:`regular_file`, collect what they leave out as ``(path, why)`` and
report it with :func:`ignored_message`: one warning line that names the entries.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Sequence
from pathlib import Path

NOT_REGULAR = "not a regular file (FIFO, device or socket)"
#: entries a warning names for each reason (the rest are counted)
_NAMED = 4


def entry_mode(path: Path, ignored: list[tuple[Path, str]]) -> int | None:
    """The ``st_mode`` of what ``path`` names (a symlink followed, the file never opened), or
    None with ``(path, why)`` added to ``ignored``: a symlink loop, a broken symlink or an
    entry that cannot be read."""
    try:
        return path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            why = "a symlink loop"
        elif path.is_symlink():
            why = "a broken symlink"
        else:
            why = f"unreadable ({exc.strerror or exc})"
        ignored.append((path, why))
        return None


def regular_file(path: Path, ignored: list[tuple[Path, str]]) -> bool:
    """Whether ``path`` names a regular file (a symlink followed); an entry that is neither one
    nor a folder (a FIFO, device or socket, a broken link, a loop) is added to ``ignored``."""
    mode = entry_mode(path, ignored)
    if mode is None:
        return False
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        ignored.append((path, NOT_REGULAR))
    return stat.S_ISREG(mode)


def ignored_message(ignored: Sequence[tuple[Path, str]]) -> str | None:
    """The one-line report about entries left out unopened, naming them by reason, or None when
    there were none."""
    if not ignored:
        return None
    by_reason: dict[str, list[Path]] = {}
    for path, why in ignored:
        by_reason.setdefault(why, []).append(path)
    kinds = "; ".join(
        f"{len(paths)} {why}: {', '.join(map(str, paths[:_NAMED]))}"
        + (f" and {len(paths) - _NAMED} more" if len(paths) > _NAMED else "")
        for why, paths in by_reason.items()
    )
    return (
        f"ignored {len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'} without opening them"
        f" ({kinds})"
    )
