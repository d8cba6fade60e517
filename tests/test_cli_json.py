"""Every command's ``--json`` output, on success and on failure, against docs/json.md's schema."""

from __future__ import annotations

import shutil

import pytest
from json_contract import load_schema, validate_output

from grokfetch.torrent.create import create_torrent
from grokfetch.torrent.seed import Seeder

LOCAL = ["--listen", "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp", "--no-utp", "--no-trackers"]


@pytest.fixture(scope="module")
def tiny_torrent(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("jt") / "tiny.torrent"
    create_torrent(tiny_ckpt, out, piece_size=64 * 1024)
    return out


def test_schema_block_is_versioned():
    schema = load_schema()
    assert schema["schema_version"] == 1
    assert schema["result"]["properties"]["schema_version"]["const"] == 1
    from grokfetch.cli.output import SCHEMA_VERSION

    assert SCHEMA_VERSION == 1


def test_inspect(run_cli, tiny_ckpt, tmp_path):
    code, out, _ = run_cli(["inspect", "--preset", "tiny", "--json"])
    assert code == 0
    r = validate_output(out, "inspect", ok=True)
    assert len(r["tensors"]) == 146 and r["input"] is None
    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "ckpt-0" / "tensor00003_000").unlink()
    code, out, _ = run_cli(["inspect", ck, "--json"])
    assert code == 1
    r = validate_output(out, "inspect", ok=False)
    assert r["error_type"] == "CheckFailed" and "tensor00003_000" in r["error"]
    assert [t["status"] for t in r["tensors"]].count("missing") == 1


def test_fixture(run_cli, tmp_path):
    code, out, _ = run_cli(["fixture", tmp_path / "fx", "--preset", "tiny", "--json"])
    assert code == 0
    r = validate_output(out, "fixture", ok=True)
    assert r["out"] == str(tmp_path / "fx") and r["files"] == 146
    code, out, _ = run_cli(["fixture", tmp_path / "fx", "--preset", "tiny", "--json"])
    assert code == 2
    r = validate_output(out, "fixture", ok=False)
    assert r["error_type"] == "OutputExistsError" and "--force" in r["hint"]


def test_torrent_create_seed_download(run_cli, tiny_ckpt, tiny_torrent, tmp_path):
    t = tmp_path / "t.torrent"
    code, out, _ = run_cli(["torrent", "create", tiny_ckpt, "--out", t, "--json"])
    assert code == 0
    r = validate_output(out, "torrent create", ok=True)
    assert r["out"] == str(t) and r["input"] == str(tiny_ckpt)
    code, out, _ = run_cli(["torrent", "create", tiny_ckpt, "--out", t, "--json"])
    assert code == 2 and validate_output(out, "torrent create", ok=False)["exit_code"] == 2

    with Seeder(tiny_ckpt, tiny_torrent) as s:
        code, out, err = run_cli(["download", tiny_torrent, "--dir", tmp_path / "d", *LOCAL,
                                  "--peer", f"127.0.0.1:{s.port}", "--timeout", "30", "--json"])
    assert code == 0, err
    r = validate_output(out, "download", ok=True)
    assert r["dir"] == str(tmp_path / "d") and r["out"] == str(tmp_path / "d" / tiny_ckpt.name)
    # no peer at all on a fresh folder: stalls, exit 1, the result says why
    code, out, _ = run_cli(["download", tiny_torrent, "--dir", tmp_path / "e", *LOCAL,
                            "--timeout", "1", "--json"])
    assert code == 1
    assert validate_output(out, "download", ok=False)["error_type"] == "DownloadFailed"

    code, out, err = run_cli(["seed", tmp_path / "d", "--torrent", tiny_torrent, *LOCAL[:-1],
                              "--for", "0.5", "--json"])
    assert code == 0, err
    assert validate_output(out, "seed", ok=True)["stopped_by"] == "time"
    code, out, _ = run_cli(["seed", tmp_path / "d", "--until-ratio", "-1", "--json"])
    assert code == 2 and "--until-ratio" in validate_output(out, "seed", ok=False)["error"]


def test_verify_and_manifest(run_cli, tiny_ckpt, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    code, out, _ = run_cli(["manifest", "create", ck, "--json"])
    assert code == 0
    r = validate_output(out, "manifest create", ok=True)
    assert r["out"] == str(ck / "grokfetch-manifest.json")
    code, out, _ = run_cli(["manifest", "create", tmp_path / "nope", "--json"])
    assert code == 2 and validate_output(out, "manifest create", ok=False)["error_type"] == \
        "NotFoundError"
    code, out, _ = run_cli(["verify", ck, "--json"])
    assert code == 0
    assert validate_output(out, "verify", ok=True)["findings"] == []
    victim = ck / "ckpt-0" / "tensor00007_000"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, out, _ = run_cli(["verify", ck, "--json"])
    assert code == 1
    r = validate_output(out, "verify", ok=False)
    assert r["error_type"] == "CheckFailed" and r["input"] == str(ck)
    assert any(f["path"].endswith("tensor00007_000") for f in r["findings"])


def test_convert(run_cli, tiny_ckpt, tmp_path):
    code, out, _ = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--bits", "8", "--out",
                            tmp_path / "g", "--json"])
    assert code == 0
    r = validate_output(out, "convert", ok=True)
    assert r["out"] == str(tmp_path / "g") and r["input"] == str(tiny_ckpt)
    code, out, _ = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--bits", "7", "--out",
                            tmp_path / "h", "--json"])
    assert code == 2 and validate_output(out, "convert", ok=False)["error_type"] == "UsageError"


def test_smoke(run_cli, tiny_ckpt):
    base = ["smoke", tiny_ckpt, "--platform", "cpu", "--tokens", "5,100,7", "--json"]
    # 8 devices: the first JAX start in a test process fixes the device count for the others
    code, out, err = run_cli([*base, "--gpus", "8", "--max-new-tokens", "2", "--layers", "0-1"])
    assert code == 0, err
    r = validate_output(out, "smoke", ok=True)
    assert r["layers"] == 2 and r["input"] == str(tiny_ckpt) and "passed" not in r
    code, out, _ = run_cli([*base, "--gpus", "3"])
    assert code == 2 and "3 devices" in validate_output(out, "smoke", ok=False)["error"]


def test_demo_failure(run_cli):
    code, out, _ = run_cli(["demo", "--preset", "nope", "--json"])
    assert code == 2
    validate_output(out, "demo", ok=False)


@pytest.mark.parametrize("args,command", [
    (["download", "--dir", ".", "--layers", "0-3", "--dry-run"], "download"),
    (["convert", "--preset", "grok-1", "--to", "gguf", "--bits", "4", "--dry-run"], "convert"),
    (["convert", "--preset", "grok-1", "--to", "safetensors", "--dry-run"], "convert"),
    (["smoke", "--preset", "grok-1", "--gpus", "8", "--device-memory", "80GB", "--dry-run"],
     "smoke"),
])
def test_dry_run_results(run_cli, args, command):
    code, out, err = run_cli([*args, "--json"])
    assert code == 0, err
    assert validate_output(out, command, ok=True)["dry_run"] is True


@pytest.mark.parametrize("args,command", [
    (["frobnicate"], "grokfetch"),
    (["convert", "./x", "--out", "y"], "convert"),
    (["smoke", "./x", "--gpus", "eight"], "smoke"),
    (["torrent", "create", "./x", "--output", "y"], "torrent create"),
    (["verify", "./x", "-x"], "verify"),
])
def test_parse_errors_have_a_result_too(run_cli, args, command):
    code, out, err = run_cli([*args, "--json"])
    assert code == 2 and err.startswith("error:")
    r = validate_output(out, command, ok=False)
    assert r["exit_code"] == 2 and r["hint"] is None
