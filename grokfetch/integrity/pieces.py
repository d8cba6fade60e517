"""Check files against a torrent's own piece hashes, straight from disk (no libtorrent session).

v1 (:mod:`grokfetch.integrity.pieces_v1`): SHA-1 per piece over the concatenated files (pieces span file
boundaries; pad files are zeros). v2 (:mod:`grokfetch.integrity.pieces_v2`): per-file SHA-256 merkle trees
over 16 KiB blocks, compared at the piece layer (or the file's root when the torrent carries no
piece layer for it). Each bad piece is mapped back to the file(s) and byte ranges it covers.
Pieces that touch missing, truncated or refused bytes are not read: they are reported with the
file that made them unverifiable.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from grokfetch.errors import UnsafePathError, UsageError
from grokfetch.fsutil import safe_join
from grokfetch.integrity.hashio import DEFAULT_BLOCK, LockedProgress, MiB
from grokfetch.integrity.manifest import extra_detail, list_files
from grokfetch.integrity.pieces_parts import part_file_path, read_part_file
from grokfetch.integrity.pieces_v1 import check_v1
from grokfetch.integrity.pieces_v2 import check_v2
from grokfetch.integrity.report import WARNING, Finding, Report
from grokfetch.integrity.torrentfile import Avail, Torrent, content_root
from grokfetch.progress import NULL_PROGRESS, Progress

WORK_ITEM = 256 * MiB   # bytes per hashing job; module-level so tests can shrink it
_PARTS = re.compile(r"(^|/)\.[0-9a-f]{40,64}\.parts$")


def _survey(root: Path, torrent: Torrent, report: Report) -> dict[int, Avail]:
    """Stat every file (never opening refused ones); add missing/truncated/oversized/unsafe."""
    out: dict[int, Avail] = {}
    for i, tf in enumerate(torrent.files):
        if tf.pad:
            continue
        if tf.unsafe:
            report.add(Finding("unsafe", tf.path, f"not opened: {tf.unsafe}", ranges=[(0, tf.size)]))
            out[i] = Avail(tf, None, 0)
            continue
        try:
            path = safe_join(root, tf.path)
        except UnsafePathError as exc:
            report.add(Finding("unsafe", tf.path, f"not opened: {exc.why}", ranges=[(0, tf.size)]))
            out[i] = Avail(tf, None, 0)
            continue
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            report.add(Finding("missing", tf.path, f"expected {tf.size:,} bytes",
                               ranges=[(0, tf.size)] if tf.size else []))
            out[i] = Avail(tf, None, 0)
            continue
        if not path.is_file():
            report.add(Finding("missing", tf.path, "not a regular file", ranges=[(0, tf.size)]))
            out[i] = Avail(tf, None, 0)
            continue
        report.files_checked += 1
        if st.st_size < tf.size:
            report.add(Finding("truncated", tf.path, f"{st.st_size:,} bytes, expected {tf.size:,}",
                               ranges=[(st.st_size, tf.size)]))
        elif st.st_size > tf.size:
            report.add(Finding("oversized", tf.path, f"{st.st_size:,} bytes, expected {tf.size:,}",
                               ranges=[(tf.size, st.st_size)]))
        out[i] = Avail(tf, path, min(st.st_size, tf.size))
    return out


#: Which torrent hashes to check a hybrid torrent with (``--hashes``): ``auto`` is v2.
HASH_SCHEMES = ("auto", "v1", "v2")


def check_torrent(root: Path, torrent: Torrent, *, scheme: str = "auto", jobs: int | None = None,
                  only: set[int] | None = None, strict: bool = False,
                  progress: Progress = NULL_PROGRESS) -> Report:
    """Verify the torrent's files under ``root`` (its content folder: for a multi-file torrent
    the folder named ``torrent.name``).

    Args:
        scheme: ``"v1"``, ``"v2"`` or ``"auto"`` (v2 when the torrent has it: file-aligned).
        only: check just these file indices (``torrent.files``): the pieces that cover them.
            Problems of other files that share those pieces are warnings; extra files are not
            looked for. The other files' bytes of a shared piece are read from libtorrent's part
            file (``<save path>/.<infohash>.parts``) when they are not on disk.
        strict: selected bytes that still cannot be hashed (a shared piece whose other bytes
            are nowhere) are errors (``unverified``), not warnings. ``verify`` is strict; a
            check during a download, when a neighbour may still be arriving, is not.
    """
    if scheme not in HASH_SCHEMES:
        raise UsageError(f"--hashes must be one of {', '.join(HASH_SCHEMES)}, not {scheme!r}")
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
        check_v2(torrent, {i: a for i, a in avail.items() if only is None or i in only},
                 report, jobs, prog, work_item=WORK_ITEM, block=DEFAULT_BLOCK)
    else:
        parts = None
        if only is not None:
            save = Path(root).parent if torrent.multi_file else Path(root)
            parts = next((pf for ih in (torrent.infohash_v1, torrent.infohash_v2) if ih
                          for pf in [read_part_file(part_file_path(save, ih),
                                                    torrent.num_pieces_v1, torrent.piece_length)]
                          if pf is not None), None)
        check_v1(torrent, avail, report, jobs, prog, survey, only, work_item=WORK_ITEM,
                 block=DEFAULT_BLOCK, parts=parts, strict=strict)
    known = {tf.path for tf in torrent.data_files()}
    if Path(root).is_dir() and only is None:
        for rel in list_files(Path(root), partial=True):
            if rel not in known and not _PARTS.search(rel):
                report.add(Finding("extra", rel, extra_detail(rel, "the torrent"),
                                   severity=WARNING))
    report.seconds = time.monotonic() - t0
    return report


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
    from grokfetch.integrity.torrentfile import load_torrent

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
