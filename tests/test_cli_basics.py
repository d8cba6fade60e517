"""The CLI frame: inspect, fixture, error lines and exit codes, start-up cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from grokfetch.spec import layer_file_order

INSPECT_KEYS = {"index", "file", "path", "shape", "dtype", "quantized", "scales_shape",
                "payload_bytes", "file_bytes", "gguf_name"}


def test_inspect_grok1_json(run_cli):
    code, out, err = run_cli(["inspect", "--preset", "grok-1", "--json"])
    assert code == 0, err
    rows = json.loads(out)["tensors"]
    assert len(rows) == 770
    assert INSPECT_KEYS <= set(rows[0])
    assert sum(r["payload_bytes"] for r in rows) == 318_239_694_848
    order = [str(x) for x in layer_file_order(64)]
    for layer in range(64):
        base = 2 + 12 * order.index(str(layer))
        block = rows[base:base + 12]
        assert all(f"decoder_layer_{layer}/" in r["path"] for r in block)
        assert [r["index"] for r in block] == list(range(base, base + 12))


def test_inspect_human_table(run_cli):
    code, out, _ = run_cli(["inspect", "--preset", "tiny"])
    assert code == 0
    assert "tensor00000_000" in out and "total payload" in out
    assert "blk.10.ffn_down_exps.weight" in out


def test_inspect_fixture_dir(run_cli, tiny_ckpt):
    code, out, err = run_cli(["inspect", tiny_ckpt, "--json"])
    assert code == 0, err
    rows = json.loads(out)["tensors"]
    assert len(rows) == 146 and {r["status"] for r in rows} == {"ok"}


def test_inspect_reports_missing(run_cli, tiny_ckpt, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "ckpt-0" / "tensor00100_000").unlink()
    code, out, _ = run_cli(["inspect", ck, "--json"])
    assert code == 1
    rows = {r["index"]: r for r in json.loads(out)["tensors"]}
    assert rows[100]["status"] == "missing"
    assert sum(r["status"] != "ok" for r in rows.values()) == 1


def test_usage_errors_are_one_line_exit_2(run_cli, tmp_path):
    for args in (["inspect", tmp_path / "missing"], ["inspect", "--preset", "nope"]):
        code, out, err = run_cli(args)
        assert code == 2, (args, err)
        assert "Traceback" not in err
        assert err.strip().splitlines()[0].startswith("error:")
    code, _, err = run_cli(["inspect", "--preset", "nope"])
    assert "grok-1" in err and "mini" in err  # says what to do


def test_fixture_command(run_cli, tmp_path):
    code, out, err = run_cli(["fixture", tmp_path / "fx", "--preset", "tiny", "--json"])
    assert code == 0, err
    data = json.loads(out.strip().splitlines()[-1])
    assert data["files"] == 146
    assert (tmp_path / "fx" / "model-config.json").is_file()
    code, _, err = run_cli(["fixture", tmp_path / "fx", "--preset", "tiny"])
    assert code == 2 and "--force" in err


def _run_module(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grokfetch", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_python_m_and_debug_traceback(tmp_path):
    proc = _run_module(["--help"])
    assert proc.returncode == 0 and "inspect" in proc.stdout
    proc = _run_module(["inspect", str(tmp_path / "missing")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = _run_module(["inspect", str(tmp_path / "missing")], GROKFETCH_DEBUG="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_cli_import_is_light():
    code = ("import sys, grokfetch.cli; heavy = [m for m in ('jax', 'libtorrent', 'tensorstore', "
            "'orbax', 'safetensors', 'gguf', 'sentencepiece') if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
