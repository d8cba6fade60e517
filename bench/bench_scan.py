"""Benchmark the tensor-file scanner: its work must depend on the header, not on the payload or on
what a hostile file asks for. Anchor: the previous scanner (``git show main:...``), run side by
side on the same inputs in the same process.

    python bench/bench_scan.py            # about a minute (the old scanner's pushes dominate)

Rows: valid files of 1 MB .. 1.6 GB (payload left sparse: the scanner must never touch it),
a tuple DAG of 18..22 levels (each level doubles the old scanner's work), and a file of 8 MB of
one-byte pushes (peak Python memory via ``tracemalloc``). Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import mmap
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grokfetch.checkpoint import pickle_format as new  # noqa: E402
from grokfetch.pickle_layout import encode_layout  # noqa: E402


def load_old(base: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:grokfetch/checkpoint/pickle_format.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_pickle_format.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_pickle_format", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_pickle_format"] = mod
    spec.loader.exec_module(mod)
    return mod


def sparse_file(path: Path, shape: tuple[int, ...], scales: tuple[int, ...]) -> None:
    with open(path, "wb") as f:
        for piece in encode_layout(shape, scales):
            if isinstance(piece, int):
                f.seek(piece, 1)
            else:
                f.write(piece)
        f.truncate(f.tell())


def timed(fn, buf, repeat: int = 5) -> tuple[float, str]:
    best, outcome = float("inf"), ""
    for _ in range(repeat):
        t = time.perf_counter()
        try:
            fn(buf, "bench")
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - the outcome is reported
            outcome = type(exc).__name__
        best = min(best, time.perf_counter() - t)
    return best, outcome


def dag(levels: int) -> bytes:
    out = b"\x80\x04}(\x29\x94"
    for i in range(levels):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86\x94"
    return out + b"K\x01u."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main", help="git revision of the anchor scanner")
    args = ap.parse_args()
    old = load_old(args.base)
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for label, shape, scales in (("valid 1 MB", (1, 1024, 1024), (1, 1, 1024)),
                                 ("valid 201 MB", (8, 4096, 6144), (8, 1, 6144)),
                                 ("valid 1.6 GB", (8, 32768, 6144), (8, 1, 6144))):
        p = tmp / label.replace(" ", "_")
        sparse_file(p, shape, scales)
        with open(p, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        t_new, r_new = timed(new.scan, m)
        t_old, r_old = timed(old.scan, m)
        rows.append((label, t_new, r_new, t_old, r_old))
        m.close()
        p.unlink()
    for levels in (18, 20, 22):
        t_new, r_new = timed(new.scan, dag(levels), repeat=3)
        t_old, r_old = timed(old.scan, dag(levels), repeat=1)
        rows.append((f"DAG key, {levels} levels", t_new, r_new, t_old, r_old))
    pushes = b"\x80\x04" + b"\x88" * (8 << 20) + b"."
    mem, res = {}, {}
    for name, mod in (("new", new), ("old", old)):
        res[name] = timed(mod.scan, pushes, repeat=1)
        tracemalloc.start()  # a second pass: tracemalloc slows the old scanner many times
        timed(mod.scan, pushes, repeat=1)
        mem[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rows.append((f"8 MB of pushes (peak new {mem['new'] / 2**20:.2f} MiB, old "
                 f"{mem['old'] / 2**20:.0f} MiB)", *res["new"], *res["old"]))
    print("| input | new s | new result | old s | old result | old/new |")
    print("|---|---|---|---|---|---|")
    for label, t_new, r_new, t_old, r_old in rows:
        print(f"| {label} | {t_new:.6f} | {r_new} | {t_old:.6f} | {r_old} | {t_old / t_new:.1f} |")
    print(json.dumps({"rows": [dict(zip(("input", "new_s", "new", "old_s", "old"), r, strict=True))
                               for r in rows], "peak_bytes": mem}))


if __name__ == "__main__":
    main()
