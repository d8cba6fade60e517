"""Run every grokfetch benchmark and print one markdown table of ratios against the anchors.

Each ``bench/bench_*.py`` script measures grokfetch and its anchor in the same run and prints,
as its last lines, JSON objects with at least ``{"bench", "case", "ours", "anchor", "unit",
"ratio"}`` (ratio > 1 means grokfetch is better). This runner executes them one after another
(they are sized to finish in about a minute each by default; pass ``--full`` to forward
``--full`` for the real-size figures) and collects those lines.

    python bench/run_all.py                # all benchmarks, default sizes
    python bench/run_all.py verify convert # only the named ones
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def run_one(path: Path, extra: list[str]) -> tuple[list[dict], str]:
    proc = subprocess.run([sys.executable, str(path), *extra], capture_output=True, text=True)
    rows = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and "ratio" in data:
                rows.append(data)
    err = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return rows, err


def _fmt(x: object) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    ap.add_argument("--full", action="store_true", help="real-size runs (slow, needs disk)")
    args = ap.parse_args(argv)
    benches = discover()
    names = args.names or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; have {list(benches)}", file=sys.stderr)
        return 2
    print("| benchmark | case | grokfetch | anchor | unit | ratio |")
    print("|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        t0 = time.monotonic()
        rows, err = run_one(benches[name], ["--full"] if args.full else [])
        if err:
            failed += 1
            print(f"| {name} | FAILED: {err} | | | | |")
        for r in rows:
            print(f"| {name} | {r.get('case', '')} | {_fmt(r.get('ours'))} | {r.get('anchor_name', '')} "
                  f"{_fmt(r.get('anchor'))} | {r.get('unit', '')} | {_fmt(r.get('ratio'))} |")
        print(f"<!-- {name}: {time.monotonic() - t0:.0f} s -->", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
