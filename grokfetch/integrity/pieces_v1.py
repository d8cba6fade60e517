"""v1 torrent check: SHA-1 per piece over the concatenated files.

Pieces span file boundaries and pad files read as zeros; each bad piece is mapped back to the
files and byte ranges it covers. Called by :func:`grokfetch.integrity.pieces.check_torrent`.
"""

from __future__ import annotations

import bisect
import hashlib
from concurrent.futures import ThreadPoolExecutor

from grokfetch.errors import UsageError
from grokfetch.integrity.hashio import BlockReader, Extent, LockedProgress, default_jobs, runs
from grokfetch.integrity.pieces_parts import PartFile
from grokfetch.integrity.report import ERROR, WARNING, Finding, Report, merge_ranges
from grokfetch.integrity.torrentfile import Avail, Torrent


def _extents(torrent: Torrent, avail: dict[int, Avail], starts: list[int], a: int, b: int,
             parted: dict[int, set[int]], parts: PartFile | None) -> list[Extent]:
    """What to read for bytes ``[a, b)``: file ranges, zeros for pad files, and the part file
    for the skipped files' bytes of the pieces in ``parted``."""
    L = torrent.piece_length
    in_parts = {i for files in parted.values() for i in files}
    out = []
    i = bisect.bisect_right(starts, a) - 1
    while a < b and i < len(torrent.files):
        tf = torrent.files[i]
        end = tf.offset + tf.size
        if tf.size and end > a:
            take = min(b, end) - a
            path = None if tf.pad else avail[i].path
            if i not in in_parts:
                out.append(Extent(path, a - tf.offset, take))
            else:   # piece by piece: some of them come from the part file
                pos = a
                while pos < a + take:
                    q = pos // L
                    stop = min(a + take, (q + 1) * L)
                    ext = parts.extent(q, pos - q * L, stop - pos) if i in parted.get(q, ()) else None
                    out.append(ext or Extent(path, pos - tf.offset, stop - pos))
                    pos = stop
            a += take
        i += 1
    return out


def _from_parts(torrent: Torrent, blocked: dict[int, set[int]], only: set[int],
                parts: PartFile) -> dict[int, set[int]]:
    """The blocked pieces whose every missing byte belongs to a skipped file (not in ``only``)
    and is stored in libtorrent's part file: piece -> those files. Removed from ``blocked``."""
    L = torrent.piece_length
    out: dict[int, set[int]] = {}
    for p, culprits in list(blocked.items()):
        if culprits & only:
            continue
        ok = True
        for i in culprits:
            tf = torrent.files[i]
            lo, hi = max(p * L, tf.offset), min((p + 1) * L, tf.offset + tf.size)
            ok = ok and parts.extent(p, lo - p * L, hi - lo) is not None
        if ok:
            out[p] = culprits
            del blocked[p]
    return out


def check_v1(torrent: Torrent, avail: dict[int, Avail], report: Report, jobs: int | None,
             prog: LockedProgress, survey: Report, only: set[int] | None, *,
             work_item: int, block: int, parts: PartFile | None = None,
             strict: bool = False) -> None:
    """SHA-1 every readable piece (of the files in ``only``) and add findings to ``report``.

    ``parts``: libtorrent's part file, read for the skipped files' share of a piece. Bytes of
    the ``only`` files in a piece that still cannot be read are ``unverified`` findings: errors
    when ``strict``, else warnings (a neighbour may still be downloading).
    """
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
    parted = _from_parts(torrent, blocked, only, parts) if parts and only is not None else {}
    ok = [p for p in wanted if p not in blocked]
    items = runs(ok, max(1, work_item // L))
    todo = sum(min((p + c) * L, total) - p * L for p, c in items)
    prog.task("verify", todo, f"checking {n:,} pieces (SHA-1)")
    block = L * max(1, block // L)

    def run(item: tuple[int, int]) -> tuple[list[int], str | None]:
        first, count = item
        a, b = first * L, min((first + count) * L, total)
        bad = []
        try:
            with BlockReader(_extents(torrent, avail, starts, a, b, parted, parts),
                             block=block) as reader:
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
        results = list(pool.map(run, items))
    prog.done("verify")
    bad_pieces = sorted(p for bad, _ in results for p in bad)
    unreadable = [(first, count, err) for (first, count), (_, err) in zip(items, results, strict=True) if err]
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
    if only is not None:
        # the selected bytes of those pieces were not hashed: never "OK" for them when strict
        unchecked: dict[int, list[tuple[int, int, int]]] = {}
        for p in sorted(blocked):
            for i, lo, hi in covers(p):
                if i in only and i not in blocked[p]:
                    unchecked.setdefault(i, []).append((p, lo, hi))
        for i, parts_of in sorted(unchecked.items()):
            why = sorted({torrent.files[j].path for p, _, _ in parts_of for j in blocked[p]})
            report.add(Finding(
                "unverified", torrent.files[i].path,
                f"shares pieces with {', '.join(why[:3])}{' …' if len(why) > 3 else ''}, whose "
                "bytes are neither on disk nor in libtorrent's part file", severity=ERROR if strict
                else WARNING, pieces=sorted({p for p, _, _ in parts_of}),
                ranges=merge_ranges([(lo, hi) for _, lo, hi in parts_of])))
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
