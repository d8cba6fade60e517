"""Inputs that look complete but are not: holes in full-size shards, impossible scales, a
planted ``.grokfetch`` symlink."""

from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from grokfetch.checkpoint.pickle_format import scan
from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.torrent.create import create_torrent


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def download(tmp_path, tiny_ckpt) -> Path:
    """A finished download folder: ``dl/grok-tiny`` plus its saved torrent."""
    dl = tmp_path / "dl"
    shutil.copytree(tiny_ckpt, dl / "grok-tiny")
    (dl / ".grokfetch").mkdir()
    create_torrent(dl / "grok-tiny", dl / ".grokfetch" / "t.torrent", piece_size=16384)
    return dl / "grok-tiny"


def _punch_hole(path: Path, keep: int = 4096) -> bytes:
    """What a preallocated file looks like after ``kill -9``: full size, a valid header and
    tail, a never-written (sparse, zero) range between. Returns the original bytes."""
    original = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.truncate(len(original))
        f.seek(len(original) - keep)
        f.write(original[-keep:])
    return original


@pytest.mark.parametrize("target", ["gguf", "safetensors", "jax"])
def test_hole_in_full_size_shard_is_refused_when_a_torrent_is_saved(download, tmp_path, run_cli,
                                                                    target):
    ck = open_checkpoint(download)
    spec = ck.table[0]  # the embedding, the largest file
    path = ck.file_path(spec)
    original = _punch_hole(path)
    assert ck.status(spec).status == "ok"  # size and header cannot tell
    out = tmp_path / "out"
    code, _, err = run_cli(["convert", download, "--to", target, "--out", out])
    assert code == 1
    assert err.startswith(f"error: {path}: fails the saved torrent's piece hashes")
    assert "grokfetch verify" in err and "Traceback" not in err
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
    assert code == 1 and err.startswith("error: refusing path '.grokfetch'")
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
