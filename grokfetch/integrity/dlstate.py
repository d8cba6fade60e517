"""The download folder's state, ``DIR/.grokfetch/``: the one place its layout is spelled.

A download keeps its torrent (``<infohash>.torrent``), resume data (``.resume``) and markers
(``.running``, ``.recheck``) there. ``torrent`` writes them; ``verify`` and ``convert`` find the
saved torrent and the selection through these functions. A ``.grokfetch`` that is a link leading
outside its folder is refused (:func:`grokfetch.fsutil.real_subdir`).
"""

from __future__ import annotations

from pathlib import Path

from grokfetch.fsutil import real_subdir

STATE_DIR = ".grokfetch"


def state_dir(dest: Path) -> Path:
    """``DEST/.grokfetch``."""
    return Path(dest) / STATE_DIR


def state_file(dest: Path, infohash: str, kind: str) -> Path:
    """``DEST/.grokfetch/<infohash>.<kind>`` (kind: torrent, resume, running, recheck)."""
    return state_dir(dest) / f"{infohash}.{kind}"


def saved_torrents(path: Path, parents: int = 1) -> list[Path]:
    """The ``.torrent`` files a download saved for ``path``: in ``path/.grokfetch`` or, when there
    are none, in the state folder of up to ``parents`` folders above (``path`` may be the content
    folder or the checkpoint inside the download folder)."""
    base = Path(path)
    for _ in range(parents + 1):
        state = real_subdir(base, STATE_DIR)  # a link leading outside is refused
        found = sorted(state.glob("*.torrent")) if state is not None else []
        if found:
            return found
        base = base.parent
    return []


def saved_resume(path: Path, infohash: str, parents: int = 1) -> Path | None:
    """The resume data a download saved for ``infohash`` next to ``path`` (or above), if any."""
    base = Path(path)
    for _ in range(parents + 1):
        state = real_subdir(base, STATE_DIR)
        if state is not None and (state / f"{infohash}.resume").is_file():
            return state / f"{infohash}.resume"
        base = base.parent
    return None
