"""Loopback download benchmark: grokfetch vs aria2c as the leecher from the same seeder.

One in-process libtorrent seeder (grokfetch's ``Seeder``) serves a folder of random files over
127.0.0.1 (TCP). Each leecher runs as a child process into a freshly emptied folder; wall time
and CPU seconds (user + system, from ``wait4``) are measured per run, and the ratio
grokfetch / aria2c is printed as a markdown row plus one JSON line.

    python bench/bench_download.py                 # 256 MB, about a minute
    python bench/bench_download.py --size 1G       # the real figure
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; prints a markdown row and a JSON line, returns the result dict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M", help="payload size (K/M/G suffixes), default 256M")
    ap.add_argument("--repeat", type=int, default=2, help="runs per client (best is kept)")
    ap.add_argument("--piece-size", default="1MiB")
    args = ap.parse_args([] if argv is None else argv)
    size = parse_size(args.size)
    if shutil.which("aria2c") is None:
        raise SystemExit("aria2c not found (apt install aria2)")

    from grokfetch.torrent.create import create_torrent
    from grokfetch.torrent.seed import Seeder

    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "src" / "payload"
        make_data(data, size)
        torrent = tmp / "payload.torrent"
        create_torrent(data, torrent, piece_size=parse_size(args.piece_size))
        results: dict[str, list[tuple[float, float]]] = {"grokfetch": [], "aria2c": []}
        with Seeder(data, torrent) as seeder:
            seeder.wait_ready()
            for _ in range(args.repeat):
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
