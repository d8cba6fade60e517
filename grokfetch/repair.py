"""``verify --repair``: fetch only the bad pieces through the download job, then verify again.

The bad byte ranges of the first pass are mapped to libtorrent piece indices; resume data that
marks every other piece as present is written where the download job looks for it
(``DIR/.grokfetch/<infohash>.resume``), so libtorrent requests exactly those pieces and does not
re-hash the rest. Oversized files are cut back to their torrent length. Then everything is
verified again from disk.
"""

from __future__ import annotations

import glob
import ipaddress
import os
from pathlib import Path

from grokfetch.errors import UsageError
from grokfetch.integrity.report import Report
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.verify.run import plan, verify

REPAIRABLE = ("missing", "truncated", "corrupted", "unreadable", "unverified")
DEFAULT_TIMEOUT = 600.0


def _bad_pieces(report: Report, ti, multi_file: bool) -> tuple[set[int], list[str]]:
    """libtorrent pieces holding any byte a finding marks bad or unchecked (warnings included:
    those pieces were not proved good), and the files with errors among them."""
    fs = ti.layout()
    index = {}
    for i in range(fs.num_files()):
        p = fs.file_path(i).replace("\\", "/")
        index[p.split("/", 1)[1] if multi_file else p] = i
    pieces: set[int] = set()
    files: list[str] = []
    for f in report.findings:
        if f.kind not in REPAIRABLE or f.path not in index:
            continue
        i = index[f.path]
        size = fs.file_size(i)
        for start, end in f.ranges:
            start, end = max(0, start), min(end, size)
            if end > start:
                pieces.update(range(ti.map_file(i, start, 1).piece,
                                    ti.map_file(i, end - 1, 1).piece + 1))
                if f.path not in files and f.severity == "error":
                    files.append(f.path)
    return pieces, files


def _pieces_of(ti, files: set[int] | None) -> set[int] | None:
    """libtorrent piece indices covering ``files`` (None = all files)."""
    if files is None:
        return None
    fs = ti.layout()
    out: set[int] = set()
    for i in files:
        size = fs.file_size(i)
        if size:
            out.update(range(ti.map_file(i, 0, 1).piece, ti.map_file(i, size - 1, 1).piece + 1))
    return out


def _net_options(peers: list[str]) -> dict:
    """With explicit peers, talk to them only (no DHT/LSD/UPnP/trackers, TCP)."""
    if not peers:
        return {}
    from grokfetch.torrent.session import parse_hostport

    hosts = [parse_hostport(p)[0] for p in peers]

    def loopback(h: str) -> bool:
        try:
            return ipaddress.ip_address(h).is_loopback
        except ValueError:
            return h == "localhost"

    listen = "127.0.0.1:0" if all(loopback(h) for h in hosts) else "0.0.0.0:0"
    return {"dht": False, "lsd": False, "upnp": False, "utp": False, "trackers": False,
            "listen": listen}


def _check_top_folder(root: Path, torrent) -> None:
    """libtorrent writes a multi-file torrent's files to ``SAVE_PATH/<torrent name>/``: a
    renamed top folder would get a fresh second tree next to it instead of its repair."""
    if not torrent.multi_file or root.name == torrent.name:
        return
    target = root.parent / torrent.name
    taken = target.exists() or target.is_symlink()
    raise UsageError(
        f"refusing to repair {root}: the torrent names its top folder {torrent.name!r}, and "
        f"libtorrent would write the repaired files to a new {target} instead",
        hint=(f"{target} already exists: move the folder, e.g. to a new parent, as "
              f"<parent>/{torrent.name}, and repair that" if taken else
              f"rename the folder first (mv {root} {target}), then run verify --repair "
              f"{target}"))


def verify_and_repair(path: Path, *, torrent: Path | None = None, manifest: Path | None = None,
                      structure: bool | None = None, preset: str | None = None,
                      jobs: int | None = None, scheme: str = "auto", peers: list[str] | None = None,
                      timeout: float = DEFAULT_TIMEOUT, all_files: bool = False,
                      progress: Progress = NULL_PROGRESS) -> Report:
    """Verify ``path``; when pieces are bad, download just those and verify again.

    Returns the report of the last verification (``repaired`` lists the files touched).

    Raises:
        UsageError: no torrent to repair from, unsafe paths (remove them first), or a top
            folder renamed from the torrent's name (libtorrent would write a second tree).
        DownloadFailed / Interrupted: from the download job (e.g. no peer had the pieces).
    """
    if manifest is not None:
        raise UsageError("--repair needs a torrent: a manifest says what is wrong, not where "
                         "to get it", hint="drop --manifest (the saved torrent is used) or "
                                           "give --torrent FILE")
    p = plan(Path(path), torrent=torrent, structure=structure, all_files=all_files)
    if p.torrent is None or p.torrent_path is None:
        raise UsageError(f"--repair needs a torrent; none saved in {Path(path)}/.grokfetch/",
                         hint="give --torrent FILE")
    first = verify(path, torrent=p.torrent_path, structure=structure, preset=preset, jobs=jobs,
                   scheme=scheme, all_files=all_files, progress=progress)
    if first.ok:
        return first
    unsafe = [f.path for f in first.findings if f.kind == "unsafe"]
    if unsafe:
        raise UsageError(f"refusing to repair: {len(unsafe)} unsafe path(s), e.g. {unsafe[0]!r}",
                         hint="remove links that leave the folder; a torrent with '..' paths "
                              "cannot be repaired")

    root = p.root.absolute()   # "." has no name and no parent
    _check_top_folder(root, p.torrent)

    import libtorrent as lt

    from grokfetch.torrent.job import DownloadOptions, download
    from grokfetch.torrent.source import infohash_of
    from grokfetch.torrent.state import StateFiles

    ti = lt.torrent_info(str(p.torrent_path))
    dest = root.parent if p.torrent.multi_file else root
    for f in first.findings:   # cut oversized files back (libtorrent never shrinks a file)
        if f.kind == "oversized":
            tf = next(t for t in p.torrent.data_files() if t.path == f.path)
            os.truncate(p.root / f.path, tf.size)
    bad, files = _bad_pieces(first, ti, p.torrent.multi_file)
    oversized = [f.path for f in first.findings if f.kind == "oversized"]
    if bad:
        state = StateFiles(dest, infohash_of(ti))
        state.prepare()
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(dest)
        # claim only what the first pass proved good, so the resume data never lies
        checked = _pieces_of(ti, p.only)
        atp.have_pieces = [(checked is None or i in checked) and i not in bad
                           for i in range(ti.num_pieces())]
        state.write_resume(atp)
        progress.event("status", text=f"repairing {len(bad)} pieces in {len(files)} files")
        include = [] if p.only is None else [
            glob.escape(ti.layout().file_path(i).replace("\\", "/")) for i in sorted(p.only)]
        opts = DownloadOptions(peers=list(peers or []), timeout=timeout, include=include,
                               **_net_options(list(peers or [])))
        download(p.torrent_path, dest, opts, progress)
    second = verify(path, torrent=p.torrent_path, structure=structure, preset=preset, jobs=jobs,
                    scheme=scheme, all_files=all_files, progress=progress)
    second.repaired = files + [f for f in oversized if f not in files]
    second.checks = [*second.checks, "repair"]
    return second
