"""Run every grokfetch benchmark and print one markdown table of ratios against the anchors.

Each ``bench/bench_*.py`` script measures grokfetch and its anchor in the same run and prints
its results as JSON lines; this runner executes them one after another, turns each result into
rows (``ratio > 1`` always means grokfetch is better: faster, or less memory) and prints them.
Default sizes finish in about a minute each on 2 cores; ``--full`` asks each script for its
real-size figures (a real Grok-1 layer, 1 GB swarms), which needs time, disk and RAM.

    python bench/run_all.py                   # every benchmark, default sizes
    python bench/run_all.py verify download   # only these
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
Row = tuple[str, float, str, float, str, float]  # case, ours, anchor name, anchor, unit, ratio

#: The flag each script takes for its real-size run.
FULL_FLAGS = {"convert": ["--real-layer"], "convert_st_jax": ["--real-layer"], "kquants": ["--full"],
              "llama_quantize": ["--experts", "8"],
              "download": ["--size", "1G"], "verify": ["--size", "4G"], "smoke": ["--real-layer"]}


def _convert_gguf(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for quant, r in d.get("results", {}).items():
        if "gguf_py" not in r:
            continue
        o, a = r["ours"], r["gguf_py"]
        same = " (byte-identical)" if r.get("identical_bytes") else ""
        rows.append((f"GGUF {quant}{same}", o["mb_per_s"], "gguf-py", a["mb_per_s"], "MB/s in",
                     o["mb_per_s"] / a["mb_per_s"]))
        rows.append((f"GGUF {quant} peak RSS", o["peak_rss_mib"], "gguf-py", a["peak_rss_mib"], "MiB",
                     a["peak_rss_mib"] / o["peak_rss_mib"]))
    return rows


def _convert_st_jax(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [(d["case"], d["ours"], d["anchor_name"], d["anchor"], d["unit"], d["ratio"])]
    if "rss_ratio" in d:
        rows.append((f"{d['case']} peak RSS", d["ours_peak_rss_mib"], d["anchor_name"],
                     d["anchor_peak_rss_mib"], "MiB", d["rss_ratio"]))
    return rows


def _kquants(d: dict[str, Any]) -> list[Row]:
    return [(f"quantize {d['case']}", d["ours"], "gguf-py Q4_0", d["anchor"], d["unit"], d["ratio"])]


def _download(d: dict[str, Any]) -> list[Row]:
    size = f"{d['bytes'] / 1e6:.0f} MB loopback swarm"
    rows: list[Row] = [(f"{size}, wall", d["grokfetch_wall_s"], "aria2c", d["aria2c_wall_s"], "s",
                        d["aria2c_wall_s"] / d["grokfetch_wall_s"])]
    if d.get("cpu_ratio"):
        rows.append((f"{size}, CPU", d["grokfetch_cpu_s"], "aria2c", d["aria2c_cpu_s"], "s",
                     d["aria2c_cpu_s"] / d["grokfetch_cpu_s"]))
    return rows


def _download_order(d: dict[str, Any]) -> list[Row]:
    what = f"--order model vs rarest, {d['case']} ({d['bytes'] / 1e6:.0f} MB, {d['seeders']} seeders)"
    return [(what, d["model_wall_s"], "--order rarest", d["rarest_wall_s"], "s",
             d["rarest_wall_s"] / d["model_wall_s"])]


def _verify(d: dict[str, Any]) -> list[Row]:
    mb = d["mb_s"]
    size = f"{d['bytes'] / 1e9:.1f} GB"
    pairs = [("grokfetch verify --manifest (xxh3_128)", "cat > /dev/null"),
             ("grokfetch verify --manifest (sha256)", "sha256sum"),
             ("grokfetch verify --torrent (v1 SHA-1)", "aria2c --hash-check-only")]
    pairs += [("grokfetch verify --torrent (v1 SHA-1)", k) for k in mb if k.startswith("libtorrent force")]
    return [(f"{ours} {size}", mb[ours], anchor, mb[anchor], "MB/s", mb[ours] / mb[anchor])
            for ours, anchor in pairs if ours in mb and anchor in mb]


def _smoke(d: dict[str, Any]) -> list[Row]:
    return [(f"prefill {d['preset']} on {d['devices']} CPU devices ({d['dtype']})", d["engine_prefill_s"],
             "float64 numpy forward", d["numpy_prefill_s"], "s", d["ratio_numpy_over_engine"])]


def _llama_quantize(d: dict[str, Any]) -> list[Row]:
    o = d["ours"]
    case = f"GGUF Q4_K_M, Grok-1 layer 0 ({d['experts']} experts), {d['threads']} threads"
    a = d.get("llama")
    if not isinstance(a, dict):  # no libllama: our figure only
        return [(f"{case} (llama.cpp skipped)", o["mweights_per_s"], "llama_model_quantize",
                 float("nan"), "Mweights/s", float("nan"))]
    same = d["tensors"]["identical"] == d["tensors"]["tensors"]
    return [(f"{case}{' (byte-identical)' if same else ''}", o["mweights_per_s"],
             "llama_model_quantize", a["mweights_per_s"], "Mweights/s", d["speed_ratio"]),
            (f"{case}, CPU time", o["cpu_seconds"], "llama_model_quantize", a["cpu_seconds"], "s",
             d["cpu_ratio"]),
            (f"{case}, peak RSS", o["peak_rss_mib"], "llama_model_quantize", a["peak_rss_mib"], "MiB",
             a["peak_rss_mib"] / o["peak_rss_mib"])]


def _smoke_formats(d: dict[str, Any]) -> list[Row]:
    """GGUF Q4_K_M smoke against the pickle smoke of the same checkpoint (> 1: GGUF better)."""
    g, p = d["gguf_q4_k_m"], d["pickle"]
    rows: list[Row] = [
        (f"smoke Q4_K_M GGUF device bytes, {d['case']}", g["device_bytes"] / 2**20, "pickle smoke",
         p["device_bytes"] / 2**20, "MiB/device", p["device_bytes"] / g["device_bytes"]),
        (f"smoke Q4_K_M GGUF wall, {d['case']}", g["process_wall_s"], "pickle smoke",
         p["process_wall_s"], "s", p["process_wall_s"] / g["process_wall_s"])]
    for name, r in (("pickle", p), ("Q4_K_M", g)):
        if "held_over_preflight" in r:
            pf = r["preflight"]
            rows.append((f"smoke {name} held bytes/device vs preflight, {d['case']}", r["device_bytes"] / 2**20,
                         "preflight", (pf["weights"] + pf["kv_cache"]) / 2**20, "MiB/device",
                         1 / r["held_over_preflight"]))
    return rows


ADAPTERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "convert_gguf": _convert_gguf, "convert_st_jax": _convert_st_jax, "kquants": _kquants,
    "download": _download, "download_order": _download_order, "verify": _verify,
    "llama_quantize": _llama_quantize, "smoke_formats": _smoke_formats,
    "smoke_real_layer": _smoke_formats}


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def rows_from(name: str, stdout: str) -> list[Row]:
    rows: list[Row] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        kind = data.get("bench") or ("smoke" if "ratio_numpy_over_engine" in data else name)
        adapter = ADAPTERS.get(kind, _smoke if kind == "smoke" else None)
        if adapter is not None:
            rows += adapter(data)
    return rows


def _fmt(x: object) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    ap.add_argument("--full", action="store_true", help="real-size runs (slow, needs disk and RAM)")
    args = ap.parse_args(argv)
    benches = discover()
    names = args.names or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; have {list(benches)}", file=sys.stderr)
        return 2
    print("| benchmark | case | grokfetch | anchor | unit | ratio (>1: grokfetch better) |")
    print("|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        t0 = time.monotonic()
        extra = FULL_FLAGS.get(name, []) if args.full else []
        proc = subprocess.run([sys.executable, str(benches[name]), *extra], capture_output=True, text=True)
        rows = rows_from(name, proc.stdout)
        if proc.returncode != 0 or not rows:
            failed += 1
            why = (proc.stderr.strip().splitlines() or ["no result line"])[-1]
            print(f"| {name} | FAILED: {why} | | | | |", flush=True)
        for case, ours, anchor_name, anchor, unit, ratio in rows:
            print(f"| {name} | {case} | {_fmt(ours)} | {anchor_name}: {_fmt(anchor)} | {unit} | "
                  f"**{ratio:.2f}** |", flush=True)
        print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
