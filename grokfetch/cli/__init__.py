"""The ``grokfetch`` command line: a thin typer app over the library, and its error frame.

Each command module (``grokfetch/cli/<name>.py``) exposes ``register(app)``; a command parses
its options, calls one library function and prints through :class:`~grokfetch.cli.output.Output`.
:func:`main` maps every failure to one ``error:`` line on stderr and an exit code (see
:func:`exit_code_of`: 2 usage, 1 failed run or check, 130 interrupted), plus the JSON result
object under ``--json``; ``GROKFETCH_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import time
from typing import Any

import typer

from grokfetch.errors import GrokfetchError

COMMAND_MODULES = ("inspect", "fixture", "download", "verify", "convert", "smoke", "demo")

app = typer.Typer(
    name="grokfetch",
    help="Get Grok-1 from a BitTorrent swarm to a working model: download, verify, convert, smoke.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from grokfetch import __version__

        typer.echo(f"grokfetch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Get Grok-1 from a BitTorrent swarm to a working model: download, verify, convert, smoke."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"grokfetch.cli.{_name}").register(app)


_COMMAND: Any = None


def click_command() -> Any:
    """The click command tree of :data:`app`, built once, with conventional metavars."""
    global _COMMAND
    if _COMMAND is None:
        from grokfetch.cli.options import conventional_metavars

        _COMMAND = typer.main.get_command(app)
        conventional_metavars(_COMMAND)
    return _COMMAND


def debug_enabled() -> bool:
    return os.environ.get("GROKFETCH_DEBUG", "") not in ("", "0")


#: OS errors about a path the user named (exit 2, like any other bad argument).
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST}


def exit_code_of(exc: BaseException) -> int:
    """The exit code of a failure, the same for the same class of error in every command.

    2: usage — bad arguments, a path that does not exist or cannot be written (permission
    denied, read-only), an output that exists; 1: the run or a check failed (corrupt input,
    disk full, stalled download, smoke check); 130: interrupted.
    """
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, GrokfetchError):
        return exc.exit_code
    if isinstance(exc, typer.TyperException):
        return exc.exit_code
    if isinstance(exc, OSError):
        return 2 if exc.errno in _PATH_ERRNOS else 1
    return 1


def _resolve(args: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command named by ``args`` and its name path (``["torrent", "create"]``)."""
    cmd, names = click_command(), []
    for tok in args:
        if tok == "--":
            break
        if tok.startswith("-"):
            continue
        sub = getattr(cmd, "commands", {}).get(tok)
        if sub is None:
            break
        cmd, names = sub, names + [tok]
    return cmd, names


def _usage_lines(exc: typer.TyperException, args: list[str]) -> list[str]:
    """The usage line and the help pointer of the command a parsing error is about."""
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        cmd, names = _resolve(args)
        ctx = typer.Context(click_command(), info_name="grokfetch")
        for name in names:
            cmd = ctx.command.commands[name]
            ctx = typer.Context(cmd, info_name=name, parent=ctx)
    return [ctx.get_usage(), f"Try '{ctx.command_path} --help' for help."]


def _describe(exc: BaseException, args: list[str]) -> tuple[str, str | None, list[str]]:
    """(message, hint, extra stderr lines) of a failure."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", None, []
    if isinstance(exc, GrokfetchError):
        hint = exc.hint or (None if exc.exit_code == 2 else "set GROKFETCH_DEBUG=1 for a traceback")
        return str(exc), hint, []
    if isinstance(exc, typer.TyperException):
        message = " ".join(line.strip() for line in exc.format_message().strip().splitlines())
        return message, None, _usage_lines(exc, args)
    assert isinstance(exc, OSError)
    where = f": {exc.filename}" if exc.filename else ""
    hint = None if exit_code_of(exc) == 2 else "set GROKFETCH_DEBUG=1 for a traceback"
    return f"{exc.strerror or exc}{where}", hint, []


def _json_requested(args: list[str]) -> bool:
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising (tests call this directly)."""
    from grokfetch.cli.output import Output, emit_json, result_object

    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not args:  # bare `grokfetch`: the help, exit 0
        args = ["--help"]
    t0 = time.monotonic()
    try:
        rv = click_command().main(args=args, prog_name="grokfetch", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        failure: BaseException = KeyboardInterrupt()
    except (GrokfetchError, typer.TyperException, OSError, KeyboardInterrupt) as exc:
        ctx = getattr(exc, "ctx", None)
        if ctx is not None and type(exc).__name__ == "NoArgsIsHelpError":  # a group called bare
            sys.stdout.write(ctx.get_help() + "\n")
            return 0
        if debug_enabled() and not isinstance(exc, KeyboardInterrupt):
            raise
        failure = exc
    code = exit_code_of(failure)
    message, hint, extra = _describe(failure, args)
    names = _resolve(args)[1]
    out = Output(" ".join(names) or "grokfetch")
    out.error(message, hint)
    for line in extra:
        out.err.print(line, markup=False, soft_wrap=True)
    if _json_requested(args):
        data = getattr(failure, "result", None) or {}
        emit_json(result_object(out.command, data, ok=False, exit_code=code, error=message,
                                hint=hint, error_type=type(failure).__name__,
                                seconds=time.monotonic() - t0))
    return code


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
