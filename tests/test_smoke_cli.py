"""``grokfetch smoke`` end to end on the tiny fixture, 8 simulated CPU devices, every format."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from grokfetch.checkpoint.fixture import write_fixture
from grokfetch.checkpoint.reader import TOKENIZER_FILENAME

BASE = ["--platform", "cpu", "--json", "--max-new-tokens", "3", "--tokens", "5,100,200,300,17,42"]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-seed1") / "tiny"
    write_fixture(out, "tiny", seed=1)
    return out


@pytest.fixture(scope="module")
def converted(tiny_ckpt, tmp_path_factory):
    """The tiny fixture through every converter; a conversion that fails fails the fixture."""
    from grokfetch.cli import main

    root = tmp_path_factory.mktemp("converted")
    outs = {}
    for name, args in {"gguf-bf16": ["--to", "gguf", "--quant", "BF16"],
                       "gguf-q8": ["--to", "gguf", "--quant", "Q8_0"],
                       "st-bf16": ["--to", "safetensors", "--dtype", "bf16"],
                       "st-int8-sglang": ["--to", "safetensors", "--dtype", "int8", "--layout", "sglang"],
                       "jax": ["--to", "jax"],
                       "gguf-f32-l3": ["--to", "gguf", "--quant", "F32", "--layers", "0-2"]}.items():
        code = main(["convert", str(tiny_ckpt), *args, "-o", str(root / name), "-q"])
        assert code == 0, f"convert {name} failed with exit {code}"
        outs[name] = root / name
    return outs


def test_jax_output_refuses_a_dtype(run_cli, tiny_ckpt, tmp_path):
    """The JAX target stores int8 + scales only: --dtype is refused up front, nothing written."""
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "jax", "--dtype", "bf16", "-o", tmp_path / "j"])
    assert code == 2 and "--dtype" in err and "jax" in err
    assert not (tmp_path / "j").exists()


def test_smoke_tiny_on_8_devices(run_cli, tiny_ckpt, tmp_path):
    dump = tmp_path / "logits.npy"
    code, out, err = run_cli(["smoke", tiny_ckpt, "--gpus", "8", *BASE, "--dump-logits", dump])
    assert code == 0, err
    r = last_json(out)
    assert r["ok"] and r["devices"] == 8 and r["format"] == "pickle" and r["layers"] == 12
    names = {c["name"]: c["passed"] for c in r["checks"]}
    assert names == {"finite": True, "not_degenerate": True, "deterministic": True,
                     "kv_cache": True, "tokenizer": True}
    assert len(r["generated_tokens"]) == 3 and isinstance(r["generated_text"], str)
    assert r["timings"]["prefill_tokens_per_s"] > 0 and r["timings"]["decode_tokens_per_s"] > 0
    assert len(r["memory_per_device"]) == 8
    # What each device really holds (params + KV cache) is what the shapes-only plan said.
    pf = r["preflight"]
    assert set(r["memory_per_device"].values()) == {pf["weights"] + pf["kv_cache"]}
    logits = np.load(dump)
    assert logits.shape == (6, 512) and logits.dtype == np.float32
    # The first generated token is the argmax of the last prompt position.
    assert int(logits[-1].argmax()) == r["generated_tokens"][0]
    # --dump-logits never overwrites without --force.
    code, _, err = run_cli(["smoke", tiny_ckpt, "--gpus", "8", *BASE, "--dump-logits", dump])
    assert code == 2 and "already exists" in err


def test_smoke_human_output_and_prompt(run_cli, tiny_ckpt):
    code, out, err = run_cli(["smoke", tiny_ckpt, "--gpus", "1", "--platform", "cpu",
                              "--prompt", "hello world", "--max-new-tokens", "2", "--layers", "3"])
    assert code == 0, err
    assert "pass kv_cache" in out and "tiny (pickle) on 1 cpu device(s), 3 layers" in out


def test_compare_negative_control(run_cli, tiny_ckpt, other_seed):
    # Other weights (seed 1): same shapes, a different model — the comparison must fail.
    code, out, err = run_cli(["smoke", tiny_ckpt, "--gpus", "2", *BASE, "--compare", other_seed])
    assert code == 1 and "compare" in err
    r = last_json(out)
    # (The random fixture mostly echoes its input token, so KL stays small; exactness catches it.)
    assert not r["ok"] and r["compare"]["lossless"] and r["compare"]["max_abs_diff"] > 0.1


@pytest.mark.slow
def test_every_converted_format_gives_the_original_logits(tiny_ckpt, converted):
    """Each format through its own reader, on one shared engine per weight kind (2 devices)."""
    import jax

    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine, layer_signatures
    from grokfetch.smoke.load import load_params, open_source
    from grokfetch.smoke.mesh import setup_jax
    from grokfetch.smoke.run import agreement

    setup_jax("cpu", 2)
    mesh = make_mesh(devices=jax.devices()[:2])
    tokens = [5, 100, 200, 300, 17, 42, 99, 7]
    engines: dict[tuple, Engine] = {}

    def logits(path, layers=None):
        src = open_source(path)
        forms = layer_signatures(src.table, src.form_fn(2))
        kind = tuple(forms)
        if kind not in engines:
            engines[kind] = Engine(src.table, mesh, "bfloat16", forms, 8)
            engines[kind].compile(("prefill",))
        eng = engines[kind]
        return src, eng.prefill_logits(load_params(src, eng, layers or src.config.num_layers), tokens)

    _, want = logits(tiny_ckpt)
    _, want3 = logits(tiny_ckpt, 3)
    seen = {}
    for name, path in converted.items():
        src, got = logits(path)
        seen[name] = src.fmt
        if name == "gguf-q8":  # re-quantised: close, not equal
            m = agreement(want, got)
            assert not src.lossless and 0 < m["max_abs_diff"] and m["top1_agreement"] >= 0.9
        else:
            assert src.lossless and np.array_equal(got, want3 if name.endswith("-l3") else want), name
    assert set(seen.values()) <= {"gguf", "safetensors", "jaxstore"}


@pytest.mark.slow
def test_cli_compare_with_a_quantized_gguf(run_cli, tiny_ckpt, converted):
    code, out, err = run_cli(["smoke", tiny_ckpt, "--gpus", "2", *BASE, "--compare",
                              converted["gguf-q8"]])
    assert code == 0, err
    c = last_json(out)["compare"]
    assert c["format"] == "gguf" and not c["lossless"] and c["top1_agreement"] >= 0.9
    assert 0 < c["max_abs_diff"] and c["mean_kl"] <= 0.05


def test_preflight_refuses_grok1_before_loading(run_cli, tmp_path):
    (tmp_path / "ckpt-0").mkdir()  # nothing downloaded: the preflight needs shapes only
    code, out, err = run_cli(["smoke", tmp_path, "--preset", "grok-1", "--gpus", "8",
                              "--platform", "cpu", "--tokens", "1,2", "--device-memory", "30G"])
    assert code == 1
    assert "does not fit 8 device(s)" in err and "--layers" in err
    # A missing checkpoint file is reported as such once the plan fits.
    code, out, err = run_cli(["smoke", tmp_path, "--preset", "grok-1", "--gpus", "8",
                              "--platform", "cpu", "--tokens", "1,2", "--device-memory", "80G",
                              "--layers", "1"])
    assert code == 1 and "missing tensor file" in err


@pytest.mark.parametrize("args,message", [
    (["--gpus", "3"], "cannot be split over 3 devices"),
    (["--gpus", "8", "--layers", "0"], "--layers must be in 1..12"),
    (["--gpus", "8", "--layers", "13"], "--layers must be in 1..12"),
    (["--gpus", "8", "--prompt", "hi"], "not both"),
    (["--gpus", "8", "--dtype", "float16"], "--dtype must be"),
    (["--gpus", "8", "--tokens", "1,x"], "bad --tokens"),
    (["--gpus", "8", "--tokens", "1,9999"], "out of range"),
    (["--gpus", "64"], "only 8 cpu devices"),
    (["--gpus", "8", "--platform", "tpu"], "Invalid value for '--platform'"),
    (["--gpus", "8", "--num-processes", "2"], "needs --coordinator"),
])
def test_usage_errors(run_cli, tiny_ckpt, args, message):
    base = ["smoke", tiny_ckpt, "--json", "--platform", "cpu"]
    code, out, err = run_cli(base + args if "--tokens" in args else base + ["--tokens", "1,2", *args])
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err


def test_compare_refuses_another_model(run_cli, tiny_ckpt, tmp_path):
    import dataclasses

    from grokfetch.spec import preset

    other = tmp_path / "two-experts"
    write_fixture(other, config=dataclasses.replace(preset("tiny"), num_experts=2))
    code, _, err = run_cli(["smoke", tiny_ckpt, "--gpus", "2", *BASE, "--compare", other])
    assert code == 2 and "differs" in err


def test_missing_tokenizer_needs_tokens(run_cli, tiny_ckpt, tmp_path):
    shutil.copytree(tiny_ckpt, tmp_path / "c")
    (tmp_path / "c" / TOKENIZER_FILENAME).unlink()
    code, _, err = run_cli(["smoke", tmp_path / "c", "--gpus", "2", "--platform", "cpu"])
    assert code == 2 and "--tokens" in err


def _tiny_gguf_bytes(tmp_path) -> bytes:
    """A small valid GGUF written by gguf-py itself (header, one KV, one f32 tensor)."""
    import gguf

    path = tmp_path / "valid.gguf"
    w = gguf.GGUFWriter(str(path), "grok")
    w.add_block_count(12)
    w.add_tensor("token_embd.weight", np.arange(64 * 64, dtype=np.float32).reshape(64, 64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty"])
def test_corrupt_gguf_is_one_error_line(run_cli, tiny_ckpt, tmp_path, damage):
    good = _tiny_gguf_bytes(tmp_path)
    data = {"magic": b"XXXX" + good[4:], "truncated": good[: len(good) // 2], "empty": b""}[damage]
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(tiny_ckpt / "model-config.json", bad)
    (bad / "model.gguf").write_bytes(data)
    code, out, err = run_cli(["smoke", bad, "--gpus", "1", "--platform", "cpu", "--tokens", "1,2"])
    assert code in (1, 2), (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.gguf" in errors[0] and "GGUF" in errors[0], err


@pytest.mark.parametrize("name", ["st-bf16", "jax"])
def test_damaged_converted_output_is_one_error_line(run_cli, converted, tmp_path, name):
    """A truncated safetensors shard / overwritten JAX-store data: CheckpointError, no traceback."""
    out = tmp_path / name
    shutil.copytree(converted[name], out)
    if name == "st-bf16":
        victims = sorted(out.glob("*.safetensors"))
        for v in victims:
            v.write_bytes(v.read_bytes()[: v.stat().st_size // 2])
    else:
        victims = sorted(p for p in (out / "ocdbt.process_0" / "d").rglob("*") if p.is_file())
        for v in victims:
            v.write_bytes(b"\0" * 64)
    assert victims
    code, _, err = run_cli(["smoke", out, "--gpus", "1", "--platform", "cpu", "--tokens", "1,2"])
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unreadable" in errors[0], err
