"""``grokfetch fixture``: write a miniature checkpoint in the exact Grok-1 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grokfetch.cli.options import ForceOpt, JsonOpt, examples


def register(app: typer.Typer) -> None:
    @app.command(epilog=examples("grokfetch fixture ./mini", "grokfetch fixture ./tiny --preset tiny --seed 3"))
    def fixture(
        out_dir: Annotated[Path, typer.Argument(help="Folder to create (gets ckpt-0/, "
                                                     "tokenizer.model, model-config.json).")],
        preset: Annotated[str, typer.Option("--preset", help="mini (about 100 MB) or tiny (about 4 MB).")] = "mini",
        seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 0,
        force: ForceOpt = False,
        json_: JsonOpt = False,
    ) -> int:
        """Write a miniature checkpoint in the exact Grok-1 layout.

        Deterministic for a seed: int8 weights with the real scale layouts, a SentencePiece
        tokenizer trained with Grok-1's special ids, and a model-config.json.
        """
        from grokfetch.checkpoint.fixture import write_fixture
        from grokfetch.cli.output import Output

        out = Output(json_mode=json_)
        with out.progress() as progress:
            table = write_fixture(out_dir, preset, seed=seed, force=force, progress=progress)
        out.result({"out": str(out_dir), "preset": table.config.name, "files": len(table),
                    "bytes": table.file_bytes},
                   lambda c: c.print(f"wrote {len(table)} tensor files ({table.file_bytes:,} bytes) "
                                     f"of preset {table.config.name} to {out_dir}"))
        return 0
