"""`grokfetch demo` end to end: real seeder, magnet download, verify, convert, smoke."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from json_contract import validate_output


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-m", "grokfetch", "demo", "--workdir", str(tmp_path / "w"),
                           "--keep", "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = validate_output(proc.stdout, "demo", ok=True)
    steps = {s["step"]: s for s in report["steps"]}
    assert len(steps) == 11 and all(s["ok"] for s in steps.values())
    assert "0 hash failures" in steps["download (magnet)"]["detail"]
    # The download through the swarm equals the fixture that was seeded, byte for byte.
    assert steps["download (magnet)"]["bytes"] == steps["fixture"]["bytes"]
    # Lossless outputs must agree exactly with the original, the 4-bit GGUF only loosely.
    for name in ("smoke safetensors --compare", "smoke jax --compare"):
        assert "lossless, identical" in steps[name]["detail"] and "top-1 100%" in steps[name]["detail"]
    assert "lossy" in steps["smoke gguf-q4 --compare"]["detail"]
    assert (tmp_path / "w" / "out" / "gguf-q4").is_dir()


def test_demo_failure_is_reported(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = run_cli(["demo", "--workdir", blocker / "sub", "--preset", "tiny"])
    assert code != 0 and "Traceback" not in err
