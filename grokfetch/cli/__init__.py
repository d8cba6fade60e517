"""The ``grokfetch`` command line: a thin typer app over the library.

Each command module (``grokfetch/cli/<name>.py``) exposes ``register(app)``; a command parses
its options, calls one library function and prints through :class:`~grokfetch.cli.output.Output`.
:func:`main` maps :class:`~grokfetch.errors.GrokfetchError` to one line on stderr and its exit
code (2 usage, 1 failed check, 130 interrupted); ``GROKFETCH_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from grokfetch.errors import GrokfetchError

COMMAND_MODULES = ("inspect", "fixture", "download", "verify", "convert", "smoke", "demo")

app = typer.Typer(
    name="grokfetch",
    help="Get Grok-1 from a BitTorrent swarm to a working model: download, verify, convert, smoke.",
    no_args_is_help=True,
    add_completion=False,
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


def debug_enabled() -> bool:
    return os.environ.get("GROKFETCH_DEBUG", "") not in ("", "0")


def _usage_error(exc: typer.TyperException) -> int:
    """Print a command-line parsing error as one ``error:`` line plus the usage line; exit 2.

    typer (>= 0.29) raises its bundled click's exceptions, all :class:`typer.TyperException`;
    a usage error is one with exit code 2 and (usually) the parsing context attached.
    """
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and type(exc).__name__ == "NoArgsIsHelpError":  # a group called bare
        sys.stdout.write(ctx.get_help() + "\n")
        return 0
    message = exc.format_message().strip().splitlines()
    sys.stderr.write(f"error: {' '.join(line.strip() for line in message)}\n")
    if ctx is not None:
        sys.stderr.write(f"{ctx.get_usage()}\nTry '{ctx.command_path} --help' for help.\n")
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising (tests call this directly)."""
    from grokfetch.cli.output import Output

    out = Output()
    try:
        rv = app(args=argv, prog_name="grokfetch", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        out.error("interrupted")
        return 130
    except GrokfetchError as exc:
        if debug_enabled():
            raise
        hint = exc.hint or (None if exc.exit_code == 2 else "set GROKFETCH_DEBUG=1 for a traceback")
        out.error(str(exc), hint)
        return exc.exit_code
    except typer.TyperException as exc:
        if debug_enabled():
            raise
        return _usage_error(exc)
    except OSError as exc:
        if debug_enabled():
            raise
        where = f": {exc.filename}" if exc.filename else ""
        out.error(f"{exc.strerror or exc}{where}", "set GROKFETCH_DEBUG=1 for a traceback")
        return 1
    return rv if isinstance(rv, int) else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
