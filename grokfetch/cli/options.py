"""Options shared by several commands (one spelling, one meaning everywhere) and help metavars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args, get_origin

import typer

JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print JSON lines on stdout: events, then one result object (docs/json.md).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also print every event "
                                                                  "(files written, status).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
NoSpaceCheckOpt = Annotated[bool, typer.Option(
    "--no-space-check", help="Skip the free-disk-space check before writing.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print what the run needs (bytes, disk, memory, time) from the tensor "
                      "table alone, and exit; no data needed.")]
JobsOpt = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", help="Parallel jobs (threads); default: see the command's docs.",
    show_default=False)]
LayersOpt = Annotated[Optional[str], typer.Option(
    "--layers", help="Only these layers: a list or ranges, e.g. 0-3 or 0,5 (default: all).")]
PresetOpt = Annotated[
    Optional[str],
    typer.Option("--preset", help="Model preset when the checkpoint has no model-config.json "
                                  "(grok-1, mini, tiny). Default: grok-1."),
]
CkptArg = Annotated[Path, typer.Argument(help="Checkpoint folder (holding ckpt-0/), ckpt-0 itself, "
                                              "or the download folder.", show_default=False)]

#: Metavars by option name where the type's (TEXT, INTEGER...) says too little.
METAVARS = {
    "--out": "PATH", "--dir": "DIR", "--layers": "LIST", "--experts": "LIST",
    "--peer": "HOST:PORT", "--listen": "ADDR:PORT", "--coordinator": "HOST:PORT",
    "--split-size": "SIZE", "--shard-size": "SIZE", "--chunk-size": "SIZE", "--piece-size": "SIZE",
    "--device-memory": "SIZE", "--max-download-rate": "RATE", "--max-upload-rate": "RATE",
    "--mesh": "DATAxMODEL", "--tokens": "IDS", "--include": "GLOB",
    "--exclude": "GLOB", "--webseed": "URL", "--tracker": "URL", "--preset": "NAME",
    "--dtype": "DTYPE", "--quant": "TYPE", "--bits": "N", "--jobs": "N", "--gpus": "N",
    "--timeout": "SECONDS", "--wait-timeout": "SECONDS", "--for": "SECONDS",
}
_TYPE_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH"}


def _choices(param: Any) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` option (a choice typer validates), else ()."""
    ann = param.type_descriptor.annotation
    return tuple(str(a) for a in get_args(ann)) if get_origin(ann) is Literal else ()


def _type_name(param: Any) -> str:
    ann = param.type_descriptor.annotation
    args = getattr(ann, "__args__", None)
    if args:  # list[str] -> str
        ann = args[0]
    return getattr(ann, "__name__", "TEXT")


def conventional_metavars(command: Any) -> None:
    """Give every parameter of a typer-built click command tree a conventional metavar.

    typer 0.29 shows types as ``<int>``, flags as ``<bool>`` and required arguments as
    ``{name}``; this sets ``INTEGER``/``PATH``/:data:`METAVARS` on options, ``[a|b]`` on choices
    (``Literal[...]`` options), nothing on flags,
    and ``NAME`` / ``[NAME]`` on arguments (through click's public ``metavar`` and
    ``get_usage_pieces``).
    """
    for sub in getattr(command, "commands", {}).values():
        conventional_metavars(sub)
    make_help = command.get_help_option

    def help_option(ctx: Any) -> Any:  # click makes --help per context: a flag, no metavar
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for param in command.params:
        if param.param_type_name == "argument":
            name = (param.metavar or param.name).upper()
            param.metavar = name
            piece = name if param.required else f"[{name}]"
            param.get_usage_pieces = lambda ctx, piece=piece: [piece]
            kind = _TYPE_METAVARS.get(_type_name(param), "TEXT")
            param.display_type_rich = lambda ctx, kind=kind: kind
        elif getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False) or \
                _type_name(param) == "bool":
            param.metavar = ""
        elif _choices(param):
            param.metavar = "[" + "|".join(_choices(param)) + "]"
        elif param.metavar is None:
            longest = max(param.opts, key=len)
            param.metavar = METAVARS.get(longest) or _TYPE_METAVARS.get(_type_name(param), "TEXT")


def examples(*lines: str) -> str:
    """A help epilog listing example invocations."""
    body = "\n\n".join(f"  [bold]$ {line}[/bold]" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"


def check_preset(ckpt: Path | None, name: str | None) -> None:
    """Refuse an unknown ``--preset``, and one that contradicts the checkpoint's own
    ``model-config.json`` (which would otherwise silently win)."""
    if name is None:
        return
    from grokfetch.errors import UsageError
    from grokfetch.spec import CONFIG_FILENAME, TENSOR_DIR, load_config, preset

    wanted = preset(name)
    if ckpt is None:
        return
    # the checkpoint's own folder only (DIR, or DIR given as DIR/ckpt-0), never a parent beyond it
    parent = (ckpt.parent,) if ckpt.name == TENSOR_DIR else ()
    for root in (ckpt, *parent, *(p.parent for p in ckpt.glob(f"*/{TENSOR_DIR}"))):
        if (root / CONFIG_FILENAME).is_file():
            have = load_config(root)
            if have.name != wanted.name:
                raise UsageError(f"--preset {name} contradicts {root / CONFIG_FILENAME} "
                                 f"(model {have.name})", hint="drop --preset: the checkpoint "
                                                              "says which model it is")
            return


def check_wait(wait: bool, wait_timeout: float | None) -> None:
    """``--wait-timeout`` means something only with ``--wait``."""
    from grokfetch.errors import UsageError

    if wait_timeout is not None and not wait:
        raise UsageError("--wait-timeout needs --wait")
    if wait_timeout is not None and wait_timeout <= 0:
        raise UsageError("--wait-timeout must be positive")


def positive_size(text: str | None, flag: str) -> int | None:
    """A size option that must be more than zero bytes when given."""
    from grokfetch.errors import UsageError
    from grokfetch.fsutil import parse_size

    value = parse_size(text)
    if value is not None and value <= 0:
        raise UsageError(f"{flag} must be more than 0 bytes, not {text!r}")
    return value


def check_jobs(jobs: int | None) -> None:
    """``--jobs`` is at least 1 when given."""
    from grokfetch.errors import UsageError

    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
