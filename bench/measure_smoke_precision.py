"""Measure how closely smoke's bf16 mode follows the official bf16 computation, in one run.

The ``mini`` shapes with embedding multiplier 1 (the stock mini fixture's logits are saturated,
every KL there is below 1e-20) are written to a temp folder. Then ``--prompts`` random prompts
of ``--tokens`` tokens run teacher-forced (one prefill each), and the median KL per position,
pooled over the prompts, is reported for:

- ``bf16_vs_official``: the bf16 engine on N devices against ``numpy_reference.forward_bf16``,
  a float64 emulation of the official bf16 rounding sequence (f32 output head, as the engine);
- ``bf16_vs_f32``: the bf16 engine against the f32 engine (same N);
- ``bf16_n_vs_1``: the bf16 engine on N devices against one device;
- ``head_deviation``: the emulation's f32 output head against the official bf16 head;
- plus the warm prefill seconds of the bf16 engine compiled with and without
  ``xla_allow_excess_precision=false`` (interleaved, best of 3), and their ratio.

Prints one JSON line. On 2 shared cores it takes about two minutes (the numpy emulation).

    python bench/measure_smoke_precision.py [--seed 0] [--prompts 8] [--tokens 16] [--gpus 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # numpy_reference (grokfetch is installed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--gpus", type=int, default=8)
    args = ap.parse_args()
    sys.path.insert(0, str(TESTS))

    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.mesh import setup_jax

    devices = setup_jax("cpu", args.gpus)
    import numpy as np
    import numpy_reference as ref

    from grokfetch.checkpoint.fixture import write_fixture
    from grokfetch.smoke import model
    from grokfetch.smoke.engine import Engine
    from grokfetch.smoke.load import load_params, open_source
    from grokfetch.smoke.run import agreement
    from grokfetch.spec import preset

    def median_kl(a, b) -> float:
        return agreement(np.concatenate(a), np.concatenate(b))["median_kl"]

    cfg = dataclasses.replace(preset("mini"), name="mini-soft", embedding_multiplier_scale=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "mini-soft"
        write_fixture(ckpt, config=cfg, seed=args.seed)
        src = open_source(ckpt)
        rng = np.random.default_rng(1234)
        prompts = [rng.integers(3, cfg.vocab_size, args.tokens).tolist()
                   for _ in range(args.prompts)]
        engines = {}
        for key, n, dtype in (("bf16", args.gpus, "bfloat16"), ("f32", args.gpus, "float32"),
                              ("bf16_1", 1, "bfloat16")):
            eng = Engine(src.table, make_mesh(devices=devices[:n]), dtype, "int8", args.tokens)
            eng.compile(("prefill",))
            engines[key] = (eng, load_params(src, eng, cfg.num_layers))
        logits = {k: [e.prefill_logits(p, t) for t in prompts] for k, (e, p) in engines.items()}
        rparams, _ = ref.load(ckpt)
        emulated = [ref.forward_bf16(rparams, cfg, t) for t in prompts]

        strict, p_strict = engines["bf16"]
        loose = Engine(src.table, make_mesh(devices=devices[:args.gpus]), "bfloat16", "int8", args.tokens)
        options, model.XLA_OPTIONS = model.XLA_OPTIONS, {}
        try:
            loose.compile(("prefill",))
        finally:
            model.XLA_OPTIONS = options
        seconds = {"strict": [], "excess": []}
        for _ in range(3):
            for key, eng in (("strict", strict), ("excess", loose)):
                t0 = time.perf_counter()
                eng.prefill_logits(p_strict, prompts[0])
                seconds[key].append(time.perf_counter() - t0)

    best = {k: min(v) for k, v in seconds.items()}
    print(json.dumps({
        "checkpoint": f"mini shapes, embedding multiplier 1, seed {args.seed}",
        "devices": args.gpus, "prompts": args.prompts, "tokens": args.tokens,
        "bf16_vs_official": median_kl(logits["bf16"], [e for e, _ in emulated]),
        "bf16_vs_f32": median_kl(logits["bf16"], logits["f32"]),
        "bf16_n_vs_1": median_kl(logits["bf16"], logits["bf16_1"]),
        "head_deviation": median_kl([e for e, _ in emulated], [o for _, o in emulated]),
        "prefill_s_strict": best["strict"], "prefill_s_excess_precision": best["excess"],
        "strict_over_excess": best["strict"] / best["excess"],
    }))


if __name__ == "__main__":
    main()
