"""Test doubles for the progress protocol: a recorder and an interrupter (tests and benches only)."""

from __future__ import annotations

from typing import Any

from grokfetch.progress import NullProgress


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
