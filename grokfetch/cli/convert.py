"""``grokfetch convert``: one command for every output format (``--to gguf|safetensors|jax``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from grokfetch.cli.options import (
    DryRunOpt,
    ForceOpt,
    JobsOpt,
    JsonOpt,
    LayersOpt,
    NoSpaceCheckOpt,
    PresetOpt,
    QuietOpt,
    VerboseOpt,
    examples,
)
from grokfetch.convert.base import TARGETS
from grokfetch.units import human_bytes

EPILOG = examples(
    "grokfetch convert ./grok-1 --to gguf --out ./grok-1-q4 --bits 4",
    "grokfetch convert ./grok-1 --to gguf --out ./grok-1-q8 --quant Q8_0 --split-size 50G",
    "grokfetch convert ./grok-1 --to gguf --out ./two-layers --layers 0-1 --experts 0,1 --bits 16",
    "grokfetch convert ./grok-1 --to gguf --out ./grok-1-q8 --bits 8 --wait   # while downloading",
    "grokfetch convert ./grok-1 --to safetensors --out ./grok-1-hf --layout hf --shard-size 5GB",
    "grokfetch convert ./grok-1 --to jax --out ./grok-1-jax --mesh 1x8",
    "grokfetch convert --preset grok-1 --to gguf --bits 4 --dry-run   # plan only, no data",
)


def _misplaced(target: str, given: dict[str, object]) -> list[str]:
    """The target-specific options given that ``--to target`` does not declare (each target's
    ``option_fields`` is the one declaration of what applies to it)."""
    from grokfetch.convert.base import Target, get_target

    get_target(target)  # refuses an unknown --to, and loads the built-in targets
    owner = {f: name for name, cls in Target.registry.items() for f in cls.option_fields}
    return [f"--{k.replace('_', '-')}" for k, v in given.items()
            if v is not None and owner.get(k, target) != target]


def register(app: typer.Typer) -> None:
    @app.command(epilog=EPILOG)
    def convert(
        ckpt_dir: Annotated[Optional[Path], typer.Argument(
            help="Checkpoint folder (holding ckpt-0/), ckpt-0 itself, or the download folder "
                 "(optional with --dry-run).", show_default=False)] = None,
        to: Annotated[Literal[TARGETS], typer.Option("--to",
                                        help="Output format.")] = ...,
        out: Annotated[Optional[Path], typer.Option(
            "--out", "-o", help="Output folder (created; refused if it exists, unless --force or "
                                "resuming; a finished one is left as it is).")] = None,
        bits: Annotated[Optional[int], typer.Option(
            "--bits", help="GGUF: 16=BF16 8=Q8_0 6=Q6_K 5=Q5_K_M 4=Q4_K_M 3=Q3_K_M 2=Q2_K.")] = None,
        quant: Annotated[Optional[str], typer.Option(
            "--quant", help="GGUF type: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S/M/L "
                            "Q4_K_S/M Q5_K_S/M Q6_K (default Q8_0).")] = None,
        split_size: Annotated[Optional[str], typer.Option(
            "--split-size", help="GGUF: split into NAME-0000i-of-0000N.gguf of at most SIZE "
                                 "tensor bytes each (e.g. 50G).")] = None,
        layout: Annotated[Optional[str], typer.Option(
            "--layout", help="safetensors: tensor names, hf (keyfan) or sglang.")] = None,
        dtype: Annotated[Optional[str], typer.Option(
            "--dtype", help="safetensors: bf16 (dequantized) or int8 (+ scales).")] = None,
        shard_size: Annotated[Optional[str], typer.Option(
            "--shard-size", help="safetensors: shard size (default 5GB).")] = None,
        mesh: Annotated[Optional[str], typer.Option(
            "--mesh", help="jax: device mesh DATAxMODEL the checkpoint is sharded for "
                           "(default 1x8).")] = None,
        layers: LayersOpt = None,
        experts: Annotated[Optional[str], typer.Option(
            "--experts", help="Keep only these experts, e.g. 0,1 (router sliced to match).")] = None,
        tokenizer: Annotated[Optional[Path], typer.Option(
            "--tokenizer", help="tokenizer.model to use (default CKPT_DIR/tokenizer.model).")] = None,
        jobs: JobsOpt = None,
        name: Annotated[Optional[str], typer.Option(
            "--name", help="Output base name (default: model name and type).")] = None,
        chunk_size: Annotated[str, typer.Option(
            "--chunk-size", help="Float32 bytes of rows per work chunk (memory per worker).")] = "16MiB",
        wait: Annotated[bool, typer.Option(
            "--wait", help="Convert files as they complete under a running `grokfetch download`.")] = False,
        wait_timeout: Annotated[Optional[float], typer.Option(
            "--wait-timeout", help="With --wait: give up after this many seconds per file.")] = None,
        preset: PresetOpt = None,
        force: ForceOpt = False,
        no_space_check: NoSpaceCheckOpt = False,
        dry_run: DryRunOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Convert a checkpoint to GGUF, safetensors or a re-sharded JAX checkpoint.

        Straight from the int8 pickles to GGUF (llama.cpp, 2-16 bit), safetensors (HF or
        sglang names) or tensorstore/orbax, streaming tensor by tensor with bounded memory;
        resumable, files renamed when complete, output manifest last. Rerunning a finished
        conversion changes nothing and exits 0.
        """
        from grokfetch.cli.options import check_jobs, check_preset, check_wait, positive_size
        from grokfetch.cli.output import Output
        from grokfetch.convert.base import DEFAULT_SHARD_SIZE, ConvertOptions
        from grokfetch.convert.jax_layout import parse_mesh
        from grokfetch.convert.run import convert as run_convert
        from grokfetch.errors import Interrupted, UsageError

        output = Output("convert", json_mode=json_, quiet=quiet, verbose=verbose)
        if ckpt_dir is None and not dry_run:
            raise UsageError("missing argument CKPT_DIR (only --dry-run works without one)")
        if out is None and not dry_run:
            raise UsageError("missing option --out")
        check_jobs(jobs)
        check_wait(wait, wait_timeout)
        check_preset(ckpt_dir, preset)
        target = to.strip().lower()
        given = {"bits": bits, "quant": quant, "split_size": split_size, "layout": layout,
                 "dtype": dtype, "shard_size": shard_size, "mesh": mesh}
        bad = _misplaced(target, given)
        if bad:
            raise UsageError(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to "
                             f"--to {target}")
        opts = ConvertOptions(
            target=target, bits=bits, quant=quant,
            split_size=positive_size(split_size, "--split-size"),
            layout=(layout or "hf").lower(), dtype=(dtype or "bf16").lower(),
            shard_size=positive_size(shard_size, "--shard-size") or DEFAULT_SHARD_SIZE,
            mesh=parse_mesh(mesh or "1x8"),
            layers=layers, experts=experts, force=force, tokenizer=tokenizer,
            wait=wait, wait_timeout=wait_timeout,
            chunk_bytes=positive_size(chunk_size, "--chunk-size") or 0, name=name,
            space_check=not no_space_check, **({"workers": jobs} if jobs is not None else {}))
        if dry_run:
            from grokfetch.cli.plan import render_plan
            from grokfetch.plan import convert_plan

            plan = convert_plan(ckpt_dir, opts, preset=preset)
            output.result(plan.to_json(), lambda c: render_plan(plan, c))
            return 0
        assert ckpt_dir is not None and out is not None
        try:
            with output.progress() as p:
                report = run_convert(ckpt_dir, out, opts, preset=preset, progress=p)
        except KeyboardInterrupt:
            raise Interrupted("interrupted", hint="rerun the same command to resume") from None

        def human(console) -> None:
            if report.already_complete:
                console.print(f"already complete: {report.out} ({len(report.files)} file(s), "
                              f"{human_bytes(report.bytes_out)}); nothing to do")
                return
            verb = "resumed and finished" if report.resumed else "wrote"
            console.print(f"{verb} {len(report.files)} file(s) in {report.out}:")
            for f in report.files:
                console.print(f"  {f['path']}  {human_bytes(f['bytes'])}  ({f['tensors']} tensors)")
            d = report.details
            if d.get("tensor_types"):
                types = ", ".join(f"{k}×{v}" for k, v in sorted(d["tensor_types"].items()))
                console.print(f"  {d.get('scheme', '')}: {types}")
            console.print(f"in {human_bytes(report.bytes_in)}, out {human_bytes(report.bytes_out)}, "
                          f"{report.seconds:.1f} s, {report.mb_per_s:.1f} MB/s in, "
                          f"peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB")
            if report.manifest:
                console.print(f"manifest: {report.manifest}")

        output.result({"input": str(ckpt_dir), **report.to_json()}, human)
        return 0
