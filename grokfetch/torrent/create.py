"""``grokfetch torrent create``: a deterministic v1 torrent of a checkpoint folder; and
``grokfetch torrent show``: what a torrent (or a download folder's saved one) holds.

Deterministic means the same folder gives the same bytes (and info-hash) on any machine and
any day: files sorted by path, hidden files (``.grokfetch/``, ``.*.parts``) and ``*.partial``
left out, no creation date, a fixed ``created by``. v1 only (SHA-1 pieces, like Grok-1's
torrent); no v2 merkle hashes are emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import NotFoundError, OutputExistsError, UsageError
from grokfetch.fsutil import PARTIAL_SUFFIX, folder_lock, write_atomic
from grokfetch.progress import NULL_PROGRESS, Progress

CREATOR = "grokfetch"
MIN_PIECE = 16 * 1024


@dataclass(frozen=True)
class CreatedTorrent:
    path: Path
    infohash: str
    name: str
    files: int
    bytes: int
    piece_size: int
    num_pieces: int
    magnet: str

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def _included(full: str, root: Path) -> bool:
    try:
        rel = Path(full).relative_to(root)
    except ValueError:
        return False
    return not any(part.startswith(".") for part in rel.parts) and not full.endswith(PARTIAL_SUFFIX)


def check_piece_size(n: int | None) -> int:
    if n is None or n == 0:
        return 0
    if n < MIN_PIECE or n & (n - 1):
        raise UsageError(f"bad --piece-size {n}: use a power of two of at least 16 KiB "
                         "(e.g. 256KiB, 4MiB)")
    return n


def torrent_bytes_of(folder: Path | str, *, piece_size: int | None = None,
                     trackers: list[str] | None = None, webseeds: list[str] | None = None,
                     progress: Progress = NULL_PROGRESS) -> bytes:
    """The bencoded .torrent of ``folder`` (its name becomes the torrent's name)."""
    import libtorrent as lt

    root = Path(folder).absolute()
    if not root.is_dir():
        raise NotFoundError(root, "folder")
    entries = sorted(lt.list_files(str(root), lambda p: _included(p, root)),
                     key=lambda e: e.filename)
    entries = [e for e in entries if _included(str(root.parent / e.filename), root)]
    if not entries or sum(e.size for e in entries) == 0:
        raise UsageError(f"{root} holds no (non-empty) files to put in a torrent")
    ct = lt.create_torrent(entries, check_piece_size(piece_size), lt.create_torrent.v1_only)
    for i, t in enumerate(trackers or []):
        ct.add_tracker(t, i)
    for w in webseeds or []:
        ct.add_url_seed(w)
    ct.set_creator(CREATOR)
    ct.set_creation_date(0)
    n = ct.num_pieces()
    progress.task("hash", n, f"hashing {root.name}")
    lt.set_piece_hashes(ct, str(root.parent), lambda piece: progress.update("hash", completed=piece + 1))
    progress.done("hash")
    return lt.bencode(ct.generate())


def create_torrent(folder: Path | str, out: Path | str, *, piece_size: int | None = None,
                   trackers: list[str] | None = None, webseeds: list[str] | None = None,
                   force: bool = False, progress: Progress = NULL_PROGRESS) -> CreatedTorrent:
    """Write a deterministic v1 torrent of ``folder`` to ``out`` (atomically).

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is False.
        NotFoundError / UsageError: no such folder, nothing in it, bad piece size.
    """
    import libtorrent as lt

    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(out)
    data = torrent_bytes_of(folder, piece_size=piece_size, trackers=trackers, webseeds=webseeds,
                            progress=progress)
    if out.parent and not out.parent.is_dir():
        raise NotFoundError(out.parent, "output folder")
    with folder_lock(out.parent, "create a torrent"):
        write_atomic(out, data)
    ti = lt.torrent_info(data)
    return CreatedTorrent(out, str(ti.info_hashes().v1), ti.name(), ti.num_files(),
                          ti.total_size(), ti.piece_length(), ti.num_pieces(),
                          lt.make_magnet_uri(ti))


@dataclass(frozen=True)
class TorrentSummary:
    """What ``torrent show`` prints."""

    path: Path
    infohash: str
    name: str
    magnet: str                  # with the announce list and web seeds
    trackers: list[str]
    webseeds: list[str]
    bytes: int
    piece_size: int
    num_pieces: int
    files: list[dict]            # {"path", "size"} in torrent order

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def show_torrent(path: Path | str) -> TorrentSummary:
    """Summarize a ``.torrent`` file, or the torrent a download saved in ``path/.grokfetch/``.

    Raises:
        NotFoundError / UsageError: no such file, no saved torrent, not a torrent.
    """
    import libtorrent as lt

    from grokfetch.torrent.seed import find_torrent
    from grokfetch.torrent.source import announce_urls, infohash_of, load_torrent_file, web_seed_urls

    path = Path(path)
    if path.is_dir():
        path = find_torrent(path.absolute())
    elif not path.is_file():
        raise NotFoundError(path, "torrent file or download folder")
    ti = load_torrent_file(path)
    fs = ti.layout()
    return TorrentSummary(path, infohash_of(ti), ti.name(), lt.make_magnet_uri(ti),
                          announce_urls(ti), web_seed_urls(ti), ti.total_size(), ti.piece_length(),
                          ti.num_pieces(),
                          [{"path": fs.file_path(i), "size": fs.file_size(i)}
                           for i in range(fs.num_files())
                           if not fs.file_flags(i) & lt.file_storage.flag_pad_file])
