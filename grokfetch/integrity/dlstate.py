"""The download folder's state, ``DIR/.grokfetch/``: the one place its layout is spelled.

A download keeps its torrent (``<infohash>.torrent``), resume data (``.resume``) and markers
(``.running``, ``.recheck``) there. ``torrent`` writes them; ``verify`` and ``convert`` receive
what a download left as one :class:`SavedDownload` (:func:`find_download`: the torrent, the
folder its files are relative to, the files it selected). A ``.grokfetch`` that is a link leading
outside its folder is refused (:func:`grokfetch.fsutil.real_subdir`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import UsageError
from grokfetch.fsutil import real_subdir
from grokfetch.integrity.bencode import decode
from grokfetch.integrity.torrentfile import Torrent, content_root, load_torrent

STATE_DIR = ".grokfetch"


def state_dir(dest: Path) -> Path:
    """``DEST/.grokfetch``."""
    return Path(dest) / STATE_DIR


def state_file(dest: Path, infohash: str, kind: str) -> Path:
    """``DEST/.grokfetch/<infohash>.<kind>`` (kind: torrent, resume, running, recheck)."""
    return state_dir(dest) / f"{infohash}.{kind}"


def _download_folder(path: Path, parents: int) -> tuple[Path, list[Path]] | None:
    """The nearest folder, ``path`` or up to ``parents`` above, whose state folder holds saved
    torrents, with those torrents."""
    base = Path(path)
    for _ in range(parents + 1):
        state = real_subdir(base, STATE_DIR)  # a link leading outside is refused
        found = sorted(state.glob("*.torrent")) if state is not None else []
        if found:
            return base, found
        base = base.parent
    return None


def saved_torrents(path: Path, parents: int = 1) -> list[Path]:
    """The ``.torrent`` files a download saved for ``path``: in ``path/.grokfetch`` or, when there
    are none, in the state folder of up to ``parents`` folders above (``path`` may be the content
    folder or the checkpoint inside the download folder)."""
    found = _download_folder(path, parents)
    return found[1] if found else []


def saved_resume(path: Path, infohash: str, parents: int = 1) -> Path | None:
    """The resume data a download saved for ``infohash`` next to ``path`` (or above), if any."""
    base = Path(path)
    for _ in range(parents + 1):
        state = real_subdir(base, STATE_DIR)
        if state is not None and (state / f"{infohash}.resume").is_file():
            return state / f"{infohash}.resume"
        base = base.parent
    return None


@dataclass(frozen=True)
class SavedDownload:
    """What a download left for a folder: its saved torrent, the folder the torrent's file
    paths are relative to, and the torrent files it selected (``--include``/``--layers``)."""

    torrent_path: Path
    torrent: Torrent
    content_root: Path
    selected: set[int] | None  # torrent file indices (None: every file, or unknown)


def find_download(path: Path, parents: int = 1) -> SavedDownload | None:
    """The download saved for ``path`` (its state folder in ``path`` or up to ``parents`` folders
    above), or None when there is none. ``path`` may be the download folder, the torrent's
    content folder or a folder inside it; the content root comes from where the download put
    its files (the download folder, plus the torrent's name for a multi-file torrent).

    Raises:
        UsageError: an unreadable saved torrent, or several saved there and ``path`` is not
            inside exactly one of their contents (the caller may name one with ``--torrent``).
        UnsafePathError: a ``.grokfetch`` that links outside its folder.
    """
    path = Path(path).absolute()
    found = _download_folder(path, parents)
    if found is None:
        return None
    base, torrents = found
    parsed = [(p, load_torrent(p)) for p in torrents]
    if len(parsed) > 1:
        parsed = [(p, t) for p, t in parsed
                  if path.is_relative_to(base / t.name) or (path / t.name).exists()]
        if len(parsed) != 1:
            raise UsageError(f"{len(torrents)} saved torrents for {path}: "
                             + ", ".join(p.name for p in torrents),
                             hint="choose one with --torrent FILE")
    torrent_path, torrent = parsed[0]
    return SavedDownload(torrent_path, torrent, content_root(base, torrent),
                         download_selection(base, torrent, parents=0))


def download_selection(path: Path, torrent: Torrent, parents: int = 1) -> set[int] | None:
    """The files a selective download chose, from the ``file_priority`` list of its resume data;
    None when every file was wanted or it is unknown."""
    if not torrent.has_v1:
        return None  # v2-only file indices include pad entries this parser does not list
    resume = saved_resume(path, torrent.infohash, parents)
    if resume is None:
        return None
    try:
        prios = decode(resume.read_bytes()).get(b"file_priority")
    except (OSError, UsageError):
        return None
    if not isinstance(prios, list) or 0 not in prios:
        return None
    return {i for i, f in enumerate(torrent.files)
            if not f.pad and (i >= len(prios) or prios[i] != 0)}
