"""v2 torrent check: per-file SHA-256 merkle trees over 16 KiB blocks.

Pieces are compared at the piece layer, or the whole file at its root when the torrent carries
no piece layer for it (files of one piece or less). Called by
:func:`grokfetch.integrity.pieces.check_torrent`.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor

from grokfetch.errors import UsageError
from grokfetch.integrity.hashio import BlockReader, Extent, LockedProgress, default_jobs, runs
from grokfetch.integrity.report import Finding, Report, merge_ranges
from grokfetch.integrity.torrentfile import Avail, Torrent

BLOCK_V2 = 16 * 1024
_ZERO32 = bytes(32)


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


def check_v2(torrent: Torrent, avail: dict[int, Avail], report: Report, jobs: int | None,
             prog: LockedProgress, *, work_item: int, block: int) -> None:
    """Check every file in ``avail`` against its merkle tree; add findings to ``report``."""
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
        for first, count in runs(list(range(full)), max(1, work_item // L)):
            items.append((i, first, count))
    todo = sum(min((f + c) * L, avail[i].tf.size) - f * L for i, f, c in items)
    prog.task("verify", todo, f"checking {total_pieces:,} pieces (SHA-256 merkle)")
    step = L * max(1, block // L)

    def run(item: tuple[int, int, int]) -> tuple[list[bytes], str | None]:
        i, first, count = item
        tf = avail[i].tf
        width = bpp if tf.size > L else _pow2(-(-tf.size // BLOCK_V2))
        a, b = first * L, min((first + count) * L, tf.size)
        got = []
        try:
            with BlockReader([Extent(avail[i].path, a, b - a)], block=step) as reader:
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
