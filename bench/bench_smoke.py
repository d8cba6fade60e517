"""Benchmark the sharded smoke engine against the float64 numpy reference, same run.

A fixture checkpoint (default ``mini``: 12 layers, 8 experts) is written to a temp folder.
Then it is run:

- ``engine``: compile, load, one warm-up generation, then a timed greedy generation
  (prefill of the prompt bucket plus cached decode steps) on N simulated CPU devices;
- ``numpy``: the anchor. ``tests/numpy_reference.py`` runs a float64 teacher-forced forward over
  the same prompt.

Prints one JSON line with the prefill seconds of both, the ratio numpy / engine, decode
tokens/s, compile and load seconds, and the top-1 agreement of the two on the prompt (f32
engine). On 2 shared cores the default finishes in about a minute. Simulated devices give no
speed-up; the numbers are for spotting regressions, not for GPU estimates.

    python bench/bench_smoke.py [--preset mini|tiny] [--gpus 8] [--tokens 16] [--new 8]
                                [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    from grokfetch.smoke.mesh import make_mesh, setup_jax

    devices = setup_jax("cpu", args.gpus)
    import numpy as np
    import numpy_reference as ref

    from grokfetch.checkpoint.fixture import write_fixture
    from grokfetch.smoke.engine import Engine
    from grokfetch.smoke.load import load_params, open_source

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / args.preset
        write_fixture(ckpt, args.preset, seed=0)
        src = open_source(ckpt)
        rng = np.random.default_rng(0)
        prompt = [int(t) for t in rng.integers(4, src.config.vocab_size, args.tokens)]
        cache = -(-(args.tokens + args.new) // 8) * 8

        t0 = time.perf_counter()
        eng = Engine(src.table, make_mesh(devices), args.dtype, src.weight_kind(), cache)
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

    print(json.dumps({
        "preset": args.preset, "devices": args.gpus, "dtype": args.dtype, "prompt": args.tokens,
        "engine_prefill_s": round(gen.prefill_seconds, 4), "numpy_prefill_s": round(numpy_s, 4),
        "ratio_numpy_over_engine": round(numpy_s / gen.prefill_seconds, 2),
        "decode_tokens_per_s": round((args.new - 1) / gen.decode_seconds, 2) if args.new > 1 else None,
        "compile_s": round(compile_s, 2), "load_s": round(load_s, 3),
        "top1_agreement": float((gen.prompt_logits.argmax(-1) == want.argmax(-1)).mean()),
    }))


if __name__ == "__main__":
    main()
