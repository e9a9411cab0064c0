"""Output folders that survive crashes, concurrent runs, full disks and tampering.

The I/O helpers every command that writes uses:

* :func:`check_output_folder`: refuses, before any work, an output folder that could
  not or must not be written (through a file, inside an input or a Zarr store or a
  result set, read-only).
* :func:`folder_lock`: an exclusive advisory lock (``flock``) on ``<out>/.ftdyn.lock``,
  which holds the PID of the run writing the folder, so a second run into the same
  folder (train, extract, analyze, report, visualize) is refused with one line naming
  it; the file is removed when the run ends (a killed run leaves it, harmless: the lock
  dies with the process). Inside it a full disk, a quota or a read-only file system is one line
  naming the file or folder that could not be written. :func:`file_lock` is the same lock on
  any one file (the activation store's creation lock beside the store).
* :func:`write_result_set`: the complete new set of results (results.zarr, the CSV
  tables, figures, report.html and ``manifest.json``, which lists the arguments and a
  SHA-256 of every file) is written into its own folder and made current by ONE
  atomic rename::

      out/.ftdyn-sets/<id>/                      one complete result set
      out/.ftdyn-sets/current -> <id>            replaced by one rename (the swap)
      out/results.zarr -> .ftdyn-sets/current/results.zarr    fixed links, one per
      out/distances.csv -> .ftdyn-sets/current/distances.csv  product

  A run killed or interrupted anywhere leaves either the old set or the new one
  current, never a mix; the old set is deleted only after the swap, and leftovers
  (unfinished sets, old sets, temporaries of older ftdyn versions) are removed by
  the next run into the folder. :func:`current_set` verifies every listed file, and
  :func:`update_result_set` makes a new version of the current set with files added
  or redrawn (``report`` adds figures/ and report.html to analyze's set, ``visualize``
  adds its figures to the set of its folder).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import arg
from .errors import FtdynError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None

LOCK_FILE = ".ftdyn.lock"
SETS = ".ftdyn-sets"
CURRENT = "current"
MANIFEST = "manifest.json"
_held: dict[
    Path, int
] = {}  # folders this process has locked (re-entry: analyze then report in one command)


# ---------------------------------------------------------------- folder policy
def check_output_folder(
    out, *, flag: str | None = None, inputs=(), may_be_store: bool = False
) -> None:
    """Refuse an output folder before any work is done (so nothing is computed only to fail at
    the end): a path through a file; a folder inside one of ``inputs`` (stores, data folders,
    whose contents it would change), inside any Zarr store (its files would become part of
    the store; the folder itself may be one with ``may_be_store``, as extract's --out is) or
    inside a result set (its checksums would fail); a location that cannot be written. ``flag``:
    how errors name the folder (default: the ``out`` parameter, :func:`ftdyn.config.arg`)."""
    flag = flag or arg("out")
    out = Path(out).expanduser().resolve()
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise FtdynError(
                f"{flag}: {folder} is a file, not a folder; give a folder path (it is created if "
                "missing)."
            )
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if out == item or item in out.parents:
            raise FtdynError(
                f"{flag}: {out} is inside the input {item}; write the output elsewhere."
            )
    for folder in out.parents if may_be_store else (out, *out.parents):
        # zarr.json marks a Zarr v3 store or group (activation stores, results.zarr); .zgroup a v2
        # one
        if (folder / "zarr.json").is_file() or (folder / ".zgroup").is_file():
            raise FtdynError(
                f"{flag}: inside the Zarr store {folder}; writing there would add files to the"
                " store. Give a folder outside it."
            )
    sets = next((f for f in (out, *out.parents) if f.name == SETS), None)
    if sets is not None:
        raise FtdynError(
            f"{flag}: inside the result set of {sets.parent} (e.g. its figures/ link), whose files"
            " are checksummed; give a folder outside it."
        )
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FtdynError(
            f"{flag}: cannot write to {existing} (read-only or no permission); choose another"
            " folder."
        )


#: errors of the file system rather than of ftdyn: full disk, quota, read-only mount
DISK_ERRORS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, name)
)


@contextlib.contextmanager
def disk_errors(out: str | Path, flag: str | None = None) -> Iterator[None]:
    """A full disk, exceeded quota or read-only file system inside the block is one FtdynError
    line naming the file (or, when the system does not say, the folder) that could not be
    written; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        where = exc.filename or f"a file in {out}"
        raise FtdynError(
            f"{flag or arg('out')} {out}: cannot write {where}"
            f" ({exc.strerror or os.strerror(exc.errno)}); free space or choose a writable folder,"
            " then re-run the same command (finished work is kept)."
        ) from None


# ------------------------------------------------------------------------- lock
def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def folder_lock(out: str | Path, flag: str | None = None) -> Iterator[None]:
    """Hold the lock of output folder ``out`` (created if missing) for the block; a folder
    locked by another process is an FtdynError naming that process. Disk errors inside the
    block are one line (:func:`disk_errors`)."""
    out, flag = Path(out).expanduser().resolve(), flag or arg("out")
    with disk_errors(out, flag), _locked(out, flag):
        yield


@contextlib.contextmanager
def _locked(out: Path, flag: str) -> Iterator[None]:
    if out in _held:
        _held[out] += 1
        try:
            yield
        finally:
            _held[out] -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows: no lock
        yield
        return
    created = next((f for f in reversed([out, *out.parents]) if not f.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(out / LOCK_FILE, flag, out):
            _held[out] = 1
            try:
                yield
            finally:
                del _held[out]
    finally:  # a run that made the folder and left nothing in it leaves the folder as it found it
        if created is not None:
            _unmake(out, created)


@contextlib.contextmanager
def file_lock(
    path: Path, flag: str, out: Path, doing: str = "is writing to this folder"
) -> Iterator[None]:
    """Hold the exclusive lock (``flock``) of the file ``path`` for the block; the file holds this
    process's PID and is removed at the end (a killed run leaves it, harmless: the lock dies with
    the process). Held by another process: an FtdynError naming it, as ``flag out: another ftdyn
    run (PID n) <doing>``."""
    if fcntl is None:  # pragma: no cover - Windows: no lock
        yield
        return
    fd = _acquire(path, flag, out, doing)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # removed while still held; a run that opened this file meanwhile sees it is gone once it
        # gets the lock, and starts over
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _acquire(path: Path, flag: str, out: Path, doing: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, or an FtdynError naming the
    process that holds it. A lock taken on a file that was removed meanwhile (its holder
    finished) is dropped and taken again on the file now at ``path``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise FtdynError(
                f"{flag} {out}: another ftdyn run (PID {pid}) {doing}; "
                f"wait for it to finish or choose another {flag}."
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unmake(out: Path, created: Path) -> None:
    """A run that made ``out`` (from ``created`` down) and left nothing in it leaves no folder
    behind (an interrupted or refused run changes nothing)."""
    if any(out.iterdir()):
        return
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
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST
    )


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
    for entry in sets.iterdir() if sets.is_dir() else ():
        if entry.name not in keep:
            _remove(entry)
    for entry in [*out.glob(".analyze-*.tmp"), *out.glob(".analyze-*.old"), *out.glob(".*.link-*")]:
        _remove(entry)
    for link in (p for p in out.iterdir() if p.is_symlink()) if out.is_dir() else ():
        if os.readlink(link).startswith(f"{SETS}/{CURRENT}/") and not link.exists():
            # a product the current set does not have (an older set's figures, a run cut short)
            link.unlink()


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


def write_result_set(
    out: str | Path,
    fill: Callable[[Path], Iterable[str] | None],
    *,
    products: Sequence[str],
    info: dict[str, Any],
) -> None:
    """Write a complete result set with ``fill(folder)`` (which must create ``products``, and
    may return the names of more products it made), seal it with a manifest (``info`` plus a
    SHA-256 of every file) and make it current in one atomic step; the previous set is deleted
    afterwards. Hold :func:`folder_lock`."""
    out = Path(out)
    sets = out / SETS
    sets.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    new_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
    partial, sealed = sets / f".{new_id}.partial", sets / new_id
    pointer = sets / f".{CURRENT}-{new_id}"
    partial.mkdir()
    try:
        _step("fill")
        products = list(dict.fromkeys([*products, *(fill(partial) or ())]))
        missing = [p for p in products if not (partial / p).exists()]
        if missing:
            raise RuntimeError(f"result set lacks {missing}")  # a bug of ours, not the user's
        manifest = {
            **info,
            "products": list(products),
            "files": {f: _sha256(partial / f) for f in _files(partial)},
        }
        _step("manifest")
        (partial / MANIFEST).write_text(
            json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8"
        )
        _step("seal")
        partial.rename(sealed)
        for (
            name
        ) in products:  # fixed links: they show the old set until the swap, the new one after
            _relink(out, name)
        os.symlink(new_id, pointer)
        current = sets / CURRENT
        # a copy that turned the links into folders
        if current.is_dir() and not current.is_symlink():
            current.rename(sets / f".replaced-{uuid.uuid4().hex[:8]}-{CURRENT}")
        _step("swap")
        os.replace(pointer, sets / CURRENT)  # THE atomic step: from here on the new set is current
        _step("delete old")
        remove_stale(out)
    # an error or interrupt: this run's unfinished or unswapped set and its new links go too
    finally:
        remove_stale(out)
        with contextlib.suppress(OSError):
            sets.rmdir()  # only when empty: no set was ever made current here


def update_result_set(
    out: str | Path, fill: Callable[[Path], Iterable[str]], *, carry: Iterable[str] = ()
) -> None:
    """A new version of the current result set of ``out``: a copy of its products (checked
    first: a set that fails verification is an FtdynError, never sealed again with new
    checksums) plus what ``fill(folder)`` draws there (it returns the product names it
    adds or replaces). ``carry``: names of an older layout's real files in ``out`` to take
    over when they exist (figures drawn before result sets). Hold :func:`folder_lock`."""
    out = Path(out)
    remove_stale(out)
    manifest, problem = current_set(out)
    if problem is not None:
        raise FtdynError(
            f"{out}: {problem}; nothing was written. Re-run `ftdyn analyze` into it (which"
            " recomputes the results), or choose another folder."
        )
    manifest = manifest or {}
    kept = [
        *manifest.get("products", []),
        *(n for n in carry if (out / n).exists() and not (out / n).is_symlink()),
    ]
    info = {k: v for k, v in manifest.items() if k not in ("files", "products")}

    def fill_all(folder: Path) -> Iterable[str]:
        for name in dict.fromkeys(kept):
            source = out / name
            # copies: no shared inode
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / name)
        return fill(folder)

    write_result_set(out, fill_all, products=list(dict.fromkeys(kept)), info=info)


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
        return (
            None,
            (
                f"the manifest of the current result set ({folder / MANIFEST}) is missing or"
                " unreadable"
            ),
        )
    for name in products:
        path = out / name
        if not (path.is_symlink() and os.readlink(path) == f"{SETS}/{CURRENT}/{name}"):
            return manifest, f"{path} is not the current result set's {name} (replaced or removed)"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return manifest, f"{name} of the current result set is missing"
        if _sha256(path) != digest:
            return (
                manifest,
                (
                    f"{name} of the current result set was changed after it was written (checksum"
                    " differs)"
                ),
            )
    extra = sorted(set(_files(folder)) - set(files))
    if extra:
        return manifest, f"{extra[0]} was added to the current result set after it was written"
    return manifest, None
