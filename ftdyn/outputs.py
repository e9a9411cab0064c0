"""Output folders that survive crashes, concurrent runs and tampering.

Two mechanisms, used by ``analyze``, ``report`` and ``visualize``:

* :func:`folder_lock`: an exclusive advisory lock (``flock``, as extract locks its
  store) on ``<out>/.ftdyn.lock``, which holds the PID of the run writing the
  folder, so a second run into the same folder is refused with one line naming it.
* :func:`write_result_set`: the complete new set of results (results.zarr, the CSV
  tables and ``manifest.json``, which lists the arguments and a SHA-256 of every
  file) is written into its own folder and made current by ONE atomic rename::

      out/.ftdyn-sets/<id>/                      one complete result set
      out/.ftdyn-sets/current -> <id>            replaced by one rename (the swap)
      out/results.zarr -> .ftdyn-sets/current/results.zarr    fixed links, one per
      out/distances.csv -> .ftdyn-sets/current/distances.csv  product

  A run killed or interrupted anywhere leaves either the old set or the new one
  current, never a mix; the old set is deleted only after the swap, and leftovers
  (unfinished sets, old sets, temporaries of older ftdyn versions) are removed by
  the next run into the folder. :func:`current_set` verifies every listed file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import FtdynError

LOCK_FILE = ".ftdyn.lock"
SETS = ".ftdyn-sets"
CURRENT = "current"
MANIFEST = "manifest.json"
_held: dict[Path, int] = {}  # folders this process has locked (re-entry: analyze then report in one command)


# ------------------------------------------------------------------------- lock
def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def folder_lock(out: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold the lock of output folder ``out`` (created if missing) for the block; a folder
    locked by another process is an FtdynError naming that process."""
    out = Path(out).expanduser().resolve()
    if out in _held:
        _held[out] += 1
        try:
            yield
        finally:
            _held[out] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    created = next((f for f in reversed([out, *out.parents]) if not f.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FtdynError(f"{flag} {out}: another ftdyn run (PID {_read_pid(fd)}) is writing to this folder; "
                             f"wait for it to finish or choose another {flag}.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[out] = 1
        try:
            yield
        finally:
            del _held[out]
            if created is not None:
                _unmake(out, created)
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


def _unmake(out: Path, created: Path) -> None:
    """A run that made ``out`` (from ``created`` down) and left nothing in it but the lock
    file leaves no folder behind (an interrupted or refused run changes nothing)."""
    if [p.name for p in out.iterdir()] != [LOCK_FILE]:
        return
    (out / LOCK_FILE).unlink(missing_ok=True)
    for folder in [out, *out.parents]:
        with contextlib.suppress(OSError):
            folder.rmdir()
        if folder == created:
            break


# -------------------------------------------------------------------- checksums
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the manifest, as sorted POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


# ------------------------------------------------------------------------ swap
def _step(name: str) -> None:
    """A named point of the swap, before each write or rename (fault-injection tests kill or
    interrupt the run here)."""


def _current_id(out: Path) -> str | None:
    """The folder name the ``current`` link points to; None when there is no link (also when a
    copy without links, e.g. ``shutil.copytree``, turned it into a folder: nothing verifies)."""
    link = out / SETS / CURRENT
    try:
        return os.readlink(link)
    except OSError:
        return None


def remove_stale(out: str | Path) -> None:
    """Remove what no current result set uses: unfinished or replaced sets, moved-away files
    and the temporaries of older ftdyn versions (call with the folder's lock held)."""
    out = Path(out)
    keep = {CURRENT, _current_id(out)}
    sets = out / SETS
    for entry in (sets.iterdir() if sets.is_dir() else ()):
        if entry.name not in keep:
            _remove(entry)
    for entry in [*out.glob(".analyze-*.tmp"), *out.glob(".analyze-*.old"), *out.glob(".*.link-*")]:
        _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(entry, ignore_errors=True)


def _relink(out: Path, name: str) -> None:
    """Make ``out/name`` the fixed link into the current set (moving a real file or folder of
    an older layout aside first, into the stale area)."""
    path, target = out / name, f"{SETS}/{CURRENT}/{name}"
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.exists() or path.is_symlink():
        _step(f"move aside {name}")
        path.rename(out / SETS / f".replaced-{uuid.uuid4().hex[:8]}-{name}")
    tmp = out / f".{name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(target, tmp)
    _step(f"link {name}")
    os.replace(tmp, path)


def write_result_set(out: str | Path, fill: Callable[[Path], None], *, products: Sequence[str],
                     info: dict[str, Any]) -> None:
    """Write a complete result set with ``fill(folder)`` (which must create ``products``),
    seal it with a manifest (``info`` plus a SHA-256 of every file) and make it current in
    one atomic step; the previous set is deleted afterwards. Hold :func:`folder_lock`."""
    out = Path(out)
    sets = out / SETS
    sets.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    new_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
    partial, sealed = sets / f".{new_id}.partial", sets / new_id
    pointer = sets / f".{CURRENT}-{new_id}"
    partial.mkdir()
    try:
        _step("fill")
        fill(partial)
        missing = [p for p in products if not (partial / p).exists()]
        if missing:
            raise RuntimeError(f"result set lacks {missing}")  # a bug of ours, not the user's
        manifest = {**info, "products": list(products), "files": {f: _sha256(partial / f) for f in _files(partial)}}
        _step("manifest")
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        _step("seal")
        partial.rename(sealed)
        for name in products:  # fixed links: they show the old set until the swap, the new one after
            _relink(out, name)
        os.symlink(new_id, pointer)
        current = sets / CURRENT
        if current.is_dir() and not current.is_symlink():  # a copy that turned the links into folders
            current.rename(sets / f".replaced-{uuid.uuid4().hex[:8]}-{CURRENT}")
        _step("swap")
        os.replace(pointer, sets / CURRENT)  # THE atomic step: from here on the new set is current
        _step("delete old")
        remove_stale(out)
    finally:
        for leftover in (partial, pointer):
            if leftover.exists() or leftover.is_symlink():
                _remove(leftover)
        with contextlib.suppress(OSError):
            sets.rmdir()  # only when empty: no set was ever made current here


# ---------------------------------------------------------------------- verify
def current_set(out: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, problem)`` of the current result set in ``out``: ``(None, None)`` when
    there is none; ``problem`` names the first listed file that is missing, changed or not
    linked, or a file that is not listed (None when every file verifies)."""
    out = Path(out)
    current = _current_id(out)
    if current is None:
        return None, None
    folder = out / SETS / current
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files, products = dict(manifest["files"]), list(manifest["products"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"the manifest of the current result set ({folder / MANIFEST}) is missing or unreadable"
    for name in products:
        path = out / name
        if not (path.is_symlink() and os.readlink(path) == f"{SETS}/{CURRENT}/{name}"):
            return manifest, f"{path} is not the current result set's {name} (replaced or removed)"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return manifest, f"{name} of the current result set is missing"
        if _sha256(path) != digest:
            return manifest, f"{name} of the current result set was changed after it was written (checksum differs)"
    extra = sorted(set(_files(folder)) - set(files))
    if extra:
        return manifest, f"{extra[0]} was added to the current result set after it was written"
    return manifest, None
