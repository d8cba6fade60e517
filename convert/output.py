"""Crash-safe output files: ``*.partial`` + rename, and resume after ``kill -9``.

The resume state lives in ``OUT/.grokfetch-convert-state.json``: the plan's fingerprint and, per
output file, the end offset of every committed item. It is rewritten atomically (fsynced) at each
:meth:`FileSink.commit`, after the data itself has been fsynced, so after any crash the state
never claims more than the disk holds. On a rerun :class:`FileSink` truncates the partial file to
the last committed offset and the target skips the items :meth:`FileSink.done` reports. Because
every target writes deterministically in plan order, the finished file is byte-identical to an
uninterrupted run.

Every planned path goes through :func:`grokfetch.fsutil.safe_join`: a sink never writes outside
its root. :class:`FileSink` hashes what it writes (:class:`grokfetch.integrity.manifest.StreamHasher`) so the
driver's manifest needs no second read of the output; a resumed file hashes its committed prefix
once when it is reopened.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.fsutil import open_partial, partial_path, safe_join, write_atomic
from grokfetch.integrity.manifest import StreamHasher

STATE_FILENAME = ".grokfetch-convert-state.json"
#: A commit is made durable (data fsync + state rewrite) once this many bytes or seconds have
#: passed since the last durable one; a crash loses at most that much work.
SYNC_BYTES = 16 * 1024 * 1024
SYNC_SECONDS = 2.0
STATE_FORMAT = "grokfetch-convert-state"
HEADER_KEY = "__header__"


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort on file systems that refuse it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ConvertState:
    """The resume record of one conversion into ``root``."""

    def __init__(self, root: Path, fingerprint: dict[str, Any], files: dict[str, Any] | None = None):
        self.root, self.fingerprint = root, fingerprint
        self.files: dict[str, dict[str, Any]] = files or {}

    @property
    def path(self) -> Path:
        return self.root / STATE_FILENAME

    @classmethod
    def load(cls, root: Path) -> ConvertState | None:
        """The saved state, or None when there is none (or it is unreadable)."""
        p = root / STATE_FILENAME
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if data.get("format") != STATE_FORMAT:
            return None
        return cls(root, data.get("fingerprint", {}), data.get("files", {}))

    def file(self, relpath: str) -> dict[str, Any]:
        return self.files.setdefault(relpath, {"complete": False, "offset": 0, "items": {}})

    def reset_file(self, relpath: str) -> dict[str, Any]:
        self.files[relpath] = {"complete": False, "offset": 0, "items": {}}
        return self.files[relpath]

    def is_complete(self, relpath: str) -> bool:
        return bool(self.files.get(relpath, {}).get("complete"))

    def save(self) -> None:
        data = {"format": STATE_FORMAT, "version": 1, "fingerprint": self.fingerprint,
                "files": self.files}
        write_atomic(self.path, json.dumps(data, sort_keys=True))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
        return memoryview(data.view(np.uint8).reshape(-1))
    return memoryview(data).cast("B")


#: Read size when hashing the committed prefix of a resumed file.
_HASH_BLOCK = 8 * 1024 * 1024


class FileSink:
    """An output file being written as ``NAME.partial``; see the module docstring."""

    def __init__(self, root: Path, relpath: str, state: ConvertState):
        self.root, self.relpath, self.state = root, relpath, state
        self.final = safe_join(root, relpath, keep_link=True)
        self.partial = partial_path(self.final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        rec = state.file(relpath)
        self._pending: dict[str, int] = {}
        self.hasher = StreamHasher()
        self._f, self.resumed = open_partial(self.final, resume=bool(rec["items"]))
        if self.resumed and os.fstat(self._f.fileno()).st_size < rec["offset"]:
            self._f.close()  # shorter than the state says: start over
            self._f, self.resumed = open_partial(self.final)
        if self.resumed:
            self._f.truncate(rec["offset"])
            while block := self._f.read(_HASH_BLOCK):  # the bytes an earlier run wrote
                self.hasher.update(block)
        else:
            rec = state.reset_file(relpath)
        self.rec = rec
        self.bytes_written = 0  # in this run
        self._synced_at, self._synced_t = self._f.tell(), time.monotonic()

    def begin(self, header: bytes | memoryview) -> None:
        """Write the header, or check that a resumed partial starts with exactly it."""
        header = bytes(header)
        if self.resumed:
            self._f.seek(0)
            if self._f.read(len(header)) == header and HEADER_KEY in self.rec["items"]:
                self._f.seek(self.rec["offset"])
                return
            # a different header (should not happen with a matching fingerprint): start over
            self._f.seek(0)
            self._f.truncate(0)
            self.hasher = StreamHasher()
            self.rec = self.state.reset_file(self.relpath)
            self.resumed = False
        self.write(header)
        self.commit(HEADER_KEY, durable=True)

    def done(self, key: str) -> bool:
        """True when ``key`` was committed by an earlier run (skip it)."""
        return key in self.rec["items"] or key in self._pending

    def tell(self) -> int:
        return self._f.tell()

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        mv = _as_bytes(data)
        self._f.write(mv)
        self.hasher.update(mv)
        self.bytes_written += mv.nbytes

    def pad_to(self, alignment: int) -> None:
        """Zero bytes up to the next multiple of ``alignment``."""
        pad = -self._f.tell() % alignment
        if pad:
            self.write(b"\0" * pad)

    def commit(self, key: str, *, durable: bool = False) -> None:
        """Record ``key`` as finished; persist (fsync data, then the state) every
        :data:`SYNC_BYTES` / :data:`SYNC_SECONDS`, or now with ``durable=True``.

        Only persisted commits count on resume, and the state is saved after the data is
        fsynced, so it never claims bytes the disk may not hold.
        """
        pos = self._f.tell()
        self._pending[key] = pos
        if not (durable or pos - self._synced_at >= SYNC_BYTES
                or time.monotonic() - self._synced_t >= SYNC_SECONDS):
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rec["items"].update(self._pending)
        self._pending.clear()
        self.rec["offset"] = pos
        self.state.save()
        self._synced_at, self._synced_t = pos, time.monotonic()

    def finish(self) -> None:
        """fsync, close and rename ``NAME.partial`` → ``NAME``; mark the file complete."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self.rec["items"].update(self._pending)
        self._pending.clear()
        os.replace(self.partial, self.final)
        fsync_dir(self.final.parent)
        self.rec["complete"] = True
        self.state.save()

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest entry (``grokfetch.integrity.manifest`` format) of everything written to the file."""
        return self.hasher.entry(self.relpath)

    def close(self) -> None:
        """Close without renaming (the partial stays for a resume)."""
        if not self._f.closed:
            self._f.close()


def ordered_map(fn, items, workers: int, max_inflight: int | None = None):
    """``map(fn, items)`` on ``workers`` threads, yielding results in order.

    At most ``max_inflight`` (default ``workers + 1``) results exist at once, which bounds
    memory to that many chunks. numpy releases the GIL in the heavy loops (casts, multiplies,
    rounding), so threads scale without copying memory-mapped inputs to other processes.
    """
    if workers <= 1:
        for it in items:
            yield fn(it)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    limit = max_inflight or workers + 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for it in items:
            pending.append(pool.submit(fn, it))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
