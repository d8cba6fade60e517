"""Benchmark ``convert --to safetensors`` and ``--to jax`` against in-memory anchors, same run.

The input is a one-layer checkpoint with Grok-1's real widths (d_model 6144, 48/8 heads, 8
experts) written with random int8 weights and bf16 scales. By default the expert width is
scaled down (ffn 4096: ~0.7 GB of int8, about a minute in all); ``--real-layer`` (or ``--full``)
uses the real ffn 32768 layer (~4.9 GB of int8 — the anchors then need ~10 GB of RAM).

Cases, each run in a fresh subprocess so that peak RSS is its own:

- ``st``: grokfetch, hf layout, bf16 (dequantize + transpose + stream, bounded memory);
- ``st_anchor``: ``safetensors.numpy.save_file`` of the same tensors, each source tensor (one
  expert at a time) dequantized with ``TensorFile.dequantize`` and transposed fully in memory;
- ``jax``: grokfetch, zarr3 in OCDBT (its own deterministic encoder) chunked for a 1x8 mesh;
- ``jax_anchor``: orbax ``StandardCheckpointer().save`` of the whole layer as in-memory
  ``jax.Array``s sharded on 8 simulated CPU devices (timing includes the ``device_put``).

MB/s are checkpoint (int8 + bf16 + f32) input bytes per second. Ratios > 1 mean grokfetch is
faster (MB/s) or leaner (RSS). Prints a markdown table and one JSON line per target.

    python bench/bench_convert_st_jax.py               # default size, about a minute
    python bench/bench_convert_st_jax.py --real-layer  # the 4.6 GiB layer
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grokfetch.convert.run import peak_rss_bytes  # noqa: E402

CASES = ("st", "st_anchor", "jax", "jax_anchor")


def make_checkpoint(root: Path, widening: float) -> None:
    """A one-layer Grok-1-width checkpoint with random int8/bf16 payloads (cheap to generate)."""
    import numpy as np

    from grokfetch.checkpoint.fixture import train_tokenizer
    from grokfetch.checkpoint.reader import BF16
    from grokfetch.checkpoint.writer import write_tensor_file
    from grokfetch.fsutil import write_atomic
    from grokfetch.spec import CONFIG_FILENAME, PRESETS, TENSOR_DIR, TensorTable

    cfg = dataclasses.replace(PRESETS["grok-1"], name="bench-layer", num_layers=1, vocab_size=1024,
                              widening_factor=widening)
    table = TensorTable(cfg)
    (root / TENSOR_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for spec in table:
        if spec.quantized:
            w = rng.integers(-127, 128, spec.shape, dtype=np.int8)
            s = (rng.random(spec.scales_shape, dtype=np.float32) * 0.01 + 1e-3).astype(BF16)
        else:
            w, s = rng.standard_normal(spec.shape, dtype=np.float32), None
        write_tensor_file(root / TENSOR_DIR / spec.file, spec, w, s)
    write_atomic(root / "tokenizer.model", train_tokenizer(cfg.vocab_size, 0))
    write_atomic(root / CONFIG_FILENAME, json.dumps(cfg.to_json()))


def run_case(case: str, ckpt: Path, out: Path) -> dict:
    """One measurement in this process; returns seconds, input bytes and peak RSS."""
    if case.startswith("jax"):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    from grokfetch.checkpoint.reader import open_checkpoint

    ck = open_checkpoint(ckpt)
    bytes_in = sum(s.payload_bytes for s in ck.table)
    rss0 = peak_rss_bytes()
    t0 = time.perf_counter()
    if case in ("st", "jax"):
        from grokfetch.convert.base import ConvertOptions
        from grokfetch.convert.run import convert

        target = "safetensors" if case == "st" else "jax"
        convert(ckpt, out, ConvertOptions(target=target, layout="hf", dtype="bf16"))
    elif case == "st_anchor":
        import numpy as np
        from safetensors.numpy import save_file

        out.mkdir(parents=True)
        for spec in ck.table:
            with ck.open(spec) as tf:
                if not spec.quantized:
                    w = tf.weight.T if spec.slot.transpose else tf.weight
                    save_file({spec.hf_name(): np.ascontiguousarray(w)}, str(out / f"{spec.file}.st"),
                              metadata={"format": "pt"})
                    continue
                for e in range(spec.shape[0]) if spec.per_expert else [None]:
                    w = np.ascontiguousarray(tf.dequantize(expert=e).T)
                    save_file({spec.hf_name(e): w}, str(out / f"{spec.file}.{e}.st"),
                              metadata={"format": "pt"})
                    del w
    elif case == "jax_anchor":
        import jax
        import numpy as np
        import orbax.checkpoint as ocp
        from jax.sharding import NamedSharding, PartitionSpec

        from grokfetch.convert.jax_layout import AXES, fit_pspec, param_key, slot_rule

        mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(1, 8), AXES)
        sizes = {"data": 1, "model": 8}
        tree: dict = {"params": {}}
        for spec in ck.table:
            with ck.open(spec) as tf:
                parts = {"weight": tf.weight, "scales": tf.scales} if spec.quantized else {"": tf.weight}
                leaves = {}
                for part, arr in parts.items():
                    ps = fit_pspec(slot_rule(spec.slot), arr.shape, sizes)
                    leaves[part] = jax.device_put(arr, NamedSharding(mesh, PartitionSpec(*ps)))
                tree["params"][param_key(spec)] = leaves if spec.quantized else leaves[""]
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(out.absolute(), tree)
        ckptr.wait_until_finished()
    else:
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - t0
    return {"case": case, "seconds": seconds, "bytes_in": bytes_in, "peak_rss": peak_rss_bytes(),
            "rss_before": rss0, "mb_s": bytes_in / 1e6 / seconds}


def _subprocess(case: str, ckpt: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--ckpt", str(ckpt), "--out",
                           str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-layer", "--full", dest="real", action="store_true",
                    help="the real-size layer (ffn 32768, ~4.9 GB int8)")
    ap.add_argument("--widening", type=float, default=1.0,
                    help="widening factor of the default layer (1 → ffn 4096; the real one is 8)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--only-ours", action="store_true",
                    help="skip the anchors (e.g. to check grokfetch's RSS on the real layer)")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.ckpt, args.out)))
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="bench-st-jax-", dir=args.dir))
    try:
        ckpt = scratch / "ckpt"
        t0 = time.perf_counter()
        make_checkpoint(ckpt, 8.0 if args.real else args.widening)
        size = sum(p.stat().st_size for p in (ckpt / "ckpt-0").iterdir())
        print(f"checkpoint: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        res = {}
        cases = [c for c in CASES if not (args.only_ours and c.endswith("_anchor"))]
        for case in cases:
            # read the input once before each case so every case starts from a warm page cache
            for p in (ckpt / "ckpt-0").iterdir():
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass
            res[case] = _subprocess(case, ckpt, scratch / case)
            shutil.rmtree(scratch / case, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("| case | s | MB/s in | peak RSS MiB |")
    print("|---|---|---|---|")
    for case in cases:
        r = res[case]
        print(f"| {case} | {r['seconds']:.2f} | {r['mb_s']:.0f} | {r['peak_rss'] / 2**20:.0f} |")
    for ours, anchor, name, anchor_name in (("st", "st_anchor", "safetensors hf bf16", "save_file"),
                                            ("jax", "jax_anchor", "jax 1x8", "orbax save")):
        if anchor not in res:
            continue
        o, a = res[ours], res[anchor]
        print(json.dumps({
            "bench": "convert_st_jax", "case": name, "ours": round(o["mb_s"], 1),
            "anchor": round(a["mb_s"], 1), "anchor_name": anchor_name, "unit": "MB/s",
            "ratio": round(o["mb_s"] / a["mb_s"], 3),
            "ours_peak_rss_mib": round(o["peak_rss"] / 2**20), "anchor_peak_rss_mib":
                round(a["peak_rss"] / 2**20), "rss_ratio": round(a["peak_rss"] / o["peak_rss"], 3),
            "input_bytes": o["bytes_in"], "real_layer": args.real}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
