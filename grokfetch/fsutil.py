"""File-system helpers shared by every writer: atomic files, safe relative paths, free space.

A file is written as ``NAME.partial``, flushed, fsynced and renamed, so an interrupted job never
leaves an output that looks complete. Paths that come from torrents or manifests go through
:func:`safe_join`, which refuses anything that would leave the target folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from grokfetch.errors import InsufficientSpaceError, UnsafePathError

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "wb") -> Iterator[BinaryIO]:
    """Write ``path`` through ``path.partial``; rename only when the block succeeds.

    On an exception the partial file is removed and the exception propagates.
    """
    path = Path(path)
    tmp = partial_path(path)
    f = open(tmp, mode)
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


def safe_join(root: Path | str, relpath: str, *, must_exist: bool = False) -> Path:
    """``root / relpath`` after checking that it cannot escape ``root``.

    Symbolic links on the way are resolved: a link that points outside ``root`` is refused,
    never followed.
    """
    root = Path(root)
    check_relpath(relpath, root)
    target = root.joinpath(*relpath.split("/"))
    real_root = root.resolve()
    resolved = target.resolve()
    if resolved != real_root and real_root not in resolved.parents:
        raise UnsafePathError(relpath, root, "resolves outside the folder (symlink)")
    if must_exist and not target.exists():
        raise FileNotFoundError(target)
    return target


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


def human_bytes(n: float, binary: bool = False) -> str:
    """``4.35 MB``-style sizes (powers of 1000), or ``4.06 MiB`` with ``binary``."""
    units = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if binary else \
        (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    for unit, div in units:
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


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
