"""``grokfetch demo``: the whole toolkit on a miniature checkpoint, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from grokfetch.cli.options import JsonOpt, QuietOpt, VerboseOpt, examples
from grokfetch.units import human_bytes


def register(app: typer.Typer) -> None:
    @app.command(epilog=examples("grokfetch demo", "grokfetch demo --workdir ./demo --keep",
                                 "grokfetch demo --json"))
    def demo(
        workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Work in this folder "
                                                        "(default: a temporary one).")] = None,
        keep: Annotated[bool, typer.Option("--keep", help="Keep the work folder afterwards.")] = False,
        preset: Annotated[str, typer.Option("--preset", help="Fixture preset: mini or tiny.")] = "mini",
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Run the whole path on a 100 MB Grok-shaped model, through the real code.

        Writes the mini fixture, makes its torrent, seeds it on 127.0.0.1, downloads it by magnet,
        verifies it (torrent, structure, manifest), converts it to GGUF 4-bit, safetensors and
        JAX, and runs the JAX smoke on 8 simulated CPU devices on the original and on each
        output with --compare. Exit 0 only if every step passed. Nothing leaves loopback.
        """
        from rich.table import Table

        from grokfetch.cli.output import Output
        from grokfetch.errors import CheckFailed
        from grokfetch.smoke.mesh import setup_jax

        out = Output("demo", json_mode=json_, quiet=quiet, verbose=verbose)
        if preset not in ("mini", "tiny"):
            from grokfetch.errors import UsageError

            raise UsageError(f"--preset must be mini or tiny, not {preset!r}")
        setup_jax("cpu", 8)  # before anything imports jax: 8 simulated devices
        from grokfetch.demo import run_demo

        def on_step(step) -> None:
            mark = "[green]ok[/green]" if step.ok else "[red]FAILED[/red]"
            out.info(f"{mark} {step.name} ({step.seconds:.1f} s) {step.detail}")

        with out.progress() as progress:
            report = run_demo(workdir, keep=keep, preset=preset, progress=progress, on_step=on_step)

        def human(console) -> None:
            t = Table(title="grokfetch demo")
            for col in ("step", "result", "time", "size"):
                t.add_column(col, justify="right" if col in ("time", "size") else "left")
            for s in report.steps:
                res = ("[green]ok[/green] " if s.ok else "[red]FAILED[/red] ") + s.detail
                t.add_row(s.name, res, f"{s.seconds:.1f} s", human_bytes(s.bytes) if s.bytes is not None else "–")
            console.print(t)
            total = sum(s.seconds for s in report.steps)
            verdict = "[green]all steps passed[/green]" if report.passed else "[red]a step failed[/red]"
            console.print(f"{verdict} in {total:.0f} s"
                          + (f"; files kept in {report.workdir}" if report.kept else ""))

        data = {k: v for k, v in report.to_json().items() if k not in ("passed", "seconds")}
        if not report.passed:
            failed = [s.name for s in report.steps if not s.ok]
            raise out.failed(CheckFailed(f"demo step(s) failed: {', '.join(failed) or 'none ran'}"),
                             data, human)
        out.result(data, human)
        return 0
