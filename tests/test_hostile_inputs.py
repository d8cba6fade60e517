"""Inputs that look complete but are not: holes in full-size shards, impossible scales, a
planted ``.grokfetch`` symlink."""

from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from outputs import error_line

from grokfetch.checkpoint.pickle_format import scan
from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.torrent.create import create_torrent


@pytest.fixture
def download(tmp_path, tiny_ckpt) -> Path:
    """A finished download folder: ``dl/grok-tiny`` plus its saved torrent."""
    dl = tmp_path / "dl"
    shutil.copytree(tiny_ckpt, dl / "grok-tiny")
    (dl / ".grokfetch").mkdir()
    create_torrent(dl / "grok-tiny", dl / ".grokfetch" / "t.torrent", piece_size=16384)
    return dl / "grok-tiny"


def _damage(path: Path, how: str, keep: int = 4096) -> bytes:
    """What a preallocated file looks like after ``kill -9``: full size, a valid header and
    tail, and between them a never-written range: ``sparse`` (a hole, as libtorrent's sparse
    mode leaves it) or ``zeros`` (written as zeros, as a preallocating file system shows it).
    Returns the original bytes."""
    original = path.read_bytes()
    with open(path, "r+b") as f:
        if how == "sparse":
            f.truncate(keep)
            f.truncate(len(original))
        else:
            f.seek(keep)
            f.write(bytes(len(original) - 2 * keep))
        f.seek(len(original) - keep)
        f.write(original[-keep:])
    return original


@pytest.mark.parametrize("how", ["sparse", "zeros"])
@pytest.mark.parametrize("target", ["gguf", "safetensors", "jax"])
def test_unwritten_range_in_full_size_shard_is_refused(download, tmp_path, run_cli, target, how):
    ck = open_checkpoint(download)
    spec = ck.table[0]  # the embedding, the largest file
    path = ck.file_path(spec)
    original = _damage(path, how)
    assert path.stat().st_size == spec.file_bytes
    out = tmp_path / "out"
    code, _, err = run_cli(["convert", download, "--to", target, "--out", out])
    assert code == 1 and "Traceback" not in err
    problem = "has unwritten (sparse) ranges" if how == "sparse" else \
        "fails the saved torrent's piece hashes"
    assert error_line(err).startswith(f"error: {path}: ") and problem in err
    assert "grokfetch verify" in " ".join(err.split())
    assert not out.exists()
    path.write_bytes(original)  # repaired: the rerun completes
    code, _, err = run_cli(["convert", download, "--to", target, "--out", out])
    assert code == 0, err
    assert "warning" not in err


def test_without_a_torrent_convert_says_it_did_not_hash(tiny_ckpt, tmp_path, run_cli):
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--layers", "1",
                            "--out", tmp_path / "out"])
    assert code == 0
    assert "no saved torrent" in err and "grokfetch verify" in " ".join(err.split())


def test_state_folder_symlink_leading_outside_is_refused(download, tmp_path, run_cli):
    dl = download.parent
    shutil.move(dl / ".grokfetch", tmp_path / "elsewhere")
    (dl / ".grokfetch").symlink_to(tmp_path / "elsewhere")
    code, _, err = run_cli(["convert", download, "--to", "gguf", "--out", tmp_path / "out"])
    assert code == 1 and error_line(err).startswith("error: refusing path '.grokfetch'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value,problem", [(0.0, "1 zero scales"), (np.nan, "1 non-finite"),
                                           (np.inf, "1 non-finite")])
@pytest.mark.parametrize("target", ["gguf", "safetensors", "jax"])
def test_convert_refuses_impossible_scales(tiny_ckpt, tmp_path, run_cli, target, value, problem):
    ck_dir = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck_dir)
    ck = open_checkpoint(ck_dir)
    spec = ck.table.get("attn_k", 0)
    path = ck.file_path(spec)
    data = bytearray(path.read_bytes())
    ref = scan(bytes(data), str(path))
    data[ref.scales.offset + 6:ref.scales.offset + 8] = \
        np.array([value], dtype=ml_dtypes.bfloat16).tobytes()
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    code, _, err = run_cli(["convert", ck_dir, "--to", target, "--out", out])
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: {spec.path}: {problem}")
    assert not out.exists()


# --- bounds on parsed numbers -------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"size": 100_000_000, "chunk_size": 1},     # 4.8 GB and 55 s in the old code
    {"size": 10**400},                           # OverflowError in the old code
    {"size": 2**60},
    {"chunk_size": 2**70},
    {"chunk_size": True},
    {"size": 100_000_000_000, "chunk_size": 4096},  # 24M chunks
])
def test_manifest_numbers_are_bounded(tmp_path, run_cli, change):
    import json

    root = tmp_path / "d"
    root.mkdir()
    (root / "a.bin").write_bytes(b"x" * 10)
    entry = {"path": "a.bin", "size": 10, "hash": "00"}
    doc = {"format": "grokfetch-manifest", "version": 1, "algo": "sha256", "chunk_size": 65536,
           "files": [entry]}
    for k, v in change.items():
        (doc if k == "chunk_size" else entry)[k] = v
    (root / "grokfetch-manifest.json").write_text(json.dumps(doc))
    code, _, err = run_cli(["verify", root, "--manifest", root / "grokfetch-manifest.json"])
    assert code == 2, err
    assert error_line(err).startswith("error: bad manifest") and "Traceback" not in err
    assert len(err) < 400


def test_manifest_too_large_is_refused_unread(tmp_path):
    from grokfetch.errors import UsageError
    from grokfetch.integrity.manifest import MAX_MANIFEST_BYTES, load_manifest

    big = tmp_path / "m.json"
    with open(big, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 10)  # sparse: costs no disk
    with pytest.raises(UsageError, match="larger than"):
        load_manifest(big)


def test_config_is_taken_only_from_the_checkpoint_folder(tiny_ckpt, tmp_path, run_cli):
    import json

    from grokfetch.spec import PRESETS

    outer = tmp_path / "outer"
    shutil.copytree(tiny_ckpt, outer / "ck")
    (outer / "ck" / "model-config.json").unlink()
    bad = PRESETS["tiny"].to_json()
    bad["config"]["num_layers"] = 2_000_000  # about 70 minutes of table building in the old code
    (outer / "model-config.json").write_text(json.dumps(bad))
    (outer / "ck" / "model-config.json").write_text(json.dumps(bad))
    code, _, err = run_cli(["inspect", outer / "ck"])
    assert code == 2 and error_line(err).startswith("error: bad model config") and "num_layers" in err
    (outer / "ck" / "model-config.json").unlink()  # the parent's is never picked up
    code, out, err = run_cli(["inspect", outer / "ck", "--preset", "tiny"])
    assert code == 0, err


# --- torrents -----------------------------------------------------------------------------------


def _torrent_with(info_change, files):
    import hashlib

    import libtorrent as lt

    data = b"".join(b"a" * f[0] for f in files)
    info = {b"name": b"t", b"piece length": 16384,
            b"pieces": hashlib.sha1(data).digest() if data else b"",
            b"files": [{b"length": n, b"path": [p.encode()], **extra} for n, p, extra in files]}
    info.update(info_change)
    return lt.bencode({b"info": info})


@pytest.mark.parametrize("change", [{b"files": 5}, {b"files": b"x"}, {b"piece length": 2**40},
                                    {b"pieces": b"\0" * 40}])
def test_torrent_fields_are_checked(tmp_path, run_cli, change):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.bin").write_bytes(b"a" * 100)
    tfile = tmp_path / "x.torrent"
    tfile.write_bytes(_torrent_with(change, [(100, "a.bin", {})]))
    code, _, err = run_cli(["verify", tmp_path, "--torrent", tfile])
    assert code == 2, err
    assert error_line(err).startswith("error: bad torrent") and "Traceback" not in err


def test_bep47_symlink_entry_is_refused_and_the_folder_stays_usable(tmp_path, run_cli):
    import libtorrent as lt

    from grokfetch.errors import UnsafePathError
    from grokfetch.fsutil import refuse_symlink_entries
    from grokfetch.integrity.torrentfile import parse_torrent

    link = {b"attr": b"l", b"symlink path": [b"t", b"loop"]}
    data = _torrent_with({}, [(100, "a.bin", {}), (0, "loop", link)])
    assert parse_torrent(data).files[1].unsafe.startswith("a BEP-47 symlink entry")
    with pytest.raises(UnsafePathError, match="BEP-47 symlink entry"):
        refuse_symlink_entries(lt.torrent_info(data), tmp_path)
    # a folder where an older tool already created the self-loop: verify reports, never dies
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.bin").write_bytes(b"a" * 100)
    (tmp_path / "t" / "loop").symlink_to("loop")
    tfile = tmp_path / "x.torrent"
    tfile.write_bytes(data)
    code, out, err = run_cli(["verify", tmp_path, "--torrent", tfile, "--no-structure"])
    assert code == 1 and "Traceback" not in out + err
    assert "unsafe" in out and "loop" in out
    plain = tmp_path / "plain.torrent"
    plain.write_bytes(_torrent_with({}, [(100, "a.bin", {})]))
    code, out, err = run_cli(["verify", tmp_path, "--torrent", plain, "--no-structure"])
    assert code == 0, out + err


def test_verify_refuses_a_state_folder_link_leading_outside(download, tmp_path, run_cli):
    dl = download.parent
    shutil.move(dl / ".grokfetch", tmp_path / "elsewhere")
    (dl / ".grokfetch").symlink_to(tmp_path / "elsewhere")
    code, out, err = run_cli(["verify", dl])
    assert code == 1 and "Traceback" not in out + err
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        ["error: refusing path '.grokfetch' (resolves outside the folder (symlink)): it must stay "
         f"inside {dl}"]


def test_full_disk_with_sparse_shards_never_sigbus(tiny_ckpt, tmpfs, fill_disk, tmp_path):
    """What a download stopped by a full disk leaves: full-size files with never-written ranges
    on a file system with no free page. Reading a hole through a memory map there is SIGBUS
    (exit 135); every command must end with one clean line instead (real processes, so a crash
    shows as an exit code)."""
    import subprocess
    import sys

    from grokfetch.integrity.manifest import write_manifest

    mnt = tmpfs("16m")
    dl = mnt / "dl"
    shutil.copytree(tiny_ckpt, dl / "grok-tiny")
    (dl / ".grokfetch").mkdir()
    create_torrent(dl / "grok-tiny", dl / ".grokfetch" / "t.torrent", piece_size=16384)
    write_manifest(dl / "grok-tiny", tmp_path / "m.json")
    path = dl / "grok-tiny" / "ckpt-0" / "tensor00000_000"
    original = _damage(path, "sparse", keep=4096)
    fill_disk(mnt / "ballast")

    def cli(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "grokfetch", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    runs = [cli("verify", dl), cli("verify", dl / "grok-tiny", "--manifest", tmp_path / "m.json"),
            cli("convert", dl / "grok-tiny", "--to", "gguf", "--out", tmp_path / "out"),
            cli("smoke", dl / "grok-tiny", "--platform", "cpu", "--max-new-tokens", "1")]
    for r in runs:
        assert r.returncode == 1, (r.args, r.returncode, r.stderr[-1500:])
        assert "Traceback" not in r.stdout + r.stderr
        assert path.name in r.stdout + r.stderr
        assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "out").exists()
    (mnt / "ballast").unlink()
    path.write_bytes(original)
    assert cli("verify", dl).returncode == 0
    assert cli("verify", dl / "grok-tiny", "--manifest", tmp_path / "m.json").returncode == 0
