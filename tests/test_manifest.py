"""grokfetch manifests: create, check, cross-check with hashlib / sha256sum, hostile paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import xxhash

from grokfetch.integrity.manifest import (
    MANIFEST_NAME,
    StreamHasher,
    build_manifest,
    check_manifest,
    list_files,
    load_manifest,
    write_manifest,
)


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path) -> Path:
    """A private copy of the tiny fixture checkpoint."""
    dst = tmp_path / "grok-tiny"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def _kinds(report) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in report.findings:
        out.setdefault(f.kind, []).append(f)
    return out


def test_sha256_manifest_matches_hashlib_and_sha256sum(ckpt):
    chunk = 64 * 1024
    doc = build_manifest(ckpt, algo="sha256", chunk_size=chunk, jobs=2)
    assert doc["format"] == "grokfetch-manifest" and doc["version"] == 1
    paths = [e["path"] for e in doc["files"]]
    assert paths == sorted(str(p.relative_to(ckpt).as_posix()) for p in ckpt.rglob("*") if p.is_file())
    for e in doc["files"]:
        data = (ckpt / e["path"]).read_bytes()
        assert e["size"] == len(data)
        assert e["hash"] == hashlib.sha256(data).hexdigest()
        assert e["chunks"] == [hashlib.sha256(data[i:i + chunk]).hexdigest()
                               for i in range(0, len(data), chunk)]
    if shutil.which("sha256sum"):
        files = [e["path"] for e in doc["files"]][:20]
        res = subprocess.run(["sha256sum", *files], cwd=ckpt, capture_output=True, text=True,
                             check=True)
        sums = {line.split(None, 1)[1].strip(): line.split()[0] for line in res.stdout.splitlines()}
        for e in doc["files"][:20]:
            assert sums[e["path"]] == e["hash"]


def test_xxh3_default_and_stream_hasher_agree(ckpt):
    doc = build_manifest(ckpt, chunk_size=100_000)
    assert doc["algo"] == "xxh3_128"
    e = next(e for e in doc["files"] if e["path"] == "ckpt-0/tensor00000_000")
    data = (ckpt / e["path"]).read_bytes()
    assert e["hash"] == xxhash.xxh3_128(data).hexdigest()
    sh = StreamHasher("xxh3_128", 100_000)
    for i in range(0, len(data), 7777):  # odd write sizes straddle chunk boundaries
        sh.update(data[i:i + 7777])
    assert sh.entry(e["path"]) == e


def test_clean_check_then_each_kind_of_damage(ckpt, tmp_path):
    chunk = 64 * 1024
    mpath = write_manifest(ckpt, chunk_size=chunk)
    assert mpath == ckpt / MANIFEST_NAME
    r = check_manifest(ckpt, mpath)
    assert r.ok and r.findings == [] and r.files_checked == len(load_manifest(mpath)["files"])

    big = ckpt / "ckpt-0/tensor00000_000"
    pos = 3 * chunk + 123
    b = bytearray(big.read_bytes())
    b[pos] ^= 0x40
    big.write_bytes(b)
    os.truncate(ckpt / "ckpt-0/tensor00003_000", 100)
    (ckpt / "ckpt-0/tensor00005_000").unlink()
    with open(ckpt / "ckpt-0/tensor00007_000", "ab") as f:
        f.write(b"xyz")
    (ckpt / "notes.txt").write_text("mine")
    r = check_manifest(ckpt, mpath)
    k = _kinds(r)
    assert not r.ok
    assert [f.path for f in k["corrupted"]] == ["ckpt-0/tensor00000_000"]
    assert k["corrupted"][0].pieces == [3]
    assert k["corrupted"][0].ranges == [(3 * chunk, 4 * chunk)]
    assert [f.path for f in k["truncated"]] == ["ckpt-0/tensor00003_000"]
    assert k["truncated"][0].ranges[0][0] == 100
    assert [f.path for f in k["missing"]] == ["ckpt-0/tensor00005_000"]
    assert [f.path for f in k["oversized"]] == ["ckpt-0/tensor00007_000"]
    assert [(f.path, f.severity) for f in k["extra"]] == [("notes.txt", "warning")]


def test_extra_file_alone_is_a_warning(ckpt, run_cli):
    (ckpt / "model.gguf.partial").write_text("half")
    write_manifest(ckpt)
    assert "model.gguf.partial" not in {e["path"] for e in load_manifest(ckpt / MANIFEST_NAME)["files"]}
    (ckpt / "README").write_text("hi")
    code, out, err = run_cli(["verify", ckpt, "--json", "--no-structure"])
    assert code == 0, err
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["ok"] and doc["counts"] == {"extra": 2}
    partial = next(f for f in doc["findings"] if f["path"] == "model.gguf.partial")
    assert "interrupted" in partial["detail"] and partial["severity"] == "warning"


def test_manifest_with_dotdot_path_is_refused_not_followed(ckpt, tmp_path, run_cli):
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the folder")
    entry = {"path": "../secret.txt", "size": outside.stat().st_size,
             "hash": xxhash.xxh3_128(outside.read_bytes()).hexdigest(),
             "chunks": [xxhash.xxh3_128(outside.read_bytes()).hexdigest()]}
    doc = build_manifest(ckpt)
    doc["files"].append(entry)
    doc["files"].append({**entry, "path": "/etc/hostname"})
    m = tmp_path / "evil.json"
    m.write_text(json.dumps(doc))
    # the hashes match the outside file: following the path would call it good
    code, out, err = run_cli(["verify", ckpt, "--manifest", m, "--json", "--no-structure"])
    assert code == 1
    res = json.loads(out.strip().splitlines()[-1])
    unsafe = sorted(f["path"] for f in res["findings"] if f["kind"] == "unsafe")
    assert unsafe == ["../secret.txt", "/etc/hostname"]
    assert res["counts"] == {"unsafe": 2}


def test_symlink_escaping_the_folder_is_refused(ckpt, tmp_path):
    m = write_manifest(ckpt)
    target = ckpt / "ckpt-0/tensor00002_000"
    copy = tmp_path / "elsewhere"
    shutil.copy(target, copy)
    target.unlink()
    target.symlink_to(copy)  # identical bytes, but outside the folder
    r = check_manifest(ckpt, m)
    assert [(f.kind, f.path) for f in r.findings] == [("unsafe", "ckpt-0/tensor00002_000")]
    with pytest.raises(Exception, match="outside"):
        build_manifest(ckpt)


def test_malformed_manifests_are_usage_errors(ckpt, tmp_path, run_cli):
    good = build_manifest(ckpt, chunk_size=64 * 1024)
    cases = {
        "notjson": "{nope",
        "format": json.dumps({**good, "format": "other"}),
        "version": json.dumps({**good, "version": 99}),
        "algo": json.dumps({**good, "algo": "md5"}),
        "chunks": json.dumps({**good, "files": [{**good["files"][0], "chunks": []}]}),
        "dup": json.dumps({**good, "files": [good["files"][0], good["files"][0]]}),
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        code, _, err = run_cli(["verify", ckpt, "--manifest", p, "--no-structure"])
        assert code == 2, (name, err)
        assert "manifest" in err and "Traceback" not in err


def test_manifest_create_cli(ckpt, tmp_path, run_cli):
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(["manifest", "create", ckpt, "-o", out, "--algo", "sha256",
                                 "--json"])
    assert code == 0, err
    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["files"] == len(list_files(ckpt)) and info["algo"] == "sha256"
    code, _, err = run_cli(["manifest", "create", ckpt, "-o", out])
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(["manifest", "create", ckpt, "-o", out, "--algo", "md5", "--force"])
    assert code == 2 and "md5" in err
    pytest.importorskip("blake3")
    code, _, err = run_cli(["manifest", "create", ckpt, "--algo", "blake3"])
    assert code == 0, err
    import blake3

    doc = json.loads((ckpt / MANIFEST_NAME).read_text())
    assert MANIFEST_NAME not in {e["path"] for e in doc["files"]}
    e = doc["files"][0]
    assert e["hash"] == blake3.blake3((ckpt / e["path"]).read_bytes()).hexdigest()
    # DIR/grokfetch-manifest.json is picked up by default
    code, stdout, err = run_cli(["verify", ckpt, "--json"])
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.strip().splitlines()]  # every line is JSON
    assert any(x.get("event") == "task" for x in lines[:-1])
    res = lines[-1]
    assert res["checks"] == ["structure", "manifest (blake3)"]


def test_mapped_blocks_equal_plain_reads_at_unaligned_offsets(tmp_path):
    import hashlib

    from grokfetch.integrity.hashio import Extent, ShortReadError, mapped_blocks

    data = os.urandom(3 * 1024 * 1024 + 777)
    path = tmp_path / "blob"
    path.write_bytes(data)
    for offset, length, block in ((0, len(data), 1 << 20), (12345, 2_000_001, 65536), (4096, 1, 7)):
        views = list(bytes(v) for v in mapped_blocks(Extent(path, offset, length), block))
        assert all(len(v) <= block for v in views)
        assert hashlib.sha256(b"".join(views)).digest() == hashlib.sha256(data[offset:offset + length]).digest()
    with pytest.raises(ShortReadError):
        list(mapped_blocks(Extent(path, len(data) - 10, 11)))
