"""Progress when nobody watches a terminal: plain lines in logs, rate-limited JSON status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from grokfetch.cli.output import JsonProgress
from grokfetch.progress import LineProgress
from grokfetch.torrent.create import create_torrent
from grokfetch.torrent.seed import Seeder

LOCAL = ["--listen", "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp", "--no-utp", "--no-trackers"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_every_interval_with_rate_and_eta():
    clock, lines = Clock(), []
    p = LineProgress(lines.append, interval=30.0, clock=clock)
    p.task("convert", 3_000_000_000, "gguf → out")
    p.task("tensor", 100, "blk.0")  # a sub-task: no line of its own
    for _ in range(120):  # 10 s per step, 10 MB per step: 1 MB/s for 20 minutes
        clock.t += 10
        p.advance("tensor", 5)
        p.advance("convert", 10_000_000)
    p.event("status", text="waiting for tensor00005_000")
    clock.t += 30
    p.advance("convert", 0)
    p.done("convert")
    assert lines[0] == "gguf → out: started, 3.00 GB"
    periodic = lines[1:-1]
    assert len(periodic) == 41  # every 30 s of 20 minutes (40), plus the one after the status
    assert periodic[0] == ("gguf → out: 30.00 MB of 3.00 GB (1.0%), 1.00 MB/s, ETA 49m 30s, "
                           "elapsed 30s")
    assert periodic[-1].endswith("waiting for tensor00005_000")
    assert lines[-1].startswith("gguf → out: done: 1.20 GB of 3.00 GB (40.0%)")


def test_json_status_is_rate_limited(capsys):
    clock = Clock()
    p = JsonProgress(clock=clock)
    capsys.readouterr()
    for _ in range(600):  # a stalled download: the same status every second for 10 minutes
        clock.t += 1
        p.event("status", text="downloading 12.0% peers 0 seeds 0", done=5)
    p.event("status", text="downloading 12.5% peers 1 seeds 1", done=6)  # changed: within 5 s
    clock.t += 2
    p.event("status", text="downloading 12.6% peers 1 seeds 1", done=7)  # changed, < 5 s: no
    p.event("warning", message="piece 3 failed")  # never limited
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    status = [e for e in events if e["event"] == "status"]
    assert 20 <= len(status) <= 21  # once per 30 s while it repeats
    assert events[-1] == {"message": "piece 3 failed", "event": "warning"}


def _lines_with_progress(text: str) -> list[str]:
    """Timestamped progress lines (warnings carry a timestamp too, and are not progress)."""
    return [ln for ln in text.splitlines()
            if re.match(r"\d\d:\d\d:\d\d ", ln) and " warning: " not in ln]


def test_convert_to_a_log_file_leaves_progress_lines(tiny_ckpt, tmp_path):
    log = tmp_path / "convert.log"
    env = {**os.environ, "GROKFETCH_PROGRESS_INTERVAL": "0.05"}
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "grokfetch", "convert", str(tiny_ckpt),
                               "--to", "gguf", "--bits", "4", "--out", str(tmp_path / "o")],
                              stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=300)
    assert proc.returncode == 0
    lines = _lines_with_progress(log.read_text())
    assert "gguf → o: started" in lines[0]
    assert any(re.search(r"of [\d.]+ MB \([\d.]+%\), [\d.]+ [kM]?B/s", ln) for ln in lines[1:-1])
    assert "gguf → o: done" in lines[-1]


def test_download_to_a_log_file_leaves_progress_lines(tiny_ckpt, tmp_path):
    torrent = tmp_path / "t.torrent"
    create_torrent(tiny_ckpt, torrent, piece_size=64 * 1024)
    log = tmp_path / "download.log"
    env = {**os.environ, "GROKFETCH_PROGRESS_INTERVAL": "0.05"}
    with Seeder(tiny_ckpt, torrent) as s, open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "grokfetch", "download", str(torrent),
                               "--dir", str(tmp_path / "d"), *LOCAL, "--peer",
                               f"127.0.0.1:{s.port}", "--timeout", "60"],
                              stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=300)
    assert proc.returncode == 0, log.read_text()
    lines = _lines_with_progress(log.read_text())
    assert any("downloading grok-tiny: started" in ln for ln in lines), lines
    assert "done" in lines[-1] and "(100.0%)" in lines[-1]


def test_verbose_prints_events_and_quiet_prints_nothing(run_cli, tiny_ckpt, tmp_path):
    args = ["convert", tiny_ckpt, "--to", "gguf", "--bits", "8", "--layers", "0"]
    code, out, err = run_cli([*args, "--out", tmp_path / "v", "-v"])
    assert code == 0 and "file: path=tiny-Q8_0.gguf" in err and "started" in err
    code, out, err = run_cli([*args, "--out", tmp_path / "q", "-q"])
    assert code == 0 and out == "" and err == ""
