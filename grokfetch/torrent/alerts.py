"""What the download job does with libtorrent's alerts, and its periodic ``status`` event.

Both take the running job (what :class:`RunningJob` lists; ``job.py``'s job satisfies it) and
only record into it or report through its ``progress``; the loop in ``job.py`` decides what to do
next. This module never imports ``job.py``.
"""

from __future__ import annotations

from typing import Any, Protocol

from grokfetch.errors import UsageError
from grokfetch.progress import Progress


class RunningJob(Protocol):
    """The part of a running download that alerts record into."""

    watch: Any                  # grokfetch.torrent.swarm.SwarmWatch
    sel: Any                    # the file selection, None until the metadata is known
    state: Any                  # grokfetch.torrent.state.StateFiles
    progress: Progress
    hash_failures: int
    banned: list[str]
    file_error: str | None
    saved_have: list[bool]
    resume_error: str | None
    resume_written: bool
    resume_pending: int

    def on_metadata(self, h) -> None: ...

    def reorder(self, h) -> None: ...


def on_alert(job: RunningJob, lt, h, a) -> None:
    """Record one alert: hash failures, bans, file errors, finished files, resume data; tracker,
    web seed, DHT and connection alerts go to ``job.watch``."""
    if job.watch.on_alert(lt, a):
        return
    if isinstance(a, lt.metadata_received_alert):
        if job.sel is None:
            job.on_metadata(h)
    elif isinstance(a, lt.hash_failed_alert):
        job.hash_failures += 1
        job.progress.event("warning", message=f"piece {a.piece_index} failed its hash check; "
                                              "fetching it again")
    elif isinstance(a, lt.peer_ban_alert):
        ep = f"{a.ip[0]}:{a.ip[1]}" if isinstance(a.ip, tuple) else str(a.ip)
        if ep not in job.banned:
            job.banned.append(ep)
            job.progress.event("warning", message=f"banned peer {ep} (sent bad data)")
    elif isinstance(a, lt.file_error_alert):
        if job.file_error is None:
            job.file_error = f"{a.error.message()} ({a.filename()})"
    elif isinstance(a, lt.torrent_error_alert):
        if job.file_error is None:
            job.file_error = a.message()
    elif isinstance(a, lt.file_completed_alert):
        idx = int(a.index)
        if job.sel is not None and idx < len(job.sel.wanted) and job.sel.wanted[idx]:
            ti = h.torrent_file()
            job.progress.event("file_done", index=idx, file=ti.layout().file_path(idx))
            job.reorder(h)
    elif isinstance(a, lt.save_resume_data_alert):
        job.saved_have = list(a.params.have_pieces)
        try:
            job.state.write_resume(a.params)
            job.resume_error, job.resume_written = None, True
        except OSError as exc:   # e.g. the disk is full; the next run re-checks the files
            job.resume_error = exc.strerror or str(exc)
        job.resume_pending = max(0, job.resume_pending - 1)
    elif isinstance(a, lt.save_resume_data_failed_alert):
        job.resume_pending = max(0, job.resume_pending - 1)
    elif isinstance(a, lt.listen_failed_alert):
        raise UsageError(f"cannot listen on {a.address}:{a.port}: {a.error.message()}")


def status_event(job: RunningJob, lt, h, st) -> None:
    """One ``status`` progress event: state, percent, rates, ETA, peers, files in flight."""
    names = {v: k for k, v in lt.torrent_status.states.names.items()}
    rate = st.download_payload_rate
    total = st.total_wanted
    left = max(0, total - st.total_wanted_done)
    eta = round(left / rate) if rate > 0 else None
    in_flight: list[str] = []
    if st.has_metadata and job.sel is not None and st.state == lt.torrent_status.downloading:
        fs = h.torrent_file().layout()
        fp = h.file_progress(flags=lt.file_progress_flags_t.piece_granularity)
        in_flight = [fs.file_name(i) for i, done in enumerate(fp)
                     if job.sel.wanted[i] and 0 < done < fs.file_size(i)][:8]
    state = "downloading_metadata" if not st.has_metadata else names.get(st.state, str(st.state))
    pct = 100.0 * st.total_wanted_done / total if total else 0.0
    text = (f"{state} {pct:.1f}% peers {st.num_peers} seeds {st.num_seeds}"
            + (f" | {', '.join(in_flight[:3])}" if in_flight else ""))
    if not st.has_metadata and st.num_peers == 0:
        text = "waiting for metadata (no peers yet)"
    job.progress.event("status", state=state, done=st.total_wanted_done,
                       total=total, rate=rate, upload_rate=st.upload_payload_rate,
                       eta=eta, peers=st.num_peers, seeds=st.num_seeds,
                       hash_failures=job.hash_failures, files_in_flight=in_flight,
                       received=job.watch.received, text=text)
