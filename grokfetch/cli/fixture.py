"""``grokfetch fixture``: write a miniature checkpoint in the exact Grok-1 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grokfetch.cli.options import (
    ForceOpt,
    JsonOpt,
    NoSpaceCheckOpt,
    QuietOpt,
    VerboseOpt,
    examples,
)


def register(app: typer.Typer) -> None:
    @app.command(epilog=examples("grokfetch fixture ./mini", "grokfetch fixture ./tiny --preset tiny --seed 3"))
    def fixture(
        out_dir: Annotated[Path, typer.Argument(help="Folder to create (gets ckpt-0/, "
                                                     "tokenizer.model, model-config.json).")],
        preset: Annotated[str, typer.Option("--preset", help="mini (about 100 MB) or tiny (about 4 MB); "
                                            "any other preset is checked against free space.")] = "mini",
        seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed (0 or more); same "
                                          "seed, same bytes.")] = 0,
        force: ForceOpt = False,
        no_space_check: NoSpaceCheckOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Write a miniature checkpoint in the exact Grok-1 layout.

        Deterministic for a seed: int8 weights with the real scale layouts, a SentencePiece
        tokenizer trained with Grok-1's special ids, and a model-config.json.
        """
        from grokfetch.checkpoint.fixture import write_fixture
        from grokfetch.cli.output import Output
        from grokfetch.fsutil import check_free_space
        from grokfetch.spec import TensorTable
        from grokfetch.spec import preset as get_preset

        out = Output("fixture", json_mode=json_, quiet=quiet, verbose=verbose)
        size = TensorTable(get_preset(preset)).file_bytes
        parent = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path("."))
        check_free_space(parent, size, force=no_space_check)
        with out.progress() as progress:
            table = write_fixture(out_dir, preset, seed=seed, force=force, progress=progress)
        out.result({"out": str(out_dir), "preset": table.config.name, "files": len(table),
                    "bytes": table.file_bytes},
                   lambda c: c.print(f"wrote {len(table)} tensor files ({table.file_bytes:,} bytes) "
                                     f"of preset {table.config.name} to {out_dir}"))
        return 0
