"""``grokfetch smoke``: the full Grok-1 MoE in JAX on N devices, with checks and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from grokfetch.cli.options import (
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    LayersOpt,
    PresetOpt,
    QuietOpt,
    VerboseOpt,
    examples,
)
from grokfetch.smoke.mesh import PLATFORMS
from grokfetch.units import human_bytes

EPILOG = examples(
    "grokfetch smoke ./grok-1 --gpus 8",
    "grokfetch smoke ./grok-1 --gpus 1 --layers 0-7 --max-new-tokens 4",
    "grokfetch smoke --preset grok-1 --gpus 8 --device-memory 141GB --dry-run",
    "grokfetch smoke ./tiny --gpus 8 --platform cpu --json",
    "grokfetch smoke ./grok-1 --gpus 8 --compare ./grok-1-gguf",
)


#: ``--dtype`` spellings (the same as convert's) and the compute dtype each means.
DTYPES = {"bf16": "bfloat16", "f32": "float32", "bfloat16": "bfloat16", "float32": "float32"}


def _parse_layers(text: str | None) -> int | None:
    """``--layers``: ``0-7`` or ``0,1,2`` (the first K layers), or the count ``8`` for 0-7."""
    from grokfetch.errors import UsageError
    from grokfetch.spec import parse_layers

    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    sel = parse_layers(text, 1 << 16)
    if sel is None:  # "all"
        return None
    if sel != list(range(len(sel))):
        raise UsageError(f"--layers {text}: smoke runs the first K layers; give a range from 0 "
                         "(e.g. 0-7) or the count K (8)")
    return len(sel)


def _parse_tokens(text: str | None) -> list[int] | None:
    from grokfetch.errors import UsageError

    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise UsageError(f"bad --tokens {text!r}; use comma-separated ids, e.g. 21560,1135") from None


def _human(report, console) -> None:
    r = report
    console.print(f"[bold]{r.config}[/bold] ({r.format}) on {r.devices} {r.platform} device(s), "
                  f"{r.layers} layers, {r.dtype}")
    pf = r.preflight
    held = ", ".join(f"{k} {human_bytes(v, binary=True)}" for k, v in pf["held_as"].items())
    console.print(f"per device: weights {human_bytes(pf['weights'], binary=True)}"
                  + (f" (held as {held})" if held else "")
                  + f", KV cache {human_bytes(pf['kv_cache'], binary=True)}, "
                  f"temporaries {human_bytes(pf['temporaries'], binary=True)}"
                  + (" (XLA)" if pf["measured_temporaries"] else " (estimate)")
                  + (f" of {human_bytes(pf['device_bytes'], binary=True)}" if pf["device_bytes"] else ""))
    t = r.timings
    console.print(f"compile {t['compile_s']:.1f} s, load {t['load_s']:.1f} s, prefill "
                  f"{t['prefill_tokens_per_s']:.1f} tok/s, decode {t['decode_tokens_per_s']:.2f} tok/s")
    console.print(f"prompt {r.prompt_tokens}")
    console.print(f"generated {r.generated_tokens}"
                  + (f" = {r.generated_text!r}" if r.generated_text is not None else ""))
    for c in r.checks:
        mark = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        console.print(f"  {mark} {c.name}: {c.detail}")


SmokeCkptArg = Annotated[Optional[Path], typer.Argument(
    help="The original checkpoint (folder holding ckpt-0/) or any convert output: a GGUF, "
         "safetensors or JAX-store folder (detected from its files); optional with --dry-run.",
    show_default=False)]


def register(app: typer.Typer) -> None:
    @app.command(epilog=EPILOG)
    def smoke(
        ckpt: SmokeCkptArg = None,
        gpus: Annotated[int, typer.Option("--gpus", help="Devices in the mesh, a power of two "
                                          "dividing the model's heads (Grok-1: 1, 2, 4 or 8); "
                                          "with --platform cpu, simulated.")] = 1,
        platform: Annotated[Literal[PLATFORMS], typer.Option("--platform",
                                              help="Run on GPUs or on simulated CPU devices.")] = "gpu",
        prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt text (default: the "
                                                      "official demo prompt).")] = None,
        tokens: Annotated[Optional[str], typer.Option("--tokens", help="Prompt token ids, comma-"
                                                      "separated (instead of --prompt).")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Greedy tokens to "
                                                    "generate.")] = 8,
        layers: LayersOpt = None,
        dtype: Annotated[str, typer.Option("--dtype", help="bf16 (reference precisions) or "
                                           "f32 (every activation f32).")] = "bf16",
        preset: PresetOpt = None,
        dump_logits: Annotated[Optional[Path], typer.Option("--dump-logits", help="Write the "
                               "prompt's logits, float32 [T, vocab], to FILE.npy.")] = None,
        compare: Annotated[Optional[Path], typer.Option("--compare", help="Another checkpoint "
                           "(any format) to run on the same tokens and compare.")] = None,
        tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="tokenizer.model "
                             "(default: the checkpoint's).")] = None,
        device_memory: Annotated[Optional[str], typer.Option("--device-memory", help="Usable "
                                 "memory per device for the preflight, e.g. 80GiB or 141GB "
                                 "(G/GB = 10^9 bytes, GiB = 2^30; default: what the device "
                                 "reports).")] = None,
        coordinator: Annotated[Optional[str], typer.Option("--coordinator", help="HOST:PORT of "
                               "process 0, to span the mesh over several processes.")] = None,
        num_processes: Annotated[int, typer.Option("--num-processes", help="Processes in the "
                                                   "run.")] = 1,
        process_id: Annotated[int, typer.Option("--process-id", help="This process's index.")] = 0,
        force: ForceOpt = False,
        dry_run: DryRunOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Run the model sharded over N devices in JAX and check that it works.

        Checks: finite, non-degenerate logits; bit-identical reruns; KV-cache decode equal to
        a teacher-forced prefill; reports tokens/s, memory per device and the generated text.
        Exit 0 only when all checks pass.
        """
        from grokfetch.cli.options import check_preset, positive_size
        from grokfetch.cli.output import Output
        from grokfetch.errors import CheckFailed, OutputExistsError, UsageError
        from grokfetch.smoke.run import SmokeOptions
        from grokfetch.smoke.run import smoke as run_smoke

        out = Output("smoke", json_mode=json_, quiet=quiet, verbose=verbose)
        if ckpt is None and not dry_run:
            raise UsageError("missing argument CKPT (only --dry-run works without one)")
        if dtype.lower() not in DTYPES:
            raise UsageError(f"--dtype must be bf16 or f32, not {dtype!r}")
        check_preset(ckpt, preset)
        if dump_logits is not None and dump_logits.exists() and not force:
            raise OutputExistsError(dump_logits)
        opts = SmokeOptions(
            gpus=gpus, platform=platform, prompt=prompt, tokens=_parse_tokens(tokens),
            max_new_tokens=max_new_tokens, layers=_parse_layers(layers),
            dtype=DTYPES[dtype.lower()], preset=preset,
            dump_logits=dump_logits, compare=compare, tokenizer=tokenizer,
            device_memory=positive_size(device_memory, "--device-memory"),
            coordinator=coordinator, num_processes=num_processes, process_id=process_id)
        if dry_run:
            from grokfetch.cli.plan import render_plan
            from grokfetch.plan import smoke_plan

            plan = smoke_plan(ckpt, opts, preset=preset)
            out.result(plan.to_json(), lambda c: render_plan(plan, c))
            return 0
        assert ckpt is not None
        with out.progress() as progress:
            report = run_smoke(ckpt, opts, progress)
        data = {k: v for k, v in report.to_json().items() if k not in ("passed", "checkpoint")}
        data["input"] = str(ckpt)
        try:
            report.raise_for_failures()
        except CheckFailed as exc:
            raise out.failed(exc, data, lambda c: _human(report, c)) from None
        out.result(data, lambda c: _human(report, c))
        return 0
