"""Atomic files, path safety and size parsing."""

from __future__ import annotations

import os

import pytest

from grokfetch.errors import InsufficientSpaceError, UnsafePathError, UsageError
from grokfetch.fsutil import atomic_file, check_free_space, parse_size, safe_join


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert not target.exists() and not (tmp_path / "out.bin.partial").exists()
    with atomic_file(target) as f:
        f.write(b"whole")
        assert (tmp_path / "out.bin.partial").exists() and not target.exists()
    assert target.read_bytes() == b"whole"


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "", "C:x", "a\\b"])
def test_safe_join_refuses_escapes(tmp_path, bad):
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, bad)


def test_safe_join_refuses_symlink_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_join(root, "link/file")
    (root / "sub").mkdir()
    assert safe_join(root, "sub/file") == root / "sub" / "file"


def test_parse_size():
    assert parse_size("50G") == 50 * 10**9
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("1.5M") == 1_500_000
    assert parse_size("4KiB") == 4096
    assert parse_size("123") == 123
    with pytest.raises(UsageError):
        parse_size("lots")


def test_free_space_check(tmp_path):
    check_free_space(tmp_path, 1)
    with pytest.raises(InsufficientSpaceError, match="need"):
        check_free_space(tmp_path, 10**18)
    check_free_space(tmp_path, 10**18, force=True)


@pytest.mark.parametrize("bad", ["inf", "nan", "1e400", "-5", "1e30G"])
def test_parse_size_rejects_non_finite(bad):
    with pytest.raises(UsageError):
        parse_size(bad)


def test_atomic_file_cleans_up_when_the_flush_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        with atomic_file(target) as f:
            f.write(b"x" * 10)
    assert not target.exists() and not (tmp_path / "out.bin.partial").exists()


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_drop_view_pages_leaves_the_resident_set_and_keeps_the_data(tmp_path):
    import numpy as np

    from grokfetch.fsutil import drop_view_pages

    path = tmp_path / "big.bin"
    data = np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8)
    data.tofile(path)
    mm = np.memmap(path, mode="r")
    view = mm[3 << 20:13 << 20].view(np.uint32)   # a view of a view, not page-aligned at the end
    before = _rss_file_kib()
    total = int(view.sum(dtype=np.uint64))
    touched = _rss_file_kib()
    drop_view_pages(view)
    dropped = _rss_file_kib()
    assert touched - before >= 9 << 10 and dropped - before <= 1 << 10
    assert int(view.sum(dtype=np.uint64)) == total == int(data[3 << 20:13 << 20].view(np.uint32).sum(dtype=np.uint64))
    drop_view_pages(np.arange(10))   # not a mapping: nothing happens
