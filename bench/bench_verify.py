"""Benchmark ``grokfetch verify`` against anchors measured on the same files in the same run.

Anchors: ``cat FILES > /dev/null`` (the read limit), ``sha256sum``, ``aria2c --hash-check-only``
and libtorrent's own ``force_recheck`` in a session. By default all numbers are from a **warm
page cache** (dropping caches is not possible here; the files are read once before timing);
``--cold`` evicts the benchmark's own files with ``posix_fadvise(DONTNEED)`` before every run.

    python bench/bench_verify.py                 # ~1 GB, about a minute
    python bench/bench_verify.py --size 8G --jobs 4

Prints a markdown table (MB/s and ratios) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grokfetch.fsutil import parse_size  # noqa: E402
from grokfetch.integrity.hashio import default_jobs  # noqa: E402
from grokfetch.integrity.manifest import check_manifest, write_manifest  # noqa: E402
from grokfetch.integrity.pieces import check_torrent  # noqa: E402
from grokfetch.integrity.torrentfile import parse_torrent  # noqa: E402


def make_files(root: Path, size: int, nfiles: int) -> list[Path]:
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out, per = [], size // nfiles
    for i in range(nfiles):
        p = root / f"tensor{i:05d}_000"
        with open(p, "wb") as f:
            left = per + (size - per * nfiles if i == nfiles - 1 else 0) + 12345 * i
            while left:
                n = min(left, 64 << 20)
                f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                left -= n
        out.append(p)
    return out


REPEAT = 2
EVICT: list[Path] = []   # --cold: files dropped from the page cache before each run


def evict(paths: list[Path]) -> None:
    """Drop files from the page cache (``POSIX_FADV_DONTNEED``; works without root)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(cmd: list[str], cwd: Path | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class LtRecheck:
    """libtorrent's own ``force_recheck`` of a complete torrent in a loopback-only session (no
    DHT/LSD/UPnP/NAT-PMP, no trackers); call the object to time one recheck."""

    def __init__(self, content: Path, torrent: Path, threads: int):
        import libtorrent as lt

        self.lt = lt
        self.ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                               "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
                               "hashing_threads": threads, "alert_mask": 0})
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(str(torrent))
        atp.save_path = str(content.parent)
        atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
        atp.trackers = []
        self.h = self.ses.add_torrent(atp)
        self.wait()  # the initial check on add

    def wait(self) -> None:
        lt = self.lt
        busy = (lt.torrent_status.checking_files, lt.torrent_status.queued_for_checking,
                lt.torrent_status.checking_resume_data, lt.torrent_status.allocating)
        while True:
            st = self.h.status()
            if st.state not in busy:
                assert st.is_seeding, f"libtorrent found the files incomplete: {st.state}"
                return
            time.sleep(0.01)

    def __call__(self) -> None:
        self.h.force_recheck()
        time.sleep(0.01)
        self.wait()

    def close(self) -> None:
        self.ses.pause()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1G", help="total bytes (K/M/G suffixes); default 1G")
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--piece-size", default="1MiB")
    ap.add_argument("--jobs", type=int, default=None, help="grokfetch jobs (default: cores)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs per method")
    ap.add_argument("--cold", action="store_true", help="evict the files from the page cache "
                    "(posix_fadvise DONTNEED) before every timed run")
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    size, piece = parse_size(args.size), parse_size(args.piece_size)
    jobs = args.jobs or default_jobs()
    work = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.dir))
    try:
        import libtorrent as lt

        content = work / "grok-bench"
        files = make_files(content, size, args.files)
        names = [str(p.relative_to(content)) for p in files]
        total = sum(p.stat().st_size for p in files)
        rows: dict[str, float] = {}
        # torrent made by libtorrent (its hashes are the reference)
        fl = sorted(lt.list_files(str(content)), key=lambda e: e.filename)
        ct = lt.create_torrent(fl, piece, lt.create_torrent.v1_only)
        t0 = time.perf_counter()
        lt.set_piece_hashes(ct, str(work))
        rows["libtorrent set_piece_hashes (create)"] = time.perf_counter() - t0
        tfile = work / "bench.torrent"
        tfile.write_bytes(lt.bencode(ct.generate()))
        t = parse_torrent(tfile.read_bytes())
        run(["cat", *names], cwd=content)  # warm the page cache
        if args.cold:
            EVICT[:] = files
        mpath, m256 = work / "m.json", work / "m256.json"
        t0 = time.perf_counter()
        write_manifest(content, mpath, jobs=jobs)
        rows["grokfetch manifest create (xxh3_128)"] = time.perf_counter() - t0
        write_manifest(content, m256, algo="sha256", jobs=jobs)
        assert check_manifest(content, mpath, jobs=jobs).ok
        assert check_torrent(content, t, jobs=jobs).ok
        recheck = LtRecheck(content, tfile, jobs)
        methods = {
            "cat > /dev/null": lambda: run(["cat", *names], cwd=content),
            "grokfetch verify --manifest (xxh3_128)": lambda: check_manifest(content, mpath, jobs=jobs),
            "grokfetch verify --manifest (sha256)": lambda: check_manifest(content, m256, jobs=jobs),
            "grokfetch verify --torrent (v1 SHA-1)": lambda: check_torrent(content, t, jobs=jobs),
            "grokfetch verify --torrent, 1 job": lambda: check_torrent(content, t, jobs=1),
            f"libtorrent force_recheck (hashing_threads={jobs})": recheck,
        }
        if shutil.which("sha256sum"):
            methods["sha256sum"] = lambda: run(["sha256sum", *names], cwd=content)
        if shutil.which("aria2c"):
            methods["aria2c --hash-check-only"] = lambda: run(
                ["aria2c", "--check-integrity=true", "--hash-check-only=true",
                 "--enable-dht=false", "--bt-enable-lpd=false", "--disable-ipv6=true",
                 "--summary-interval=0", f"--dir={work}", str(tfile)])
        # round robin, best of REPEAT: on a shared machine load drifts; every method sees it
        best = {name: float("inf") for name in methods}
        for _ in range(REPEAT):
            for name, fn in methods.items():
                evict(EVICT)
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        recheck.close()
        rows.update(best)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    cat = rows["cat > /dev/null"]
    gm = rows["grokfetch verify --manifest (xxh3_128)"]
    gt = rows["grokfetch verify --torrent (v1 SHA-1)"]
    print(f"\n{total / 1e9:.2f} GB in {args.files} files, {piece // 1024} KiB pieces, "
          f"jobs={jobs}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"{'cold (fadvise-evicted)' if args.cold else 'warm'} page cache, best of {REPEAT}\n")
    print("| method | s | MB/s | time vs cat | time vs grokfetch (same hash family) |")
    print("|---|---|---|---|---|")
    for name, s in rows.items():
        ref = gt if any(k in name for k in ("torrent", "aria2c", "libtorrent")) else gm
        print(f"| {name} | {s:.2f} | {total / s / 1e6:,.0f} | {s / cat:.2f}× | {s / ref:.2f}× |")
    result = {"bench": "verify", "bytes": total, "files": args.files, "piece": piece,
              "jobs": jobs, "cache": "cold" if args.cold else "warm", "load": round(os.getloadavg()[0], 2),
              "seconds": {k: round(v, 3) for k, v in rows.items()},
              "mb_s": {k: round(total / v / 1e6) for k, v in rows.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
