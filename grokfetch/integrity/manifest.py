"""grokfetch manifests: a whole-file hash plus chunk hashes for every file under a folder.

Format (JSON, version 1)::

    {"format": "grokfetch-manifest", "version": 1, "algo": "xxh3_128", "chunk_size": 67108864,
     "generator": "grokfetch 0.1.0",
     "files": [{"path": "ckpt-0/tensor00000_000", "size": 123, "hash": "<hex>",
                "chunks": ["<hex>", ...]}, ...]}

``path`` is relative and '/'-separated; ``hash`` is the plain digest of the whole file (so a
``sha256`` manifest can be cross-checked with ``sha256sum``); ``chunks`` holds one digest per
``chunk_size`` bytes (the last chunk may be shorter; an empty file has none), so damage is
localised to 64 MiB. Checking reads every byte once and compares the chunk digests (the whole
digest when a file has no chunk list); chunks are checked in parallel, even within one file.

Writers that already hold the bytes (the converters) can hash while writing with
:class:`StreamHasher` and pass its entries to :func:`write_manifest`.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grokfetch.errors import UnsafePathError, UsageError, brief
from grokfetch.fsutil import (
    LOCK_NAME,
    check_relpath,
    folder_lock,
    read_json,
    safe_join,
    write_atomic,
)
from grokfetch.integrity.dlstate import STATE_DIR
from grokfetch.integrity.hashio import (
    DEFAULT_BLOCK,
    BlockReader,
    Extent,
    LockedProgress,
    MiB,
    default_jobs,
    hash_chunks,
    hasher_factory,
    mapped_blocks,
)
from grokfetch.integrity.report import WARNING, Finding, Report, merge_ranges
from grokfetch.progress import NULL_PROGRESS, Progress

MANIFEST_NAME = "grokfetch-manifest.json"
MANIFEST_FORMAT = "grokfetch-manifest"
MANIFEST_VERSION = 1
DEFAULT_ALGO = "xxh3_128"
DEFAULT_CHUNK = 64 * MiB
#: Bytes per unit of parallel work when checking (a run of whole chunks of one file).
WORK_ITEM = 256 * MiB
#: Bounds on what a manifest may declare, checked before any arithmetic or allocation: a
#: 142-byte manifest must not cost gigabytes.
MAX_MANIFEST_BYTES = 64 * MiB
MAX_FILE_SIZE = 1 << 50
MIN_CHUNK, MAX_CHUNK = 4096, 1 << 34
MAX_CHUNKS = 1 << 20


def _chunk_lengths(size: int, chunk_size: int) -> list[int]:
    n = -(-size // chunk_size)
    return [min(chunk_size, size - i * chunk_size) for i in range(n)]


class StreamHasher:
    """Hash one file's bytes as they are written: ``update(data)`` then ``entry(relpath)``."""

    def __init__(self, algo: str = DEFAULT_ALGO, chunk_size: int = DEFAULT_CHUNK):
        self.new = hasher_factory(algo)
        self.algo, self.chunk_size = algo, chunk_size
        self.whole, self.cur = self.new(), self.new()
        self.size, self.cur_len = 0, 0
        self.chunks: list[str] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data).cast("B")
        self.whole.update(mv)
        self.size += len(mv)
        pos = 0
        while pos < len(mv):
            take = min(self.chunk_size - self.cur_len, len(mv) - pos)
            self.cur.update(mv[pos:pos + take])
            pos += take
            self.cur_len += take
            if self.cur_len == self.chunk_size:
                self.chunks.append(self.cur.hexdigest())
                self.cur, self.cur_len = self.new(), 0

    def entry(self, relpath: str) -> dict[str, Any]:
        """The manifest entry for the bytes seen so far."""
        chunks = self.chunks + ([self.cur.hexdigest()] if self.cur_len else [])
        return {"path": relpath, "size": self.size, "hash": self.whole.hexdigest(),
                "chunks": chunks}


def is_state_path(relpath: str, partial: bool = True) -> bool:
    """Files grokfetch keeps for itself (the manifest, ``.grokfetch/``, writers' lock files; with
    ``partial`` also unfinished ``*.partial`` outputs): never part of a manifest."""
    top = relpath.split("/", 1)[0]
    return (relpath == MANIFEST_NAME or top == STATE_DIR or relpath.rsplit("/", 1)[-1] == LOCK_NAME
            or (partial and relpath.endswith(".partial")))


def list_files(root: Path, *, partial: bool = False) -> list[str]:
    """Every regular file under ``root`` as sorted relative posix paths, without grokfetch's own
    state (the manifest, ``.grokfetch/``, and unless ``partial`` the ``*.partial`` leftovers of
    interrupted writes). Symlinked folders are not entered."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        dirnames.sort()
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not is_state_path(rel, partial=not partial):
                out.append(rel)
    return sorted(out)


def extra_detail(rel: str, what: str) -> str:
    if rel.endswith(".partial"):
        return "left by an interrupted write (rerun the job that writes it, or delete it)"
    return f"not in {what}"


def _hash_file(path: Path, size: int, new: Any, chunk_size: int, advance: Any) -> dict[str, Any]:
    whole = new()
    with BlockReader([Extent(path, 0, size)], block=min(DEFAULT_BLOCK, chunk_size)) as reader:
        chunks = hash_chunks(iter(reader), _chunk_lengths(size, chunk_size), new, whole, advance)
    return {"size": size, "hash": whole.hexdigest(), "chunks": chunks}


def build_manifest(root: Path, files: list[str] | None = None, *, algo: str = DEFAULT_ALGO,
                   chunk_size: int = DEFAULT_CHUNK, jobs: int | None = None,
                   progress: Progress = NULL_PROGRESS) -> dict[str, Any]:
    """Hash ``files`` (relative posix paths; None = :func:`list_files`) under ``root``.

    Raises:
        UsageError: unknown ``algo``, bad ``chunk_size``, or a listed path that is not a file.
        UnsafePathError: a path that is absolute, has ``..`` or leaves ``root`` through a link.
    """
    root = Path(root)
    new = hasher_factory(algo)
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"bad chunk size {chunk_size}: must be {MIN_CHUNK:,} to {MAX_CHUNK:,}")
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    rels = list_files(root) if files is None else list(files)
    targets = []
    for rel in rels:
        path = safe_join(root, rel)
        if not path.is_file():
            raise UsageError(f"{rel} is not a regular file under {root}")
        targets.append((rel, path, path.stat().st_size))
    total = sum(t[2] for t in targets)
    prog = LockedProgress(progress)
    prog.task("manifest", total, f"hashing {len(targets)} files ({algo})")
    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        results = list(pool.map(
            lambda t: _hash_file(t[1], t[2], new, chunk_size, lambda n: prog.advance("manifest", n)),
            targets))
    prog.done("manifest")
    from grokfetch import __version__

    entries = [{"path": rel, **res} for (rel, _, _), res in zip(targets, results, strict=True)]
    return manifest_dict(entries, algo=algo, chunk_size=chunk_size, generator=f"grokfetch {__version__}")


def manifest_dict(entries: list[dict[str, Any]], *, algo: str = DEFAULT_ALGO,
                  chunk_size: int = DEFAULT_CHUNK, generator: str = "grokfetch") -> dict[str, Any]:
    """The manifest document for ``entries`` (sorted by path)."""
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "algo": algo,
            "chunk_size": chunk_size, "generator": generator,
            "files": sorted(entries, key=lambda e: e["path"])}


def write_manifest(root: Path, out: Path | None = None, files: list[str] | None = None, *,
                   algo: str = DEFAULT_ALGO, chunk_size: int = DEFAULT_CHUNK,
                   jobs: int | None = None, entries: list[dict[str, Any]] | None = None,
                   progress: Progress = NULL_PROGRESS) -> Path:
    """Build (or take ``entries`` from :class:`StreamHasher`) and write a manifest atomically.

    Returns the manifest path (default ``root / MANIFEST_NAME``). An existing file is replaced:
    callers that must not overwrite check first. The manifest's folder is locked meanwhile
    (:func:`grokfetch.fsutil.folder_lock`).
    """
    root = Path(root)
    out = Path(out) if out is not None else root / MANIFEST_NAME
    with folder_lock(out.parent, "write a manifest"):
        return _write_manifest(root, out, files, algo, chunk_size, jobs, entries, progress)


def _write_manifest(root: Path, out: Path, files: list[str] | None, algo: str, chunk_size: int,
                    jobs: int | None, entries: list[dict[str, Any]] | None,
                    progress: Progress) -> Path:
    if entries is not None:
        from grokfetch import __version__

        for e in entries:
            check_relpath(e["path"], root)
        doc = manifest_dict(entries, algo=algo, chunk_size=chunk_size,
                            generator=f"grokfetch {__version__}")
    else:
        doc = build_manifest(root, files, algo=algo, chunk_size=chunk_size, jobs=jobs,
                             progress=progress)
    write_atomic(out, json.dumps(doc, indent=1) + "\n")
    return out


def load_manifest(manifest: Path) -> dict[str, Any]:
    """Read and validate a manifest document (paths are checked later, against the folder).

    Raises:
        UsageError: unreadable, not a grokfetch manifest, unknown version/algo, malformed entry.
    """
    try:
        doc = read_json(manifest, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise UsageError(f"manifest not found: {manifest}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"unreadable manifest {manifest}: {brief(str(exc), 200)}") from None

    def bad(why: str) -> UsageError:
        return UsageError(f"bad manifest {manifest}: {why}")

    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise bad(f"not a {MANIFEST_FORMAT} document")
    if doc.get("version") != MANIFEST_VERSION:
        raise bad(f"version {doc.get('version')!r}, this grokfetch reads {MANIFEST_VERSION}")
    try:
        hasher_factory(doc.get("algo", ""))
    except UsageError as exc:
        raise UsageError(f"manifest {manifest}: {exc}", hint=exc.hint) from None
    cs = doc.get("chunk_size")
    if not isinstance(cs, int) or isinstance(cs, bool) or not MIN_CHUNK <= cs <= MAX_CHUNK:
        raise bad(f"chunk_size {brief(cs)} (must be {MIN_CHUNK:,} to {MAX_CHUNK:,})")
    files = doc.get("files")
    if not isinstance(files, list):
        raise bad("no file list")
    seen = set()
    for i, e in enumerate(files):
        if not (isinstance(e, dict) and isinstance(e.get("path"), str)
                and isinstance(e.get("size"), int) and not isinstance(e["size"], bool)
                and 0 <= e["size"] <= MAX_FILE_SIZE
                and isinstance(e.get("hash"), str)):
            raise bad(f"entry {i} needs path (str), size (int, 0 to 2**50) and hash (str)")
        if -(-e["size"] // cs) > MAX_CHUNKS:
            raise bad(f"entry {i}: more than {MAX_CHUNKS:,} chunks of {cs:,} bytes")
        chunks = e.get("chunks")
        if chunks is not None and (not isinstance(chunks, list)
                                   or len(chunks) != -(-e["size"] // cs)
                                   or not all(isinstance(c, str) for c in chunks)):
            raise bad(f"entry {brief(e['path'])!r}: chunk list does not fit size {e['size']}")
        if e["path"] in seen:
            raise bad(f"duplicate path {brief(e['path'])!r}")
        seen.add(e["path"])
    return doc


def _check_item(path: Path, entry: dict[str, Any], first: int, count: int, chunk_size: int,
                new: Any, advance: Any) -> list[int]:
    """Hash chunks ``first .. first+count-1`` of one file; return the indices that differ."""
    lengths = _chunk_lengths(entry["size"], chunk_size)[first:first + count]
    ext = Extent(path, first * chunk_size, sum(lengths))
    got = hash_chunks(mapped_blocks(ext, min(DEFAULT_BLOCK, chunk_size)), lengths, new, None, advance)
    want = entry["chunks"][first:first + count]
    return [first + i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a.lower() != b.lower()]


def check_manifest(root: Path, manifest: Path, *, jobs: int | None = None,
                   progress: Progress = NULL_PROGRESS) -> Report:
    """Check every file of ``manifest`` under ``root``; the report names each bad file and
    chunk. Paths that would leave ``root`` become ``unsafe`` findings and are never opened.

    Raises:
        UsageError: the manifest itself is unreadable or malformed.
    """
    t0 = time.monotonic()
    root = Path(root)
    doc = load_manifest(manifest)
    algo, cs = doc["algo"], doc["chunk_size"]
    new = hasher_factory(algo)
    report = Report(root=root, checks=[f"manifest ({algo})"],
                    sources={"manifest": str(manifest)})
    items: list[tuple[Path, dict[str, Any], int, int]] = []
    whole_items: list[tuple[Path, dict[str, Any]]] = []
    per_item = max(1, WORK_ITEM // cs)
    listed = set()
    for e in doc["files"]:
        rel, size = e["path"], e["size"]
        listed.add(rel)
        try:
            path = safe_join(root, rel)
        except UnsafePathError as exc:
            report.add(Finding("unsafe", rel, f"not opened: {exc.why}"))
            continue
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            report.add(Finding("missing", rel, f"expected {size:,} bytes", ranges=[(0, size)]))
            continue
        if not path.is_file():
            report.add(Finding("missing", rel, "not a regular file"))
            continue
        report.files_checked += 1
        have = st.st_size
        n_chunks = -(-size // cs)
        if have < size:
            report.add(Finding("truncated", rel, f"{have:,} bytes, expected {size:,}",
                               pieces=list(range(have // cs, n_chunks)), ranges=[(have, size)]))
            n_ok = have // cs  # chunks that are fully present can still be checked
        else:
            if have > size:
                report.add(Finding("oversized", rel, f"{have:,} bytes, expected {size:,}",
                                   ranges=[(size, have)]))
            n_ok = n_chunks
        if e.get("chunks") is None:
            if have == size:
                whole_items.append((path, e))
            continue
        for first in range(0, n_ok, per_item):
            items.append((path, e, first, min(per_item, n_ok - first)))
    total = sum(sum(_chunk_lengths(e["size"], cs)[f:f + c]) for _, e, f, c in items)
    total += sum(e["size"] for _, e in whole_items)
    prog = LockedProgress(progress)
    prog.task("verify", total, f"checking {len(doc['files'])} files ({algo})")
    adv = lambda n: prog.advance("verify", n)

    def run_item(item: tuple[Path, dict[str, Any], int, int]) -> tuple[dict[str, Any], list[int] | str]:
        path, e, first, count = item
        try:
            return e, _check_item(path, e, first, count, cs, new, adv)
        except OSError as exc:
            return e, str(exc)

    def run_whole(item: tuple[Path, dict[str, Any]]) -> tuple[dict[str, Any], list[int] | str]:
        path, e = item
        try:
            got = _hash_file(path, e["size"], new, cs, adv)["hash"]
        except OSError as exc:
            return e, str(exc)
        return e, ([] if got.lower() == e["hash"].lower() else [-1])

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        results = list(pool.map(run_item, items)) + list(pool.map(run_whole, whole_items))
    prog.done("verify")
    bad: dict[str, list[int]] = {}
    for e, res in results:
        if isinstance(res, str):
            report.add(Finding("unreadable", e["path"], res))
        elif res:
            bad.setdefault(e["path"], []).extend(res)
    by_path = {e["path"]: e for e in doc["files"]}
    for rel, chunks in bad.items():
        size = by_path[rel]["size"]
        if chunks == [-1]:
            report.add(Finding("corrupted", rel, f"{algo} of the whole file differs",
                               ranges=[(0, size)]))
            continue
        ranges = [(c * cs, min((c + 1) * cs, size)) for c in sorted(chunks)]
        report.add(Finding("corrupted", rel,
                           f"{len(chunks)} of {-(-size // cs)} chunks differ ({algo})",
                           pieces=sorted(chunks), ranges=merge_ranges(ranges)))
    own = Path(manifest).resolve()
    for rel in list_files(root, partial=True):
        if rel not in listed and (root / rel).resolve() != own:
            report.add(Finding("extra", rel, extra_detail(rel, "the manifest"), severity=WARNING))
    report.bytes_hashed = total
    report.seconds = time.monotonic() - t0
    return report
