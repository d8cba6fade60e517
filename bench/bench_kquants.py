"""Benchmark the K-quant quantizers (convert/kquants.py) against gguf-py's and llama.cpp's own.

Anchors, measured in the same run on the same float32 matrix: ``gguf.quants.quantize`` to Q8_0 and
Q4_0 (gguf-py's vectorized numpy, byte-identical to ggml's C). Throughput is MB/s of float32 input,
one thread (one call of the quantizer), best of ``--repeat`` runs; wall-clock and CPU-time
figures are both given because the machine is shared. The first call of each type (numba
compilation or cache load) is not timed.

    python bench/bench_kquants.py                 # 4096 x 4096 (64 MiB of f32), about a minute
    python bench/bench_kquants.py --rows 1024     # quicker
    python bench/bench_kquants.py --full          # 4096 x 4096, best of 3

Prints a markdown table and then one JSON line per K-quant type, in ``bench/run_all.py``'s format
(``ratio`` = K-quant MB/s / Q4_0 MB/s, wall clock).

If ``GROKFETCH_GGML_QUANTS_LIB`` names a shared library built from llama.cpp's ``ggml-quants.c``
(see docs/kquants.md), llama.cpp's own C reference quantizers are timed too (one thread) and the
bytes are compared with ours.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from gguf import GGMLQuantizationType, quants  # noqa: E402

from grokfetch.convert.kquants import KQUANTS  # noqa: E402

ANCHORS = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0)


def c_quantizer(lib: ctypes.CDLL, qtype: GGMLQuantizationType):
    """llama.cpp's ``quantize_row_<type>_ref`` as a numpy function (for comparison only)."""
    from gguf import GGML_QUANT_SIZES

    fn = getattr(lib, f"quantize_row_{qtype.name[:2].lower()}_K_ref")
    size = GGML_QUANT_SIZES[qtype][1]

    def run(x: np.ndarray) -> np.ndarray:
        out = np.empty((x.size // 256, size), dtype=np.uint8)
        fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
        return out.reshape(*x.shape[:-1], -1)

    return run


def timed(fn, x: np.ndarray, repeat: int) -> tuple[float, float, np.ndarray]:
    """Best wall and best CPU seconds over ``repeat`` runs, and the last output."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(x)
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096, help="matrix rows (default 4096)")
    ap.add_argument("--cols", type=int, default=4096, help="matrix columns, a multiple of 256 (default 4096)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per type; the best counts (default 2)")
    ap.add_argument("--full", action="store_true", help="4096 x 4096, best of 3")
    args = ap.parse_args(argv)
    if args.full:
        args.rows, args.cols, args.repeat = 4096, 4096, 3
    if args.cols % 256 or args.rows < 1 or args.repeat < 1:
        print("--cols must be a multiple of 256; --rows and --repeat at least 1", file=sys.stderr)
        return 2
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    mb = x.nbytes / 1e6

    rows = []
    for qtype in ANCHORS:
        wall, cpu, out = timed(lambda a, t=qtype: quants.quantize(a, t), x, args.repeat)
        rows.append((qtype.name + " (gguf-py anchor)", qtype, wall, cpu, out))
    lib_path = os.environ.get("GROKFETCH_GGML_QUANTS_LIB")
    lib = ctypes.CDLL(lib_path) if lib_path else None
    same = {}
    for qtype, fn in KQUANTS.items():
        fn(x[:1])  # compile (or load the cached kernels) outside the timing
        wall, cpu, out = timed(fn, x, args.repeat)
        rows.append((qtype.name, qtype, wall, cpu, out))
        if lib is not None:
            cwall, ccpu, cout = timed(c_quantizer(lib, qtype), x, args.repeat)
            rows.append((qtype.name + " (llama.cpp C ref)", qtype, cwall, ccpu, cout))
            same[qtype] = bool(np.array_equal(cout, out))
    anchor_wall = {r[1]: mb / r[2] for r in rows if r[1] in ANCHORS}

    print(
        f"\nK-quant throughput, {args.rows} x {args.cols} float32 N(0,1) ({mb:.0f} MB), best of {args.repeat}\n"
    )
    print("| type | MB/s (wall) | MB/s (CPU) | vs Q8_0 | vs Q4_0 | bytes out | rel. RMS error |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for name, qtype, wall, cpu, out in rows:
        y = quants.dequantize(out, qtype)
        err = float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))
        mbs = mb / wall
        print(
            f"| {name} | {mbs:.1f} | {mb / cpu:.1f} | {mbs / anchor_wall[ANCHORS[0]]:.3f} "
            f"| {mbs / anchor_wall[ANCHORS[1]]:.3f} | {out.nbytes} | {err:.4f} |"
        )
        if qtype not in ANCHORS and "C ref" not in name:
            results.append(
                {
                    "bench": "kquants",
                    "case": f"{qtype.name} {args.rows}x{args.cols}",
                    "ours": round(mbs, 2),
                    "anchor": round(anchor_wall[GGMLQuantizationType.Q4_0], 2),
                    "unit": "MB/s",
                    "ratio": round(mbs / anchor_wall[GGMLQuantizationType.Q4_0], 4),
                    "cpu_mb_s": round(mb / cpu, 2),
                    "q8_0_mb_s": round(anchor_wall[GGMLQuantizationType.Q8_0], 2),
                    "rel_rms_error": round(err, 5),
                }
            )
    if same:
        print("\nbyte-identical to llama.cpp C: " + ", ".join(f"{t.name} {v}" for t, v in same.items()))
    print()
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
