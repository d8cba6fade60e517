"""``smoke()``: preflight, load, generate, check, report; ``compare`` two checkpoints.

The checks (thresholds are documented in ``docs/smoke.md``):

* ``finite``: every prompt and decode logit is finite;
* ``not_degenerate``: logits vary over the vocabulary at every position, and the prompt
  positions do not all predict the same token;
* ``deterministic``: a second generation gives bit-identical logits and tokens;
* ``kv_cache``: the cached decode steps equal one teacher-forced prefill over
  ``prompt + generated[:-1]`` — tokens equal (a bf16 near-tie within the tolerance excepted) and
  ``max |Δlogit| ≤ tol · max(1, max |logit|)`` with tol 1e-4 (f32) or 0.1 (bf16);
* ``tokenizer`` (when one is used): its vocabulary fits the model's, and a Grok-1-sized model
  gets the released ``tokenizer.model`` (sha256);
* ``compare`` (``--compare OTHER``): exact equality for two lossless formats, else top-1
  agreement ≥ 0.9 and mean KL ≤ 0.05 on the teacher-forced positions.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME
from grokfetch.errors import CheckFailed, InsufficientMemoryError, UsageError
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.sharding import make_mesh
from grokfetch.smoke import mesh as meshlib
from grokfetch.smoke.load import Source, device_bytes_held, load_params, open_source
from grokfetch.smoke.tokenizer import GROK1_TOKENIZER_SHA256, Tokenizer
from grokfetch.spec import GROK_1

DEFAULT_PROMPT = "The answer to life the universe and everything is of course"
KV_TOL = {"float32": 1e-4, "bfloat16": 0.1}
LOSSY_MIN_TOP1 = 0.9
LOSSY_MAX_MEAN_KL = 0.05


@dataclass
class SmokeOptions:
    """What ``grokfetch smoke`` was asked to do."""

    gpus: int = 1
    platform: str = "gpu"
    prompt: str | None = None
    tokens: list[int] | None = None
    max_new_tokens: int = 8
    layers: int | None = None
    dtype: str = "bfloat16"
    preset: str | None = None
    dump_logits: Path | None = None
    compare: Path | None = None
    tokenizer: Path | None = None
    device_memory: int | None = None
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, **self.data}


@dataclass
class SmokeReport:
    """Everything a smoke run found; ``passed`` only when every check passed."""

    checkpoint: str
    format: str
    config: str
    devices: int
    platform: str
    dtype: str
    layers: int
    prompt_tokens: list[int]
    generated_tokens: list[int]
    generated_text: str | None
    preflight: dict[str, Any]
    memory_per_device: dict[str, int]
    timings: dict[str, float]
    checks: list[Check]
    compare: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "format": self.format, "config": self.config,
                "devices": self.devices, "platform": self.platform, "dtype": self.dtype,
                "layers": self.layers, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens, "generated_text": self.generated_text,
                "preflight": self.preflight, "memory_per_device": self.memory_per_device,
                "timings": self.timings, "checks": [c.to_json() for c in self.checks],
                "compare": self.compare, "passed": self.passed}

    def raise_for_failures(self) -> None:
        failed = [c for c in self.checks if not c.passed]
        if failed:
            raise CheckFailed(f"smoke failed: {', '.join(f'{c.name} ({c.detail})' for c in failed)}",
                              failed)


# --- the checks -----------------------------------------------------------------------------------


def check_finite(*arrays: np.ndarray) -> Check:
    bad = sum(int((~np.isfinite(a)).sum()) for a in arrays)
    return Check("finite", bad == 0, "all logits finite" if not bad else f"{bad} non-finite logits")


def check_not_degenerate(logits: np.ndarray, prompt: list[int]) -> Check:
    spread = np.ptp(logits, axis=-1)
    top = logits.argmax(-1)
    constant = int((spread <= 0).sum())
    same_top = len(set(prompt)) > 1 and len(logits) > 1 and len(set(top.tolist())) == 1
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = float(-(p * np.log(np.maximum(p, 1e-30))).sum(-1).mean())
    ok = not constant and not same_top
    detail = ("logits vary and predictions differ" if ok else
              f"{constant} constant positions" if constant else f"every position predicts {top[0]}")
    return Check("not_degenerate", ok, detail,
                 {"mean_entropy": entropy, "max_entropy": math.log(logits.shape[-1]),
                  "distinct_top1": len(set(top.tolist()))})


def check_deterministic(a, b) -> Check:
    same = (np.array_equal(a.prompt_logits, b.prompt_logits)
            and np.array_equal(a.decode_logits, b.decode_logits) and a.tokens == b.tokens)
    return Check("deterministic", same, "two runs bit-identical" if same else "two runs differ")


def check_kv_cache(gen, teacher: np.ndarray, prompt_len: int, dtype: str) -> Check:
    """Cached decode against one teacher-forced prefill over the same sequence."""
    tol = KV_TOL[dtype]
    scale = max(1.0, float(np.abs(teacher).max()))
    steps = teacher[prompt_len: prompt_len + len(gen.decode_logits)]
    delta = float(np.abs(steps - gen.decode_logits).max()) if len(steps) else 0.0
    tf_tokens = teacher[prompt_len - 1:].argmax(-1).tolist()
    mismatched = []
    for i, (tok, want) in enumerate(zip(gen.tokens, tf_tokens, strict=True)):
        row = teacher[prompt_len - 1 + i]
        if tok != want and row[want] - row[tok] > tol * scale:
            mismatched.append(i)
    ok = delta <= tol * scale and not mismatched
    detail = (f"max |Δlogit| {delta:.3g} (limit {tol * scale:.3g})"
              + (f", tokens differ at steps {mismatched}" if mismatched else ", tokens equal"))
    return Check("kv_cache", ok, detail, {"max_abs_diff": delta, "limit": tol * scale,
                                          "relative": delta / scale})


def check_tokenizer(tokenizer: Tokenizer, cfg) -> Check:
    """The vocabulary fits the model; for Grok-1 itself, the released file (sha256)."""
    ok = tokenizer.vocab_size <= cfg.vocab_size
    detail = f"vocab {tokenizer.vocab_size} vs model {cfg.vocab_size}"
    data: dict[str, Any] = {"path": str(tokenizer.path)}
    if cfg.vocab_size == GROK_1.vocab_size:
        digest = tokenizer.sha256()
        data["sha256"] = digest
        if digest != GROK1_TOKENIZER_SHA256:
            ok = False
            detail += ", not the released Grok-1 tokenizer.model (sha256 differs)"
    return Check("tokenizer", ok, detail, data)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean/median/max KL(a‖b) and max |Δlogit| of two ``[T, vocab]`` logit
    sets."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    la = a64 - a64.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b64 - b64.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(-1)
    return {"positions": int(len(a)), "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "mean_kl": float(kl.mean()), "median_kl": float(np.median(kl)), "max_kl": float(kl.max()),
            "max_abs_diff": float(np.abs(a64 - b64).max())}


def check_compare(metrics: dict[str, float], lossless: bool) -> Check:
    if lossless:
        ok = metrics["max_abs_diff"] == 0.0
        return Check("compare", ok, f"lossless: max |Δlogit| {metrics['max_abs_diff']:.3g} (must be 0)",
                     {"mode": "exact", **metrics})
    ok = metrics["top1_agreement"] >= LOSSY_MIN_TOP1 and metrics["mean_kl"] <= LOSSY_MAX_MEAN_KL
    return Check("compare", ok, f"lossy: top-1 {metrics['top1_agreement']:.3f} "
                 f"(≥ {LOSSY_MIN_TOP1}), mean KL {metrics['mean_kl']:.3g} (≤ {LOSSY_MAX_MEAN_KL})",
                 {"mode": "loose", **metrics})


# --- the run --------------------------------------------------------------------------------------


def _prompt_tokens(opts: SmokeOptions, source: Source) -> tuple[list[int], Tokenizer | None]:
    tok_path = opts.tokenizer or source.tokenizer
    tokenizer = Tokenizer(tok_path) if tok_path is not None else None
    if opts.tokens is not None:
        if opts.prompt is not None:
            raise UsageError("give --prompt or --tokens, not both")
        ids = list(opts.tokens)
    else:
        if tokenizer is None:
            raise UsageError(f"no {TOKENIZER_FILENAME} next to {source.root}",
                             hint="pass --tokenizer PATH, or --tokens 1,2,3")
        ids = tokenizer.encode(opts.prompt if opts.prompt is not None else DEFAULT_PROMPT)
    vocab = source.config.vocab_size
    if not ids:
        raise UsageError("the prompt is empty")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise UsageError(f"token ids {bad[:5]} out of range 0-{vocab - 1}")
    return ids, tokenizer


def _plan(source: Source, opts: SmokeOptions, n: int, layers: int, tokens: int, cache_len: int,
          device_bytes: int | None, temporaries: int | None = None):
    def plan_for(m: int, k: int, temps: int | None = None):
        return meshlib.preflight(source.table, m, device_bytes, layers=k, tokens=tokens,
                                 cache_len=cache_len, forms=source.form_fn(m),
                                 compute_dtype=opts.dtype, temporaries=temps)

    plan = plan_for(n, layers, temporaries)
    if plan.fits:
        return plan
    assert device_bytes is not None
    k = meshlib.fitting_layers(source.table, n, device_bytes, tokens=tokens, cache_len=cache_len,
                               forms=source.form_fn(n), compute_dtype=opts.dtype)
    more = meshlib.devices_that_fit(source.table, n, device_bytes, layers=layers, tokens=tokens,
                                    cache_len=cache_len, forms_for=source.form_fn,
                                    compute_dtype=opts.dtype)
    hints = []
    if k:
        hints.append(f"--layers {k} fits")
    if more:
        hints.append(f"--gpus {more} (of such devices) would hold {layers} layers")
    raise InsufficientMemoryError(
        f"{source.config.name} with {layers} layers does not fit {n} device(s): needs "
        f"{meshlib.gib(plan.total)} per device (weights {meshlib.gib(plan.weights)}, KV cache "
        f"{meshlib.gib(plan.kv_cache)}, temporaries {meshlib.gib(plan.temporaries)}, +"
        f"{plan.margin:.0%} margin), has {meshlib.gib(device_bytes)}",
        plan.total, device_bytes, hint="; ".join(hints) or "use more or larger devices")


def _run_one(source: Source, opts: SmokeOptions, devices, layers: int, ids: list[int],
             progress: Progress, seq: list[int] | None = None, engine: Any = None):
    """Preflight, compile, load; generate twice (or, with ``seq``, only teacher-force it).

    ``engine`` reuses the programs of an earlier run when they fit this source (same shapes,
    every layer's tensors in the same forms): a comparison then costs a load and one prefill.
    """
    from grokfetch.smoke.engine import Engine, layer_signatures

    n = len(devices)
    cfg = source.config
    meshlib.check_devices(cfg, n)
    length = len(seq) if seq is not None else len(ids) + opts.max_new_tokens
    cache_len = -(-length // 8) * 8
    if cache_len > cfg.sequence_len:
        raise UsageError(f"{length} tokens exceed the model's sequence length {cfg.sequence_len}")
    device_bytes = opts.device_memory or meshlib.device_memory(devices, opts.platform)
    if source.fmt == "pickle":  # the shapes-only plan, before a single file is opened
        _plan(source, opts, n, layers, cache_len, cache_len, device_bytes)
    source.check_files(source.table.select(range(layers)))
    forms = layer_signatures(source.table, source.form_fn(n), layers)
    reuse = engine is not None and engine.forms[:layers] == forms
    if reuse:
        cache_len = engine.cache_len
    _plan(source, opts, n, layers, cache_len, cache_len, device_bytes)
    if not reuse:
        engine = Engine(source.table, make_mesh(devices=devices), opts.dtype, forms, cache_len)
        progress.event("status", text=f"compiling for {n} device(s)")
        engine.stats = engine.compile(("prefill",) if seq is not None else ("prefill", "decode"))
    plan = _plan(source, opts, n, layers, cache_len, cache_len, device_bytes,
                 engine.temporaries(engine.stats))
    t0 = time.perf_counter()
    params = load_params(source, engine, layers, progress)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"engine": engine, "plan": plan, "load_seconds": load_s}
    if seq is not None:
        out["teacher"] = engine.prefill_logits(params, seq)
    else:
        out["gen1"] = engine.generate(params, ids, opts.max_new_tokens)
        out["gen2"] = engine.generate(params, ids, opts.max_new_tokens)
        out["teacher"] = engine.prefill_logits(params, ids + out["gen1"].tokens[:-1])
        caches = engine.new_caches(layers)
        out["memory"] = device_bytes_held([params, caches])
        out["memory"].update(meshlib.peak_memory(devices))
        del caches
    del params
    gc.collect()
    return out


def smoke(ckpt: Path | str, opts: SmokeOptions, progress: Progress = NULL_PROGRESS) -> SmokeReport:
    """Run the smoke test of ``ckpt`` and return its report (call ``raise_for_failures``)."""
    if opts.dtype not in meshlib.DTYPE_BYTES:
        raise UsageError(f"--dtype must be bfloat16 or float32, not {opts.dtype!r}")
    if opts.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    devices = meshlib.setup_jax(opts.platform, opts.gpus, opts.coordinator, opts.num_processes,
                                opts.process_id)
    source = open_source(ckpt, opts.preset)
    cfg = source.config
    layers = cfg.num_layers if opts.layers is None else opts.layers
    if not 1 <= layers <= cfg.num_layers:
        raise UsageError(f"--layers must be in 1..{cfg.num_layers} for {cfg.name}, not {layers}")
    ids, tokenizer = _prompt_tokens(opts, source)
    other = _compare_source(opts, cfg, layers) if opts.compare is not None else None
    run = _run_one(source, opts, devices, layers, ids, progress)
    gen1, gen2, teacher = run["gen1"], run["gen2"], run["teacher"]
    checks = [check_finite(gen1.prompt_logits, gen1.decode_logits),
              check_not_degenerate(gen1.prompt_logits, ids),
              check_deterministic(gen1, gen2),
              check_kv_cache(gen1, teacher, len(ids), opts.dtype)]
    text = None
    if tokenizer is not None:
        checks.append(check_tokenizer(tokenizer, cfg))
        text = tokenizer.decode(gen1.tokens)
    if opts.dump_logits is not None and opts.process_id == 0:  # one writer across processes
        _dump(opts.dump_logits, gen1.prompt_logits)
    compare = None
    if other is not None:
        seq = ids + gen1.tokens[:-1]
        other_run = _run_one(other, opts, devices, layers, ids, progress, seq=seq,
                             engine=run["engine"])
        metrics = agreement(teacher, other_run["teacher"])
        both = source.lossless and other.lossless
        checks.append(check_compare(metrics, both))
        compare = {"other": str(opts.compare), "format": other.fmt, "lossless": both, **metrics}
    engine, plan = run["engine"], run["plan"]
    t_len = len(ids)
    timings = {"compile_s": engine.compile_seconds, "load_s": run["load_seconds"],
               "prefill_s": gen2.prefill_seconds, "decode_s": gen2.decode_seconds,
               "prefill_tokens_per_s": t_len / gen2.prefill_seconds,
               "decode_tokens_per_s": (len(gen2.decode_logits) / gen2.decode_seconds
                                       if gen2.decode_seconds > 0 and len(gen2.decode_logits) else 0.0)}
    return SmokeReport(str(ckpt), source.fmt, cfg.name, len(devices), opts.platform, opts.dtype,
                       layers, ids, gen1.tokens, text, plan.to_json(), run["memory"], timings,
                       checks, compare)


def _compare_source(opts: SmokeOptions, cfg, layers: int) -> Source:
    """Open ``--compare OTHER``; it must be the same model (a layer subset is fine)."""
    other = open_source(opts.compare, opts.preset)  # type: ignore[arg-type]
    ocfg = other.config
    if dataclasses.replace(ocfg, num_layers=cfg.num_layers) != cfg:
        raise UsageError(f"--compare {opts.compare}: its model config ({ocfg.name}) differs "
                         f"from {cfg.name} in more than the number of layers")
    if layers > ocfg.num_layers:
        raise UsageError(f"--compare {opts.compare} holds only {ocfg.num_layers} layers",
                         hint=f"compare the first layers with --layers {ocfg.num_layers}")
    return other


def _dump(path: Path, logits: np.ndarray) -> None:
    from grokfetch.fsutil import atomic_file

    with atomic_file(Path(path)) as f:
        np.save(f, np.asarray(logits, np.float32))
