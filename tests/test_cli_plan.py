"""``--dry-run`` plans agree with the docs' tables and with real runs, to the byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REAL_TOKENIZER

from grokfetch.torrent.create import create_torrent
from grokfetch.torrent.seed import Seeder

DOCS = Path(__file__).resolve().parents[1] / "docs"
LOCAL = ["--listen", "127.0.0.1:0", "--no-dht", "--no-lsd", "--no-upnp", "--no-utp", "--no-trackers"]


def _plan(run_cli, args: list) -> dict:
    code, out, err = run_cli([*args, "--dry-run", "--json"])
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["dry_run"] is True
    return result


def _gguf_sizes_in_docs() -> dict[str, float]:
    """Grok-1 GGUF sizes (GB) from docs/formats-and-bits.md: the --bits table and the mixes."""
    text = (DOCS / "formats-and-bits.md").read_text()
    sizes = {f"--bits {m[1]}": float(m[3])
             for m in re.finditer(r"^\| (\d+) \| (\w+) \| ([\d.]+) GB \|", text, re.M)}
    mixes = re.search(r"Other mixes with `--quant`: (.*?); also", text, re.S)
    assert mixes
    sizes |= {f"--quant {m[1]}": float(m[2]) for m in re.finditer(r"(Q\w+) ([\d.]+) GB",
                                                                 mixes.group(1))}
    assert len(sizes) == 12
    return sizes


@pytest.mark.parametrize("choice,size_gb", sorted(_gguf_sizes_in_docs().items()))
def test_gguf_dry_run_matches_the_formats_table(run_cli, choice, size_gb):
    flag, value = choice.split()
    # with the release's tokenizer the header is exact; without, about 1 MB short (same rounding)
    tok = ["--tokenizer", REAL_TOKENIZER] if REAL_TOKENIZER.is_file() else []
    plan = _plan(run_cli, ["convert", "--preset", "grok-1", "--to", "gguf", flag, value, *tok])
    assert round(plan["output_bytes"] / 1e9, 1) == size_gb
    assert plan["input_bytes"] == 318_239_694_848
    assert plan["peak_ram_bytes"] < 2**30  # the docs' bound: under 1 GiB with up to 4 workers
    if flag == "--bits" and value == "4":
        assert plan["estimated_seconds"] > 0 and plan["files"][0]["path"] == "grok-1-Q4_K_M.gguf"


def test_safetensors_dry_run_matches_the_formats_table(run_cli):
    bf16 = _plan(run_cli, ["convert", "--preset", "grok-1", "--to", "safetensors"])
    int8 = _plan(run_cli, ["convert", "--preset", "grok-1", "--to", "safetensors", "--dtype",
                           "int8"])
    assert round(bf16["output_bytes"] / 1e9) == 633 and round(int8["output_bytes"] / 1e9) == 318


@pytest.mark.parametrize("args", [["--to", "gguf", "--bits", "4", "--layers", "0,2"],
                                  ["--to", "gguf", "--quant", "Q6_K", "--split-size", "1MB"],
                                  ["--to", "safetensors", "--shard-size", "1MB"]])
def test_convert_dry_run_equals_the_real_run(run_cli, tiny_ckpt, tmp_path, args):
    out = tmp_path / "o"
    plan = _plan(run_cli, ["convert", tiny_ckpt, "--out", out, *args])
    assert not out.exists()
    code, stdout, err = run_cli(["convert", tiny_ckpt, "--out", out, *args, "--json"])
    assert code == 0, err
    real = json.loads(stdout.splitlines()[-1])
    assert {f["path"]: f["bytes"] for f in plan["files"]} == \
        {f["path"]: (out / f["path"]).stat().st_size for f in real["files"]}
    assert plan["output_bytes"] == real["bytes_out"] and plan["input_bytes"] == real["bytes_in"]


def _smoke_table_in_docs() -> list[tuple[int, int, float, float, str]]:
    """docs/smoke.md's Grok-1 table, the pickle rows: (devices, GB per device, weights GiB,
    temporaries GiB, fits) for 80 GB and for 141 GB devices."""
    text = (DOCS / "smoke.md").read_text()
    rows = re.findall(r"^\| pickles \(int8\) \| (\d+) \| ([\d.]+) GiB \| ([\d.]+) GiB \| [\d.]+ GiB "
                      r"\| (.*?) \| (.*?) \|$", text, re.M)
    assert len(rows) == 4
    return [(int(n), gb, float(w), float(t), fits) for n, w, t, f80, f141 in rows
            for gb, fits in ((80, f80), (141, f141))]


@pytest.mark.parametrize("devices,gb,weights,temps,fits", _smoke_table_in_docs())
def test_smoke_dry_run_matches_the_smoke_table(run_cli, devices, gb, weights, temps, fits):
    # the table's 24 tokens of cache: 16 prompt tokens + 8 generated
    plan = _plan(run_cli, ["smoke", "--preset", "grok-1", "--gpus", devices, "--device-memory",
                           f"{gb}GB", "--tokens", ",".join(["5"] * 16), "--max-new-tokens", "8"])
    pd = plan["per_device"]
    assert round(pd["weights"] / 2**30, 2) == weights and round(pd["temporaries"] / 2**30, 2) == temps
    assert plan["fits"] is fits.startswith("yes")
    if not plan["fits"]:
        if "--layers" in fits:  # the table names the advice where it has room for it
            assert f"--layers {plan['fitting_layers']}" in fits
        # the advice is advice the tool takes: that many devices are accepted, and fit
        more = _plan(run_cli, ["smoke", "--preset", "grok-1", "--gpus", plan["devices_that_fit"],
                               "--device-memory", f"{gb}GB", "--tokens", ",".join(["5"] * 16),
                               "--max-new-tokens", "8"])
        assert more["fits"] is True


def test_refused_device_counts_suggest_accepted_ones(run_cli):
    code, _, err = run_cli(["smoke", "--preset", "grok-1", "--gpus", "16", "--dry-run"])
    assert code == 2 and "use one of --gpus 1, 2, 4, 8" in err
    for n in (1, 2, 4, 8):
        assert _plan(run_cli, ["smoke", "--preset", "grok-1", "--gpus", n])["devices"] == n


def test_smoke_dry_run_equals_the_run_preflight(run_cli, tiny_ckpt):
    args = ["smoke", tiny_ckpt, "--gpus", "8", "--platform", "cpu", "--tokens", "5,100,200,7",
            "--max-new-tokens", "3", "--layers", "0-3"]
    plan = _plan(run_cli, args)
    code, out, err = run_cli([*args, "--json"])
    assert code == 0, err
    real = json.loads(out.splitlines()[-1])["preflight"]
    pd = plan["per_device"]
    assert (pd["weights"], pd["kv_cache"], pd["devices"], pd["layers"]) == \
        (real["weights"], real["kv_cache"], real["devices"], real["layers"])
    assert real["measured_temporaries"] and pd["temporaries"] >= real["temporaries"]


def test_download_dry_run_equals_the_real_download(run_cli, tiny_ckpt, tmp_path):
    plan = _plan(run_cli, ["download", "--preset", "tiny", "--layers", "0-1", "--dir", tmp_path])
    torrent = tmp_path / "t.torrent"
    create_torrent(tiny_ckpt, torrent, piece_size=64 * 1024)
    with Seeder(tiny_ckpt, torrent) as s:
        code, out, err = run_cli(["download", torrent, "--dir", tmp_path / "d", "--layers", "0-1",
                                  "--preset", "tiny", *LOCAL, "--peer", f"127.0.0.1:{s.port}",
                                  "--timeout", "30", "--json"])
    assert code == 0, err
    real = json.loads(out.splitlines()[-1])
    others = sum(p.stat().st_size for p in tiny_ckpt.iterdir() if p.is_file())  # tokenizer, config
    assert plan["download_bytes"] + others == real["bytes"]
    assert plan["files"] + 2 == real["files"]
