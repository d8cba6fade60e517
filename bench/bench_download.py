"""Loopback download benchmarks.

1. grokfetch vs aria2c as the leecher from the same seeder. One in-process libtorrent seeder
   (grokfetch's ``Seeder``) serves a folder of random files over 127.0.0.1 (TCP). Each leecher
   runs as a child process into a freshly emptied folder; wall time and CPU seconds (user +
   system, from ``wait4``) are measured per run, and the ratio grokfetch / aria2c is printed as
   a markdown row plus one JSON line.
2. ``--order model`` vs ``--order rarest`` (the anchor), side by side in one run:
   * a swarm of 8 seeders, each upload-limited (3 MB/s), serving 770 files with Grok-1's file
     sizes scaled down (``--swarm-size``, 64 KiB pieces: about Grok-1's files per piece);
   * the ``mini`` fixture from one unlimited seeder.
   Wall times (best of ``--repeat``), their ratio, and how well files finished in model order
   (Kendall tau of the ``file_done`` order against the tensor table's model order; 1 = exact).

    python bench/bench_download.py                 # 256 MB vs aria2c, then the order cases
    python bench/bench_download.py --size 1G       # the real aria2c figure
    python bench/bench_download.py --only orders   # only the order cases
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the progress recorder (a test double)

from grokfetch.fsutil import parse_size  # noqa: E402


def make_data(folder: Path, size: int, files: int = 6) -> None:
    folder.mkdir(parents=True)
    per = size // files
    rng = os.urandom(1 << 20)
    for i in range(files):
        with open(folder / f"tensor{i:05d}_000", "wb") as f:
            left = per
            while left > 0:
                chunk = rng[: min(left, len(rng))]
                f.write(chunk)
                left -= len(chunk)
            f.write(i.to_bytes(8, "little"))   # files differ


def timed(cmd: list[str], on_start=None, timeout: float = 600) -> tuple[float, float, int]:
    """Run ``cmd``; returns (wall s, cpu s, rc) of the child."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if on_start is not None:
        on_start()
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"timeout: {' '.join(cmd[:3])}")
        time.sleep(0.01)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    if rc != 0:
        raise RuntimeError(f"{cmd[0]} exited {rc}: {proc.stderr.read().decode()[-500:]}")
    return wall, ru.ru_utime + ru.ru_stime, rc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_grokfetch(torrent: Path, out: Path, port: int) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "grokfetch", "download", str(torrent), "--dir", str(out),
           "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--no-dht", "--no-lsd",
           "--no-upnp", "--no-utp", "--no-trackers", "--timeout", "60", "-q"]
    wall, cpu, _ = timed(cmd)
    return wall, cpu


def run_aria2(torrent: Path, out: Path, seeder) -> tuple[float, float]:
    port = free_port()
    cmd = ["aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
           "--enable-peer-exchange=false", "--disable-ipv6=true", "--interface=127.0.0.1",
           "--summary-interval=0", "--file-allocation=none", "--seed-time=0", "--quiet=true",
           f"--listen-port={port}", f"--dir={out}", str(torrent)]

    def dial() -> None:   # aria2c cannot be told a peer; the seeder dials it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        seeder.connect("127.0.0.1", port)

    wall, cpu, _ = timed(cmd, on_start=dial)
    return wall, cpu


def kendall_tau(xs: list[int]) -> float:
    """1.0 when ``xs`` is sorted, -1.0 when reversed (ties ignored)."""
    n = len(xs)
    if n < 2:
        return 1.0
    conc = sum(1 if xs[i] < xs[j] else -1 for i in range(n) for j in range(i + 1, n) if xs[i] != xs[j])
    return conc / (n * (n - 1) / 2)


def grok_proportions(folder: Path, total: int) -> None:
    """Grok-1's 770 tensor files (names and relative sizes) scaled to ``total`` bytes."""
    from grokfetch.spec import TensorTable, preset

    table = TensorTable(preset("grok-1"))
    scale = sum(s.file_bytes for s in table) / total
    rng = os.urandom(1 << 20)
    (folder / "ckpt-0").mkdir(parents=True)
    for s in table:
        size = max(1, round(s.file_bytes / scale))
        head = s.index.to_bytes(8, "little")   # files (and pieces) differ
        with open(folder / s.relpath, "wb") as f:
            f.write(head[:size])
            left = size - min(size, 8)
            while left > 0:
                f.write(rng[: min(left, len(rng))])
                left -= min(left, len(rng))
    (folder / "tokenizer.model").write_bytes(rng[:2_000_000])


def order_case(case: str, data: Path, seeds: int, rate: int | None, piece: int, repeat: int,
               tmp: Path) -> dict:
    """Download ``data`` from ``seeds`` in-process seeders with each order; one result dict."""
    from progress_doubles import RecordingProgress

    from grokfetch.spec import TensorTable, preset
    from grokfetch.torrent.create import create_torrent
    from grokfetch.torrent.job import DownloadOptions, download
    from grokfetch.torrent.seed import Seeder

    preset_name = "grok-1" if case == "swarm" else "mini"
    rank = {s.file: i for i, s in enumerate(TensorTable(preset(preset_name)).model_order())}
    torrent = tmp / f"{case}.torrent"
    create_torrent(data, torrent, piece_size=piece)
    walls: dict[str, list[float]] = {"rarest": [], "model": []}
    taus: dict[str, list[float]] = {"rarest": [], "model": []}
    with contextlib.ExitStack() as stack:
        seeders = [stack.enter_context(Seeder(data, torrent, assume_complete=True, upload_rate=rate))
                   for _ in range(seeds)]
        peers = [f"127.0.0.1:{s.port}" for s in seeders]
        for _ in range(repeat):
            for order in ("rarest", "model"):
                out = tmp / f"out-{case}-{order}"
                shutil.rmtree(out, ignore_errors=True)
                rec = RecordingProgress()
                opts = DownloadOptions(peers=peers, order=order, preset=preset_name,
                                       listen="127.0.0.1:0", dht=False, lsd=False, upnp=False,
                                       utp=False, trackers=False, timeout=120, handle_signals=False)
                t0 = time.monotonic()
                download(torrent, out, opts, rec)
                walls[order].append(time.monotonic() - t0)
                names = [d["file"].rsplit("/", 1)[-1] for k, d in rec.events if k == "file_done"]
                taus[order].append(kendall_tau([rank[n] for n in names if n in rank]))
                shutil.rmtree(out, ignore_errors=True)
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    best = {o: min(w) for o, w in walls.items()}
    return {"bench": "download_order", "case": case, "bytes": size, "seeders": seeds,
            "upload_limit_Bps": rate, "piece_size": piece,
            "model_wall_s": round(best["model"], 3), "rarest_wall_s": round(best["rarest"], 3),
            "model_over_rarest": round(best["model"] / best["rarest"], 3),
            "all_wall_s": {o: [round(x, 2) for x in w] for o, w in walls.items()},
            "model_tau": round(min(taus["model"]), 3), "rarest_tau": round(max(taus["rarest"]), 3)}


def orders(swarm_size: int, repeat: int) -> list[dict]:
    """Both order cases (see the module docstring); prints a markdown table and JSON lines."""
    from grokfetch.checkpoint.fixture import write_fixture

    results = []
    with tempfile.TemporaryDirectory(prefix="gf-bench-order-") as tmp:
        tmp = Path(tmp)
        grok = tmp / "src" / "grok-1-scaled"
        grok_proportions(grok, swarm_size)
        results.append(order_case("swarm", grok, 8, 3_000_000, 64 * 1024, repeat, tmp))
        shutil.rmtree(grok)
        mini = tmp / "src" / "grok-mini"
        write_fixture(mini, "mini", seed=0)
        results.append(order_case("mini", mini, 1, None, 256 * 1024, repeat, tmp))
    print("| case | model wall s | rarest wall s | model / rarest | model-order tau (model, rarest) |")
    print("|---|---|---|---|---|")
    for r in results:
        what = (f"{r['bytes'] / 1e6:.0f} MB, {r['seeders']} seeders"
                + (f" at {r['upload_limit_Bps'] / 1e6:g} MB/s" if r["upload_limit_Bps"] else ""))
        print(f"| {r['case']}: {what} | {r['model_wall_s']} | {r['rarest_wall_s']} | "
              f"{r['model_over_rarest']} | {r['model_tau']}, {r['rarest_tau']} |")
    for r in results:
        print(json.dumps(r))
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks; prints markdown rows and JSON lines, returns the aria2c result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M", help="payload size (K/M/G suffixes), default 256M")
    ap.add_argument("--repeat", type=int, default=2, help="runs per client (best is kept)")
    ap.add_argument("--piece-size", default="1MiB")
    ap.add_argument("--swarm-size", default="200M", help="Grok-1-shaped payload of the order case")
    ap.add_argument("--only", choices=("aria2c", "orders"), help="run just one of the two")
    args = ap.parse_args([] if argv is None else argv)
    res: dict = {}
    if args.only != "orders":
        res = versus_aria2c(parse_size(args.size), args.repeat, parse_size(args.piece_size))
    if args.only != "aria2c":
        orders(parse_size(args.swarm_size), args.repeat)
    return res


def versus_aria2c(size: int, repeat: int, piece_size: int) -> dict:
    """grokfetch vs aria2c leeching ``size`` bytes from one seeder (see the module docstring)."""
    if shutil.which("aria2c") is None:
        raise SystemExit("aria2c not found (apt install aria2)")
    from grokfetch.torrent.create import create_torrent
    from grokfetch.torrent.seed import Seeder

    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "src" / "payload"
        make_data(data, size)
        torrent = tmp / "payload.torrent"
        create_torrent(data, torrent, piece_size=piece_size)
        results: dict[str, list[tuple[float, float]]] = {"grokfetch": [], "aria2c": []}
        with Seeder(data, torrent) as seeder:
            seeder.wait_ready()
            for _ in range(repeat):
                for name in ("grokfetch", "aria2c"):
                    out = tmp / f"out-{name}"
                    shutil.rmtree(out, ignore_errors=True)   # fresh pages for every run
                    out.mkdir()
                    if name == "grokfetch":
                        results[name].append(run_grokfetch(torrent, out, seeder.port))
                    else:
                        results[name].append(run_aria2(torrent, out, seeder))
                    got = sum(p.stat().st_size for p in (out / "payload").iterdir())
                    if got != sum(p.stat().st_size for p in data.iterdir()):
                        raise RuntimeError(f"{name} wrote {got} bytes")
    g = min(results["grokfetch"])
    a = min(results["aria2c"])
    res = {"bench": "download", "bytes": size, "grokfetch_wall_s": round(g[0], 3),
           "grokfetch_cpu_s": round(g[1], 3), "aria2c_wall_s": round(a[0], 3),
           "aria2c_cpu_s": round(a[1], 3), "wall_ratio": round(g[0] / a[0], 3),
           "cpu_ratio": round(g[1] / a[1], 3) if a[1] else None,
           "grokfetch_MBps": round(size / g[0] / 1e6, 1), "aria2c_MBps": round(size / a[0] / 1e6, 1)}
    print("| payload | grokfetch wall s | grokfetch CPU s | aria2c wall s | aria2c CPU s | wall ratio | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {size / 1e6:.0f} MB | {res['grokfetch_wall_s']} | {res['grokfetch_cpu_s']} | "
          f"{res['aria2c_wall_s']} | {res['aria2c_cpu_s']} | {res['wall_ratio']} | {res['cpu_ratio']} |")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
