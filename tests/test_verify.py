"""``grokfetch verify`` against torrents made by libtorrent (the independent reference for the
piece hashes), and the tensor-table structure check."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import libtorrent as lt
import numpy as np
import pytest

from grokfetch.checkpoint.fixture import tensor_values
from grokfetch.checkpoint.writer import write_tensor_file
from grokfetch.integrity.pieces import check_torrent
from grokfetch.integrity.torrentfile import parse_torrent
from grokfetch.spec import TensorTable, preset
from grokfetch.verify.run import verify

PIECE = 16 * 1024


def make_torrent(content: Path, flags=None, piece: int = PIECE) -> bytes:
    """A torrent of ``content`` built and hashed by libtorrent itself."""
    files = sorted(lt.list_files(str(content)), key=lambda e: e.filename)
    ct = lt.create_torrent(files, piece, lt.create_torrent.v1_only if flags is None else flags)
    lt.set_piece_hashes(ct, str(content.parent))
    return lt.bencode(ct.generate())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_ckpt) -> tuple[Path, bytes]:
    """A download folder: ``dl/grok-tiny/`` + ``dl/.grokfetch/<infohash>.torrent``."""
    dl = tmp_path_factory.mktemp("dl") / "dl"
    shutil.copytree(tiny_ckpt, dl / "grok-tiny")
    tb = make_torrent(dl / "grok-tiny")
    ih = str(lt.torrent_info(tb).info_hashes().v1)
    (dl / ".grokfetch").mkdir()
    (dl / ".grokfetch" / f"{ih}.torrent").write_bytes(tb)
    return dl, tb


@pytest.fixture
def dl(pristine, tmp_path) -> Path:
    d = tmp_path / "dl"
    shutil.copytree(pristine[0], d, symlinks=True)
    return d


def flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))


def lt_piece(tb: bytes, relpath: str, offset: int) -> int:
    """libtorrent's own answer to: which piece holds byte ``offset`` of ``relpath``?"""
    ti = lt.torrent_info(tb)
    fs = ti.layout()
    idx = next(i for i in range(fs.num_files()) if fs.file_path(i).split("/", 1)[1] == relpath)
    return ti.map_file(idx, offset, 1).piece


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_clean_download_folder_and_top_folder(dl, run_cli):
    for target in (dl, dl / "grok-tiny"):
        code, out, err = run_cli(["verify", target, "--json"])
        assert code == 0, err
        res = last_json(out)
        assert res["ok"] and res["findings"] == []
        assert res["checks"] == ["structure", "torrent v1 SHA-1"]
        assert res["pieces_bad"] == 0 and res["pieces_total"] == lt.torrent_info(
            next((dl / ".grokfetch").glob("*.torrent")).read_bytes()).num_pieces()
        assert res["input"].endswith("grok-tiny")


def test_one_flipped_byte_names_that_file_and_piece(dl, pristine, run_cli):
    rel = "ckpt-0/tensor00000_000"
    flip(dl / "grok-tiny" / rel, 100_000)
    code, out, err = run_cli(["verify", dl, "--json", "--no-structure"])
    assert code == 1 and "1 corrupted" in err
    res = last_json(out)
    assert [(f["kind"], f["path"]) for f in res["findings"]] == [("corrupted", rel)]
    f = res["findings"][0]
    assert f["pieces"] == [lt_piece(pristine[1], rel, 100_000)]
    (start, end), = f["ranges"]
    assert start <= 100_000 < end and end - start == PIECE
    assert res["pieces_bad"] == 1


def test_human_output_table(dl, run_cli):
    flip(dl / "grok-tiny" / "ckpt-0/tensor00001_000", 10)
    code, out, err = run_cli(["verify", dl, "--no-structure"])
    assert code == 1
    assert "corrupted" in out and "tensor00001_000" in out and "FAILED" in out
    assert "--repair" in err


def test_piece_spanning_two_files(dl, pristine):
    t = parse_torrent(pristine[1])
    # a file whose last piece continues into the next file
    files = t.data_files()
    a, b = next((x, y) for x, y in zip(files, files[1:], strict=False)
                if (x.offset + x.size) % PIECE and x.size > 10 and y.size > 10)
    flip(dl / "grok-tiny" / a.path, a.size - 1)
    r = verify(dl, structure=False)
    piece = lt_piece(pristine[1], a.path, a.size - 1)
    ti = lt.torrent_info(pristine[1])
    fs = ti.layout()
    covered = {fs.file_path(s.file_index).split("/", 1)[1]
               for s in ti.map_block(piece, 0, ti.piece_size(piece))}
    assert len(covered) >= 2 and {a.path, b.path} <= covered
    assert sorted(f.path for f in r.findings) == sorted(covered)
    for f in r.findings:
        assert f.kind == "corrupted" and f.pieces == [piece] and "shared with" in f.detail
    fa = next(f for f in r.findings if f.path == a.path)
    fb = next(f for f in r.findings if f.path == b.path)
    assert fa.ranges[-1][1] == a.size and fb.ranges[0][0] == 0


def test_truncated_missing_oversized_extra_are_distinct(dl, run_cli):
    root = dl / "grok-tiny"
    os.truncate(root / "ckpt-0/tensor00003_000", 50)
    (root / "ckpt-0/tensor00005_000").unlink()
    with open(root / "ckpt-0/tensor00007_000", "ab") as f:
        f.write(b"!")
    (root / "stray.bin").write_bytes(b"x")
    code, out, _ = run_cli(["verify", dl, "--json"])
    assert code == 1
    res = last_json(out)
    got = {(f["kind"], f["path"]) for f in res["findings"]}
    assert got == {("truncated", "ckpt-0/tensor00003_000"), ("missing", "ckpt-0/tensor00005_000"),
                   ("oversized", "ckpt-0/tensor00007_000"), ("extra", "stray.bin")}
    trunc = next(f for f in res["findings"] if f["kind"] == "truncated")
    assert trunc["pieces"] and trunc["ranges"][0][0] == 50
    assert next(f for f in res["findings"] if f["kind"] == "extra")["severity"] == "warning"


@pytest.mark.parametrize("flags", [lt.create_torrent.v2_only, 0], ids=["v2", "hybrid"])
def test_v2_and_hybrid_merkle_hashes(tiny_ckpt, tmp_path, flags):
    root = tmp_path / "grok-tiny"
    shutil.copytree(tiny_ckpt, root)
    t = parse_torrent(make_torrent(root, flags, piece=32 * 1024))
    assert t.v2 and t.has_v1 == (flags == 0)
    r = check_torrent(root, t)
    assert r.ok and r.checks == ["torrent v2 SHA-256"] and r.pieces_bad == 0
    if flags == 0:
        assert check_torrent(root, t, scheme="v1").ok
    flip(root / "ckpt-0/tensor00000_000", 70_000)      # file > piece: checked at the piece layer
    flip(root / "ckpt-0/tensor00005_000", 3)           # file < piece: checked at its root
    r = check_torrent(root, t)
    got = {(f.kind, f.path, tuple(f.pieces)) for f in r.findings}
    assert got == {("corrupted", "ckpt-0/tensor00000_000", (70_000 // (32 * 1024),)),
                   ("corrupted", "ckpt-0/tensor00005_000", (0,))}


def test_torrent_with_escaping_paths(tmp_path, run_cli):
    root = tmp_path / "dl" / "evil"
    root.mkdir(parents=True)
    (root / "ok.bin").write_bytes(b"a" * 100)
    (tmp_path / "dl" / "secret").write_bytes(b"s" * 100)
    import hashlib

    data = b"a" * 100 + b"s" * 100 + b"s" * 100
    info = {b"name": b"evil", b"piece length": 16384, b"pieces": hashlib.sha1(data).digest(),
            b"files": [{b"length": 100, b"path": [b"ok.bin"]},
                       {b"length": 100, b"path": [b"..", b"secret"]},
                       {b"length": 100, b"path": [b"/abs"]}]}
    tfile = tmp_path / "evil.torrent"
    tfile.write_bytes(lt.bencode({b"info": info}))
    code, out, err = run_cli(["verify", tmp_path / "dl", "--torrent", tfile, "--json"])
    assert code == 1, err
    res = last_json(out)
    unsafe = sorted(f["path"] for f in res["findings"] if f["kind"] == "unsafe")
    assert unsafe == ["../secret", "/abs"]
    assert not any(f["kind"] == "corrupted" for f in res["findings"])


def test_symlink_pointing_outside_is_not_followed(dl, tmp_path):
    target = dl / "grok-tiny" / "ckpt-0/tensor00002_000"
    outside = tmp_path / "outside_copy"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)  # same bytes: following it would pass the hash check
    r = verify(dl)
    assert not r.ok
    assert ("unsafe", "ckpt-0/tensor00002_000") in {(f.kind, f.path) for f in r.findings}


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_reported_not_executed(dl, tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Evil(marker), protocol=4)
    target = dl / "grok-tiny" / "ckpt-0/tensor00001_000"
    size = target.stat().st_size
    target.write_bytes(payload + b"\0" * max(0, size - len(payload)))  # right size, evil content
    r = verify(dl)
    assert not marker.exists()
    kinds = {(f.kind, f.path): f for f in r.findings}
    assert ("structure", "ckpt-0/tensor00001_000") in kinds
    assert "unsafe" in kinds[("structure", "ckpt-0/tensor00001_000")].detail
    assert ("corrupted", "ckpt-0/tensor00001_000") in kinds
    # prove the payload really is live: the real unpickler would have run it
    pickle.loads(payload)
    assert marker.exists()


def test_structure_catches_zero_scales_and_unknown_tensor_files(dl, run_cli):
    root = dl / "grok-tiny"
    table = TensorTable(preset("tiny"))
    spec = next(s for s in table if s.quantized)
    weight, scales = tensor_values(spec, 0)
    scales = np.array(scales)
    scales.flat[0] = 0
    write_tensor_file(root / spec.relpath, spec, weight, scales)
    norm = next(s for s in table if s.slot.key.startswith("norm_"))
    w, _ = tensor_values(norm, 0)
    w = np.array(w)
    w.flat[3] = np.nan
    write_tensor_file(root / norm.relpath, norm, w, None)
    spec2 = next(s for s in table if s.quantized and s.index > spec.index)
    w2, s2 = tensor_values(spec2, 0)
    s2 = np.array(s2)
    s2.flat[-1] = np.inf
    write_tensor_file(root / spec2.relpath, spec2, w2, s2)
    shutil.copy(root / "ckpt-0/tensor00000_000", root / "ckpt-0/tensor09999_000")
    code, out, err = run_cli(["verify", root, "--structure", "--json"])
    assert code == 1
    res = last_json(out)
    by = {(f["kind"], f["path"]): f for f in res["findings"]}
    assert "zero scales" in by[("structure", spec.relpath)]["detail"]
    assert "1 non-finite values" in by[("structure", norm.relpath)]["detail"]
    assert "1 non-finite scales" in by[("structure", spec2.relpath)]["detail"]
    assert by[("extra", "ckpt-0/tensor09999_000")]["severity"] == "error"
    assert ("corrupted", spec.relpath) in by


def test_no_structure_flag_and_usage_errors(dl, tmp_path, run_cli):
    code, out, _ = run_cli(["verify", dl, "--no-structure", "--json"])
    assert code == 0 and last_json(out)["checks"] == ["torrent v1 SHA-1"]
    tfile = next((dl / ".grokfetch").glob("*.torrent"))
    cases = [
        ["verify", tmp_path / "nope"],
        ["verify", dl, "--torrent", tfile, "--manifest", tfile],
        ["verify", tmp_path],                                     # nothing to check
        ["verify", dl, "--torrent", tmp_path / "missing.torrent"],
        ["verify", dl, "--hashes", "v3"],
        ["verify", dl, "--peer", "127.0.0.1:1"],                   # --peer without --repair
    ]
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"d4:infoi1ee")
    cases.append(["verify", dl, "--torrent", bad])
    for args in cases:
        code, _, err = run_cli(args)
        assert code == 2, (args, err)
        assert "Traceback" not in err and err.count("error:") == 1


def test_preset_used_without_model_config(dl, run_cli):
    (dl / "grok-tiny" / "model-config.json").unlink()
    code, out, _ = run_cli(["verify", dl, "--preset", "tiny", "--no-structure", "--json"])
    # the torrent still lists model-config.json: it is missing, the rest is fine
    res = last_json(out)
    assert code == 1 and {(f["kind"], f["path"]) for f in res["findings"]} == {
        ("missing", "model-config.json")}
    code, out, _ = run_cli(["verify", dl / "grok-tiny", "--structure", "--preset", "tiny",
                            "--manifest", "/dev/null"])
    assert code == 2


def test_repair_from_a_local_seeder(dl, pristine, run_cli, monkeypatch):
    """Repair run as ``verify . --repair`` from inside the top folder ("." has no name)."""
    from grokfetch.torrent.seed import Seeder

    root = dl / "grok-tiny"
    good = {p: (pristine[0] / "grok-tiny" / p).read_bytes()
            for p in ("ckpt-0/tensor00000_000", "ckpt-0/tensor00003_000",
                      "ckpt-0/tensor00005_000", "ckpt-0/tensor00007_000")}
    flip(root / "ckpt-0/tensor00000_000", 100_000)
    os.truncate(root / "ckpt-0/tensor00003_000", 50)
    (root / "ckpt-0/tensor00005_000").unlink()
    with open(root / "ckpt-0/tensor00007_000", "ab") as f:
        f.write(b"!!")
    bad_pieces = verify(dl, structure=False).pieces_bad
    assert bad_pieces and bad_pieces < 20
    monkeypatch.chdir(root)
    with Seeder(pristine[0], listen=("127.0.0.1", 0)) as seeder:
        seeder.wait_ready()
        code, out, err = run_cli(["verify", ".", "--repair", "--peer", f"127.0.0.1:{seeder.port}",
                                  "--json"])
        uploaded = seeder.uploaded
    assert code == 0, err
    res = last_json(out)
    assert res["ok"] and "repair" in res["checks"]
    assert sorted(res["repaired"]) == sorted(good)
    for p, data in good.items():
        assert (root / p).read_bytes() == data
    # only the bad pieces travelled (the whole torrent is about 30x more)
    assert 0 < uploaded <= bad_pieces * PIECE
    assert uploaded < lt.torrent_info(pristine[1]).total_size() // 10
    assert not (root / "grok-tiny").exists()   # no second tree inside the top folder


def test_repair_refuses_a_renamed_top_folder(dl, pristine, run_cli):
    """Files under ``my-model/`` of a torrent named ``grok-tiny``: verify finds them there, but
    libtorrent would repair into a new ``grok-tiny/``, so repair refuses and says what to do."""
    root = dl / "my-model"
    (dl / "grok-tiny").rename(root)
    rel = "ckpt-0/tensor00000_000"
    flip(root / rel, 100_000)
    bad = (root / rel).read_bytes()
    report = verify(root, structure=False)
    assert [f.path for f in report.findings if f.severity == "error"] == [rel]
    code, _, err = run_cli(["verify", root, "--repair", "--peer", "127.0.0.1:9", "--json"])
    assert code == 2, err
    assert "refusing to repair" in err and "'grok-tiny'" in err and f"mv {root} " in err
    assert not (dl / "grok-tiny").exists()
    assert (root / rel).read_bytes() == bad   # nothing touched
    # with the name taken by another folder, the hint does not suggest the clash
    (dl / "grok-tiny").mkdir()
    code, _, err = run_cli(["verify", root, "--repair", "--peer", "127.0.0.1:9"])
    assert code == 2 and "already exists" in err and "mv " not in err
    assert list((dl / "grok-tiny").iterdir()) == []


def test_repair_needs_a_torrent(tiny_ckpt, tmp_path, run_cli):
    root = tmp_path / "c"
    shutil.copytree(tiny_ckpt, root)
    code, _, err = run_cli(["verify", root, "--repair"])
    assert code == 2 and "needs a torrent" in err


def test_parser_agrees_with_libtorrent(pristine):
    tb = pristine[1]
    t, ti = parse_torrent(tb), lt.torrent_info(tb)
    fs = ti.layout()
    assert t.infohash_v1 == str(ti.info_hashes().v1) and t.name == ti.name()
    assert t.piece_length == ti.piece_length() and t.num_pieces_v1 == ti.num_pieces()
    assert [(f.path, f.size, f.offset) for f in t.files] == [
        (fs.file_path(i).split("/", 1)[1], fs.file_size(i), fs.file_offset(i))
        for i in range(fs.num_files())]
    assert all(t.v1_pieces[20 * p:20 * p + 20] == ti.hash_for_piece(p) for p in range(ti.num_pieces()))


@pytest.mark.parametrize("data", [b"", b"d4:infoi1ee", b"d4:infod4:name1:xee", b"i01e", b"l",
                                  b"d3:abc", b"5:ab", b"d4:infod4:name2:..12:piece lengthi16384e"
                                  b"6:pieces20:aaaaaaaaaaaaaaaaaaaa6:lengthi5eeee", b"x"])
def test_bad_torrents_are_usage_errors(data):
    from grokfetch.errors import UsageError

    with pytest.raises(UsageError):
        parse_torrent(data)


def test_saved_download_is_found_from_the_folder_or_below_and_must_be_unambiguous(dl):
    from grokfetch.errors import UsageError
    from grokfetch.integrity.dlstate import find_download

    content = dl / "grok-tiny"
    for path, parents in ((dl, 1), (content, 1), (content / "ckpt-0", 2)):
        saved = find_download(path, parents)
        assert saved is not None and saved.torrent.name == "grok-tiny"
        assert saved.content_root == content and saved.selected is None
    assert find_download(content / "ckpt-0", parents=0) is None
    # a second download in the same folder: each folder still picks its own torrent ...
    other = dl / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(os.urandom(40_000))
    (other / "y.bin").write_bytes(os.urandom(10))
    tb = make_torrent(other)
    (dl / ".grokfetch" / f"{lt.torrent_info(tb).info_hashes().v1}.torrent").write_bytes(tb)
    assert find_download(content).torrent.name == "grok-tiny"
    assert find_download(other).torrent.name == "other"
    # ... and the folder above both is ambiguous: one line saying how to choose
    with pytest.raises(UsageError, match="2 saved torrents") as exc:
        find_download(dl)
    assert "--torrent" in exc.value.hint


def test_single_file_torrent(tmp_path):
    src = tmp_path / "one.bin"
    src.write_bytes(os.urandom(100_000))
    fl = lt.list_files(str(src))
    ct = lt.create_torrent(fl, PIECE, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(tmp_path))
    t = parse_torrent(lt.bencode(ct.generate()))
    assert not t.multi_file and [f.path for f in t.files] == ["one.bin"]
    assert check_torrent(tmp_path, t).ok
    flip(src, 99_999)
    r = check_torrent(tmp_path, t)
    assert [(f.kind, f.path, f.pieces) for f in r.findings] == [("corrupted", "one.bin", [6])]


def test_work_split_into_many_items_gives_the_same_answer(dl, pristine, monkeypatch):
    import grokfetch.integrity.manifest as vm
    import grokfetch.integrity.pieces as vp

    rel = "ckpt-0/tensor00000_000"
    flip(dl / "grok-tiny" / rel, 200_000)
    flip(dl / "grok-tiny" / rel, 5)
    monkeypatch.setattr(vp, "WORK_ITEM", 3 * PIECE)     # ~90 items instead of 1
    monkeypatch.setattr(vp, "DEFAULT_BLOCK", 2 * PIECE)  # several blocks per item
    r = check_torrent(dl / "grok-tiny", parse_torrent(pristine[1]), jobs=3)
    want = sorted({lt_piece(pristine[1], rel, 5), lt_piece(pristine[1], rel, 200_000)})
    assert [(f.kind, f.path, f.pieces) for f in r.findings] == [("corrupted", rel, want)]
    monkeypatch.setattr(vm, "WORK_ITEM", 2 * 10_000)
    m = vm.write_manifest(dl / "grok-tiny", dl / "m.json", chunk_size=10_000)
    flip(dl / "grok-tiny" / rel, 123_456)
    r = vm.check_manifest(dl / "grok-tiny", m, jobs=3)
    assert [(f.kind, f.path, f.pieces) for f in r.findings] == [("corrupted", rel, [12])]


def test_block_reader_zero_extents_and_short_reads(tmp_path):
    from grokfetch.integrity.hashio import BlockReader, Extent, ShortReadError

    a = tmp_path / "a"
    a.write_bytes(b"A" * 10)
    blocks = [bytes(mv) for mv in BlockReader([Extent(a, 2, 8), Extent(None, 0, 5),
                                               Extent(a, 0, 3)], block=4)]
    assert b"".join(blocks) == b"A" * 8 + b"\0" * 5 + b"AAA"
    assert [len(b) for b in blocks] == [4, 4, 4, 4]
    with pytest.raises(ShortReadError):
        list(BlockReader([Extent(a, 0, 11)], block=4))


@pytest.mark.skipif(not shutil.which("aria2c"), reason="aria2c not installed")
def test_aria2c_agrees_on_clean_and_corrupt(dl, pristine):
    """An independent BitTorrent implementation reaches the same verdict."""
    import subprocess

    tfile = next((dl / ".grokfetch").glob("*.torrent"))
    cmd = ["aria2c", "--check-integrity=true", "--hash-check-only=true", "--enable-dht=false",
           "--bt-enable-lpd=false", "--disable-ipv6=true", "--summary-interval=0",
           f"--dir={dl}", str(tfile)]
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    assert verify(dl, structure=False).ok
    flip(dl / "grok-tiny" / "ckpt-0/tensor00004_000", 1000)
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode != 0
    assert not verify(dl, structure=False).ok


def test_check_file_one_file_at_a_time(dl, pristine):
    from grokfetch.integrity.pieces import check_file

    tfile = next((dl / ".grokfetch").glob("*.torrent"))
    root = dl / "grok-tiny"
    t = parse_torrent(pristine[1])
    files = t.data_files()
    # a file whose first piece is shared with the previous file
    k = next(k for k in range(1, len(files)) if files[k].offset % PIECE and files[k].size > PIECE)
    prev, target = files[k - 1], files[k]
    assert check_file(tfile, root / target.path, root=dl).ok
    (root / prev.path).unlink()  # the neighbour is gone: its shared piece cannot be checked
    r = check_file(tfile, root / target.path, root=dl)
    assert r.ok and [(f.kind, f.path, f.severity) for f in r.findings] == [
        ("missing", prev.path, "warning"), ("unverified", target.path, "warning")]
    flip(root / target.path, target.size - 1)
    r = check_file(tfile, root / target.path, root=dl)
    assert not r.ok and [f.path for f in r.errors] == [target.path]
    from grokfetch.errors import UsageError

    with pytest.raises(UsageError):
        check_file(tfile, dl / "elsewhere", root=dl)


def test_selective_download_is_verified_and_repaired_as_selected(pristine, tmp_path, run_cli):
    from grokfetch.torrent.job import DownloadOptions, download
    from grokfetch.torrent.seed import Seeder

    tfile = next((pristine[0] / ".grokfetch").glob("*.torrent"))
    dl2 = tmp_path / "dl2"
    net = dict(dht=False, lsd=False, upnp=False, utp=False, trackers=False,
               listen="127.0.0.1:0", timeout=60)
    with Seeder(pristine[0], listen=("127.0.0.1", 0)) as seeder:
        seeder.wait_ready()
        peer = f"127.0.0.1:{seeder.port}"
        download(tfile, dl2, DownloadOptions(peers=[peer], include=["ckpt-0/tensor0000*"], **net))
        code, out, err = run_cli(["verify", dl2, "--json"])   # no model-config.json: grok-1
        assert code == 2 and "--preset" in err
        code, out, err = run_cli(["verify", dl2, "--json", "--preset", "tiny"])
        assert code == 0, err
        res = last_json(out)
        assert "10 of 148 files" in res["sources"]["selection"]
        assert all(f["severity"] == "warning" for f in res["findings"])
        code, out, _ = run_cli(["verify", dl2, "--json", "--all-files", "--preset", "tiny"])
        assert code == 1 and last_json(out)["counts"]["missing"] >= 100

        root = dl2 / "grok-tiny"
        rel = "ckpt-0/tensor00003_000"
        good = (pristine[0] / "grok-tiny" / rel).read_bytes()
        flip(root / rel, 50_000)
        code, out, _ = run_cli(["verify", dl2, "--json", "--preset", "tiny"])
        assert code == 1 and [f["path"] for f in last_json(out)["findings"]
                              if f["severity"] == "error"] == [rel]
        code, out, err = run_cli(["verify", dl2, "--repair", "--peer", peer, "--json",
                                  "--preset", "tiny"])
    assert code == 0, err
    assert last_json(out)["repaired"] == [rel]
    assert (root / rel).read_bytes() == good
    assert not (root / "ckpt-0/tensor00050_000").exists()   # the selection was kept
    # the resume data does not claim pieces nobody checked (a later, wider download needs them)
    atp = lt.read_resume_data((dl2 / ".grokfetch" / f"{tfile.stem}.resume").read_bytes())
    have = {i for i, h in enumerate(atp.have_pieces) if h}
    ti = lt.torrent_info(pristine[1])
    fs = ti.layout()
    selected = set()
    for i in range(fs.num_files()):
        if fs.file_name(i).startswith("tensor0000") and fs.file_size(i):
            selected |= set(range(ti.map_file(i, 0, 1).piece,
                                  ti.map_file(i, fs.file_size(i) - 1, 1).piece + 1))
    assert have and have <= selected and len(selected) < ti.num_pieces() // 2


def test_repair_hybrid_torrent_checked_with_v2(tiny_ckpt, tmp_path, run_cli):
    """v2 findings (per-file pieces) are mapped to libtorrent's piece numbers for the repair."""
    from grokfetch.torrent.seed import Seeder

    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(tiny_ckpt, src / "grok-tiny")
    tb = make_torrent(src / "grok-tiny", 0, piece=32 * 1024)
    ti = lt.torrent_info(tb)
    tfile = tmp_path / "hybrid.torrent"
    tfile.write_bytes(tb)
    shutil.copytree(src, dst)
    # saved up front: the download job cannot re-encode a hybrid torrent's piece layers yet
    (dst / ".grokfetch").mkdir()
    (dst / ".grokfetch" / f"{ti.info_hashes().v1}.torrent").write_bytes(tb)
    rel = "ckpt-0/tensor00002_000"
    flip(dst / "grok-tiny" / rel, 40_000)
    with Seeder(src, torrent=tfile, listen=("127.0.0.1", 0)) as seeder:
        seeder.wait_ready()
        code, out, err = run_cli(["verify", dst, "--torrent", tfile, "--repair", "--peer",
                                  f"127.0.0.1:{seeder.port}", "--json"])
        uploaded = seeder.uploaded
    assert code == 0, err
    res = last_json(out)
    assert res["repaired"] == [rel] and "torrent v2 SHA-256" in res["checks"]
    assert (dst / "grok-tiny" / rel).read_bytes() == (src / "grok-tiny" / rel).read_bytes()
    assert 0 < uploaded <= ti.piece_length()
