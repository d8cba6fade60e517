"""``grokfetch smoke``: the full Grok-1 MoE in JAX on N devices, with checks and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from grokfetch.cli.options import ForceOpt, JsonOpt, PresetOpt, examples
from grokfetch.fsutil import human_bytes

EPILOG = examples(
    "grokfetch smoke ./grok-1 --gpus 8",
    "grokfetch smoke ./grok-1 --gpus 1 --layers 8 --max-new-tokens 4",
    "grokfetch smoke ./tiny --gpus 8 --platform cpu --json",
    "grokfetch smoke ./grok-1 --gpus 8 --compare ./grok-1-gguf",
)


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


SmokeCkptArg = Annotated[Path, typer.Argument(
    help="The original checkpoint (folder holding ckpt-0/) or any convert output: a GGUF, "
         "safetensors or JAX-store folder (detected from its files).", show_default=False)]


def register(app: typer.Typer) -> None:
    @app.command(epilog=EPILOG)
    def smoke(
        ckpt: SmokeCkptArg,
        gpus: Annotated[int, typer.Option("--gpus", help="Devices in the mesh (1, 2, 4 or 8); "
                                          "with --platform cpu, simulated.")] = 1,
        platform: Annotated[str, typer.Option("--platform", help="gpu or cpu.")] = "gpu",
        prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt text (default: the "
                                                      "official demo prompt).")] = None,
        tokens: Annotated[Optional[str], typer.Option("--tokens", help="Prompt token ids, comma-"
                                                      "separated (instead of --prompt).")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Greedy tokens to "
                                                    "generate.")] = 8,
        layers: Annotated[Optional[int], typer.Option("--layers", help="Run only the first K real "
                                                      "layers (0..K-1).")] = None,
        dtype: Annotated[str, typer.Option("--dtype", help="bfloat16 (reference precisions) or "
                                           "float32 (every activation f32).")] = "bfloat16",
        preset: PresetOpt = None,
        dump_logits: Annotated[Optional[Path], typer.Option("--dump-logits", help="Write the "
                               "prompt's logits, float32 [T, vocab], to FILE.npy.")] = None,
        compare: Annotated[Optional[Path], typer.Option("--compare", help="Another checkpoint "
                           "(any format) to run on the same tokens and compare.")] = None,
        tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="tokenizer.model "
                             "(default: the checkpoint's).")] = None,
        device_memory: Annotated[Optional[str], typer.Option("--device-memory", help="Usable "
                                 "memory per device for the preflight, e.g. 80G (default: "
                                 "what the device reports).")] = None,
        coordinator: Annotated[Optional[str], typer.Option("--coordinator", help="HOST:PORT of "
                               "process 0, to span the mesh over several processes.")] = None,
        num_processes: Annotated[int, typer.Option("--num-processes", help="Processes in the "
                                                   "run.")] = 1,
        process_id: Annotated[int, typer.Option("--process-id", help="This process's index.")] = 0,
        force: ForceOpt = False,
        json_: JsonOpt = False,
    ) -> int:
        """Run the model sharded over N devices in JAX and check that it works.

        Checks: finite, non-degenerate logits; bit-identical reruns; KV-cache decode equal to
        a teacher-forced prefill; reports tokens/s, memory per device and the generated text.
        Exit 0 only when all checks pass.
        """
        from grokfetch.cli.output import Output
        from grokfetch.errors import OutputExistsError
        from grokfetch.fsutil import parse_size
        from grokfetch.smoke.run import SmokeOptions
        from grokfetch.smoke.run import smoke as run_smoke

        out = Output(json_mode=json_)
        if dump_logits is not None and dump_logits.exists() and not force:
            raise OutputExistsError(dump_logits)
        opts = SmokeOptions(
            gpus=gpus, platform=platform, prompt=prompt, tokens=_parse_tokens(tokens),
            max_new_tokens=max_new_tokens, layers=layers, dtype=dtype, preset=preset,
            dump_logits=dump_logits, compare=compare, tokenizer=tokenizer,
            device_memory=parse_size(device_memory) if device_memory else None,
            coordinator=coordinator, num_processes=num_processes, process_id=process_id)
        with out.progress() as progress:
            report = run_smoke(ckpt, opts, progress)
        out.result(report.to_json(), lambda c: _human(report, c))
        report.raise_for_failures()
        return 0
