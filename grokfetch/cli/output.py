"""The CLI's one output sink and its progress displays (rich, JSON lines, or nothing).

Data goes to stdout, diagnostics to stderr. With ``--json`` every line on stdout is one JSON
object: progress events as ``{"event": ...}`` and the final result last.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Column

from grokfetch.progress import NULL_PROGRESS, Progress


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


class Output:
    """Where a command's results, warnings and errors go, in ``human``, ``json`` or ``quiet``."""

    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode, self.quiet = json_mode, quiet
        self.console = Console(highlight=False, soft_wrap=False)
        if not self.console.is_terminal:  # pipes and files get whole table rows, not 80 columns
            self.console = Console(highlight=False, soft_wrap=False, width=220)
        self.err = Console(stderr=True, highlight=False)

    def result(self, data: Any, human: Callable[[Console], None] | None = None) -> None:
        """The command's final result: JSON with ``--json``, else ``human(console)``."""
        if self.json_mode:
            self.json_line(data)
        elif human is not None and not self.quiet:
            human(self.console)

    def json_line(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, default=_jsonable) + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        if not (self.quiet or self.json_mode):
            self.err.print(message)

    def warning(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[yellow]warning:[/yellow] {message}")

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(f"[bold red]error:[/bold red] {message}", markup=True, soft_wrap=True)
        if hint:
            self.err.print(f"[dim]hint: {hint}[/dim]", soft_wrap=True)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        """A progress sink suited to the mode: rich bars, JSON events, or nothing."""
        if self.json_mode:
            yield JsonProgress(self)
        elif self.quiet or not self.err.is_terminal and not _force_bars():
            yield NULL_PROGRESS if self.quiet else PlainProgress(self)
        else:
            bars = RichProgress(self.err)
            with bars.live:
                yield bars


def _force_bars() -> bool:
    import os
    return os.environ.get("GROKFETCH_PROGRESS") == "rich"


class RichProgress:
    """Progress bars (bytes, rate, ETA) on stderr, plus one status line for events."""

    def __init__(self, console: Console):
        self.live = RichBar(
            TextColumn("{task.description}", table_column=Column(no_wrap=True, max_width=48,
                                                                  overflow="ellipsis")),
            BarColumn(bar_width=24), DownloadColumn(table_column=Column(no_wrap=True, min_width=19)),
            TransferSpeedColumn(table_column=Column(no_wrap=True, min_width=10)),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True)),
            console=console, transient=False, refresh_per_second=4)
        self.tasks: dict[str, TaskID] = {}

    def task(self, key: str, total: int | None, description: str) -> None:
        if key in self.tasks:
            self.live.reset(self.tasks[key], total=total, description=description)
        else:
            self.tasks[key] = self.live.add_task(description, total=total, status="")

    def advance(self, key: str, amount: int) -> None:
        if key in self.tasks:
            self.live.advance(self.tasks[key], amount)

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        if key in self.tasks:
            kw: dict[str, Any] = {}
            if completed is not None:
                kw["completed"] = completed
            if total is not None:
                kw["total"] = total
            if description is not None:
                kw["description"] = description
            self.live.update(self.tasks[key], **kw)

    def done(self, key: str) -> None:
        # A finished task leaves the live display, so per-tensor bars do not pile up; the
        # command prints its own summary at the end.
        tid = self.tasks.pop(key, None)
        if tid is not None:
            self.live.remove_task(tid)

    def event(self, kind: str, **data: Any) -> None:
        if kind == "status" and self.tasks:
            text = data.get("text") or " ".join(f"{k}={v}" for k, v in data.items())
            first = next(iter(self.tasks.values()))
            self.live.update(first, status=text)
        elif kind in ("warning", "finding"):
            self.live.console.print(f"[yellow]{kind}:[/yellow] {data.get('message', data)}")


class PlainProgress:
    """For a non-terminal stderr: a line when a task starts and ends, warnings as they come."""

    def __init__(self, out: Output):
        self.out = out
        self.started: dict[str, float] = {}

    def task(self, key: str, total: int | None, description: str) -> None:
        self.started[key] = time.monotonic()

    def advance(self, key: str, amount: int) -> None:
        pass

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        pass

    def done(self, key: str) -> None:
        pass

    def event(self, kind: str, **data: Any) -> None:
        if kind in ("warning", "finding"):
            self.out.warning(str(data.get("message", data)))


class JsonProgress:
    """Newline-delimited JSON events on stdout (``--json``)."""

    def __init__(self, out: Output, min_interval: float = 0.5):
        self.out, self.min_interval = out, min_interval
        self.totals: dict[str, int | None] = {}
        self.completed: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def _emit(self, key: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last.get(key, 0.0) >= self.min_interval:
            self.last[key] = now
            self.out.json_line({"event": "progress", "task": key,
                                "completed": self.completed.get(key, 0),
                                "total": self.totals.get(key)})

    def task(self, key: str, total: int | None, description: str) -> None:
        self.totals[key], self.completed[key] = total, 0
        self.out.json_line({"event": "task", "task": key, "total": total,
                            "description": description})

    def advance(self, key: str, amount: int) -> None:
        self.completed[key] = self.completed.get(key, 0) + amount
        self._emit(key)

    def update(self, key: str, completed: int | None = None, total: int | None = None,
               description: str | None = None) -> None:
        if completed is not None:
            self.completed[key] = completed
        if total is not None:
            self.totals[key] = total
        self._emit(key)

    def done(self, key: str) -> None:
        self._emit(key, force=True)

    def event(self, kind: str, **data: Any) -> None:
        self.out.json_line({"event": kind, **data})
