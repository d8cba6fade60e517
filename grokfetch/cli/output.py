"""The CLI's one output sink and its progress displays (rich, plain lines, JSON lines, or nothing).

Data goes to stdout, diagnostics to stderr. With ``--json`` every line on stdout is one JSON
object carrying ``event``: progress events first, exactly one ``{"event": "result", ...}``
last, on success and on failure (the schema is docs/json.md, :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import contextlib
import json
import os
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

from grokfetch.errors import GrokfetchError
from grokfetch.progress import NULL_PROGRESS, LineProgress, Progress

#: Version of the ``--json`` result schema (docs/json.md); bumped on incompatible changes.
SCHEMA_VERSION = 1
#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = float(os.environ.get("GROKFETCH_PROGRESS_INTERVAL", "30"))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def result_object(command: str, data: dict[str, Any], *, ok: bool, exit_code: int,
                  seconds: float, error: str | None = None, hint: str | None = None,
                  error_type: str | None = None) -> dict[str, Any]:
    """The one ``--json`` result object: the common keys first, then the command's own."""
    common = {"event": "result", "schema_version": SCHEMA_VERSION, "command": command, "ok": ok,
              "exit_code": exit_code, "error": error, "error_type": error_type, "hint": hint,
              "seconds": round(seconds, 3), "input": None, "out": None}
    return {**common, **{k: v for k, v in data.items() if k not in common or k in ("input", "out")}}


def emit_json(data: Any) -> None:
    """One JSON object as one line on stdout."""
    sys.stdout.write(json.dumps(data, default=_jsonable) + "\n")
    sys.stdout.flush()


class Output:
    """Where a command's results, warnings and errors go, in ``human``, ``json`` or ``quiet``.

    ``verbose`` shows progress bars or lines even with ``quiet`` off and adds detail lines.
    """

    def __init__(self, command: str, json_mode: bool = False, quiet: bool = False,
                 verbose: bool = False):
        from grokfetch.errors import UsageError

        if quiet and verbose:
            raise UsageError("--quiet and --verbose exclude each other")
        self.command, self.json_mode, self.quiet, self.verbose = command, json_mode, quiet, verbose
        self.started = time.monotonic()
        self.console = Console(highlight=False, soft_wrap=False)
        if not self.console.is_terminal:  # pipes and files get whole table rows, not 80 columns
            self.console = Console(highlight=False, soft_wrap=False, width=220)
        self.err = Console(stderr=True, highlight=False)

    def result(self, data: dict[str, Any], human: Callable[[Console], None] | None = None) -> None:
        """The command's successful result: the JSON result object with ``--json``, else
        ``human(console)``."""
        if self.json_mode:
            emit_json(result_object(self.command, data, ok=True, exit_code=0,
                                    seconds=time.monotonic() - self.started))
        elif human is not None and not self.quiet:
            human(self.console)

    def failed(self, exc: GrokfetchError, data: dict[str, Any],
               human: Callable[[Console], None] | None = None) -> GrokfetchError:
        """A command that ran but failed: show ``human`` now, attach ``data`` to ``exc`` for the
        JSON result that :func:`grokfetch.cli.main` prints, and return ``exc`` to raise."""
        if not self.json_mode and human is not None and not self.quiet:
            human(self.console)
        exc.result = data
        return exc

    def info(self, message: str) -> None:
        if not (self.quiet or self.json_mode):
            self.err.print(message)

    def warning(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[yellow]warning:[/yellow] {message}")

    def error(self, message: str, hint: str | None = None) -> None:
        """One ``error:`` line (and a ``hint:`` line) on stderr; the texts are not markup."""
        from rich.markup import escape

        self.err.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
        if hint:
            self.err.print(f"[dim]hint: {escape(hint)}[/dim]", soft_wrap=True)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        """A progress sink suited to the mode: JSON events (``--json``), nothing (``--quiet``),
        rich bars on a terminal, plain lines every :data:`PLAIN_INTERVAL` s otherwise."""
        if self.json_mode:
            yield JsonProgress()
        elif self.quiet:
            yield NULL_PROGRESS
        elif not self.err.is_terminal and os.environ.get("GROKFETCH_PROGRESS") != "rich":
            yield self._verbose(LineProgress(self._plain_line, PLAIN_INTERVAL))
        else:
            bars = RichProgress(self.err)
            with bars.live:
                yield self._verbose(bars)

    def _verbose(self, sink: Progress) -> Progress:
        return VerboseEvents(sink, self._plain_line) if self.verbose else sink

    def _plain_line(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.err.print(f"{stamp} {line}", markup=False, soft_wrap=True)


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
        elif kind == "warning":
            self.live.console.print(f"[yellow]{kind}:[/yellow] {data.get('message', data)}")


class VerboseEvents:
    """``--verbose``: every event (a file written, a step, a status change) as a line, too."""

    def __init__(self, inner: Progress, write: Callable[[str], None]):
        self.inner, self.write, self.last_status = inner, write, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def event(self, kind: str, **data: Any) -> None:
        text = data.get("text") or data.get("message") or ", ".join(
            f"{k}={v}" for k, v in data.items() if not isinstance(v, (dict, list)))
        if kind != "status" or text != self.last_status:
            self.write(f"{kind}: {text}")
            self.last_status = text if kind == "status" else self.last_status
        self.inner.event(kind, **data)


class JsonProgress:
    """Newline-delimited JSON events on stdout (``--json``), each with an ``event`` key.

    Progress of a task is sent at most every ``min_interval`` s; ``status`` events at most
    every ``status_interval`` s, and one that repeats the previous status's ``text`` at most
    every ``repeat_interval`` s (a stalled download says so twice a minute, not every second).
    """

    def __init__(self, min_interval: float = 0.5, status_interval: float = 5.0,
                 repeat_interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.min_interval, self.clock = min_interval, clock
        self.status_interval, self.repeat_interval = status_interval, repeat_interval
        self.totals: dict[str, int | None] = {}
        self.completed: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.last_status: tuple[float, Any] = (-1e18, None)

    def _emit(self, key: str, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last.get(key, -1e18) >= self.min_interval:
            self.last[key] = now
            emit_json({"event": "progress", "task": key,
                                "completed": self.completed.get(key, 0),
                                "total": self.totals.get(key)})

    def task(self, key: str, total: int | None, description: str) -> None:
        self.totals[key], self.completed[key] = total, 0
        emit_json({"event": "task", "task": key, "total": total, "description": description})

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
        if kind == "status":
            now, (then, text) = self.clock(), self.last_status
            same = data.get("text", data) == text
            if now - then < (self.repeat_interval if same else self.status_interval):
                return
            self.last_status = (now, data.get("text", data))
        emit_json({**data, "event": kind})
