"""Benchmark ``convert --to gguf`` (streaming) against gguf-py's whole-tensor path, same run.

A generated one-layer checkpoint (random int8 + bf16 scales in the real file format) is
converted to each type twice, each in its own process so peak RSS is per run:

- ``ours``: :func:`grokfetch.convert.run.convert` (row chunks from the memory map, header first);
- ``gguf_py``: the anchor — each whole tensor dequantized to float32, transposed, quantized with
  ``gguf.quants.quantize`` (K types: the same ``grokfetch.convert.kquants`` function on the whole tensor,
  since gguf-py has no K quantizer) and written with ``GGUFWriter.write_tensor_data``.

Prints one JSON line: MB/s of checkpoint input and peak RSS per type and path, the ratios
(ours / gguf_py), and whether the two files are byte-identical. Default size runs in about a
minute on 2 cores; ``--real-layer`` uses one real-size Grok-1 layer (4.9 GB of int8; needs
~12 GB of disk and a long time for the K types).

    python bench/bench_convert.py [--real-layer] [--types Q8_0,Q4_0,Q4_K_M,BF16] [--workers N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_TYPES = "Q8_0,Q4_0,Q4_K_M,BF16"


def bench_config(real_layer: bool, vocab: int, experts: int | None = None):
    from grokfetch.spec import GROK_1

    if real_layer:
        return dataclasses.replace(GROK_1, name="grok-1-layer", num_layers=1, vocab_size=vocab,
                                   num_experts=experts or GROK_1.num_experts)
    # Grok-1's structure scaled down: 128-wide heads, 8 kv heads, 8 scale row blocks, rows that
    # are multiples of 256 (so every type applies without fallback)
    return dataclasses.replace(GROK_1, name="grok-1-small", num_layers=1, vocab_size=vocab,
                               emb_size=2048, num_q_heads=16, widening_factor=3, num_experts=2,
                               num_selected_experts=2)


def write_checkpoint(root: Path, cfg, seed: int = 0) -> int:
    """Random int8 weights with bf16 scales, one tensor at a time; returns payload bytes."""
    import ml_dtypes
    import numpy as np

    from grokfetch.checkpoint.fixture import train_tokenizer
    from grokfetch.checkpoint.writer import write_tensor_file
    from grokfetch.fsutil import write_atomic
    from grokfetch.spec import CONFIG_FILENAME, TENSOR_DIR, TensorTable

    table = TensorTable(cfg)
    (root / TENSOR_DIR).mkdir(parents=True, exist_ok=True)
    for spec in table:
        rng = np.random.default_rng([seed, spec.index])
        if spec.quantized:
            w = rng.integers(-127, 128, spec.shape, dtype=np.int8)
            s = (rng.uniform(0.5, 2.0, spec.scales_shape) / 127 / np.sqrt(spec.shape[-2]))
            s = s.astype(ml_dtypes.bfloat16)
        else:
            w, s = rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(0.1), None
        write_tensor_file(root / TENSOR_DIR / spec.file, spec, w, s)
        del w
    write_atomic(root / "tokenizer.model", train_tokenizer(cfg.vocab_size, seed))
    write_atomic(root / CONFIG_FILENAME, json.dumps(cfg.to_json()) + "\n")
    return table.payload_bytes


def run_ours(ckpt: Path, out: Path, quant: str, workers: int) -> dict:
    from grokfetch.convert.base import ConvertOptions
    from grokfetch.convert.run import convert

    rep = convert(ckpt, out, ConvertOptions(quant=quant, workers=workers, name="model"))
    return {"file": str(out / rep.files[0]["path"])}


def run_gguf_py(ckpt: Path, out: Path, quant: str) -> dict:
    import gguf
    import numpy as np

    from grokfetch.checkpoint.reader import open_checkpoint
    from grokfetch.convert.base import ConvertOptions
    from grokfetch.convert.gguf import GGUFTarget, add_metadata
    from grokfetch.convert.quant import quantize_rows

    ck = open_checkpoint(ckpt)
    opts = ConvertOptions(quant=quant).normalized(ck.config)
    target = GGUFTarget(ck, ck.table.select(), opts)
    target.validate()  # the same per-tensor types and vocabulary
    out.mkdir(parents=True)
    path = out / "model.gguf"
    w = gguf.GGUFWriter(path, "grok")
    add_metadata(w, ck.config, target.scheme, target.vocab, list(target.subset.layers),
                 list(target.subset.experts))
    for t in target.tensors:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in target.tensors:
        with ck.open(t.spec) as tf:
            x = np.array(tf.dequantize(dtype=np.float32))
        if t.spec.slot.transpose:
            x = np.ascontiguousarray(np.swapaxes(x, -1, -2))
        if t.qtype in (gguf.GGMLQuantizationType.Q2_K, gguf.GGMLQuantizationType.Q3_K,
                       gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K,
                       gguf.GGMLQuantizationType.Q6_K):
            q = quantize_rows(x.reshape(-1, x.shape[-1]), t.qtype)
        else:
            q = gguf.quants.quantize(x, t.qtype)
        del x
        w.write_tensor_data(q)
        del q
    w.close()
    return {"file": str(path)}


def _child(args: argparse.Namespace) -> None:
    from grokfetch.convert.run import peak_rss_bytes

    t0 = time.perf_counter()
    if args.path == "ours":
        res = run_ours(Path(args.ckpt), Path(args.out), args.quant, args.workers)
    else:
        res = run_gguf_py(Path(args.ckpt), Path(args.out), args.quant)
    res.update(seconds=time.perf_counter() - t0, peak_rss_bytes=peak_rss_bytes())
    print(json.dumps(res))


def _spawn(path: str, ckpt: Path, out: Path, quant: str, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--_child", path, "--ckpt", str(ckpt), "--out", str(out),
           "--quant", quant, "--workers", str(workers)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{path} {quant} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real-layer", action="store_true", help="one real-size Grok-1 layer (4.9 GB int8)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--types", default=DEFAULT_TYPES)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--experts", type=int, default=None,
                    help="with --real-layer: keep real shapes but only N experts per MoE tensor")
    ap.add_argument("--paths", default="ours,gguf_py", help="which paths to run")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--_child", dest="path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.path:
        _child(args)
        return {}

    from grokfetch.spec import TensorTable

    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.dir))
    try:
        cfg = bench_config(args.real_layer, args.vocab, args.experts)
        paths = args.paths.split(",")
        t0 = time.perf_counter()
        payload = write_checkpoint(work / "ckpt", cfg)
        gen_s = time.perf_counter() - t0
        results = {}
        for quant in args.types.split(","):
            runs = {}
            for path in paths:
                out = work / f"{path}-{quant}"
                r = _spawn(path, work / "ckpt", out, quant, args.workers)
                r["mb_per_s"] = round(payload / 1e6 / r["seconds"], 2)
                r["peak_rss_mib"] = round(r.pop("peak_rss_bytes") / 2**20, 1)
                r["seconds"] = round(r["seconds"], 2)
                runs[path] = r
            files = {p: Path(r.pop("file")) for p, r in runs.items()}
            res = dict(runs)
            if len(runs) == 2:
                res.update(
                    speed_ratio=round(runs["ours"]["mb_per_s"] / runs["gguf_py"]["mb_per_s"], 3),
                    rss_ratio=round(runs["ours"]["peak_rss_mib"] / runs["gguf_py"]["peak_rss_mib"], 3),
                    identical_bytes=_same(files["ours"], files["gguf_py"]))
            res["out_bytes"] = next(iter(files.values())).stat().st_size
            results[quant] = res
            for p in paths:
                shutil.rmtree(work / f"{p}-{quant}")
        doc = {"bench": "convert_gguf", "config": cfg.name, "input_bytes": payload,
               "largest_tensor_bytes": max(s.payload_bytes for s in TensorTable(cfg)),
               "workers": args.workers, "fixture_seconds": round(gen_s, 1), "results": results}
        print(json.dumps(doc))
        return doc
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
