"""Serving a finished download: the in-process :class:`Seeder` and the ``seed`` job.

``Seeder(DIR, torrent=None, listen=("127.0.0.1", 0))`` is a context manager exposing ``.port``;
tests, the demo and ``verify`` use it to stand up a peer on loopback. DIR is either the download
folder (holding ``<torrent name>/`` and ``.grokfetch/``) or the content folder itself.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import CheckFailed, NotFoundError, UsageError
from grokfetch.fsutil import safe_join
from grokfetch.integrity.dlstate import saved_torrents, state_file
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.torrent.session import (
    NetOptions,
    StopSignals,
    clear_flags,
    close_session,
    listen_port,
    make_session,
    pex_flags,
    resolve_peer,
)
from grokfetch.torrent.source import announce_urls, infohash_of, load_torrent_file
from grokfetch.torrent.state import StateFiles
from grokfetch.torrent.swarm import SwarmWatch


def find_torrent(folder: Path) -> Path:
    """The one ``.grokfetch/*.torrent`` saved by a download into ``folder`` (or its parent)."""
    found = saved_torrents(folder)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UsageError(f"{found[0].parent} holds {len(found)} torrents; pick one with --torrent")
    raise NotFoundError(state_file(folder, "<infohash>", "torrent"), "saved torrent",
                        hint="pass --torrent FILE, or seed the folder a download wrote")


def save_path_for(folder: Path, ti) -> Path:
    """The libtorrent save path: ``folder`` if it holds the torrent's top entry, else its parent
    when ``folder`` *is* that entry."""
    name = ti.name()
    if (folder / name).exists():
        return folder
    if folder.name == name:
        return folder.parent
    raise NotFoundError(folder / name, f"content of torrent {name!r}",
                        hint="point at the download folder or at the content folder itself")


def _all_files_present(save: Path, ti) -> bool:
    fs = ti.layout()
    for i in range(fs.num_files()):
        p = safe_join(save, fs.file_path(i).replace("\\", "/"))
        try:
            if p.stat().st_size != fs.file_size(i):
                return False
        except OSError:
            return False
    return True


class Seeder:
    """An in-process seeder on its own libtorrent session.

    ``assume_complete=True`` claims every piece without checking (tests use it to stand up a
    peer that serves corrupted data); otherwise pieces are verified before they are served:
    from saved resume data of a clean download, lazily in seed mode when every file is there,
    else by a full check.
    """

    def __init__(self, folder: Path | str, torrent: Path | str | None = None,
                 listen: tuple[str, int] | str = ("127.0.0.1", 0), *, net: NetOptions | None = None,
                 assume_complete: bool = False, upload_rate: int | None = None,
                 trackers: list[str] | None = None, announce: bool = True,
                 webseeds: list[str] | None = None, progress: Progress = NULL_PROGRESS):
        self.folder = Path(folder).absolute()
        if not self.folder.is_dir():
            raise NotFoundError(self.folder, "folder to seed")
        self.torrent = Path(torrent) if torrent is not None else find_torrent(self.folder)
        self.ti = load_torrent_file(self.torrent)
        self.infohash = infohash_of(self.ti)
        self.save_path = save_path_for(self.folder, self.ti)
        listen_s = listen if isinstance(listen, str) else f"{listen[0]}:{listen[1]}"
        base = net or NetOptions(dht=False, lsd=False, upnp=False, utp=False)
        self.net = dataclasses.replace(base, listen=listen_s,
                                       max_upload_rate=upload_rate or base.max_upload_rate)
        self.assume_complete = assume_complete
        self.trackers = list(trackers or [])
        self.announce = announce
        self.webseeds = list(webseeds or [])
        self.watch = SwarmWatch(progress)
        self.session = self.handle = None
        self.port = 0

    def _atp(self, lt):
        state = StateFiles(self.save_path, self.infohash)
        atp = None
        if not self.assume_complete and not state.running.exists() and not state.recheck.exists():
            atp = state.read_resume()
        saved = list(atp.trackers) if atp is not None else []
        if atp is None:
            atp = lt.add_torrent_params()
            if self.assume_complete:
                atp.have_pieces = [True] * self.ti.num_pieces()
            elif _all_files_present(self.save_path, self.ti):
                atp.flags |= lt.torrent_flags.seed_mode
        atp.ti = self.ti
        atp.save_path = str(self.save_path)
        # the torrent's own announce list, the download's (resume data) and the extra ones;
        # override_trackers makes this the whole list (resume data sets the flag anyway)
        urls = list(dict.fromkeys([*announce_urls(self.ti), *saved, *self.trackers]))
        atp.trackers = urls if self.announce else []
        atp.tracker_tiers = list(range(len(atp.trackers)))
        atp.flags |= lt.torrent_flags.override_trackers
        atp.url_seeds = self.webseeds
        pex_flags(atp, self.net)
        clear_flags(atp)
        atp.flags |= lt.torrent_flags.upload_mode   # never download or write
        return atp

    def __enter__(self) -> Seeder:
        import libtorrent as lt

        self.session = make_session(self.net, allow_multiple_connections_per_ip=True)
        self.port = listen_port(self.session)
        self.handle = self.session.add_torrent(self._atp(lt))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.session is not None:
            close_session(self.session, watch=self.watch)
            self.session = self.handle = None

    def connect(self, host: str, port: int) -> None:
        """Dial a peer (some clients, e.g. Transmission, must be dialled)."""
        self.handle.connect_peer((host, port))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until checking is over and the seeder has something to serve."""
        import libtorrent as lt

        deadline = time.monotonic() + timeout
        busy = (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data,
                lt.torrent_status.queued_for_checking)
        while time.monotonic() < deadline:
            st = self.handle.status()
            if st.state not in busy:
                return
            time.sleep(0.05)
        raise CheckFailed(f"seeder still checking {self.folder} after {timeout:g} s")

    @property
    def uploaded(self) -> int:
        return self.handle.status().total_payload_upload


def _preset_trackers(folder: Path | str, torrent: Path | str | None) -> list[str]:
    """The preset's trackers when seeding a preset torrent (metadata saved by older grokfetch
    versions carries no announce list)."""
    from grokfetch.torrent.source import PRESET_SOURCES

    path = Path(torrent) if torrent is not None else find_torrent(Path(folder).absolute())
    ih = path.stem.lower()
    if torrent is not None:
        ih = infohash_of(load_torrent_file(path))
    return next(([*p["trackers"], *p.get("extra_trackers", [])] for p in PRESET_SOURCES.values()
                 if p["infohash"] == ih), [])


@dataclass
class SeedResult:
    infohash: str
    port: int
    uploaded: int
    ratio: float
    peers_seen: int
    elapsed: float
    stopped_by: str   # "time" | "ratio" | "signal"

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Served:
    """How a :func:`serve` loop ended."""

    uploaded: int
    ratio: float
    peers_seen: int
    seconds: float
    stopped_by: str   # "time" | "ratio" | "signal"


def serve(ses, h, *, size: int, stop: StopSignals, on_alert, for_seconds: float | None = None,
          until_ratio: float | None = None, progress: Progress = NULL_PROGRESS,
          interval: float = 1.0) -> Served:
    """Serve torrent ``h`` until a signal, ``for_seconds`` or ``uploaded / size >= until_ratio``;
    every alert goes to ``on_alert``, a ``status`` event every ``interval`` s. Used by ``seed``
    and by ``download --seed-ratio / --seed-time``.

    Raises:
        CheckFailed: the torrent stopped with an error (e.g. its files went away).
    """
    start, last, peers_seen = time.monotonic(), 0.0, 0
    while True:
        ses.wait_for_alert(200)
        for a in ses.pop_alerts():
            on_alert(a)
        st, now = h.status(), time.monotonic()
        peers_seen = max(peers_seen, st.num_peers)
        ratio = st.total_payload_upload / size if size else 0.0
        if now - last >= interval:
            last = now
            progress.event("status", state="seeding", peers=st.num_peers,
                           uploaded=st.total_payload_upload, ratio=round(ratio, 3),
                           upload_rate=st.upload_payload_rate,
                           text=f"seeding: {st.num_peers} peers, uploaded "
                                f"{st.total_payload_upload:,} B (ratio {ratio:.2f})")
        if st.errc.value() != 0 and st.errc.message():
            raise CheckFailed(f"seeding stopped: {st.errc.message()}")
        why = ("signal" if stop.signum is not None
               else "time" if for_seconds is not None and now - start >= for_seconds
               else "ratio" if until_ratio is not None and ratio >= until_ratio else None)
        if why is not None:
            return Served(st.total_payload_upload, ratio, peers_seen, now - start, why)


def seed(folder: Path | str, torrent: Path | str | None = None, *, listen: str = "0.0.0.0:6881",
         net: NetOptions | None = None, for_seconds: float | None = None,
         until_ratio: float | None = None, peers: list[str] | None = None,
         trackers: list[str] | None = None, announce: bool = True,
         webseeds: list[str] | None = None, progress: Progress = NULL_PROGRESS) -> SeedResult:
    """Serve ``folder`` until SIGINT/SIGTERM, ``for_seconds`` or an upload ``until_ratio``.

    Announces to the saved torrent's trackers (the download's announce list), the preset's and
    ``trackers``; none when ``announce`` is False. ``peers`` ("HOST:PORT") are dialled.
    """
    import libtorrent as lt

    extra = [*_preset_trackers(folder, torrent), *(trackers or [])]
    dial = [resolve_peer(p) for p in peers or []]
    with StopSignals() as stop, Seeder(folder, torrent, listen, net=net, trackers=extra,
                                       announce=announce, webseeds=webseeds,
                                       progress=progress) as s:
        progress.task("seed", None, f"seeding {s.ti.name()}")
        progress.event("status", text=f"seeding {s.ti.name()} on port {s.port}", port=s.port,
                       infohash=s.infohash, magnet=lt.make_magnet_uri(s.ti), state="seeding")
        for p in dial:
            s.connect(*p)
        r = serve(s.session, s.handle, size=s.ti.total_size(), stop=stop,
                  on_alert=lambda a: s.watch.on_alert(lt, a), for_seconds=for_seconds,
                  until_ratio=until_ratio, progress=progress)
        return SeedResult(s.infohash, s.port, r.uploaded, r.ratio, r.peers_seen, r.seconds,
                          r.stopped_by)
