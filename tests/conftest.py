"""Shared fixtures: fixture checkpoints written once per session, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from grokfetch.checkpoint.fixture import write_fixture

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_TOKENIZER = SHARED / "grok1" / "tokenizer.model"

# Simulated CPU devices for the JAX tests; must be set before jax is first imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


@pytest.fixture(scope="session")
def mini_ckpt(tmp_path_factory) -> Path:
    """A `mini` fixture checkpoint (about 100 MB), seed 0. Treat it as read-only."""
    out = tmp_path_factory.mktemp("mini") / "grok-mini"
    write_fixture(out, "mini", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A `tiny` fixture checkpoint (about 4 MB), seed 0. Treat it as read-only."""
    out = tmp_path_factory.mktemp("tiny") / "grok-tiny"
    write_fixture(out, "tiny", seed=0)
    return out


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: ``code, stdout, stderr = run_cli(["inspect", "--json"])``."""
    from grokfetch.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def real_tokenizer() -> Path:
    if not REAL_TOKENIZER.is_file():
        pytest.skip(f"real tokenizer not found at {REAL_TOKENIZER}")
    return REAL_TOKENIZER


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs("24m")`` mounts a fresh tmpfs of that size and returns its path (unmounted after
    the test); skips where mounting is not allowed."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture
def fill_disk():
    """``fill_disk(path)`` writes ``path`` until its file system is full (ENOSPC)."""

    def fill(path: Path) -> None:
        with open(path, "wb") as f:
            try:
                while True:
                    f.write(b"\xff" * 65536)
                    f.flush()
            except OSError:
                pass

    return fill
