"""Options shared by several commands, as ``Annotated`` aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing output / skip the disk check.")]
PresetOpt = Annotated[
    Optional[str],
    typer.Option("--preset", help="Model preset when the checkpoint has no model-config.json "
                                  "(grok-1, mini, tiny). Default: grok-1."),
]
CkptArg = Annotated[Path, typer.Argument(help="Checkpoint folder (holding ckpt-0/), ckpt-0 itself, "
                                              "or the download folder.", show_default=False)]


def examples(*lines: str) -> str:
    """A help epilog listing example invocations."""
    body = "\n\n".join(f"  [bold]$ {line}[/bold]" for line in lines)
    return f"[bold]Examples[/bold]\n\n{body}"
