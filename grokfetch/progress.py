"""One small progress interface for every long job (download, verify, convert, smoke).

Library functions take a ``progress`` argument that defaults to :data:`NULL_PROGRESS`; the CLI
passes a rich implementation (``grokfetch.cli.output.RichProgress``), a JSON-lines one, or
:class:`LineProgress` (plain lines for logs, when nobody watches a terminal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from grokfetch.units import human_bytes


class Progress(Protocol):
    """Receives progress from a library function; must never raise."""

    def task(self, key: str, total: int | None, description: str) -> None:
        """Start (or restart) a task identified by ``key`` with ``total`` units (bytes)."""

    def advance(self, key: str, amount: int) -> None:
        """Add ``amount`` units done to task ``key``."""

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        """Set absolute values of task ``key``."""

    def done(self, key: str) -> None:
        """Mark task ``key`` finished (it may be removed from a live display)."""

    def event(self, kind: str, **data: Any) -> None:
        """A status event (peers, rates, a finding): shown by live displays, streamed as JSON."""


class NullProgress:
    """Ignores everything; the default for library calls and tests."""

    def task(self, key: str, total: int | None, description: str) -> None:
        pass

    def advance(self, key: str, amount: int) -> None:
        pass

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        pass

    def done(self, key: str) -> None:
        pass

    def event(self, kind: str, **data: Any) -> None:
        pass


NULL_PROGRESS: Progress = NullProgress()


def human_duration(seconds: float) -> str:
    """``3h 05m``, ``4m 10s`` or ``12s``."""
    s = int(max(0.0, seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


class LineProgress(NullProgress):
    """Plain progress lines for a log file (``nohup``, CI): nothing redraws, nothing is lost.

    The first task started while no other runs is the *top* task (the overall download or
    conversion; tasks started under it, e.g. one per tensor, print nothing). It gets a line
    when it starts, one every ``interval`` seconds while it runs (done, total, rate over the
    last interval, ETA, the latest status text) and one when it ends. Warnings and findings
    are written as they come. ``write`` receives each line without a newline.
    """

    def __init__(self, write: Callable[[str], None], interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.interval, self.clock = write, interval, clock
        self.top: str | None = None
        self.description = ""
        self.total: int | None = None
        self.completed = 0
        self.started = self.last_t = 0.0
        self.last_completed = 0
        self.status = ""

    def _line(self, head: str, rate: float | None) -> str:
        done = human_bytes(self.completed)
        parts = [f"{done} of {human_bytes(self.total)} ({self.completed / self.total:.1%})"
                 if self.total else done]
        if rate is not None:
            parts.append(f"{human_bytes(rate)}/s")
            if self.total and rate > 0 and self.total > self.completed:
                parts.append(f"ETA {human_duration((self.total - self.completed) / rate)}")
        parts.append(f"elapsed {human_duration(self.clock() - self.started)}")
        if self.status:
            parts.append(self.status)
        return f"{head}: " + ", ".join(parts)

    def task(self, key: str, total: int | None, description: str) -> None:
        if self.top not in (None, key):
            return
        self.top, self.description, self.total, self.completed = key, description, total, 0
        self.status = ""  # a status belongs to the task it was reported under
        self.started = self.last_t = self.clock()
        self.last_completed = 0
        self.write(f"{description}: started" + (f", {human_bytes(total)}" if total else ""))

    def _tick(self) -> None:
        now = self.clock()
        if now - self.last_t < self.interval:
            return
        rate = (self.completed - self.last_completed) / (now - self.last_t)
        self.last_t, self.last_completed = now, self.completed
        self.write(self._line(self.description, rate))

    def advance(self, key: str, amount: int) -> None:
        if key == self.top:
            self.completed += amount
            self._tick()

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        if key != self.top:
            return
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self._tick()

    def done(self, key: str) -> None:
        if key != self.top:
            return
        elapsed = self.clock() - self.started
        self.write(self._line(f"{self.description}: done", self.completed / elapsed
                              if elapsed > 0 else None))
        self.top, self.status = None, ""

    def event(self, kind: str, **data: Any) -> None:
        if kind == "warning":
            self.write(f"warning: {data.get('message', data)}")
        elif kind == "status":
            self.status = str(data.get("text") or ", ".join(
                f"{k}={v}" for k, v in data.items() if not isinstance(v, (dict, list))))
