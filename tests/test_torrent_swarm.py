"""Issue 15: the real swarm paths on 127.0.0.1 -- magnet + tracker, give-back, tracker hygiene,
changed selections, web-seed and tracker errors. A local HTTP tracker (``tests/tracker.py``)
counts every announce; the seeders are real libtorrent sessions (and aria2c where installed).
"""

from __future__ import annotations

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
import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
import test_download
from progress_doubles import RecordingProgress
from test_download import PIECE, same_tree
from tracker import LocalTracker

from grokfetch.errors import DownloadFailed
from grokfetch.torrent.create import create_torrent
from grokfetch.torrent.job import DownloadOptions, download
from grokfetch.torrent.seed import Seeder

lt = pytest.importorskip("libtorrent")


def net(**kw) -> DownloadOptions:
    """Options for a private loopback swarm that still uses trackers."""
    kw.setdefault("timeout", 30)
    return DownloadOptions(listen="127.0.0.1:0", dht=False, lsd=False, upnp=False, utp=False, **kw)


tiny_torrent = test_download.tiny_torrent   # the same module-scoped fixture


@pytest.fixture(scope="module")
def infohash(tiny_torrent) -> str:
    return str(lt.torrent_info(str(tiny_torrent)).info_hashes().v1)


def magnet_with(tiny_torrent: Path, *trackers: str) -> str:
    m = lt.make_magnet_uri(lt.torrent_info(str(tiny_torrent)))
    return m + "".join(f"&tr={quote(t, safe='')}" for t in trackers)


def test_magnet_with_only_a_tracker_does_not_stall_after_metadata(tmp_path, tiny_ckpt, tiny_torrent,
                                                                  infohash):
    """F1: the default path. Old code: the seed hangs up once the metadata makes the torrent
    look finished, and libtorrent waits min_reconnect_time (60 s) before dialling it again."""
    with LocalTracker() as tr, Seeder(tiny_ckpt, tiny_torrent, trackers=[tr.url]):
        assert tr.wait_for(infohash)
        with_tracker = tmp_path / "tr.torrent"
        create_torrent(tiny_ckpt, with_tracker, piece_size=PIECE, trackers=[tr.url])
        took = {}
        for name, src in (("torrent", with_tracker), ("magnet", magnet_with(tiny_torrent, tr.url))):
            t0 = time.monotonic()
            r = download(src, tmp_path / name, net(timeout=25))
            took[name] = time.monotonic() - t0
            assert r.wanted_pieces == r.num_pieces and r.hash_failures == 0
    # the magnet only adds a metadata round trip and a reconnect, not a 60 s wait
    assert took["magnet"] < took["torrent"] + 8, took


def test_verify_after_a_layer_selection_checks_every_selected_byte(tmp_path, run_cli, tiny_ckpt,
                                                                   tiny_torrent, infohash, request):
    """F5: pieces shared with skipped files are hashed with the skipped bytes from libtorrent's
    part file. Old code: one flipped byte in tokenizer.model -> "OK ... warnings", exit 0."""
    dest = tmp_path / "d"
    seeder = Seeder(tiny_ckpt, tiny_torrent).__enter__()
    request.addfinalizer(seeder.close)
    download(tiny_torrent, dest, net(peers=[f"127.0.0.1:{seeder.port}"], trackers=False,
                                     layers="0-1", preset="tiny"))
    parts = dest / f".{infohash}.parts"
    assert parts.is_file()   # tokenizer.model shares a piece with skipped tensor files
    code, out, err = run_cli(["verify", dest, "--json"])
    res = json.loads(out.splitlines()[-1])
    assert code == 0 and res["findings"] == [], res["findings"]
    tok = dest / tiny_ckpt.name / "tokenizer.model"
    good = tok.read_bytes()
    tok.write_bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])
    code, out, _ = run_cli(["verify", dest, "--json"])
    res = json.loads(out.splitlines()[-1])
    assert code == 1 and "tokenizer.model" in {f["path"] for f in res["findings"]
                                               if f["severity"] == "error" and f["kind"] == "corrupted"}
    tok.write_bytes(good)
    parts.rename(tmp_path / "parts")   # the skipped bytes are gone: the shared pieces cannot be hashed
    code, out, _ = run_cli(["verify", dest, "--json"])
    res = json.loads(out.splitlines()[-1])
    unverified = {f["path"]: f["ranges"] for f in res["findings"] if f["kind"] == "unverified"}
    assert code == 1 and unverified["tokenizer.model"] == [[0, len(good)]]
    assert all(f["severity"] == "error" for f in res["findings"] if f["kind"] == "unverified")
    # --repair fetches those pieces again (libtorrent rewrites the part file), then all is OK
    code, out, err = run_cli(["verify", dest, "--repair", "--peer", f"127.0.0.1:{seeder.port}",
                              "--json"])
    assert code == 0, err
    assert parts.is_file() and json.loads(out.splitlines()[-1])["findings"] == []


def test_download_folder_is_seeded_to_its_trackers_and_an_aria2c_leecher(tmp_path, tiny_ckpt,
                                                                        tiny_torrent):
    """F2: the saved .torrent keeps the announce list and ``seed DIR`` announces to it; an
    aria2c leecher that only knows the tracker gets the files. Old code: no announce at all.
    Also F3: a finished download tells the tracker ``stopped``."""
    with LocalTracker() as tr:
        tfile = tmp_path / "t.torrent"
        create_torrent(tiny_ckpt, tfile, piece_size=PIECE, trackers=[tr.url])
        ih = str(lt.torrent_info(str(tfile)).info_hashes().v1)
        first = tmp_path / "first"
        with Seeder(tiny_ckpt, tiny_torrent) as s:   # the same info-hash, no announce list
            r = download(tfile, first, net(peers=[f"127.0.0.1:{s.port}"]))
        with warnings.catch_warnings():   # torrent_info.trackers() is deprecated, not replaced
            warnings.simplefilter("ignore", DeprecationWarning)
            assert [t.url for t in lt.torrent_info(str(r.torrent_path)).trackers()] == [tr.url]
        mine = [a for a in tr.seen(ih)]
        assert {a.event for a in mine} >= {"started", "stopped"} and mine[-1].event == "stopped"
        proc = subprocess.Popen([sys.executable, "-m", "grokfetch", "seed", str(first), "--listen",
                                 "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp", "--no-utp",
                                 "--for", "60", "--json"], stdout=subprocess.PIPE, text=True)
        try:
            port = next(ev["port"] for ev in map(json.loads, proc.stdout) if "port" in ev)
            deadline = time.monotonic() + 20
            while not [a for a in tr.seen(ih) if a.port == port] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [a for a in tr.seen(ih) if a.port == port and a.left == 0], tr.seen(ih)
            if shutil.which("aria2c"):
                leech = tmp_path / "aria"
                got = subprocess.run(
                    ["aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                     "--enable-peer-exchange=false", "--disable-ipv6=true", "--summary-interval=0",
                     "--file-allocation=none", f"--dir={leech}", "--seed-time=0", "--quiet=true",
                     "--bt-stop-timeout=30", str(r.torrent_path)], capture_output=True, text=True,
                    timeout=60)
                assert got.returncode == 0, got.stdout[-500:]
                assert same_tree(leech / tiny_ckpt.name, tiny_ckpt)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
        finally:
            proc.kill()
            proc.wait()
        assert [a for a in tr.seen(ih) if a.port == port and a.event == "stopped"]


def test_no_trackers_announces_nothing_and_trackers_hear_stopped(tmp_path, tiny_ckpt, tiny_torrent):
    """F3: ``--no-trackers`` sends nothing to the .torrent's own tracker (old code: a
    ``started`` announce leaked before replace_trackers took effect, 2 of 3 runs); with trackers,
    every run ends with ``stopped`` (old code: never, or by luck)."""
    with LocalTracker() as tr:
        tfile = tmp_path / "t.torrent"
        create_torrent(tiny_ckpt, tfile, piece_size=PIECE, trackers=[tr.url])
        ih = str(lt.torrent_info(str(tfile)).info_hashes().v1)
        with Seeder(tiny_ckpt, tiny_torrent) as s:   # the same info-hash, no announce list
            for k in range(3):
                download(tfile, tmp_path / f"quiet{k}", net(peers=[f"127.0.0.1:{s.port}"],
                                                            trackers=False))
            time.sleep(0.5)
            assert tr.seen(ih) == []
            for k in range(3):
                before = len(tr.seen(ih))
                download(tfile, tmp_path / f"loud{k}", net(peers=[f"127.0.0.1:{s.port}"]))
                events = [a.event for a in tr.seen(ih)[before:]]
                assert events[0] == "started" and events[-1] == "stopped", events


def test_widening_and_narrowing_the_selection_on_rerun(tmp_path, tiny_ckpt, tiny_torrent):
    """F4: the saved piece priorities no longer override the new selection. Old code: the
    wider rerun stalled "at 100.0 %"."""
    dest = tmp_path / "d"
    with Seeder(tiny_ckpt, tiny_torrent) as s:
        def run(layers: str | None):
            return download(tiny_torrent, dest, net(peers=[f"127.0.0.1:{s.port}"], trackers=False,
                                                    layers=layers, preset="tiny", timeout=15))

        first = run("0-1")
        wider = run("0-3")
        everything = run(None)
        narrower = run("0")
    assert first.files < wider.files < everything.files and narrower.files < first.files
    assert 0 < wider.downloaded < everything.bytes
    assert 0 < everything.downloaded < everything.bytes - first.bytes + 4 * PIECE
    assert narrower.downloaded == 0
    assert same_tree(dest / tiny_ckpt.name, tiny_ckpt)


def test_dead_webseed_and_failing_tracker_are_named_with_their_reason(tmp_path, tiny_torrent, infohash):
    """F6/F7: web seed and tracker errors are reported (URL and reason), in warnings and in the
    stall error. Old code: "stalled ... check --peer addresses" and nothing else."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/"   # bound, never listening: refused
    with LocalTracker(fail="torrent not registered") as tr, dead:
        rec = RecordingProgress()
        with pytest.raises(DownloadFailed) as e:
            download(magnet_with(tiny_torrent, tr.url), tmp_path / "m", net(timeout=3), rec)
        assert tr.url in str(e.value) and "torrent not registered" in str(e.value)
        assert any(k == "warning" and tr.url in d["message"] and "torrent not registered" in d["message"]
                   for k, d in rec.events)
        rec = RecordingProgress()
        with pytest.raises(DownloadFailed) as e:
            download(tiny_torrent, tmp_path / "w", net(webseeds=[dead_url], trackers=False, timeout=4),
                     rec)
    msg = str(e.value)
    assert dead_url in msg and "refused" in msg.lower(), msg
    warned = [d for k, d in rec.events if k == "warning" and d.get("url") == dead_url]
    assert len(warned) == 1 and "refused" in warned[0]["reason"].lower()


def test_missing_webseed_file_is_reported_with_the_http_status(tmp_path, tiny_ckpt, tiny_torrent):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"   # serves an empty folder: 404
        with pytest.raises(DownloadFailed) as e:
            download(tiny_torrent, tmp_path / "w", net(webseeds=[url], trackers=False, timeout=4))
    finally:
        server.shutdown()
        server.server_close()
    assert url in str(e.value) and "404" in str(e.value), str(e.value)


def test_idle_diagnosis_and_start_line(tmp_path, tiny_torrent, infohash):
    """Nothing happening -> one line on trackers, DHT, peers and the port; the start event
    names the info-hash, the magnet and the port really listened on."""
    with LocalTracker() as tr:
        rec = RecordingProgress()
        with pytest.raises(DownloadFailed):
            download(magnet_with(tiny_torrent, tr.url), tmp_path / "m",
                     net(timeout=3.5, diagnose_after=1.0), rec)
        lines = [d["message"] for k, d in rec.events if k == "warning" and d.get("diagnosis")]
        assert lines and f"tracker {tr.url}: 0 peers" in lines[-1]
        assert "peers: 0 tried, 0 connected" in lines[-1] and "listening on port" in lines[-1]
        starting = next(d for k, d in rec.events if k == "status" and d.get("state") == "starting")
        assert starting["infohash"] == infohash and starting["magnet"].startswith("magnet:?")
        assert starting["port"] == int(lines[-1].split("listening on port ")[1].split(";")[0])


def test_interrupt_before_metadata_claims_no_resume_data(tmp_path, tiny_torrent, infohash):
    """F7: Ctrl-C before the metadata arrived. Old code: "resume data saved to …" and no file."""
    with LocalTracker() as tr:
        before = len(tr.seen(infohash))
        proc = subprocess.Popen([sys.executable, "-m", "grokfetch", "download",
                                 magnet_with(tiny_torrent, tr.url), "--dir", str(tmp_path / "i"),
                                 "--listen", "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp",
                                 "--no-utp"], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20   # it runs (and handles signals) once it announces
            while len(tr.seen(infohash)) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=30)[1]
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    resume = tmp_path / "i" / ".grokfetch" / f"{infohash}.resume"
    assert not resume.exists() and "resume data saved" not in err and "metadata" in err, err


def test_torrent_show_of_a_file_and_of_a_download_folder(tmp_path, run_cli, tiny_ckpt, tiny_torrent):
    tfile = tmp_path / "t.torrent"
    create_torrent(tiny_ckpt, tfile, piece_size=PIECE, trackers=["http://127.0.0.1:1/announce"],
                   webseeds=["http://127.0.0.1:2/"])
    code, out, err = run_cli(["torrent", "show", tfile, "--json"])
    assert code == 0, err
    got = json.loads(out.splitlines()[-1])
    ti = lt.torrent_info(str(tfile))
    fs = ti.layout()
    assert got["infohash"] == str(ti.info_hashes().v1) and got["piece_size"] == PIECE
    assert got["trackers"] == ["http://127.0.0.1:1/announce"] and got["webseeds"] == ["http://127.0.0.1:2/"]
    assert [(f["path"], f["size"]) for f in got["files"]] == [(fs.file_path(i), fs.file_size(i))
                                                              for i in range(fs.num_files())]
    assert lt.parse_magnet_uri(got["magnet"]).info_hashes.v1 == ti.info_hashes().v1
    with Seeder(tiny_ckpt, tiny_torrent) as s:
        download(tfile, tmp_path / "d", net(peers=[f"127.0.0.1:{s.port}"], trackers=False,
                                            include=["*.json"]))
    code, out, _ = run_cli(["torrent", "show", tmp_path / "d"])
    assert code == 0 and got["magnet"].split("&")[0] in out and "http://127.0.0.1:1/announce" in out
    code, _, err = run_cli(["torrent", "show", tmp_path / "nothing"])
    assert code == 2 and "not found" in err


def test_seed_ratio_keeps_serving_after_completion(tmp_path, tiny_ckpt, tiny_torrent):
    """``download --seed-ratio 1``: the finished download serves a second leecher, then exits."""
    with Seeder(tiny_ckpt, tiny_torrent) as s:
        proc = subprocess.Popen([sys.executable, "-m", "grokfetch", "download", str(tiny_torrent),
                                 "--dir", str(tmp_path / "a"), "--peer", f"127.0.0.1:{s.port}",
                                 "--listen", "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp",
                                 "--no-utp", "--no-trackers", "--seed-ratio", "1.0", "--timeout",
                                 "30", "--json"], stdout=subprocess.PIPE, text=True)
        try:
            events = map(json.loads, proc.stdout)
            port = next(ev["port"] for ev in events if "port" in ev)
            next(ev for ev in events if ev.get("state") == "seeding")   # a finished, seeding "a"
            s.close()   # from now on only "a" has the data
            r = download(tiny_torrent, tmp_path / "b", net(peers=[f"127.0.0.1:{port}"],
                                                           trackers=False))
            res = json.loads(list(proc.stdout)[-1])
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait()
    assert r.downloaded >= r.bytes and res["uploaded"] >= res["bytes"] and res["seeded"] > 0
    assert same_tree(tmp_path / "b" / tiny_ckpt.name, tiny_ckpt)


def test_encryption_policy_is_enforced(tmp_path, tiny_ckpt, tiny_torrent):
    """``--encryption required`` talks to a seeder that requires it; ``disabled`` cannot."""
    from grokfetch.torrent.session import NetOptions

    forced = NetOptions(dht=False, lsd=False, upnp=False, utp=False, encryption="required")
    with Seeder(tiny_ckpt, tiny_torrent, net=forced) as s:
        ok = download(tiny_torrent, tmp_path / "rc4", net(peers=[f"127.0.0.1:{s.port}"],
                                                         trackers=False, encryption="required"))
        assert ok.wanted_pieces == ok.num_pieces
        with pytest.raises(DownloadFailed):
            download(tiny_torrent, tmp_path / "plain", net(peers=[f"127.0.0.1:{s.port}"],
                                                           trackers=False, encryption="disabled",
                                                           timeout=4))
