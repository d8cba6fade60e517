"""Benchmark the sharded smoke engine: against the float64 numpy reference, and per stored format.

Three measurements, each side by side in one run (simulated CPU devices; 2 shared cores give no
speed-up from devices, so the numbers are ratios for spotting regressions, not GPU estimates):

- ``anchor`` (default): a fixture (``--preset``, default ``mini``) through the engine (compile,
  load, warm-up, timed greedy generation) and through ``tests/numpy_reference.py``'s float64
  forward; prints prefill seconds of both, their ratio and the top-1 agreement.
- ``formats`` (default): the ``k256``-style fixture of ``tests/kquant_fixture.py`` at width
  2048 (4 layers, 8 experts; every device's share of every matrix is whole 256-value blocks on
  8 devices) as int8 pickles and as its ``convert --quant Q4_K_M`` GGUF, each run by
  ``smoke()`` in a fresh process on 8 devices: device bytes per device (params + KV cache), wall
  time, host memory. Ratios GGUF / pickles.
- ``--real-layer``: ``grokfetch.checkpoint.realshape``'s Grok-1-shaped layer 0 (6144 wide, 48
  heads, 32768 FFN, 8 experts; random payloads) and its Q4_K_M GGUF, ``smoke --layers 1
  --gpus 8 --platform cpu``: per-device bytes against the preflight, and host memory during the
  load beyond the arrays placed. Needs ~12 GB of disk and ~12 GB of RAM; run it once.

Host memory: on ``--platform cpu`` the devices' arrays live in the process, so the child
records its resident set (``/proc/self/status``, sampled every 20 ms) when loading starts and at
its peak during the load; ``load_host_overhead`` is that peak minus the start minus the bytes
placed on all devices, to compare with the largest tensor's stored bytes.

    python bench/bench_smoke.py [--preset mini] [--gpus 8] [--tokens 16] [--new 8]
                                [--dtype float32] [--no-formats] [--real-layer] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
REAL_TOKENIZER = REPO.parent / "shared" / "grok1" / "tokenizer.model"


def anchor(args) -> dict:
    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.mesh import setup_jax

    devices = setup_jax("cpu", args.gpus)
    import numpy as np
    import numpy_reference as ref

    from grokfetch.checkpoint.fixture import write_fixture
    from grokfetch.smoke.engine import Engine, layer_signatures
    from grokfetch.smoke.load import load_params, open_source

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / args.preset
        write_fixture(ckpt, args.preset, seed=0)
        src = open_source(ckpt)
        rng = np.random.default_rng(0)
        prompt = [int(t) for t in rng.integers(4, src.config.vocab_size, args.tokens)]
        cache = -(-(args.tokens + args.new) // 8) * 8

        t0 = time.perf_counter()
        forms = layer_signatures(src.table, src.form_fn(args.gpus))
        eng = Engine(src.table, make_mesh(devices=devices), args.dtype, forms, cache)
        eng.compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        params = load_params(src, eng, src.config.num_layers)
        load_s = time.perf_counter() - t0
        eng.generate(params, prompt, args.new)  # warm-up
        gen = eng.generate(params, prompt, args.new)

        rparams, cfg = ref.load(ckpt)
        t0 = time.perf_counter()
        want = ref.forward(rparams, cfg, prompt)
        numpy_s = time.perf_counter() - t0

    return {
        "preset": args.preset, "devices": args.gpus, "dtype": args.dtype, "prompt": args.tokens,
        "engine_prefill_s": round(gen.prefill_seconds, 4), "numpy_prefill_s": round(numpy_s, 4),
        "ratio_numpy_over_engine": round(numpy_s / gen.prefill_seconds, 2),
        "decode_tokens_per_s": round((args.new - 1) / gen.decode_seconds, 2) if args.new > 1 else None,
        "compile_s": round(compile_s, 2), "load_s": round(load_s, 3),
        "top1_agreement": float((gen.prompt_logits.argmax(-1) == want.argmax(-1)).mean()),
    }


# --- one smoke run in a fresh process, with its memory ---------------------------------------------


def _rss() -> tuple[int, int]:
    """(RssAnon, RssFile) of this process in bytes."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                k, v, _ = line.split()
                vals[k[:-1]] = int(v) * 1024
    return vals.get("RssAnon", 0), vals.get("RssFile", 0)


class LoadMemory:
    """A Progress that samples the resident set while the ``load`` task runs."""

    def __init__(self) -> None:
        self.start = self.peak = self.peak_anon = self.peak_file = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            anon, fil = _rss()
            self.peak = max(self.peak, anon + fil)
            self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, fil)
            self._stop.wait(0.02)

    def task(self, key, total, description) -> None:
        if key == "load" and self._thread is None:
            self.start = sum(_rss())
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def done(self, key) -> None:
        if key == "load" and self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()

    def advance(self, key, amount) -> None:
        pass

    def update(self, key, completed=None, total=None, description=None) -> None:
        pass

    def event(self, kind, **data) -> None:
        pass


def child(argv: list[str]) -> None:
    """``--child CKPT GPUS LAYERS NEW TOKENS``: run ``smoke()`` and print one JSON line."""
    ckpt, gpus, layers, new, tokens = argv
    from grokfetch.smoke.run import SmokeOptions, smoke

    opts = SmokeOptions(gpus=int(gpus), platform="cpu", max_new_tokens=int(new),
                        layers=int(layers) or None, tokens=[int(t) for t in tokens.split(",")])
    mem = LoadMemory()
    t0 = time.perf_counter()
    report = smoke(ckpt, opts, mem)
    wall = time.perf_counter() - t0
    r = report.to_json()
    placed = r["preflight"]["weights"] * int(gpus)
    print(json.dumps({"format": r["format"], "passed": r["passed"], "wall_s": wall,
                      "failed": [c["name"] for c in r["checks"] if not c["passed"]],
                      "memory_per_device": r["memory_per_device"], "preflight": r["preflight"],
                      "timings": r["timings"], "load_rss_start": mem.start, "load_rss_peak": mem.peak,
                      "load_rss_peak_anon": mem.peak_anon, "load_rss_peak_file": mem.peak_file,
                      "load_host_overhead": mem.peak - mem.start - placed}))


def run_child(ckpt: Path, gpus: int, layers: int, new: int, tokens: list[int]) -> dict:
    cmd = [sys.executable, __file__, "--child", str(ckpt), str(gpus), str(layers), str(new),
           ",".join(map(str, tokens))]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"smoke of {ckpt} failed:\n{err[-3000:]}")
    d = json.loads(out.strip().splitlines()[-1])
    d["process_wall_s"] = wall
    d["device_bytes"] = max(d["memory_per_device"].values())
    return d


def convert(src: Path, out: Path, *extra: str) -> float:
    from grokfetch.cli import main

    t0 = time.perf_counter()
    if main(["convert", str(src), "--to", "gguf", "--quant", "Q4_K_M", "-o", str(out), "-q",
             "--jobs", str(os.cpu_count() or 1), *extra]) != 0:
        raise SystemExit(f"convert of {src} failed")
    return time.perf_counter() - t0


def _summary(case: str, pk: dict, gg: dict) -> dict:
    return {"bench": "smoke_formats", "case": case,
            "pickle": pk, "gguf_q4_k_m": gg,
            "device_bytes_ratio": gg["device_bytes"] / pk["device_bytes"],
            "time_ratio": gg["process_wall_s"] / pk["process_wall_s"]}


def formats(args, work: Path) -> dict:
    from kquant_fixture import blocks_config

    from grokfetch.checkpoint.fixture import write_fixture

    ckpt, gguf = work / "k2048", work / "k2048-q4km"
    if not ckpt.exists():
        write_fixture(ckpt, config=blocks_config(2048, 4, "k2048"))
    convert_s = convert(ckpt, gguf) if not gguf.exists() else None
    tokens = [5, 100, 200, 300, 17, 42, 99, 7]
    pk = run_child(ckpt, 8, 0, 4, tokens)
    gg = run_child(gguf, 8, 0, 4, tokens)
    return {**_summary("k2048: 4 layers, 2048 wide, 8 experts, 8 devices", pk, gg),
            "convert_s": convert_s}


def real_layer(args, work: Path) -> dict:
    from grokfetch.checkpoint.realshape import write_real_layers
    from grokfetch.spec import GROK_1, TensorTable

    ckpt, gguf = work / "grok1-layer0", work / "grok1-layer0-q4km"
    if not (ckpt / "ckpt-0").exists():
        write_real_layers(ckpt, 1, tokenizer=REAL_TOKENIZER if REAL_TOKENIZER.is_file() else None)
    convert_s = convert(ckpt, gguf, "--layers", "0-0") if not gguf.exists() else None
    tokens = [422, 3033, 356, 1180, 333, 9072, 360, 2175]
    pk = run_child(ckpt, 8, 1, 2, tokens)
    gg = run_child(gguf, 8, 1, 2, tokens)
    specs = TensorTable(GROK_1).select([0])
    out = _summary("Grok-1 layer 0 (--layers 1), 8 devices", pk, gg)
    for d in (pk, gg):
        pf = d["preflight"]
        d["held_over_preflight"] = d["device_bytes"] / (pf["weights"] + pf["kv_cache"])
    return {**out, "bench": "smoke_real_layer", "convert_s": convert_s,
            "largest_tensor_bytes": max(s.payload_bytes for s in specs)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-formats", action="store_true", help="skip the pickle vs GGUF comparison")
    ap.add_argument("--real-layer", action="store_true", help="only the real Grok-1 layer run")
    ap.add_argument("--workdir", type=Path, help="keep generated checkpoints here (reused)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.real_layer:
            print(json.dumps(real_layer(args, work)), flush=True)
            return
        if not args.no_formats:
            print(json.dumps(formats(args, work)), flush=True)
        print(json.dumps(anchor(args)), flush=True)


if __name__ == "__main__":
    main()
