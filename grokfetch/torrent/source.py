"""What a download starts from: a magnet URI, a ``.torrent`` file, or a preset name.

The official Grok-1 magnet data lives in :data:`PRESET_SOURCES` and nowhere else. Once metadata
is known it is saved as ``DIR/.grokfetch/<infohash>.torrent`` and every later run starts from
that file, so a rerun never waits for peers to serve metadata again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from grokfetch.errors import UsageError
from grokfetch.integrity.dlstate import state_file

PRESET_SOURCES: dict[str, dict] = {
    "grok-1": {
        "infohash": "5f96d43576e3d386c9ba65b883210a393b68210e",
        "trackers": [
            "https://academictorrents.com/announce.php",
            "udp://tracker.coppersurfer.tk:6969",
            "udp://tracker.opentrackr.org:1337/announce",
        ],
        # beside the magnet's own list (kept as published; coppersurfer is long dead): public
        # trackers that have answered for years (not checked from here: no internet)
        "extra_trackers": [
            "udp://open.stealth.si:80/announce",
            "udp://tracker.torrent.eu.org:451/announce",
            "udp://exodus.desync.com:6969/announce",
            "udp://open.demonii.com:1337/announce",
        ],
        "model_preset": "grok-1",
    },
}
DEFAULT_SOURCE = "grok-1"


def preset_magnet(name: str) -> str:
    """The magnet URI of a preset."""
    p = PRESET_SOURCES[name]
    parts = [f"xt=urn:btih:{p['infohash']}"]
    parts += [f"tr={quote(t, safe='')}" for t in p["trackers"]]
    return "magnet:?" + "&".join(parts)


@dataclass
class Source:
    """A resolved SOURCE: ``atp`` is a libtorrent ``add_torrent_params`` (with ``ti`` when the
    metadata is already known)."""

    kind: str                 # "magnet" | "torrent" | "preset"
    text: str
    infohash: str
    atp: object
    trackers: list[str] = field(default_factory=list)
    model_preset: str | None = None
    from_saved: Path | None = None   # the saved .torrent used instead of fetching metadata

    @property
    def has_metadata(self) -> bool:
        return self.atp.ti is not None


def infohash_of(ti) -> str:
    """The v1 info-hash (hex) of a ``torrent_info``; the v2 one truncated for v2-only torrents."""
    ih = ti.info_hashes()
    return str(ih.v1) if ih.has_v1() else str(ih.v2)[:40]


def load_torrent_file(path: Path):
    """``lt.torrent_info`` of a .torrent file, with a clear error for junk."""
    import libtorrent as lt

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read torrent file {path}: {exc.strerror}") from None
    try:
        return lt.torrent_info(data)
    except RuntimeError as exc:
        raise UsageError(f"{path} is not a valid .torrent file ({exc})") from None


def saved_torrent_path(dest: Path, infohash: str) -> Path:
    return state_file(dest, infohash, "torrent")


def resolve(source: str | Path | None, dest: Path) -> Source:
    """Turn SOURCE (magnet, .torrent path, preset name; None = ``grok-1``) into a :class:`Source`.

    A magnet or preset whose metadata was saved by an earlier run starts from the saved file.

    Raises:
        UsageError: SOURCE is none of the three, or a broken magnet/torrent.
    """
    import libtorrent as lt

    text = str(source) if source is not None else DEFAULT_SOURCE
    model_preset = None
    extra: list[str] = []
    if text in PRESET_SOURCES:
        kind, magnet = "preset", preset_magnet(text)
        model_preset = PRESET_SOURCES[text]["model_preset"]
        extra = PRESET_SOURCES[text].get("extra_trackers", [])
    elif text.startswith("magnet:"):
        kind, magnet = "magnet", text
    else:
        path = Path(text)
        if not path.is_file():
            known = ", ".join(PRESET_SOURCES)
            raise UsageError(f"SOURCE {text!r} is not a magnet URI, an existing .torrent file, "
                             f"or a preset ({known})")
        atp = lt.add_torrent_params()
        atp.ti = load_torrent_file(path)
        return Source("torrent", text, infohash_of(atp.ti), atp, [], None)
    try:
        atp = lt.parse_magnet_uri(magnet)
    except RuntimeError as exc:
        raise UsageError(f"bad magnet URI ({exc}): {text[:80]}") from None
    ih = atp.info_hashes
    if not (ih.has_v1() or ih.has_v2()):
        raise UsageError(f"magnet URI has no info-hash (xt=urn:btih:...): {text[:80]}")
    infohash = str(ih.v1) if ih.has_v1() else str(ih.v2)[:40]
    trackers = list(dict.fromkeys([*atp.trackers, *extra]))
    atp.trackers = trackers
    src = Source(kind, text, infohash, atp, trackers, model_preset)
    saved = saved_torrent_path(dest, infohash)
    if saved.is_file():
        try:
            ti = lt.torrent_info(saved.read_bytes())
        except (RuntimeError, OSError):
            ti = None  # damaged: fetch metadata again
        if ti is not None and infohash_of(ti) == infohash:
            new = lt.add_torrent_params()
            new.ti = ti
            new.trackers = trackers
            src.atp, src.from_saved = new, saved
    return src


def announce_urls(ti) -> list[str]:
    """The announce URLs a ``torrent_info`` carries (its own list, tiers in order)."""
    with warnings.catch_warnings():   # trackers() is deprecated in the bindings, not replaced
        warnings.simplefilter("ignore", DeprecationWarning)
        return [t.url for t in sorted(ti.trackers(), key=lambda t: t.tier)]


def web_seed_urls(ti) -> list[str]:
    """The web seed URLs a ``torrent_info`` carries."""
    with warnings.catch_warnings():   # web_seeds() likewise
        warnings.simplefilter("ignore", DeprecationWarning)
        return [w["url"] for w in ti.web_seeds()]


def torrent_bytes(ti, trackers: list[str] | None = None) -> bytes:
    """Bencoded .torrent of a ``torrent_info`` (``write_torrent_file_buf`` crashes in 2.1.1),
    announcing to ``trackers`` (one tier each, in order; default: the torrent's own list).

    v2/hybrid metadata received from peers has no piece layers yet; they are not needed to
    resume (libtorrent fetches them again), so their absence must not fail the save.
    """
    import libtorrent as lt

    atp = lt.add_torrent_params()
    atp.ti = ti
    urls = announce_urls(ti) if trackers is None else trackers
    atp.trackers, atp.tracker_tiers = list(urls), list(range(len(urls)))
    return lt.bencode(lt.write_torrent_file(atp, lt.write_flags.allow_missing_piece_layer))
