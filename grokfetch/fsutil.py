"""File-system helpers shared by every writer: atomic files, folder locks, safe relative paths,
free space.

A file is written as ``NAME.partial``, flushed, fsynced and renamed, so an interrupted job never
leaves an output that looks complete. The partial is opened ``O_NOFOLLOW | O_EXCL`` after any
stale one is unlinked, so a symlink planted at ``NAME.partial`` is removed, never written
through. :func:`folder_lock` keeps two writers out of one folder. Paths that come from torrents
or manifests go through :func:`safe_join`, which refuses anything that would leave the target
folder.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from grokfetch.errors import (
    DiskFullError,
    FolderBusyError,
    InsufficientSpaceError,
    UnsafePathError,
)

PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".grokfetch-lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_HELD = threading.local()  # .folders: the folders this thread holds the lock of


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def open_partial(path: Path | str, *, resume: bool = False) -> tuple[BinaryIO, bool]:
    """Open ``path.partial`` for writing; returns ``(file, resumed)``.

    With ``resume`` an existing regular partial is reopened read-write (``resumed`` True).
    Otherwise, or when what lies there is a symlink or not a regular file, it is unlinked (a
    link itself goes, its target is untouched) and a fresh file is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW``.
    """
    tmp = partial_path(Path(path))
    if resume:
        try:
            fd = os.open(tmp, os.O_RDWR | _NOFOLLOW)
        except OSError:
            fd = -1
        if fd >= 0:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return os.fdopen(fd, "r+b"), True
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    return os.fdopen(fd, "wb"), False


def remove_tree(path: Path) -> None:
    """Remove a file, a symlink (never its target) or a folder tree; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def folder_lock(folder: Path | str, what: str) -> Iterator[Path]:
    """Hold an advisory lock on ``folder`` (created if needed) while the block runs.

    The lock is ``flock`` on ``folder/.grokfetch-lock``, taken without waiting: a second writer
    gets :class:`FolderBusyError` naming the holder, never a turn to interleave its writes.
    The kernel drops the lock when the holder dies, so a crash never leaves the folder locked.
    The thread that holds a folder's lock may enter it again (nested writers of one job).
    The file is removed on release (after checking, on acquire, that the lock held is the file
    still at that path, so a writer racing a release cannot end up with a removed lock).
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    held = _HELD.__dict__.setdefault("folders", set())
    key = str(folder.resolve())
    if key in held:  # this thread holds it already (a convert writing its manifest)
        yield lock
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as exc:  # a symlink planted at the lock's name, or a folder
            raise UnsafePathError(LOCK_NAME, folder, f"cannot open the lock file: {exc.strerror}") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise FolderBusyError(folder, what, holder) from None
        mine = os.fstat(fd)
        try:
            now = os.stat(lock, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the holder released and removed it meanwhile: lock the new one
    held.add(key)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        yield lock
    finally:
        held.discard(key)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def disk_full_as_error(path: Path | str, what: str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised in the block into one :class:`DiskFullError` for ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path, what) from None
        raise


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """Write ``path`` through ``path.partial``; rename only when the block succeeds.

    The partial never follows a symlink (:func:`open_partial`). On an exception the partial
    file is removed and the exception propagates.
    """
    path = Path(path)
    tmp = partial_path(path)
    f, _ = open_partial(path)
    try:
        yield f  # type: ignore[misc]
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Write a small file atomically."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def check_relpath(relpath: str, root: Path | str) -> PurePosixPath:
    """Validate a '/'-separated relative path from an untrusted source.

    Raises:
        UnsafePathError: absolute, drive-qualified, empty, or containing ``..``/``.`` parts.
    """
    if not relpath or "\x00" in relpath or "\\" in relpath:
        raise UnsafePathError(relpath, root, "empty, NUL or backslash")
    p = PurePosixPath(relpath)
    if p.is_absolute() or (len(relpath) > 1 and relpath[1] == ":"):
        raise UnsafePathError(relpath, root, "absolute path")
    if any(part in ("..", ".", "") for part in relpath.split("/")):
        raise UnsafePathError(relpath, root, "'..' or '.' component")
    return p


def safe_join(root: Path | str, relpath: str, *, must_exist: bool = False,
              keep_link: bool = False) -> Path:
    """``root / relpath`` after checking that it cannot escape ``root``.

    Symbolic links on the way are resolved: a link that points outside ``root`` is refused,
    never followed. With ``keep_link`` only the folders on the way are checked, for a caller
    that removes or replaces the last component itself (a link there is unlinked, not followed).
    """
    root = Path(root)
    check_relpath(relpath, root)
    target = root.joinpath(*relpath.split("/"))
    try:
        real_root = root.resolve()
        resolved = target.parent.resolve() / target.name if keep_link else target.resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        raise UnsafePathError(relpath, root, "a symlink loop") from None
    if resolved != real_root and real_root not in resolved.parents:
        raise UnsafePathError(relpath, root, "resolves outside the folder (symlink)")
    if must_exist and not target.exists():
        raise FileNotFoundError(target)
    return target


def real_subdir(base: Path | str, name: str) -> Path | None:
    """``base/name`` when it is a folder that stays inside ``base``; None when there is none.

    Raises:
        UnsafePathError: ``base/name`` is a symlink (or holds one on the way) leading outside
            ``base``: a planted link to be refused, never followed.
    """
    path = Path(base) / name
    if not path.is_dir():
        return None
    safe_join(base, name)
    return path


def refuse_symlink_entries(ti, root: Path | str) -> None:
    """Refuse a libtorrent ``torrent_info`` whose file list has BEP-47 symlink entries.

    libtorrent would create those links in ``root`` (one that points at itself makes every later
    download, seed and verify of the folder fail); a Grok-1 release never needs one.

    Raises:
        UnsafePathError: naming the first symlink entry.
    """
    import libtorrent as lt

    fs = ti.layout()
    for i in range(fs.num_files()):
        if fs.file_flags(i) & lt.file_storage.flag_symlink:
            raise UnsafePathError(fs.file_path(i).replace("\\", "/"), root,
                                  "a BEP-47 symlink entry; grokfetch never creates links")


def read_json(path: Path | str, limit: int) -> object:
    """Parse the JSON file at ``path``, reading at most ``limit`` bytes of it.

    Raises:
        OSError: unreadable (``FileNotFoundError`` when missing).
        ValueError: larger than ``limit`` or not JSON.
    """
    import json

    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit:,} bytes")
    return json.loads(raw)


def has_holes(fd: int, start: int, end: int) -> bool:
    """True when the open file ``fd`` has an unwritten (sparse) range in ``[start, end)``.

    Reading such a range through a memory map faults (SIGBUS) when the file system cannot
    allocate the page, e.g. a full tmpfs after a download stopped on ENOSPC; ``read()`` just
    returns zeros. File systems without ``SEEK_HOLE`` report no holes.
    """
    if end <= start or not hasattr(os, "SEEK_HOLE"):
        return False
    try:
        return os.lseek(fd, start, os.SEEK_HOLE) < end
    except OSError:
        return False


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def free_bytes(path: Path | str) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(path: Path | str, needed: int, *, force: bool = False) -> None:
    """Raise :class:`InsufficientSpaceError` when ``needed`` bytes will not fit."""
    free = free_bytes(path)
    if needed > free and not force:
        raise InsufficientSpaceError(path, needed, free)


def parse_size(text: str | int | None) -> int | None:
    """Parse ``"50G"``, ``"5GB"``, ``"512K"``, ``"1.5M"`` or plain bytes (powers of 1000 for
    ``K/M/G/T``, 1024 for ``KiB/MiB/GiB/TiB``)."""
    from grokfetch.errors import UsageError

    if text is None or isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
             "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
             "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            s, factor = s[: -len(unit)], mult
            break
    else:
        factor = 1
    try:
        value = float(s) * factor
    except ValueError:
        raise UsageError(f"bad size {text!r}; use bytes or a K/M/G suffix, e.g. 50G") from None
    if not math.isfinite(value) or value < 0 or value > 2**62:
        raise UsageError(f"bad size {text!r}: must be a finite, non-negative number of bytes")
    return int(value)


# --- resident memory of mapped files ------------------------------------------------------------


def drop_pages(mapping: mmap.mmap, start: int, length: int) -> None:
    """Drop bytes ``start .. start + length`` of a read-only mapping from this process's resident
    set (the page cache keeps them, so a later read costs no disk I/O): how a file far larger than
    memory is read front to back. Whole pages only; nothing where ``MADV_DONTNEED`` is missing."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    lo = start // mmap.PAGESIZE * mmap.PAGESIZE
    hi = min(len(mapping), -(-(start + length) // mmap.PAGESIZE) * mmap.PAGESIZE)
    if advice is None or hi <= lo:
        return
    with contextlib.suppress(OSError, ValueError):
        mapping.madvise(advice, lo, hi - lo)


def drop_view_pages(view) -> None:
    """:func:`drop_pages` for the bytes of a C-contiguous numpy view of a memory map (an
    ``np.memmap`` or an array over an ``mmap.mmap``); nothing for any other array."""
    import numpy as np

    base = view
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not view.flags.c_contiguous:
        return
    drop_pages(base, view.ctypes.data - np.frombuffer(base, np.uint8).ctypes.data, view.nbytes)
