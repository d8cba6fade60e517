"""Fast reading for hashing: a reader thread filling a small ring of reused buffers.

Reading (``readinto`` releases the GIL) and hashing (hashlib, xxhash and blake3 release it on
large buffers) overlap, so one job runs at about the slower of disk and hash speed. Each job
reads its bytes exactly once, in large blocks, into buffers it reuses.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokfetch.errors import UsageError
from grokfetch.fsutil import has_holes

MiB = 1024 * 1024
DEFAULT_BLOCK = 16 * MiB
ALGOS = ("xxh3_128", "blake3", "sha256")


def hasher_factory(algo: str) -> Callable[[], Any]:
    """A zero-argument constructor of a hash object with ``update`` and ``hexdigest``.

    Raises:
        UsageError: unknown algorithm, or ``blake3`` without the ``blake3`` module.
    """
    if algo == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128
    if algo == "sha256":
        return hashlib.sha256
    if algo == "blake3":
        try:
            import blake3
        except ImportError:
            raise UsageError("--algo blake3 needs the blake3 module",
                             hint="pip install blake3, or use xxh3_128 or sha256") from None
        return blake3.blake3
    raise UsageError(f"unknown hash algorithm {algo!r}; choose one of: {', '.join(ALGOS)}")


def default_jobs() -> int:
    """Parallel hashing jobs: one per core, at most 8 (the disk is the limit beyond that)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


class ShortReadError(OSError):
    """A file ended before the bytes the caller expected (it shrank while being read)."""


@dataclass(frozen=True)
class Extent:
    """``length`` bytes of ``path`` from ``offset``; ``path=None`` means zeros (a pad file)."""

    path: Path | None
    offset: int
    length: int


class BufferPool:
    """Read buffers kept for reuse across jobs: fresh pages are expensive to fault in (on some
    VMs several seconds per GiB), reused ones are not."""

    def __init__(self, keep_bytes: int = 256 * MiB):
        self.keep_bytes = keep_bytes
        self.lock = threading.Lock()
        self.free: dict[int, list[bytearray]] = {}

    def get(self, size: int) -> bytearray:
        with self.lock:
            bucket = self.free.get(size)
            if bucket:
                return bucket.pop()
        return bytearray(size)

    def put(self, buf: bytearray) -> None:
        with self.lock:
            held = sum(len(b) for bs in self.free.values() for b in bs)
            if held + len(buf) <= self.keep_bytes:
                self.free.setdefault(len(buf), []).append(buf)


POOL = BufferPool()


class BlockReader:
    """Iterate over the bytes of ``extents``, in order, as blocks of exactly ``block`` bytes
    (the last one may be shorter), read on a background thread.

    Each yielded ``memoryview`` is valid until the next iteration step; the buffers are reused.
    Use it as a context manager (or exhaust it) so the thread is always joined.
    """

    def __init__(self, extents: list[Extent], block: int = DEFAULT_BLOCK, nbufs: int = 3):
        total = sum(e.length for e in extents)
        # a small job gets small buffers (a block of `block` bytes stays a multiple of what
        # the caller asked for, so piece-aligned callers keep their alignment)
        block = max(1, min(block, total))
        nbufs = max(1, min(nbufs, -(-total // block)))
        self.extents, self.block = extents, block
        self.bufs = [POOL.get(block) for _ in range(nbufs)]
        self.free: queue.Queue[int] = queue.Queue()
        self.full: queue.Queue[Any] = queue.Queue()
        for i in range(nbufs):
            self.free.put(i)
        self.stop = False
        self.thread = threading.Thread(target=self._run, name="grokfetch-reader", daemon=True)

    def _run(self) -> None:
        try:
            i = self.free.get()
            if self.stop:
                return
            mv = memoryview(self.bufs[i])
            filled = 0
            for ext in self.extents:
                remaining = ext.length
                f = open(ext.path, "rb", buffering=0) if ext.path is not None else None
                try:
                    if f is not None:
                        f.seek(ext.offset)
                        if hasattr(os, "posix_fadvise"):
                            os.posix_fadvise(f.fileno(), ext.offset, ext.length,
                                             os.POSIX_FADV_SEQUENTIAL)
                    while remaining:
                        want = min(self.block - filled, remaining)
                        if f is None:
                            mv[filled:filled + want] = bytes(want)
                            n = want
                        else:
                            n = f.readinto(mv[filled:filled + want])
                            if not n:
                                raise ShortReadError(
                                    f"{ext.path} ended at byte {ext.offset + ext.length - remaining}"
                                    f", expected {ext.offset + ext.length}")
                        filled += n
                        remaining -= n
                        if filled == self.block:
                            self.full.put((i, filled))
                            i = self.free.get()
                            if self.stop:
                                return
                            mv = memoryview(self.bufs[i])
                            filled = 0
                finally:
                    if f is not None:
                        f.close()
            if filled:
                self.full.put((i, filled))
            self.full.put(None)
        except BaseException as exc:  # handed to the consumer, re-raised there
            self.full.put(exc)

    def __iter__(self) -> Iterator[memoryview]:
        self.thread.start()
        prev: int | None = None
        try:
            while True:
                if prev is not None:
                    self.free.put(prev)
                    prev = None
                item = self.full.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                prev, n = item
                yield memoryview(self.bufs[prev])[:n]
        finally:
            self.close()

    def close(self) -> None:
        self.stop = True
        for i in range(len(self.bufs)):
            self.free.put(i)
        if self.thread.is_alive() or self.thread.ident is not None:
            self.thread.join()
        for buf in self.bufs:
            POOL.put(buf)
        self.bufs = []

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mapped_blocks(ext: Extent, block: int = DEFAULT_BLOCK) -> Iterator[memoryview]:
    """The bytes of one file extent as read-only memoryviews of a memory map, ``block`` bytes
    at a time: no copy into a user buffer, so hashing runs at memory speed from the page cache;
    the kernel's sequential readahead overlaps disk reads with hashing. The caller has checked
    the file's size (a file truncated while mapped would fault)."""
    if ext.length == 0:
        return
    if ext.path is None:
        zeros = memoryview(bytes(min(block, ext.length)))
        for start in range(0, ext.length, block):
            yield zeros[:min(block, ext.length - start)]
        return
    page = mmap.ALLOCATIONGRANULARITY
    base = ext.offset - ext.offset % page
    with open(ext.path, "rb") as f:
        if os.fstat(f.fileno()).st_size < ext.offset + ext.length:
            raise ShortReadError(f"{ext.path} is shorter than {ext.offset + ext.length} bytes")
        if has_holes(f.fileno(), ext.offset, ext.offset + ext.length):
            # a never-written range: mapping it can fault (SIGBUS) on a full disk; read() cannot
            with BlockReader([ext], block=block) as reader:
                yield from reader
            return
        m = mmap.mmap(f.fileno(), ext.offset + ext.length - base, access=mmap.ACCESS_READ, offset=base)
    try:
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        mv = memoryview(m)
        try:
            skip = ext.offset - base
            for start in range(skip, skip + ext.length, block):
                view = mv[start:min(start + block, skip + ext.length)]
                yield view
                view.release()
        finally:
            mv.release()
    finally:
        m.close()


def hash_chunks(blocks: Iterator[memoryview], chunk_lengths: list[int],
                new: Callable[[], Any], whole: Any = None,
                advance: Callable[[int], None] | None = None) -> list[str]:
    """Hash a byte stream cut into chunks of the given lengths; returns one hex digest per chunk.

    ``whole``, when given, is a hash object that also sees every byte (the whole-file hash).
    """
    out: list[str] = []
    it = iter(chunk_lengths)
    need = next(it, 0)
    h = new()
    for mv in blocks:
        if whole is not None:
            whole.update(mv)
        pos, n = 0, len(mv)
        while pos < n:
            if need == 0:
                raise ShortReadError("more bytes than the chunks describe")
            take = min(need, n - pos)
            h.update(mv[pos:pos + take])
            pos += take
            need -= take
            if need == 0:
                out.append(h.hexdigest())
                h = new()
                need = next(it, 0)
        if advance is not None:
            advance(n)
    if need:
        raise ShortReadError(f"stream ended {need} bytes short of its last chunk")
    return out


class LockedProgress:
    """Serialise progress calls from worker threads."""

    def __init__(self, progress: Any):
        self.p, self.lock = progress, threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., None]:
        fn = getattr(self.p, name)

        def call(*args: Any, **kw: Any) -> None:
            with self.lock:
                fn(*args, **kw)

        return call


def runs(ok: list[int], per_item: int) -> list[tuple[int, int]]:
    """Group sorted indices into (first, count) runs of consecutive values, ≤ per_item long."""
    runs: list[tuple[int, int]] = []
    for p in ok:
        if runs and runs[-1][0] + runs[-1][1] == p and runs[-1][1] < per_item:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs
