"""``grokfetch download`` / ``seed`` against real libtorrent (and aria2c) peers on 127.0.0.1.

Every swarm is private: no DHT, LSD, UPnP/NAT-PMP, uTP or trackers; ports are ephemeral.
References are independent of the code under test: the fixture's own bytes (filecmp), the
tensor table, hashlib SHA-1, and aria2c (another BitTorrent implementation).
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import http.server
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from progress_doubles import RecordingProgress

from grokfetch.errors import DownloadFailed
from grokfetch.spec import TensorTable, preset
from grokfetch.torrent.create import create_torrent
from grokfetch.torrent.job import DownloadOptions, download
from grokfetch.torrent.seed import Seeder

lt = pytest.importorskip("libtorrent")

LOCAL = ["--listen", "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp", "--no-utp", "--no-trackers"]
PIECE = 64 * 1024


def local_opts(peers: list[int], **kw) -> DownloadOptions:
    kw.setdefault("timeout", 30)
    return DownloadOptions(peers=[f"127.0.0.1:{p}" for p in peers], listen="127.0.0.1:0",
                           dht=False, lsd=False, upnp=False, utp=False, trackers=False, **kw)


def rel_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def same_tree(a: Path, b: Path, names: set[str] | None = None) -> bool:
    names = rel_files(b) if names is None else names
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


@pytest.fixture(scope="module")
def tiny_torrent(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torrent") / "tiny.torrent"
    create_torrent(tiny_ckpt, out, piece_size=PIECE)
    return out


@pytest.fixture(scope="module")
def magnet(tiny_torrent) -> str:
    return lt.make_magnet_uri(lt.torrent_info(str(tiny_torrent)))


@pytest.fixture(scope="module")
def seeder(tiny_ckpt, tiny_torrent):
    with Seeder(tiny_ckpt, tiny_torrent) as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- happy paths ------------------------------------------------------------------------------


def test_magnet_download_then_rerun_uses_saved_torrent(tmp_path, run_cli, magnet, seeder, tiny_ckpt):
    dest = tmp_path / "d"
    code, out, err = run_cli(["download", magnet, "--dir", dest, "--peer", f"127.0.0.1:{seeder.port}",
                              *LOCAL, "--timeout", "30", "--json"])
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    res = lines[-1]
    assert any(x.get("event") == "status" for x in lines[:-1])
    assert res["wanted_pieces"] == res["num_pieces"] > 0 and res["hash_failures"] == 0
    assert res["downloaded"] >= res["bytes"] == sum(p.stat().st_size for p in tiny_ckpt.rglob("*")
                                                     if p.is_file())
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt)
    saved = dest / ".grokfetch" / f"{res['infohash']}.torrent"
    assert saved.is_file() and (dest / ".grokfetch" / f"{res['infohash']}.resume").is_file()
    assert str(lt.torrent_info(str(saved)).info_hashes().v1) == res["infohash"] == \
        str(lt.parse_magnet_uri(magnet).info_hashes.v1)
    # rerun with no peer at all: metadata from the saved .torrent, pieces from resume data
    code, out, err = run_cli(["download", magnet, "--dir", dest, *LOCAL, "--timeout", "10", "--json"])
    assert code == 0, err
    again = json.loads(out.splitlines()[-1])
    assert again["downloaded"] == 0 and again["checked"] is False


def test_include_creates_only_selected_files(tmp_path, run_cli, tiny_torrent, seeder, tiny_ckpt):
    dest = tmp_path / "d"
    code, _, err = run_cli(["download", tiny_torrent, "--dir", dest, "--peer", f"127.0.0.1:{seeder.port}",
                            *LOCAL, "--include", "ckpt-0/tensor0001*", "--include", "*.model", "-q"])
    assert code == 0, err
    got = rel_files(dest / tiny_ckpt.name)
    want = {f"ckpt-0/tensor{i:05d}_000" for i in range(10, 20)} | {"tokenizer.model"}
    assert got == want
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt, want)


def test_layers_select_by_tensor_table(tmp_path, run_cli, magnet, seeder, tiny_ckpt):
    dest = tmp_path / "d"   # a magnet: the selection is made when the metadata arrives
    code, _, err = run_cli(["download", magnet, "--dir", dest, "--peer", f"127.0.0.1:{seeder.port}",
                            *LOCAL, "--layers", "0-1,10", "--preset", "tiny", "-q"])
    assert code == 0, err
    table = TensorTable(preset("tiny"))
    want = {s.relpath for s in table.select([0, 1, 10])} | {"tokenizer.model", "model-config.json"}
    assert len(want) == 2 + 3 * 12 + 2
    assert rel_files(dest / tiny_ckpt.name) == want
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt, want)


def test_exclude_and_partial_download_can_be_seeded(tmp_path, run_cli, tiny_torrent, seeder, tiny_ckpt):
    first = tmp_path / "first"
    code, _, err = run_cli(["download", tiny_torrent, "--dir", first, "--peer", f"127.0.0.1:{seeder.port}",
                            *LOCAL, "--exclude", "ckpt-0/*", "-q"])
    assert code == 0, err
    assert rel_files(first / tiny_ckpt.name) == {"tokenizer.model", "model-config.json"}
    # the partial download seeds what it has (from its clean resume data) to a second leecher
    with Seeder(first) as partial:
        second = tmp_path / "second"
        code, _, err = run_cli(["download", tiny_torrent, "--dir", second, "--peer",
                                f"127.0.0.1:{partial.port}", *LOCAL, "--include", "*.json", "-q",
                                "--timeout", "20"])
        assert code == 0, err
        assert partial.uploaded > 0
    assert rel_files(second / tiny_ckpt.name) == {"model-config.json"}
    assert same_tree(second / tiny_ckpt.name, tiny_ckpt, {"model-config.json"})


def test_layers_with_wrong_preset_is_refused(tmp_path, run_cli, tiny_torrent, seeder):
    code, _, err = run_cli(["download", tiny_torrent, "--dir", tmp_path / "d", *LOCAL,
                            "--peer", f"127.0.0.1:{seeder.port}", "--layers", "0"])
    assert code == 2 and "tensor files" in err and "--preset" in err


def kendall_tau(xs: list[int]) -> float:
    n = len(xs)
    conc = sum(1 if xs[i] < xs[j] else -1 for i in range(n) for j in range(i + 1, n) if xs[i] != xs[j])
    return conc / (n * (n - 1) / 2)


def test_model_order_completes_files_in_model_order(tmp_path, tiny_torrent, seeder):
    table = TensorTable(preset("tiny"))
    rank = {s.file: i for i, s in enumerate(table.model_order())}

    def order(mode: str) -> list[int]:
        rec = RecordingProgress()
        download(tiny_torrent, tmp_path / mode, local_opts([seeder.port], order=mode, preset="tiny",
                                                           max_download_rate=2_000_000), rec)
        names = [d["file"].rsplit("/", 1)[-1] for k, d in rec.events if k == "file_done"]
        return [rank[n] for n in names if n in rank]

    model = order("model")
    assert len(model) == len(table)
    # file order puts layer 10 before layer 2 (string order); model order must not. Small files
    # sharing a piece with an earlier-ranked file finish early, hence medians, not maxima.
    pos = {r: i for i, r in enumerate(model)}
    median = lambda layer: sorted(pos[rank[s.file]] for s in table.select([layer]) if s.layer == layer)[6]
    assert median(0) < median(2) < median(5) < median(10)
    # the swarm-speed gradient keeps more pieces in flight than the old 16-piece window did, so
    # shared-piece stragglers move a little more; rarest-first has no order at all
    assert kendall_tau(model) > 0.5
    rarest = order("rarest")
    assert kendall_tau(rarest) < kendall_tau(model)


def test_seed_command_serves_a_finished_download(tmp_path, run_cli, tiny_torrent, seeder, tiny_ckpt):
    first = tmp_path / "first"
    code, _, err = run_cli(["download", tiny_torrent, "--dir", first, "--peer", f"127.0.0.1:{seeder.port}",
                            *LOCAL, "-q"])
    assert code == 0, err
    proc = subprocess.Popen([sys.executable, "-m", "grokfetch", "seed", str(first), "--listen",
                             "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp", "--no-utp",
                             "--for", "60", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        port = next(ev["port"] for ev in map(json.loads, proc.stdout) if "port" in ev)
        second = tmp_path / "second"
        code, _, err = run_cli(["download", tiny_torrent, "--dir", second, "--peer", f"127.0.0.1:{port}",
                                *LOCAL, "--timeout", "20", "-q"])
        assert code == 0, err
        assert same_tree(second / tiny_ckpt.name, tiny_ckpt)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        result = json.loads(proc.stdout.read().splitlines()[-1])
        assert result["uploaded"] >= sum(p.stat().st_size for p in tiny_ckpt.rglob("*") if p.is_file())
    finally:
        proc.kill()
        proc.wait()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with ``Range: bytes=a-b`` (web seeds need 206 responses)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            lo, _, hi = rng[6:].partition("-")
            lo, hi = int(lo), int(hi) if hi else len(data) - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
            data = data[lo:hi + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):
            self.wfile.write(data)


def test_webseed_only_download(tmp_path, run_cli, tiny_ckpt, tiny_torrent):
    handler = functools.partial(RangeHandler, directory=str(tiny_ckpt.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        code, out, err = run_cli(["download", tiny_torrent, "--dir", tmp_path / "d", "--webseed", url,
                                  *LOCAL, "--timeout", "30", "--json"])
        assert code == 0, err
        assert same_tree(tmp_path / "d" / tiny_ckpt.name, tiny_ckpt)
        res = json.loads(out.splitlines()[-1])   # bytes per source: all from the web seed
        assert res["from_peers"] == 0 and 0 < res["from_webseeds"] <= res["downloaded"]
    finally:
        server.shutdown()
        server.server_close()


# --- resume -----------------------------------------------------------------------------------


def start_limited(source, dest: Path, port: int, rate: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grokfetch", "download", str(source), "--dir", str(dest),
                             "--peer", f"127.0.0.1:{port}", *LOCAL, "--max-download-rate", rate,
                             "--json"], stdout=subprocess.PIPE, text=True)


def wait_for_fraction(proc: subprocess.Popen, frac: float) -> int:
    for line in proc.stdout:
        ev = json.loads(line)
        if ev.get("event") == "status" and ev.get("total") and ev["done"] >= frac * ev["total"]:
            return ev["done"]
    raise AssertionError(f"download ended before {frac:.0%} (rc={proc.wait()})")


@pytest.mark.slow
def test_sigkill_midway_then_resume_skips_finished_pieces(tmp_path, magnet, seeder, tiny_ckpt):
    dest = tmp_path / "d"
    proc = start_limited(magnet, dest, seeder.port, "600K")
    try:
        done = wait_for_fraction(proc, 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert (dest / ".grokfetch").is_dir()
    r = download(magnet, dest, local_opts([seeder.port]))
    total = r.bytes
    assert r.checked  # unclean stop: resume data not trusted, the files were hash-checked
    assert 0 < r.downloaded < total
    assert r.downloaded <= total - done // 2   # most of what was verified before the kill stayed
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt)


@pytest.mark.slow
def test_sigterm_saves_resume_data_exit_130(tmp_path, tiny_torrent, seeder, tiny_ckpt):
    dest = tmp_path / "d"
    proc = start_limited(tiny_torrent, dest, seeder.port, "600K")
    try:
        done = wait_for_fraction(proc, 0.3)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        assert rc == 130, rc
    finally:
        proc.kill()
    assert list((dest / ".grokfetch").glob("*.resume"))
    assert not list((dest / ".grokfetch").glob("*.running"))
    r = download(tiny_torrent, dest, local_opts([seeder.port]))
    assert not r.checked   # clean stop: resume data used, no full check
    # pieces verified before the signal are not fetched again (blocks of pieces in flight may be)
    assert r.downloaded <= r.bytes - done + 16 * PIECE, (r.downloaded, r.bytes, done)
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt)


def test_recheck_repairs_only_the_bad_piece(tmp_path, tiny_torrent, seeder, tiny_ckpt):
    dest = tmp_path / "d"
    download(tiny_torrent, dest, local_opts([seeder.port]))
    victim = dest / tiny_ckpt.name / "ckpt-0" / "tensor00050_000"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    trusting = download(tiny_torrent, dest, local_opts([seeder.port]))
    assert trusting.downloaded == 0          # resume data trusts the disk (libtorrent behaviour)
    assert not filecmp.cmp(victim, tiny_ckpt / "ckpt-0" / victim.name, shallow=False)
    r = download(tiny_torrent, dest, local_opts([seeder.port], recheck=True))
    assert r.checked and 0 < r.downloaded <= 2 * PIECE
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt)


# --- bad peers --------------------------------------------------------------------------------


def corrupt_every_piece(root: Path, torrent: Path) -> None:
    ti = lt.torrent_info(str(torrent))
    fs = ti.layout()
    for p in range(ti.num_pieces()):
        sl = ti.map_block(p, 100, 1)[0]
        path = root / fs.file_path(sl.file_index)
        with open(path, "r+b") as f:
            f.seek(sl.offset)
            b = f.read(1)
            f.seek(sl.offset)
            f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_seeder_is_banned_and_good_seeder_completes(tmp_path, tiny_ckpt, tiny_torrent):
    bad_root = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad_root / tiny_ckpt.name)
    corrupt_every_piece(bad_root, tiny_torrent)
    with Seeder(bad_root, tiny_torrent, assume_complete=True) as bad, \
            Seeder(tiny_ckpt, tiny_torrent, upload_rate=2_000_000) as good:
        rec = RecordingProgress()
        r = download(tiny_torrent, tmp_path / "d", local_opts([bad.port, good.port]), rec)
    assert r.hash_failures >= 1
    assert f"127.0.0.1:{bad.port}" in r.banned_peers
    assert any(k == "warning" and "hash check" in d["message"] for k, d in rec.events)
    assert same_tree(tmp_path / "d" / tiny_ckpt.name, tiny_ckpt)


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c not installed (apt install aria2)")
def test_download_from_aria2c_seeder(tmp_path, run_cli, tiny_ckpt, tiny_torrent):
    seed_dir = tmp_path / "aria"
    shutil.copytree(tiny_ckpt, seed_dir / tiny_ckpt.name)
    port = free_port()
    aria = subprocess.Popen(
        ["aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
         "--enable-peer-exchange=false", "--disable-ipv6=true", "--interface=127.0.0.1",
         "--summary-interval=0", "--file-allocation=none", f"--dir={seed_dir}",
         "--check-integrity=true", "--seed-ratio=0.0", f"--listen-port={port}", "--quiet=true",
         str(tiny_torrent)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:  # wait until aria2c has checked its data and listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline and aria.poll() is None, "aria2c did not start"
            time.sleep(0.1)
        magnet = lt.make_magnet_uri(lt.torrent_info(str(tiny_torrent)))
        code, _, err = run_cli(["download", magnet, "--dir", tmp_path / "d", "--peer",
                                f"127.0.0.1:{port}", *LOCAL, "--timeout", "30", "-q"])
        assert code == 0, err
        assert same_tree(tmp_path / "d" / tiny_ckpt.name, tiny_ckpt)
    finally:
        aria.terminate()
        aria.wait(10)
    # and aria2c's own SHA-1 check accepts what grokfetch wrote
    check = subprocess.run(["aria2c", "--hash-check-only=true", "--check-integrity=true",
                            f"--dir={tmp_path / 'd'}", str(tiny_torrent)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-500:]


# --- disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs ({r.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_preflight_then_midway_then_rerun_completes(small_fs, run_cli, tiny_torrent, seeder,
                                                              tiny_ckpt):
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\1" * 5_500_000)   # leaves about 2.9 MB of 8 MB for a 4.4 MB download
    dest = small_fs / "d"
    args = ["download", tiny_torrent, "--dir", dest, "--peer", f"127.0.0.1:{seeder.port}", *LOCAL,
            "--timeout", "30"]
    code, _, err = run_cli(args)
    # the figures' format is errors.InsufficientSpaceError's own
    assert code == 1 and f"not enough free space in {dest}" in err
    assert not (dest / tiny_ckpt.name).exists()
    code, _, err = run_cli([*args, "--no-space-check"])
    assert code == 1 and "disk full" in err and "No space left" in err
    ballast.unlink()
    code, out, err = run_cli([*args, "--json"])
    assert code == 0, err
    res = json.loads(out.splitlines()[-1])
    assert res["checked"] is True and res["downloaded"] < res["bytes"]
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt)
    assert not list((dest / ".grokfetch").glob("*.recheck"))


# --- bad input --------------------------------------------------------------------------------


def test_bad_sources_are_usage_errors(tmp_path, run_cli):
    junk = tmp_path / "junk.torrent"
    junk.write_bytes(b"not bencode")
    for source, needle in (("no-such-thing", "not a magnet URI"), ("magnet:?xt=urn:btih:zz", "magnet"),
                           (str(junk), "not a valid .torrent")):
        code, _, err = run_cli(["download", source, "--dir", tmp_path / "d", *LOCAL])
        assert code == 2 and needle in err, (source, err)
    for extra, needle in ((["--order", "bogus"], "--order"), (["--max-download-rate", "fast"], "bad size"),
                          (["--peer", "nohost"], "HOST:PORT"), (["--layers", "x-y"], "layer")):
        code, _, err = run_cli(["download", "grok-1", "--dir", tmp_path / "d", *LOCAL, *extra])
        assert code == 2 and needle in err, (extra, err)


def test_unreachable_peer_times_out(tmp_path, run_cli, magnet, tiny_torrent):
    dead = f"127.0.0.1:{free_port()}"
    t = time.monotonic()
    code, _, err = run_cli(["download", magnet, "--dir", tmp_path / "m", "--peer", dead, *LOCAL,
                            "--timeout", "2"])
    assert code == 1 and "stalled" in err and "metadata" in err
    assert time.monotonic() - t < 15
    code, _, err = run_cli(["download", tiny_torrent, "--dir", tmp_path / "t", "--peer", dead, *LOCAL,
                            "--timeout", "2"])
    assert code == 1 and "stalled" in err and "0.0 %" in err
    with pytest.raises(DownloadFailed) as e:
        download(tiny_torrent, tmp_path / "t", local_opts([free_port()], timeout=1.5))
    assert e.value.reason == "stalled"


def test_failed_download_releases_its_listen_port(tmp_path, tiny_torrent):
    """The session goes with the error: its port is free while the exception (whose traceback
    holds the job) is still alive."""
    port = free_port()
    opts = local_opts([free_port()], timeout=1.0)
    opts.listen = f"127.0.0.1:{port}"
    with pytest.raises(DownloadFailed) as e:
        download(tiny_torrent, tmp_path / "t", opts)
    assert e.value.reason == "stalled" and e.value.__traceback__ is not None
    with socket.socket() as s:   # no SO_REUSEADDR: refused while anything listens there
        s.bind(("127.0.0.1", port))
        s.listen()


def test_symlink_out_of_the_folder_is_refused(tmp_path, run_cli, tiny_torrent, tiny_ckpt):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / tiny_ckpt.name).symlink_to(outside)
    code, _, err = run_cli(["download", tiny_torrent, "--dir", dest, *LOCAL, "--timeout", "5"])
    assert code == 1 and "refusing path" in err and "symlink" in err
    assert list(outside.iterdir()) == []


def test_seed_errors(tmp_path, run_cli, tiny_torrent):
    code, _, err = run_cli(["seed", tmp_path, "--for", "1"])
    assert code == 2 and "saved torrent not found" in err
    code, _, err = run_cli(["seed", tmp_path, "--torrent", tiny_torrent, "--for", "1"])
    assert code == 2 and "content of torrent" in err


def test_unwritable_dir_is_refused(tmp_path, run_cli, tiny_torrent):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for dest in (blocker, blocker / "sub"):
        code, _, err = run_cli(["download", tiny_torrent, "--dir", dest, *LOCAL])
        assert code == 2 and "cannot write to download folder" in err, err


def test_second_download_into_same_folder_is_refused(tmp_path, run_cli, tiny_torrent):
    ih = str(lt.torrent_info(str(tiny_torrent)).info_hashes().v1)
    state = tmp_path / "d" / ".grokfetch"
    state.mkdir(parents=True)
    (state / f"{ih}.running").write_text("1\n")   # pid 1 is alive: "another download"
    code, _, err = run_cli(["download", tiny_torrent, "--dir", tmp_path / "d", *LOCAL])
    assert code == 2 and "another grokfetch download (pid 1)" in err
