"""Grok-1-shaped Q4_K_M: ``grokfetch convert`` from the int8 pickles vs llama.cpp's own quantizer.

The anchor is ``llama_model_quantize`` from llama.cpp's C library (``libllama.so``; the code path
of ``llama-quantize``), handed a BF16 GGUF of the same tensors for free (that intermediate is
631 GB for the full model; grokfetch needs none). Both run with the same thread count, each in
its own process (so peak RSS is per run), side by side in one run, each from a warm page cache
(its input files are read once just before it starts):

- ``ours``: ``convert(ckpt, out, ConvertOptions(quant=Q4_K_M, workers=N))`` from the pickles
  (int8 -> float32 rows -> K-quant search -> GGUF, streamed);
- ``llama``: ``llama_model_quantize(bf16.gguf, out.gguf, {nthread=N, ftype=MOSTLY_Q4_K_M})``.

The checkpoint is :func:`grokfetch.checkpoint.realshape.write_real_layers`: layer 0 of Grok-1 with
its real shapes (6144 wide, 32768 ffn, 48 q / 8 kv heads) and random int8 payloads, plus the
131072 x 6144 embedding. ``--experts N`` keeps the first N experts (default 2: each expert matrix
keeps its real 32768 x 6144 shape; all 8 make the anchor hold ~10 GB in RAM, as llama.cpp reads
a whole tensor at once). Prints one JSON line: seconds, CPU seconds, peak RSS, throughput in
weights/s, ``speed_ratio`` = llama seconds / our seconds, and how many output tensors are
byte-identical between the two files (all but ``token_embd``, whose float32 source the anchor
only gets rounded to bf16; its rows are checked against our quantizer on that bf16 input).

``--rounds N`` (default 1) alternates the two runs N times (ours, llama, ours, llama, ...), so
that the load of a shared machine falls on both alike; each round gives its own ratios, and the
reported ones are the medians (``rounds`` lists every round).

    GROKFETCH_LIBLLAMA=/path/libllama.so python bench/bench_llama_quantize.py [--threads 2] [--experts 2]

Without a libllama the anchor is skipped (our run is still measured). How to build one from the
llama-cpp-python sdist: docs/kquants.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LLAMA_FTYPE_MOSTLY_Q4_K_M = 15


class QuantizeParams(ctypes.Structure):
    """``llama_model_quantize_params`` of llama.cpp as vendored in llama-cpp-python 0.3.36."""

    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
                ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
                ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool),
                ("pure", ctypes.c_bool), ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool),
                ("imatrix", ctypes.c_void_p), ("kv_overrides", ctypes.c_void_p),
                ("tt_overrides", ctypes.c_void_p), ("prune_layers", ctypes.c_void_p),
                ("max_buf_size", ctypes.c_size_t)]


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_llama(lib_path: str, src: Path, dst: Path, threads: int) -> dict:
    lib = ctypes.CDLL(lib_path)
    lib.llama_backend_init()
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    params = lib.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return {"file": str(dst)}


def run_ours(ckpt: Path, out: Path, quant: str, threads: int, experts: int) -> dict:
    from grokfetch.convert.base import ConvertOptions
    from grokfetch.convert.run import convert

    rep = convert(ckpt, out, ConvertOptions(quant=quant, workers=threads, name="model", layers=(0,),
                                            experts=tuple(range(experts))))
    return {"file": str(out / rep.files[0]["path"]), "input_bytes": rep.bytes_in}


def _child(args: argparse.Namespace) -> None:
    from grokfetch.convert.run import peak_rss_bytes

    t0, c0 = time.perf_counter(), _cpu_seconds()
    if args.path == "llama":
        res = run_llama(args.lib, Path(args.src), Path(args.out), args.threads)
    else:
        res = run_ours(Path(args.src), Path(args.out), args.quant, args.threads, args.experts)
    res.update(seconds=time.perf_counter() - t0, cpu_seconds=_cpu_seconds() - c0,
               peak_rss_bytes=peak_rss_bytes())
    print(json.dumps(res))


def _spawn(work: Path, path: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--_child", path]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    with open(work / f"{path}-{kw.get('quant', 'Q4_K_M')}.log", "w") as log:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{path} failed (exit {r.returncode}); see {log.name}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare_tensors(a: Path, b: Path, ckpt: Path) -> dict:
    """Tensor by tensor: same names, types and data bytes?

    The release's embedding is float32; the anchor's BF16 GGUF rounds it to bf16 first, so its
    token_embd cannot match ours. For that tensor the first 1024 rows are re-quantized here from
    the bf16-rounded source with our quantizer and compared with llama.cpp's bytes instead.
    """
    import ml_dtypes
    import numpy as np
    from gguf import GGUFReader

    from grokfetch.checkpoint.reader import open_checkpoint
    from grokfetch.convert.quant import quantize_rows

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    same, differ = 0, []
    for name, t in ta.items():
        u = tb.get(name)
        if u is not None and t.tensor_type == u.tensor_type and np.array_equal(t.data, u.data):
            same += 1
        else:
            differ.append(f"{name} {t.tensor_type.name}/{u.tensor_type.name if u is not None else '-'}")
    doc = {"tensors": len(ta), "identical": same, "differ": differ[:20],
           "names_match": set(ta) == set(tb)}
    emb = tb.get("token_embd.weight")
    if emb is not None:
        ck = open_checkpoint(ckpt)
        with ck.open(ck.table.get("embed")) as tf:
            rows = np.asarray(tf.weight[:1024], np.float32).astype(ml_dtypes.bfloat16)
        want = quantize_rows(rows.astype(np.float32), emb.tensor_type)
        doc["token_embd_from_bf16_identical"] = bool(
            np.array_equal(emb.data.reshape(-1, emb.data.shape[-1])[:1024], want))
    return doc


def _round_doc(runs: dict, weights: float, load: tuple) -> dict:
    """One round's figures per run, and its ratios when the anchor ran."""
    doc: dict = {"load_avg": [round(x, 2) for x in load]}
    for name, r in runs.items():
        doc[name] = {"seconds": round(r["seconds"], 1), "cpu_seconds": round(r["cpu_seconds"], 1),
                     "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20),
                     "mweights_per_s": round(weights / r["seconds"] / 1e6, 1),
                     "out_bytes": Path(r["file"]).stat().st_size}
    if "llama" in runs:
        doc["speed_ratio"] = round(runs["llama"]["seconds"] / runs["ours"]["seconds"], 3)
        doc["cpu_ratio"] = round(runs["llama"]["cpu_seconds"] / runs["ours"]["cpu_seconds"], 3)
    return doc


def _warm(paths: list[Path]) -> None:
    """Read files once so that both runs start from a warm page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    ap.add_argument("--experts", type=int, default=2, help="experts kept, 1-8 (default 2)")
    ap.add_argument("--lib", default=os.environ.get("GROKFETCH_LIBLLAMA"), help="libllama.so")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="an existing write_real_layers checkpoint (default: generate one)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate ours/llama this many times; report median ratios (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--_child", dest="path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--src", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quant", default="Q4_K_M", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.path:
        _child(args)
        return {}

    from grokfetch.checkpoint.realshape import real_layer_specs, write_real_layers

    work = Path(tempfile.mkdtemp(prefix="bench-llama-quantize-", dir=args.dir))
    doc: dict = {"bench": "llama_quantize", "threads": args.threads, "experts": args.experts,
                 "load_avg_before": os.getloadavg()}
    try:
        ckpt = args.ckpt
        if ckpt is None:
            t0 = time.perf_counter()
            ckpt = work / "ckpt"
            write_real_layers(ckpt, 1)
            doc["generate_seconds"] = round(time.perf_counter() - t0, 1)
        specs = real_layer_specs(1)
        weights = sum(s.numel * (args.experts / 8 if s.per_expert else 1) for s in specs)
        doc["weights"] = int(weights)
        inputs = [ckpt / s.relpath for s in specs]
        bf16 = None
        if args.lib:
            bf16 = _spawn(work, "ours", src=ckpt, out=work / "bf16", threads=args.threads,
                          experts=args.experts, quant="BF16")
            doc["bf16_gguf_seconds"] = round(bf16["seconds"], 1)
        else:
            doc["llama"] = "skipped: no libllama (pass --lib or set GROKFETCH_LIBLLAMA)"
        rounds = []
        for _ in range(max(1, args.rounds)):
            shutil.rmtree(work / "ours", ignore_errors=True)
            _warm(inputs)
            runs = {"ours": _spawn(work, "ours", src=ckpt, out=work / "ours", threads=args.threads,
                                   experts=args.experts)}
            if bf16 is not None:
                _warm([Path(bf16["file"])])
                runs["llama"] = _spawn(work, "llama", lib=args.lib, src=bf16["file"],
                                       out=work / "llama.gguf", threads=args.threads)
            rounds.append(_round_doc(runs, weights, os.getloadavg()))
        ours = runs["ours"]
        if bf16 is not None:
            os.unlink(bf16["file"])
            doc["tensors"] = compare_tensors(Path(ours["file"]), Path(runs["llama"]["file"]), ckpt)
        doc.update(rounds[-1])
        del doc["load_avg"]
        doc["ours"]["int8_mb_per_s"] = round(ours["input_bytes"] / 1e6 / ours["seconds"], 1)
        if bf16 is not None:
            for key in ("speed_ratio", "cpu_ratio"):
                doc[key] = round(statistics.median(r[key] for r in rounds), 3)
        if args.rounds > 1:
            doc["rounds"] = rounds
        doc["load_avg_after"] = os.getloadavg()
        print(json.dumps(doc))
        return doc
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
