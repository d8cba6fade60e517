"""Check files against a torrent's own piece hashes, straight from disk (no libtorrent session).

v1: SHA-1 per piece over the concatenated files (pieces span file boundaries; pad files are
zeros). v2: per-file SHA-256 merkle trees over 16 KiB blocks, compared at the piece layer (or the
file's root when the torrent carries no piece layer for it). Each bad piece is mapped back to
the file(s) and byte ranges it covers. Pieces that touch missing, truncated or refused bytes
are not read: they are reported with the file that made them unverifiable.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import UnsafePathError, UsageError
from grokfetch.fsutil import safe_join
from grokfetch.progress import NULL_PROGRESS, Progress
from verify.hashio import DEFAULT_BLOCK, BlockReader, Extent, LockedProgress, MiB, default_jobs
from verify.manifest import extra_detail, list_files
from verify.report import ERROR, WARNING, Finding, Report, merge_ranges
from verify.torrentfile import Torrent, TorrentFile

BLOCK_V2 = 16 * 1024
WORK_ITEM = 256 * MiB
_PARTS = re.compile(r"(^|/)\.[0-9a-f]{40,64}\.parts$")
_ZERO32 = bytes(32)


@dataclass
class _Avail:
    """How much of one torrent file can be read, and where."""

    tf: TorrentFile
    path: Path | None
    avail: int


def _survey(root: Path, torrent: Torrent, report: Report) -> dict[int, _Avail]:
    """Stat every file (never opening refused ones); add missing/truncated/oversized/unsafe."""
    out: dict[int, _Avail] = {}
    for i, tf in enumerate(torrent.files):
        if tf.pad:
            continue
        if tf.unsafe:
            report.add(Finding("unsafe", tf.path, f"not opened: {tf.unsafe}", ranges=[(0, tf.size)]))
            out[i] = _Avail(tf, None, 0)
            continue
        try:
            path = safe_join(root, tf.path)
        except UnsafePathError as exc:
            report.add(Finding("unsafe", tf.path, f"not opened: {exc.why}", ranges=[(0, tf.size)]))
            out[i] = _Avail(tf, None, 0)
            continue
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            report.add(Finding("missing", tf.path, f"expected {tf.size:,} bytes",
                               ranges=[(0, tf.size)] if tf.size else []))
            out[i] = _Avail(tf, None, 0)
            continue
        if not path.is_file():
            report.add(Finding("missing", tf.path, "not a regular file", ranges=[(0, tf.size)]))
            out[i] = _Avail(tf, None, 0)
            continue
        report.files_checked += 1
        if st.st_size < tf.size:
            report.add(Finding("truncated", tf.path, f"{st.st_size:,} bytes, expected {tf.size:,}",
                               ranges=[(st.st_size, tf.size)]))
        elif st.st_size > tf.size:
            report.add(Finding("oversized", tf.path, f"{st.st_size:,} bytes, expected {tf.size:,}",
                               ranges=[(tf.size, st.st_size)]))
        out[i] = _Avail(tf, path, min(st.st_size, tf.size))
    return out


def _runs(ok: list[int], per_item: int) -> list[tuple[int, int]]:
    """Group sorted indices into (first, count) runs of consecutive values, ≤ per_item long."""
    runs: list[tuple[int, int]] = []
    for p in ok:
        if runs and runs[-1][0] + runs[-1][1] == p and runs[-1][1] < per_item:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


def check_torrent(root: Path, torrent: Torrent, *, scheme: str = "auto", jobs: int | None = None,
                  only: set[int] | None = None, progress: Progress = NULL_PROGRESS) -> Report:
    """Verify the torrent's files under ``root`` (its content folder: for a multi-file torrent
    the folder named ``torrent.name``).

    Args:
        scheme: ``"v1"``, ``"v2"`` or ``"auto"`` (v2 when the torrent has it: file-aligned).
        only: check just these file indices (``torrent.files``): the pieces that cover them.
            Problems of other files that share those pieces are warnings; extra files are not
            looked for.
    """
    t0 = time.monotonic()
    use_v2 = torrent.v2 if scheme == "auto" else scheme == "v2"
    if use_v2 and not torrent.v2:
        raise UsageError("the torrent has no v2 hashes")
    if not use_v2 and not torrent.has_v1:
        raise UsageError("the torrent has no v1 hashes")
    report = Report(root=Path(root), checks=[f"torrent {'v2 SHA-256' if use_v2 else 'v1 SHA-1'}"],
                    sources={"infohash": torrent.infohash})
    survey = Report(root=Path(root))
    avail = _survey(Path(root), torrent, survey)
    mine = None if only is None else {torrent.files[i].path for i in only}
    for f in survey.findings:
        if mine is None or f.path in mine:
            report.add(f)
    report.files_checked = survey.files_checked if only is None else len(only)
    prog = LockedProgress(progress)
    if use_v2:
        _check_v2(torrent, {i: a for i, a in avail.items() if only is None or i in only},
                  report, jobs, prog)
    else:
        _check_v1(torrent, avail, report, jobs, prog, survey, only)
    known = {tf.path for tf in torrent.data_files()}
    if Path(root).is_dir() and only is None:
        for rel in list_files(Path(root), partial=True):
            if rel not in known and not _PARTS.search(rel):
                report.add(Finding("extra", rel, extra_detail(rel, "the torrent"),
                                   severity=WARNING))
    report.seconds = time.monotonic() - t0
    return report


# --- v1 -----------------------------------------------------------------------------------------


def _extents(torrent: Torrent, avail: dict[int, _Avail], starts: list[int], a: int,
             b: int) -> list[Extent]:
    out = []
    i = bisect.bisect_right(starts, a) - 1
    while a < b and i < len(torrent.files):
        tf = torrent.files[i]
        end = tf.offset + tf.size
        if tf.size and end > a:
            take = min(b, end) - a
            path = None if tf.pad else avail[i].path
            out.append(Extent(path, a - tf.offset, take))
            a += take
        i += 1
    return out


def _check_v1(torrent: Torrent, avail: dict[int, _Avail], report: Report, jobs: int | None,
              prog: LockedProgress, survey: Report, only: set[int] | None) -> None:
    L, total, n = torrent.piece_length, torrent.total_size, torrent.num_pieces_v1
    hashes = torrent.v1_pieces or b""
    if len(hashes) != 20 * n:
        raise UsageError(f"bad torrent: {len(hashes) // 20} piece hashes for {n} pieces")
    # pieces that cannot be read, and which file made them so
    blocked: dict[int, set[int]] = {}
    for i, a in avail.items():
        if a.avail < a.tf.size:
            lo, hi = a.tf.offset + a.avail, a.tf.offset + a.tf.size
            for p in range(lo // L, (hi - 1) // L + 1):
                blocked.setdefault(p, set()).add(i)
    starts = [tf.offset for tf in torrent.files]
    if only is None:
        wanted = range(n)
    else:
        spans = [(torrent.files[i].offset, torrent.files[i].size) for i in only]
        wanted = sorted({p for off, size in spans if size
                         for p in range(off // L, (off + size - 1) // L + 1)})
        wanted_set = set(wanted)
        blocked = {p: c for p, c in blocked.items() if p in wanted_set}
    ok = [p for p in wanted if p not in blocked]
    runs = _runs(ok, max(1, WORK_ITEM // L))
    todo = sum(min((p + c) * L, total) - p * L for p, c in runs)
    prog.task("verify", todo, f"checking {n:,} pieces (SHA-1)")
    block = L * max(1, DEFAULT_BLOCK // L)

    def run(item: tuple[int, int]) -> tuple[list[int], str | None]:
        first, count = item
        a, b = first * L, min((first + count) * L, total)
        bad = []
        try:
            with BlockReader(_extents(torrent, avail, starts, a, b), block=block) as reader:
                p = first
                for mv in reader:
                    for j in range(0, len(mv), L):
                        if hashlib.sha1(mv[j:j + L]).digest() != hashes[20 * p:20 * p + 20]:
                            bad.append(p)
                        p += 1
                    prog.advance("verify", len(mv))
        except OSError as exc:
            return [], str(exc)
        return bad, None

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        results = list(pool.map(run, runs))
    prog.done("verify")
    bad_pieces = sorted(p for bad, _ in results for p in bad)
    unreadable = [(first, count, err) for (first, count), (_, err) in zip(runs, results, strict=True) if err]
    report.bytes_hashed = todo
    report.pieces_total = len(wanted)
    report.pieces_bad = len(bad_pieces) + len(blocked) + sum(c for _, c, _ in unreadable)

    def covers(p: int) -> list[tuple[int, int, int]]:
        """(file index, start, end) of the non-pad files piece p covers."""
        a, b = p * L, min((p + 1) * L, total)
        out = []
        i = bisect.bisect_right(starts, a) - 1
        while i < len(torrent.files) and torrent.files[i].offset < b:
            tf = torrent.files[i]
            lo, hi = max(a, tf.offset), min(b, tf.offset + tf.size)
            if hi > lo and not tf.pad:
                out.append((i, lo - tf.offset, hi - tf.offset))
            i += 1
        return out

    def severity(i: int) -> str:
        return ERROR if only is None or i in only else WARNING

    # one finding per file (Report.add scans the list, so never add per piece)
    kind_of = {f.path: f.kind for f in survey.findings
               if f.kind in ("missing", "truncated", "unsafe")}
    blocked_by: dict[int, list[int]] = {}
    for p, culprits in sorted(blocked.items()):
        for i in culprits:
            blocked_by.setdefault(i, []).append(p)
    for i, ps in sorted(blocked_by.items()):
        path = torrent.files[i].path
        detail = "" if severity(i) == ERROR else "needed to check a shared piece; not checked"
        report.add(Finding(kind_of.get(path, "missing"), path, detail, pieces=ps,
                           severity=severity(i)))
    unread: dict[int, tuple[str, list[int], list[tuple[int, int]]]] = {}
    for first, count, err in unreadable:
        for p in range(first, first + count):
            for i, lo, hi in covers(p):
                entry = unread.setdefault(i, (err, [], []))
                entry[1].append(p)
                entry[2].append((lo, hi))
    for i, (err, ps, rs) in sorted(unread.items()):
        report.add(Finding("unreadable", torrent.files[i].path, err, pieces=sorted(set(ps)),
                           ranges=merge_ranges(rs), severity=severity(i)))
    by_file: dict[int, list[tuple[int, int, int]]] = {}
    for p in bad_pieces:
        for i, lo, hi in covers(p):
            by_file.setdefault(i, []).append((p, lo, hi))
    for i, parts in sorted(by_file.items()):
        tf = torrent.files[i]
        pieces = sorted({p for p, _, _ in parts})
        shared = sorted({torrent.files[j].path for p in pieces for j, _, _ in covers(p) if j != i})
        detail = f"{len(pieces)} bad piece{'s' if len(pieces) > 1 else ''} (SHA-1)"
        if shared:
            detail += f"; shared with {', '.join(shared)}: the damage is in one of them"
        report.add(Finding("corrupted", tf.path, detail, pieces=pieces, severity=severity(i),
                           ranges=merge_ranges([(lo, hi) for _, lo, hi in parts])))


# --- v2 -----------------------------------------------------------------------------------------


def _fold(nodes: list[bytes], width: int, pad: bytes) -> bytes:
    layer = nodes + [pad] * (width - len(nodes))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[k] + layer[k + 1]).digest() for k in range(0, len(layer), 2)]
    return layer[0]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _zero_subtree(leaves: int) -> bytes:
    z = _ZERO32
    for _ in range(int(math.log2(leaves))):
        z = hashlib.sha256(z + z).digest()
    return z


def _piece_hash_v2(mv: memoryview, width: int) -> bytes:
    leaves = [hashlib.sha256(mv[k:k + BLOCK_V2]).digest() for k in range(0, len(mv), BLOCK_V2)]
    return _fold(leaves, width, _ZERO32)


def _check_v2(torrent: Torrent, avail: dict[int, _Avail], report: Report, jobs: int | None,
              prog: LockedProgress) -> None:
    L = torrent.piece_length
    bpp = L // BLOCK_V2
    items: list[tuple[int, int, int]] = []  # (file index, first piece, count)
    plan: dict[int, tuple[int, list[bytes] | None]] = {}  # file -> (pieces, expected layer)
    blocked: dict[int, list[int]] = {}
    blocked_count = 0
    total_pieces = 0
    for i, a in avail.items():
        tf = a.tf
        if tf.size == 0:
            continue
        if tf.root is None:
            raise UsageError(f"bad torrent: no pieces root for {tf.path}")
        n = -(-tf.size // L)
        total_pieces += n
        layer = None
        if tf.size > L:
            raw = torrent.piece_layers.get(tf.root)
            if raw is not None and len(raw) == 32 * n:
                layer = [raw[32 * k:32 * k + 32] for k in range(n)]
                if _fold(layer, _pow2(n), _zero_subtree(bpp)) != tf.root:
                    raise UsageError(f"bad torrent: piece layer of {tf.path} does not match its root")
        plan[i] = (n, layer)
        full = a.avail // L if a.avail < tf.size else n
        if full < n:
            # a piece list only when the torrent itself bounds it (a piece layer), so a hostile
            # torrent declaring a huge missing file cannot make us build a huge list
            blocked[i] = list(range(full, n)) if layer is not None or n <= 4096 else []
            blocked_count += n - full
        if layer is None and full < n:
            continue  # only the root: a file that is not all there cannot be checked
        for first, count in _runs(list(range(full)), max(1, WORK_ITEM // L)):
            items.append((i, first, count))
    todo = sum(min((f + c) * L, avail[i].tf.size) - f * L for i, f, c in items)
    prog.task("verify", todo, f"checking {total_pieces:,} pieces (SHA-256 merkle)")

    def run(item: tuple[int, int, int]) -> tuple[list[bytes], str | None]:
        i, first, count = item
        tf = avail[i].tf
        width = bpp if tf.size > L else _pow2(-(-tf.size // BLOCK_V2))
        a, b = first * L, min((first + count) * L, tf.size)
        got = []
        try:
            block = L * max(1, DEFAULT_BLOCK // L)
            with BlockReader([Extent(avail[i].path, a, b - a)], block=block) as reader:
                for mv in reader:
                    got.extend(_piece_hash_v2(mv[j:j + L], width) for j in range(0, len(mv), L))
                    prog.advance("verify", len(mv))
        except OSError as exc:
            return [], str(exc)
        return got, None

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        results = list(pool.map(run, items))
    prog.done("verify")
    got_by_file: dict[int, dict[int, bytes]] = {}
    for (i, first, count), (got, err) in zip(items, results, strict=True):
        if err:
            size = avail[i].tf.size
            report.add(Finding("unreadable", avail[i].tf.path, err,
                               ranges=[(first * L, min((first + count) * L, size))]))
            blocked.setdefault(i, []).extend(range(first, first + count))
            blocked_count += count
            continue
        got_by_file.setdefault(i, {}).update({first + k: h for k, h in enumerate(got)})
    bad_total = blocked_count
    for i, (n, layer) in plan.items():
        tf = avail[i].tf
        got = got_by_file.get(i, {})
        if i in blocked:
            kind = next((f.kind for f in report.findings if f.path == tf.path
                         and f.kind in ("missing", "truncated", "unsafe", "unreadable")), "missing")
            report.add(Finding(kind, tf.path, "", pieces=sorted(set(blocked[i]))))
        if layer is not None:
            bad = [p for p, h in sorted(got.items()) if h != layer[p]]
        elif len(got) == n:
            ok = (got[0] == tf.root if n == 1
                  else _fold([got[p] for p in range(n)], _pow2(n), _zero_subtree(bpp)) == tf.root)
            bad = [] if ok else list(range(n))
        else:
            bad = []
        if bad:
            bad_total += len(bad)
            what = "bad piece" if layer is not None or n == 1 else "file root differs (no piece layer); piece"
            report.add(Finding("corrupted", tf.path,
                               f"{len(bad)} {what}{'s' if len(bad) > 1 else ''} (SHA-256 merkle)",
                               pieces=bad, ranges=merge_ranges(
                                   [(p * L, min((p + 1) * L, tf.size)) for p in bad])))
    report.bytes_hashed = todo
    report.pieces_total, report.pieces_bad = total_pieces, bad_total


def check_file(torrent: Path | Torrent, path: Path, *, root: Path, scheme: str = "auto",
               progress: Progress = NULL_PROGRESS) -> Report:
    """Check one file of a torrent (e.g. as soon as a download finished it).

    Args:
        torrent: the ``.torrent`` path (or a parsed :class:`Torrent`).
        path: the file on disk.
        root: the download folder (holding ``<torrent name>/``) or the content folder.

    Pieces shared with a neighbouring file that is absent cannot be checked; that neighbour is
    then a warning, not an error. ``report.ok`` says whether the file is good.

    Raises:
        UsageError: ``path`` is not one of the torrent's files.
    """
    from verify.run import content_root
    from verify.torrentfile import load_torrent

    t = torrent if isinstance(torrent, Torrent) else load_torrent(Path(torrent))
    croot = content_root(Path(root), t)
    try:
        rel = Path(path).absolute().relative_to(croot.absolute()).as_posix()
    except ValueError:
        raise UsageError(f"{path} is not inside {croot}") from None
    idx = next((i for i, f in enumerate(t.files) if f.path == rel and not f.pad), None)
    if idx is None:
        raise UsageError(f"{rel} is not a file of torrent {t.name!r}")
    return check_torrent(croot, t, scheme=scheme, jobs=1, only={idx}, progress=progress)
