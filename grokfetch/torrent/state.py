"""The files a download keeps under ``DIR/.grokfetch/``.

* ``<infohash>.torrent``: the metadata, saved once known (a rerun needs no peer to serve it);
* ``<infohash>.resume``: libtorrent resume data, written atomically;
* ``<infohash>.running``: present while a job runs; found at start it means the last run died
  uncleanly (``kill -9``, power loss), so resume data is not trusted and the files are checked;
* ``<infohash>.recheck``: a file error happened; the next run hash-checks everything first.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import UsageError
from grokfetch.fsutil import real_subdir, write_atomic
from grokfetch.integrity.dlstate import STATE_DIR, state_dir, state_file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (killed, not yet reaped) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class StateFiles:
    dest: Path
    infohash: str

    @property
    def dir(self) -> Path:
        return state_dir(self.dest)

    @property
    def torrent(self) -> Path:
        return state_file(self.dest, self.infohash, "torrent")

    @property
    def resume(self) -> Path:
        return state_file(self.dest, self.infohash, "resume")

    @property
    def running(self) -> Path:
        return state_file(self.dest, self.infohash, "running")

    @property
    def recheck(self) -> Path:
        return state_file(self.dest, self.infohash, "recheck")

    def prepare(self) -> None:
        """Create ``DIR/.grokfetch`` and prove it is writable.

        Raises:
            UsageError: DIR cannot be created or written (exit code 2).
        """
        real_subdir(self.dest, STATE_DIR)  # a planted link leading outside is refused
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            for stale in self.dir.glob("*.partial"):   # left by a write that failed
                stale.unlink()
        except OSError as exc:
            raise UsageError(f"cannot write to download folder {self.dest}: "
                             f"{exc.strerror or exc}",
                             hint="choose a folder you can write to with --dir") from None

    def mark_running(self) -> bool:
        """Write the running marker; True when one was already there (an unclean stop).

        Raises:
            UsageError: the marker names a live process: another download uses this folder.
        """
        existed = self.running.exists()
        if existed:
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.running.read_text().split()[0])
                if pid != os.getpid() and _alive(pid):
                    raise UsageError(f"another grokfetch download (pid {pid}) is using {self.dest}",
                                     hint=f"wait for it, or delete {self.running} if it is stale")
        write_atomic(self.running, f"{os.getpid()}\n")
        return existed

    def clear_running(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.running.unlink()

    def needs_recheck(self) -> bool:
        return self.recheck.exists()

    def set_recheck(self) -> None:
        with contextlib.suppress(OSError):   # an empty file needs no free blocks
            self.recheck.touch()

    def clear_recheck(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.recheck.unlink()

    def write_resume(self, params) -> None:
        import libtorrent as lt

        write_atomic(self.resume, lt.write_resume_data_buf(params))

    def read_resume(self):
        """The saved ``add_torrent_params``, or None when absent or unreadable."""
        import libtorrent as lt

        try:
            data = self.resume.read_bytes()
        except OSError:
            return None
        try:
            atp = lt.read_resume_data(data)
        except RuntimeError:
            return None
        ih = atp.info_hashes
        got = str(ih.v1) if ih.has_v1() else str(ih.v2)[:40]
        return atp if got == self.infohash else None
