"""Plans before work (``--dry-run``): what a download, conversion or smoke run needs.

Every figure comes from the tensor table and the functions the real run uses to size its
work (the convert targets' ``plan()``, the smoke memory preflight), so a plan and the run it
describes agree to the byte; no checkpoint data needs to be present. The conversion time is
extrapolated from a short measurement of this machine's quantizer, taken when planning.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.spec import TENSOR_DIR, ModelConfig, TensorSpec, TensorTable, load_config

#: Interpreter, numpy and the writers, before any work (docs/convert.md, "Memory bound").
CONVERT_BASE_RSS = 150 * 2**20
#: Temporaries per convert worker, in units of ``--chunk-size`` (docs/convert.md).
CHUNKS_PER_WORKER = 4
#: Rows quantized per type to measure this machine's quantizer (4096 columns, 4 MiB of f32).
SAMPLE_ROWS = 256
#: Download rates (bytes/s) a download plan gives times for when no --max-download-rate is set.
DOWNLOAD_RATES = (10e6, 50e6, 100e6)


@dataclass
class Plan:
    """A dry run's figures (``figures``: bytes, seconds, counts) and notes on how they were got."""

    command: str
    model: str
    figures: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": True, "model": self.model, **self.figures, "notes": self.notes}


def _table(ckpt: Path | None, preset: str | None) -> tuple[TensorTable, Path | None]:
    """The tensor table of ``ckpt`` (its config) or of ``preset``, and the checkpoint root."""
    if ckpt is None:
        return TensorTable(load_config(None, preset)), None
    from grokfetch.checkpoint.reader import find_layout

    layout = find_layout(ckpt)
    return TensorTable(load_config(layout.root, preset)), layout.root


# --- download --------------------------------------------------------------------------------------


def download_plan(dest: Path, *, preset: str | None, layers: str | None,
                  max_rate: int | None) -> Plan:
    """Bytes to fetch and disk to hold for ``grokfetch download`` of a model's tensor files.

    The selection is the one ``--layers`` makes (those layers, the embedding and the final
    norm); ``--include``/``--exclude`` globs need the torrent's file list and are not planned.
    """
    from grokfetch.spec import parse_layers

    table = TensorTable(load_config(None, preset))
    specs = table.select(parse_layers(layers, table.config.num_layers))
    nbytes = sum(s.file_bytes for s in specs)
    rates = (max_rate,) if max_rate else DOWNLOAD_RATES
    figures = {
        "dir": str(dest), "files": len(specs), "download_bytes": nbytes, "disk_bytes": nbytes,
        "peak_ram_bytes": None,
        "seconds_at": {str(int(r)): math.ceil(nbytes / r) for r in rates},
    }
    notes = [f"{len(specs)} of {len(table)} tensor files of {table.config.name} from the tensor "
             "table; plus tokenizer.model (about 2 MB) and the torrent's small files",
             "times at the given rates; the swarm decides the real one"]
    return Plan("download", table.config.name, figures, notes)


# --- convert ---------------------------------------------------------------------------------------


def _checkpoint(ckpt: Path | None, preset: str | None):
    """An opened checkpoint, or one with no files behind it (a plan reads no tensor data)."""
    from grokfetch.checkpoint.reader import Checkpoint, CheckpointLayout, open_checkpoint

    if ckpt is not None:
        return open_checkpoint(ckpt, preset)
    root = Path(".")
    return Checkpoint(CheckpointLayout(root, root / TENSOR_DIR), load_config(None, preset))


def _gguf_files_without_tokenizer(target) -> list:
    """The GGUF plan with an empty-string vocabulary: tensor bytes exact, header short by the
    text of the vocabulary's pieces (about 1-2 MB for a 131072-piece vocabulary)."""
    from grokfetch.convert.gguf import Vocab
    from grokfetch.convert.quant import resolve_scheme

    n = target.config.vocab_size
    target.scheme = resolve_scheme(target.options.bits, target.options.quant)
    target.tensors = target._tensor_plans()
    target.vocab = Vocab([""] * n, [0.0] * n, [1] * n, None)
    return target.plan()


def quantizer_rates(qtypes: set[Any]) -> dict[str, float]:
    """Int8 weights per second this machine quantizes to each GGML type, one thread.

    Measured on :data:`SAMPLE_ROWS` rows of 4096 int8-valued weights (dequantized to f32 as the
    converter does, then quantized with the converter's own ``quantize_rows``).
    """
    import numpy as np

    from grokfetch.convert.quant import quantize_rows

    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, (SAMPLE_ROWS, 4096), dtype=np.int8)
    scale = np.float32(0.01)
    rates = {}
    for qt in sorted(qtypes, key=lambda q: q.name):
        t0 = time.perf_counter()
        quantize_rows(x.astype(np.float32) * scale, qt)
        rates[qt.name] = x.size / max(time.perf_counter() - t0, 1e-6)
    return rates


def _peak_ram(specs: list[TensorSpec], jobs: int, chunk_bytes: int) -> int:
    """Interpreter + per-worker temporaries + the mapped pages of two expert slabs."""
    slab = max((s.payload_bytes // s.shape[0] for s in specs if s.per_expert),
               default=max(s.payload_bytes for s in specs))
    return CONVERT_BASE_RSS + jobs * CHUNKS_PER_WORKER * chunk_bytes + 2 * slab


def convert_plan(ckpt: Path | None, options, *, preset: str | None) -> Plan:
    """Output bytes (the target's own plan, so exactly what the run writes), disk, peak RAM
    and a time estimate for ``grokfetch convert`` with ``options``."""
    from grokfetch.convert.base import get_target

    ck = _checkpoint(ckpt, preset)
    cls = get_target(options.target)
    options = options.normalized(ck.config)
    specs = ck.table.select(list(options.layers) if options.layers is not None else None)
    target = cls(ck, specs, options)
    tokenizer = options.tokenizer or ck.layout.tokenizer
    target.tokenizer_path = tokenizer
    notes = []
    if options.target == "gguf" and tokenizer is None:
        files = _gguf_files_without_tokenizer(target)
        notes.append("no tokenizer.model given: GGUF header sized without the vocabulary's "
                     "text (about 2 MB more with it; pass --tokenizer for the exact size)")
    else:
        target.validate()
        files = target.plan()
    out_bytes = sum(f.nbytes for f in files)
    tok_bytes = Path(tokenizer).stat().st_size if tokenizer is not None else 0
    in_bytes = sum(i.in_bytes for f in files for i in f.items)
    jobs = options.threads
    weights: dict[str, int] = {}
    for f in files:
        for item in f.items:
            plan = item.meta.get("plan")
            kind = plan.qtype.name if plan is not None else "copy"
            weights[kind] = weights.get(kind, 0) + item.in_bytes  # ~1 byte per int8 weight
    seconds = None
    if options.target == "gguf":
        from gguf import GGMLQuantizationType as T

        rates = quantizer_rates({T[k] for k in weights})
        cores = os.cpu_count() or 1
        seconds = sum(n / rates[k] for k, n in weights.items()) / min(jobs, cores)
        measured = ", ".join(f"{k} {r / 1e6:.0f} M weights/s" for k, r in sorted(rates.items()))
        notes.append(f"time: this machine's quantizer, measured now ({measured} per thread), "
                     f"× -j {jobs} (at most {cores} cores); disk and input reads not counted")
    else:
        notes.append("time: not estimated for a copy/dequantize target; disk speed decides it")
    figures = {
        "target": options.target, "input": str(ckpt) if ckpt is not None else None,
        "files": [{"path": f.relpath, "bytes": f.nbytes} for f in files],
        "input_bytes": in_bytes, "output_bytes": out_bytes,
        "disk_bytes": out_bytes + tok_bytes + (1 << 20),
        "peak_ram_bytes": _peak_ram(specs, jobs, options.chunk_bytes), "jobs": jobs,
        "estimated_seconds": round(seconds) if seconds is not None else None,
        "details": target.summary() if options.target != "gguf" or tokenizer else
        {"scheme": target.scheme.name},
    }
    return Plan("convert", ck.config.name, figures, notes)


# --- smoke -----------------------------------------------------------------------------------------


def smoke_plan(ckpt: Path | None, opts, *, preset: str | None) -> Plan:
    """Memory per device (the smoke preflight itself) for ``grokfetch smoke`` with ``opts``.

    Prompt length: ``--tokens``, else the prompt encoded with the checkpoint's tokenizer,
    else the prompt's UTF-8 byte count (an upper bound on its token count).
    """
    from grokfetch.smoke import mesh as meshlib
    from grokfetch.smoke.run import DEFAULT_PROMPT

    notes = []
    forms_for, tokenizer, fmt = (lambda m: "int8"), opts.tokenizer, "pickle"
    if ckpt is not None:
        from grokfetch.smoke.load import open_source

        source = open_source(ckpt, preset)
        table, fmt = source.table, source.fmt
        forms_for = source.form_fn
        tokenizer = tokenizer or source.tokenizer
    else:
        table = TensorTable(load_config(None, preset))
    cfg: ModelConfig = table.config
    meshlib.check_devices(cfg, opts.gpus)
    layers = cfg.num_layers if opts.layers is None else opts.layers
    prompt = opts.prompt if opts.prompt is not None else DEFAULT_PROMPT
    if opts.tokens is not None:
        n_tokens = len(opts.tokens)
    elif tokenizer is not None:
        from grokfetch.smoke.tokenizer import Tokenizer

        n_tokens = len(Tokenizer(tokenizer).encode(prompt))
    else:
        n_tokens = len(prompt.encode())
        notes.append(f"no tokenizer: prompt counted as {n_tokens} tokens (its UTF-8 bytes, an "
                     "upper bound)")
    cache_len = -(-(n_tokens + opts.max_new_tokens) // 8) * 8
    pf = meshlib.preflight(table, opts.gpus, opts.device_memory, layers=layers, tokens=cache_len,
                           cache_len=cache_len, forms=forms_for(opts.gpus), compute_dtype=opts.dtype)
    if opts.device_memory is None:
        notes.append("no --device-memory: fit not judged (the run asks the devices)")
    notes.append("temporaries: the analytic bound; the run replaces it with XLA's own figure")
    figures = {
        "input": str(ckpt) if ckpt is not None else None, "format": fmt, "devices": opts.gpus,
        "layers": layers, "dtype": opts.dtype, "prompt_tokens": n_tokens,
        "load_bytes": sum(s.payload_bytes for s in table.select(range(layers))),
        "device_memory_bytes": opts.device_memory,
        "per_device": pf.to_json(),
        "fits": pf.fits if opts.device_memory is not None else None,
    }
    if opts.device_memory is not None and not pf.fits:
        k = meshlib.fitting_layers(table, opts.gpus, opts.device_memory, tokens=cache_len,
                                   cache_len=cache_len, forms=forms_for(opts.gpus),
                                   compute_dtype=opts.dtype)
        more = meshlib.devices_that_fit(table, opts.gpus, opts.device_memory, layers=layers,
                                        tokens=cache_len, cache_len=cache_len,
                                        forms_for=forms_for, compute_dtype=opts.dtype)
        figures["fitting_layers"], figures["devices_that_fit"] = k, more
    return Plan("smoke", cfg.name, figures, notes)
