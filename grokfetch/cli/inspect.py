"""``grokfetch inspect``: the tensor table, and what a checkpoint folder holds of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from grokfetch.cli.options import JsonOpt, PresetOpt, QuietOpt, VerboseOpt, examples
from grokfetch.units import human_bytes

EPILOG = examples("grokfetch inspect --preset grok-1",
                  "grokfetch inspect --json | jq '.tensors | length'",
                  "grokfetch inspect ./grok-1 --preset grok-1")


def register(app: typer.Typer) -> None:
    @app.command(epilog=EPILOG)
    def inspect(
        ckpt_dir: Annotated[Optional[Path], typer.Argument(help="A checkpoint folder to check "
                                                                "against the table (optional).")] = None,
        preset: PresetOpt = None,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Show the tensor table, or check a checkpoint folder against it.

        Lists every file (index, Haiku path, shape, dtype, scales, sizes, GGUF name). With
        CKPT_DIR each file is reported ok / missing / mismatched, reading headers only.
        """
        from rich.table import Table

        from grokfetch.checkpoint.reader import open_checkpoint
        from grokfetch.cli.options import check_preset
        from grokfetch.cli.output import Output
        from grokfetch.errors import CheckFailed
        from grokfetch.spec import TensorTable, load_config

        out = Output("inspect", json_mode=json_, quiet=quiet, verbose=verbose)
        check_preset(ckpt_dir, preset)
        if ckpt_dir is None:
            table = TensorTable(load_config(None, preset))
            statuses = None
        else:
            ck = open_checkpoint(ckpt_dir, preset)
            table = ck.table
            statuses = {s.index: ck.status(s) for s in table}
        rows = []
        for spec in table:
            row = spec.to_json()
            if statuses is not None:
                st = statuses[spec.index]
                row["status"], row["detail"] = st.status, st.detail
            rows.append(row)

        def human(console) -> None:
            t = Table(title=f"{table.config.name}: {len(table)} tensor files", show_lines=False)
            for col in ("index", "file", "path", "shape", "dtype", "scales", "payload", "gguf"):
                t.add_column(col, justify="right" if col in ("index", "payload") else "left")
            if statuses is not None:
                t.add_column("status")
            for spec, row in zip(table, rows, strict=True):
                cells = [str(spec.index), spec.file, spec.path, "×".join(map(str, spec.shape)),
                         spec.dtype, "×".join(map(str, spec.scales_shape or ())) or "–",
                         human_bytes(spec.payload_bytes), spec.gguf_name]
                if statuses is not None:
                    color = "green" if row["status"] == "ok" else "red"
                    cells.append(f"[{color}]{row['status']}[/{color}] {row['detail']}")
                t.add_row(*cells)
            console.print(t)
            console.print(f"total payload {table.payload_bytes:,} bytes, "
                          f"files {table.file_bytes:,} bytes, {table.num_params:,} parameters")
            if statuses is not None:
                bad = [r for r in rows if r["status"] != "ok"]
                console.print(f"{len(rows) - len(bad)} ok, "
                              f"{sum(r['status'] == 'missing' for r in bad)} missing, "
                              f"{sum(r['status'] != 'missing' for r in bad)} mismatched")

        data = {"input": str(ckpt_dir) if ckpt_dir is not None else None,
                "model": table.config.name, "payload_bytes": table.payload_bytes,
                "file_bytes": table.file_bytes, "parameters": table.num_params, "tensors": rows}
        bad = [r for r in rows if statuses is not None and r["status"] != "ok"]
        if bad:
            raise out.failed(CheckFailed(f"{len(bad)} of {len(rows)} tensor files missing or "
                                         f"mismatched, e.g. {bad[0]['file']}: {bad[0]['status']}"),
                             data, human)
        out.result(data, human)
        return 0
