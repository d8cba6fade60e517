"""The download job: SOURCE (magnet / .torrent / preset) to hash-verified files in DIR.

:func:`download` is the one function the CLI (and ``verify --repair``) calls. It returns only
when libtorrent's SHA-1 piece hashes confirm every wanted piece, and raises otherwise:
:class:`~grokfetch.errors.Interrupted` (SIGINT/SIGTERM, resume data saved),
:class:`~grokfetch.errors.DownloadFailed` (stalled, disk full, file error),
:class:`~grokfetch.errors.InsufficientSpaceError` (preflight), ``UsageError`` (bad input).

Repair use: ``download(saved_torrent_path, dest, DownloadOptions(peers=[...], recheck=True))``
ignores resume data, so libtorrent hash-checks the files on disk and fetches only missing or
bad pieces.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from grokfetch.errors import DownloadFailed, InsufficientSpaceError, Interrupted, UsageError
from grokfetch.fsutil import write_atomic
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.spec import parse_layers
from grokfetch.torrent.alerts import on_alert, status_event
from grokfetch.torrent.layout import plan_files
from grokfetch.torrent.options import DownloadOptions, DownloadResult
from grokfetch.torrent.order import REQUEST_SECONDS, ModelOrder
from grokfetch.torrent.seed import serve
from grokfetch.torrent.selection import Selection
from grokfetch.torrent.session import (
    StopSignals,
    close_session,
    fetch_params,
    listen_port,
    listen_wanted,
    make_session,
    resolve_peer,
)
from grokfetch.torrent.source import Source, announce_urls, infohash_of, resolve, torrent_bytes
from grokfetch.torrent.state import StateFiles
from grokfetch.torrent.swarm import STOP_TIMEOUT, SwarmWatch, announcing

__all__ = ["DownloadOptions", "DownloadResult", "download"]

# ``finish``: how long, in all, to wait for resume data that lists every wanted piece
FINISH_RESUME_TIMEOUT = 60.0
# After a magnet's metadata arrives the torrent briefly looks finished (every file priority 0),
# so libtorrent hangs up on the seeds it got the metadata from; it may only dial them again
# after ``min_reconnect_time`` (default 60 s). For this long after the metadata that wait is 1 s.
RECONNECT_BOOST = 30.0


class _Job:
    """One run of one torrent in one libtorrent session."""

    def __init__(self, src: Source, dest: Path, opts: DownloadOptions, progress: Progress):
        self.src, self.dest, self.opts, self.progress = src, dest, opts, progress
        self.state = StateFiles(dest, src.infohash)
        self.hash_failures = 0
        self.banned: list[str] = []
        self.file_error: str | None = None
        self.sel: Selection | None = None
        self.model: ModelOrder | None = None   # --order model, once the files are known
        self.checked = False
        self.resume_pending = 0
        self.resume_error: str | None = None
        self.saved_have: list[bool] = []
        self.ses = self.h = None   # the libtorrent session and torrent handle while running
        self.watch = SwarmWatch(progress)
        self.resume_written = False   # resume data reached the disk in this run
        self.reconnect_time = 60          # min_reconnect_time of the session, outside the boost
        self.boost_until: float | None = None   # see RECONNECT_BOOST
        self.start = time.monotonic()

    # --- setup ------------------------------------------------------------------------------

    def plan(self, ti) -> list[int]:
        """Selection + preflight for known metadata; returns the file priorities."""
        fp = plan_files(ti, self.dest, self.opts, self.src.model_preset)
        self.sel, self.wanted_pieces, self.model = fp.sel, fp.wanted_pieces, fp.model
        return fp.priorities

    def reorder(self, h, st=None, force: bool = False) -> None:
        """Keep model-order piece priorities up to date (no-op in the other orders)."""
        if self.model is not None:
            self.model.apply(h, st or h.status(), force)

    def announce_list(self, ti) -> list[str]:
        """The source's trackers, the torrent's own and the ``--tracker`` ones."""
        own = announce_urls(ti) if ti is not None else []
        return list(dict.fromkeys([*self.src.trackers, *own, *self.opts.add_trackers]))

    def tracker_urls(self, ti) -> list[str]:
        """The trackers this run announces to: none with ``--no-trackers``."""
        return self.announce_list(ti) if self.opts.trackers else []

    def save_torrent(self, ti) -> None:
        """Save the metadata once, with the announce list, so ``seed`` can announce too."""
        if not self.state.torrent.is_file():
            write_atomic(self.state.torrent, torrent_bytes(ti, self.announce_list(ti)))

    def build_atp(self, lt, unclean: bool):
        atp = self.src.atp
        trusted = not (self.opts.recheck or unclean or self.state.needs_recheck())
        resumed = self.state.read_resume() if trusted else None
        if resumed is not None:
            if resumed.ti is None:
                resumed.ti = atp.ti
            # the selection is this run's: saved piece priorities would override its files
            resumed.piece_priorities = []
            atp = resumed
        self.checked = resumed is None
        if atp.ti is not None:
            atp.file_priorities = self.plan(atp.ti)
            self.save_torrent(atp.ti)
        else:
            atp.flags |= lt.torrent_flags.default_dont_download
        fetch_params(atp, self.dest, self.tracker_urls(atp.ti), self.opts.webseeds, self.opts.net,
                     sequential=self.opts.order == "sequential")
        return atp

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> DownloadResult:
        import libtorrent as lt

        opts = self.opts
        peers = [resolve_peer(p) for p in opts.peers]
        self.state.prepare()
        unclean = self.state.mark_running()
        # explicit peers: several may share an address, and a dropped one is re-dialled soon
        extra = {"allow_multiple_connections_per_ip": True, "min_reconnect_time": 2} if peers else {}
        self.reconnect_time = extra.get("min_reconnect_time", 60)
        if opts.order == "model":
            extra.update(initial_picker_threshold=0,   # no random first pieces
                         request_queue_time=REQUEST_SECONDS)   # less in flight: closer order
        self.ses = make_session(opts.net, **extra)
        self.watch.add_webseeds(opts.webseeds)
        try:
            with StopSignals(opts.handle_signals) as stop:
                self.start_session(lt, peers, unclean)
                result = self.loop(lt, self.h, peers, stop)
            self.state.clear_recheck()
            self.state.clear_running()
            return result
        except (UsageError, InsufficientSpaceError):
            self.state.clear_running()   # refused before fetching: nothing unclean to recover
            raise
        finally:
            # an error's traceback keeps this job alive: drop the session (and close its
            # listening socket) now rather than whenever the exception is collected
            close_session(self.ses, watch=self.watch)
            self.ses = self.h = None

    def start_session(self, lt, peers, unclean: bool) -> None:
        self.port = listen_port(self.ses)
        atp = self.build_atp(lt, unclean)
        self.h = self.ses.add_torrent(atp)
        self.announce_start(lt)
        self.reorder(self.h, force=True)
        self.dialed = False
        if atp.ti is None:   # a magnet needs peers for the metadata right away
            self.dial(peers)

    def announce_start(self, lt) -> None:
        """The info-hash, magnet and the port really listened on (another one when the asked
        port was busy), as one ``status`` event."""
        asked = listen_wanted(self.opts.net)
        moved = f" ({asked} was busy)" if asked and asked != self.port else ""
        magnet = lt.make_magnet_uri(self.h)
        self.progress.event("status", state="starting", infohash=self.src.infohash, magnet=magnet,
                            port=self.port, text=f"{self.src.infohash} listening on port "
                                                 f"{self.port}{moved}")

    def dial(self, peers) -> None:
        for p in peers:
            self.h.connect_peer(p)
        self.dialed = True

    def loop(self, lt, h, peers, stop: StopSignals) -> DownloadResult:
        opts, progress, ses = self.opts, self.progress, self.ses
        last_status = last_resume = last_dial = last_diagnosis = last_dht = time.monotonic()
        last_done, last_progress_t = -1, time.monotonic()
        started_task = False
        if not h.status().has_metadata:
            progress.task("download", None, "fetching metadata")
        while True:
            ses.wait_for_alert(50 if self.model is not None else 200)   # model: re-apply often
            for a in ses.pop_alerts():
                on_alert(self, lt, h, a)
            if self.file_error is not None:
                self.stop_with_resume(lt, h)
                self.state.set_recheck()
                disk = "No space left" in self.file_error or "Disk quota" in self.file_error
                raise DownloadFailed(
                    f"{'disk full' if disk else 'file error'}: {self.file_error}; stopped and "
                    f"{self.saved_note()}", reason="disk" if disk else "file",
                    hint="free some space and run the same command again; the files will be "
                         "re-checked first" if disk else "fix the problem and rerun; the "
                         "files will be re-checked first")
            if stop.signum is not None:
                self.stop_with_resume(lt, h)
                raise Interrupted(f"interrupted; {self.saved_note()}",
                                  hint="run the same command again to continue")
            st = h.status()
            now = time.monotonic()
            if st.has_metadata and self.sel is None:
                self.on_metadata(h)   # the alert was not seen (yet)
            if st.has_metadata and not started_task:
                progress.task("download", st.total_wanted, f"downloading {st.name}")
                started_task = True
            checking = st.state in (lt.torrent_status.checking_files,
                                    lt.torrent_status.checking_resume_data,
                                    lt.torrent_status.queued_for_checking)
            if checking:
                self.checked = self.checked or st.state == lt.torrent_status.checking_files
            if st.total_done != last_done or checking:
                last_done, last_progress_t = st.total_done, now
            if started_task:
                progress.update("download", completed=st.total_wanted_done, total=st.total_wanted)
                self.watch.count_sources(lt, h)   # often: connections close when done
            if not checking and st.has_metadata and self.complete(h, st):
                result = self.finish(lt, h, st)
                self.keep_seeding(lt, h, stop, result)
                return result
            if self.boost_until is not None and now > self.boost_until:
                self.boost_until = None
                ses.apply_settings({"min_reconnect_time": self.reconnect_time})
            if not checking and st.has_metadata:
                self.reorder(h, st)
            if now - last_status >= opts.status_interval:
                last_status = now
                status_event(self, lt, h, st)
            if peers and not self.dialed and not checking and st.has_metadata:
                # only once priorities are in force: a torrent that looks finished says
                # "upload only" in the handshake, and an upload-only seeder hangs up on it
                last_dial = now
                self.dial(peers)
            elif peers and st.num_peers == 0 and now - last_dial >= 5:
                last_dial = now
                self.dial(peers)
            if now - last_resume >= opts.resume_interval and st.has_metadata:
                last_resume = now
                if h.need_save_resume_data():
                    h.save_resume_data(lt.save_resume_flags_t.flush_disk_cache
                                       | lt.save_resume_flags_t.save_info_dict)
            idle = now - last_progress_t
            if opts.net.dht and now - last_dht >= 5:
                last_dht = now
                ses.post_dht_stats()
            if idle >= opts.diagnose_after and now - last_diagnosis >= opts.diagnose_after:
                last_diagnosis = now
                self.progress.event("warning", diagnosis=True,
                                    message=f"no progress for {idle:.0f} s: {self.diagnosis(st)}")
            if opts.timeout is not None and idle > opts.timeout:
                self.stop_with_resume(lt, h)
                pct = 100.0 * st.total_wanted_done / max(1, st.total_wanted)
                what = ("metadata (no peer sent it)" if not st.has_metadata
                        else f"data at {pct:.1f} %")
                raise DownloadFailed(
                    f"stalled: no progress on {what} for {opts.timeout:g} s ({self.diagnosis(st)})",
                    reason="stalled", hint=f"check --peer/--tracker/--webseed addresses and the "
                                           f"network; rerun to continue ({self.saved_note()})")

    def diagnosis(self, st) -> str:
        return self.watch.diagnosis(dht=self.opts.net.dht, peers=st.num_peers, seeds=st.num_seeds,
                                    listen_port=self.port)

    def complete(self, h, st) -> bool:
        """Every piece of the selected files is marked have; libtorrent sets that bit only
        after the piece's SHA-1 matched (on arrival, or during the file check)."""
        if st.total_wanted == 0 or st.total_wanted_done < st.total_wanted:
            return False
        pieces = st.pieces
        return all(pieces[i] for i in self.wanted_pieces)

    def on_metadata(self, h) -> None:
        """A magnet's metadata arrived: save it, select files, check space, start fetching."""
        ti = h.torrent_file()
        if infohash_of(ti) != self.src.infohash:
            raise DownloadFailed("peer sent metadata for another torrent", reason="metadata")
        self.save_torrent(ti)
        h.prioritize_files(self.plan(ti))
        self.reorder(h, force=True)
        # dial the peers that were dropped while the torrent looked finished again at once
        self.ses.apply_settings({"min_reconnect_time": 1})
        self.boost_until = time.monotonic() + RECONNECT_BOOST
        self.progress.event("status", text=f"metadata received: {ti.num_files()} files, "
                                           f"{ti.total_size():,} bytes", state="metadata")

    def stop_with_resume(self, lt, h, timeout: float = 20.0) -> None:
        """Pause, write resume data atomically, and wait for it (best effort on timeout)."""
        settle = time.monotonic() + STOP_TIMEOUT
        while announcing(h) and time.monotonic() < settle:
            self.ses.wait_for_alert(50)
            for a in self.ses.pop_alerts():
                on_alert(self, lt, h, a)
        with contextlib.suppress(RuntimeError):
            h.pause()
        if not h.status().has_metadata:
            self.state.clear_running()
            return
        self.resume_pending = 1
        h.save_resume_data(lt.save_resume_flags_t.flush_disk_cache
                           | lt.save_resume_flags_t.save_info_dict)
        deadline = time.monotonic() + timeout
        while self.resume_pending and time.monotonic() < deadline:
            self.ses.wait_for_alert(100)
            for a in self.ses.pop_alerts():
                if not isinstance(a, lt.listen_failed_alert):
                    on_alert(self, lt, h, a)
        if not self.resume_pending and self.resume_error is None:
            self.state.clear_running()

    def saved_note(self) -> str:
        """What became of the resume data, true to the files on disk."""
        if self.resume_error is not None:
            return (f"could not save resume data ({self.resume_error}); the next run re-checks "
                    "the files")
        if self.resume_written and self.state.resume.is_file():
            return f"resume data saved to {self.state.resume}"
        if self.sel is None:
            return "nothing to resume yet (the metadata had not arrived)"
        return "no resume data saved; the next run re-checks the files"

    def keep_seeding(self, lt, h, stop: StopSignals, result: DownloadResult) -> None:
        """``--seed-ratio`` / ``--seed-time``: serve the finished files before returning."""
        o = self.opts
        if o.seed_ratio is None and o.seed_time is None:
            return
        h.resume()
        self.progress.task("seed", None, f"seeding {result.name}")
        r = serve(self.ses, h, size=result.bytes, stop=stop, for_seconds=o.seed_time,
                  until_ratio=o.seed_ratio, on_alert=lambda a: on_alert(self, lt, h, a),
                  progress=self.progress, interval=o.status_interval)
        self.progress.done("seed")
        result.uploaded, result.seeded = r.uploaded, r.seconds
        self.stop_with_resume(lt, h)

    def finish(self, lt, h, st) -> DownloadResult:
        self.progress.done("download")
        self.watch.count_sources(lt, h)
        # the last piece may still be in flight to the disk: save until the resume data agrees
        deadline = time.monotonic() + FINISH_RESUME_TIMEOUT
        while True:
            self.stop_with_resume(lt, h, timeout=min(20.0, max(1.0, deadline - time.monotonic())))
            have = self.saved_have
            if all(i < len(have) and have[i] for i in self.wanted_pieces):
                break
            if time.monotonic() >= deadline:
                self.progress.event(
                    "warning", message=f"the saved resume data still lacks some finished pieces "
                                       f"after {FINISH_RESUME_TIMEOUT:g} s; a rerun may check or "
                                       "fetch them again (the files on disk are verified)")
                break
            time.sleep(0.2)
        ti = h.torrent_file()
        fs = ti.layout()
        wanted = [i for i, w in enumerate(self.sel.wanted) if w]
        return DownloadResult(
            infohash=self.src.infohash, name=ti.name(), dest=self.dest,
            content=self.dest / ti.name(), torrent_path=self.state.torrent, files=len(wanted),
            bytes=sum(fs.file_size(i) for i in wanted),
            wanted_pieces=len(self.wanted_pieces), num_pieces=ti.num_pieces(),
            downloaded=st.total_payload_download, hash_failures=self.hash_failures,
            banned_peers=list(self.banned), checked=self.checked,
            elapsed=time.monotonic() - self.start, from_peers=self.watch.received["peers"],
            from_webseeds=self.watch.received["web_seeds"])


def download(source: str | Path | None, dest: str | Path, options: DownloadOptions | None = None,
             progress: Progress = NULL_PROGRESS) -> DownloadResult:
    """Download SOURCE (magnet URI, .torrent path, preset name; None = ``grok-1``) into ``dest``.

    Returns only when every wanted piece hash-verifies. Resume data and the torrent's metadata
    live in ``dest/.grokfetch/``; a rerun continues where the last one stopped.
    """
    opts = options or DownloadOptions()
    opts.validate()
    dest = Path(dest).absolute()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"cannot write to download folder {dest}: not a directory")
    if opts.layers is not None:  # syntax only, before any network; ranges checked with the table
        parse_layers(opts.layers, 10**6)
    src = resolve(source, dest)
    return _Job(src, dest, opts, progress).run()
