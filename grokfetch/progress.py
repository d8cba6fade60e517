"""One small progress interface for every long job (download, verify, convert, smoke).

Library functions take a ``progress`` argument that defaults to :data:`NULL_PROGRESS`; the CLI
passes a rich implementation (``grokfetch.cli.output.RichProgress``) or a JSON-lines one.
"""

from __future__ import annotations

from typing import Any, Protocol


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


class RecordingProgress(NullProgress):
    """Keeps every event in memory; for tests and for building reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.totals: dict[str, int | None] = {}
        self.completed: dict[str, int] = {}

    def task(self, key: str, total: int | None, description: str) -> None:
        self.totals[key] = total
        self.completed[key] = 0

    def advance(self, key: str, amount: int) -> None:
        self.completed[key] = self.completed.get(key, 0) + amount

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        if completed is not None:
            self.completed[key] = completed
        if total is not None:
            self.totals[key] = total

    def event(self, kind: str, **data: Any) -> None:
        self.events.append((kind, data))


class InterruptAfter(NullProgress):
    """Raises ``KeyboardInterrupt`` at the ``n``-th ``advance``: a simulated Ctrl-C, for tests."""

    def __init__(self, n: int):
        self.n = n

    def advance(self, key: str, amount: int) -> None:
        self.n -= 1
        if self.n <= 0:
            raise KeyboardInterrupt
