"""``grokfetch torrent create``: deterministic v1 torrents, checked against hashlib SHA-1."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from grokfetch.torrent.create import create_torrent

lt = pytest.importorskip("libtorrent")


def payload_files(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.is_file()),
                  key=lambda p: str(p.relative_to(root.parent)))


def test_torrent_is_deterministic_and_matches_hashlib(tmp_path, tiny_ckpt):
    a = create_torrent(tiny_ckpt, tmp_path / "a.torrent", piece_size=32 * 1024)
    # a copy with other mtimes, a state folder and a partial file must give the same bytes
    copy = tmp_path / "elsewhere" / tiny_ckpt.name
    shutil.copytree(tiny_ckpt, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1_000_000, 1_000_000))
    (copy / ".grokfetch").mkdir()
    (copy / ".grokfetch" / "x.resume").write_bytes(b"junk")
    (copy / "ckpt-0" / "tensor00000_000.partial").write_bytes(b"junk")
    b = create_torrent(copy, tmp_path / "b.torrent", piece_size=32 * 1024)
    assert (tmp_path / "a.torrent").read_bytes() == (tmp_path / "b.torrent").read_bytes()
    assert a.infohash == b.infohash

    top = lt.bdecode((tmp_path / "a.torrent").read_bytes())
    assert b"creation date" not in top and top[b"created by"] == b"grokfetch"
    info = top[b"info"]
    assert b"meta version" not in info and b"piece layers" not in top   # v1 only
    assert info[b"name"] == tiny_ckpt.name.encode() and info[b"piece length"] == 32 * 1024
    files = payload_files(tiny_ckpt)
    assert [b"/".join(f[b"path"]).decode() for f in info[b"files"]] == \
        [str(p.relative_to(tiny_ckpt)) for p in files]
    blob = b"".join(p.read_bytes() for p in files)
    want = b"".join(hashlib.sha1(blob[i:i + 32 * 1024]).digest() for i in range(0, len(blob), 32 * 1024))
    assert info[b"pieces"] == want
    assert a.infohash == hashlib.sha1(lt.bencode(info)).hexdigest()
    assert a.bytes == len(blob) and a.num_pieces == len(want) // 20


def test_cli_create_and_errors(tmp_path, run_cli, tiny_ckpt):
    out = tmp_path / "t.torrent"
    code, stdout, err = run_cli(["torrent", "create", tiny_ckpt, "-o", out, "--piece-size", "64KiB"])
    assert code == 0, err
    ti = lt.torrent_info(str(out))
    assert ti.piece_length() == 65536 and str(ti.info_hashes().v1) in stdout
    assert run_cli(["torrent", "create", tiny_ckpt, "-o", out])[0] == 2            # exists
    assert run_cli(["torrent", "create", tiny_ckpt, "-o", out, "--force"])[0] == 0
    code, _, err = run_cli(["torrent", "create", tiny_ckpt, "-o", tmp_path / "x", "--piece-size", "1000"])
    assert code == 2 and "power of two" in err
    code, _, err = run_cli(["torrent", "create", tmp_path / "missing", "-o", tmp_path / "y"])
    assert code == 2 and "not found" in err
