"""The JAX Grok-1 engine against an independent float64 numpy reference, on simulated devices.

Most tests share a few compiled engines of the ``tiny`` fixture (compiled once per module);
tests/conftest.py gives the process 8 CPU devices before JAX starts.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import numpy_reference as ref
import pytest

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME, open_checkpoint
from grokfetch.errors import CheckpointError, InsufficientMemoryError, UsageError
from grokfetch.spec import TensorTable, preset

PROMPT = [5, 100, 200, 300, 17, 42, 99, 7, 250, 3]  # tiny vocab is 512
NEW = 5
CACHE = 16


@pytest.fixture(scope="module")
def jax_devices():
    from grokfetch.smoke.mesh import setup_jax

    return setup_jax("cpu", 8)


@pytest.fixture(scope="module")
def tiny_source(tiny_ckpt):
    from grokfetch.smoke.load import open_source

    return open_source(tiny_ckpt)


def _engine(source, devices, dtype, kinds=("prefill", "decode"), weight_kind="int8"):
    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine
    from grokfetch.smoke.load import load_params

    eng = Engine(source.table, make_mesh(devices=devices), dtype, weight_kind, CACHE)
    eng.compile(kinds)
    return eng, load_params(source, eng, source.config.num_layers)


@pytest.fixture(scope="module")
def f32_engine(tiny_source, jax_devices):
    return _engine(tiny_source, jax_devices, "float32")


@pytest.fixture(scope="module")
def bf16_engine(tiny_source, jax_devices):
    return _engine(tiny_source, jax_devices, "bfloat16")


@pytest.fixture(scope="module")
def reference_logits(tiny_ckpt):
    params, cfg = ref.load(tiny_ckpt)
    return ref.forward(params, cfg, PROMPT)


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# --- numerics against the float64 reference --------------------------------------------------


def test_f32_matches_float64_reference(f32_engine, reference_logits):
    eng, params = f32_engine
    logits = eng.prefill_logits(params, PROMPT)
    assert logits.shape == (len(PROMPT), 512) and logits.dtype == np.float32
    assert rel_err(logits, reference_logits) < 1e-4
    assert (logits.argmax(-1) == reference_logits.argmax(-1)).all()


def test_bf16_within_documented_tolerance(bf16_engine, reference_logits):
    eng, params = bf16_engine
    logits = eng.prefill_logits(params, PROMPT)
    # docs/smoke.md: bf16 engine vs float64 reference, relative max |Δ| < 5e-2, top-1 ≥ 0.9.
    assert rel_err(logits, reference_logits) < 5e-2
    assert (logits.argmax(-1) == reference_logits.argmax(-1)).mean() >= 0.9
    # ...and bf16 really is a different computation than f32.
    assert rel_err(logits, reference_logits) > 1e-5


@pytest.mark.slow
def test_mini_8_experts_matches_reference(mini_ckpt, jax_devices):
    """The mini fixture (8 experts, 8 kv heads, one row block per device at N=8), f32."""
    from grokfetch.smoke.load import open_source

    src = open_source(mini_ckpt)
    assert src.config.num_experts == 8
    tokens = [7, 900, 31, 512, 64, 1000, 3, 77]
    rparams, cfg = ref.load(mini_ckpt)
    want = ref.forward(rparams, cfg, tokens)
    eng, params = _engine(src, jax_devices, "float32", kinds=("prefill",))
    got = eng.prefill_logits(params, tokens)
    assert rel_err(got, want) < 1e-4 and (got.argmax(-1) == want.argmax(-1)).all()


def test_first_layers_use_lexicographic_files(tiny_ckpt, tiny_source, jax_devices):
    """--layers 3 reads layer 2 from its own files (not positional file 26-37 = layer 10)."""
    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine
    from grokfetch.smoke.load import load_params

    eng = Engine(tiny_source.table, make_mesh(devices=jax_devices[:2]), "float32", "int8", CACHE)
    eng.compile(("prefill",))
    params = load_params(tiny_source, eng, 3)
    got = eng.prefill_logits(params, PROMPT)
    rparams, cfg = ref.load(tiny_ckpt, layers=3)
    want = ref.forward(rparams, cfg, PROMPT)
    assert rel_err(got, want) < 1e-4
    # The positional (wrong) mapping gives a clearly different model.
    wrong = dict(rparams, layers=rparams["layers"][:2] + [ref.load(tiny_ckpt, layers=11)[0]["layers"][10]])
    assert rel_err(ref.forward(wrong, cfg, PROMPT), want) > 1e-2


@pytest.mark.slow
def test_n_devices_agree(tiny_source, jax_devices, f32_engine):
    eng8, params8 = f32_engine
    want = eng8.prefill_logits(params8, PROMPT)
    for n in (1, 2, 4):
        eng, params = _engine(tiny_source, jax_devices[:n], "float32", kinds=("prefill",))
        got = eng.prefill_logits(params, PROMPT)
        assert rel_err(got, want) < 1e-5, n
        assert (got.argmax(-1) == want.argmax(-1)).all()


# --- cache, determinism, lossless formats -------------------------------------------------------


@pytest.mark.parametrize("which,tol", [("f32", 1e-5), ("bf16", 0.1)])
def test_kv_cache_decode_equals_teacher_forced_prefill(which, tol, request):
    from grokfetch.smoke.run import check_kv_cache

    eng, params = request.getfixturevalue(f"{which}_engine")
    gen = eng.generate(params, PROMPT, NEW)
    teacher = eng.prefill_logits(params, PROMPT + gen.tokens[:-1])
    assert len(gen.tokens) == NEW and gen.decode_logits.shape == (NEW - 1, 512)
    steps = teacher[len(PROMPT):]
    assert rel_err(gen.decode_logits, steps) < tol
    assert teacher[len(PROMPT) - 1:].argmax(-1).tolist() == gen.tokens
    assert check_kv_cache(gen, teacher, len(PROMPT), "float32" if which == "f32" else "bfloat16").passed
    # Negative control: a cache that forgot the prompt (logits of a different sequence) fails.
    shifted = eng.prefill_logits(params, [9] + PROMPT[1:] + gen.tokens[:-1])
    assert not check_kv_cache(gen, shifted, len(PROMPT), "float32").passed


def test_two_runs_bit_identical(bf16_engine):
    from grokfetch.smoke.run import check_deterministic

    eng, params = bf16_engine
    a, b = eng.generate(params, PROMPT, NEW), eng.generate(params, PROMPT, NEW)
    assert a.prompt_logits.tobytes() == b.prompt_logits.tobytes()
    assert check_deterministic(a, b).passed


@pytest.mark.parametrize("which", ["f32", "bf16"])
def test_dense_lossless_weights_give_identical_logits(which, tiny_ckpt, tiny_source, jax_devices,
                                                      request):
    """A bf16-dequantized copy of the weights (what a lossless export holds) is bit-identical."""
    from grokfetch.smoke.load import Source

    ck = open_checkpoint(tiny_ckpt)

    def dense_iter(specs):
        for spec in specs:
            with ck.open(spec) as tf:
                yield spec, (tf.dequantize() if spec.quantized else np.array(tf.weight)), None

    dense = Source("safetensors", tiny_source.root, tiny_source.config, tiny_source.table,
                   None, True, dense_iter)
    assert dense.weight_kind() == "dense"
    dtype = "float32" if which == "f32" else "bfloat16"
    eng_d, params_d = _engine(dense, jax_devices, dtype, kinds=("prefill",), weight_kind="dense")
    eng_q, params_q = request.getfixturevalue(f"{which}_engine")
    assert np.array_equal(eng_d.prefill_logits(params_d, PROMPT), eng_q.prefill_logits(params_q, PROMPT))


# --- dequantization and scales --------------------------------------------------------------


@pytest.mark.parametrize("slot", ["attn_o", "moe_down", "attn_q"])
@pytest.mark.parametrize("n", [1, 8, 16])
def test_local_dequant_matches_reader_for_any_shard_count(tiny_ckpt, slot, n):
    """Each device's rows with its share of the (re-blocked) scales give bf16(q·s) exactly."""
    import jax.numpy as jnp

    from grokfetch.smoke.load import prepare
    from grokfetch.smoke.mesh import scale_blocks_for
    from grokfetch.smoke.model import dequant

    ck = open_checkpoint(tiny_ckpt)
    spec = ck.table.get(slot, 3)
    with ck.open(spec) as tf:
        want = tf.dequantize()
        parts = prepare(spec, np.array(tf.weight), np.array(tf.scales), n, "int8", jnp.bfloat16)
    blocks = scale_blocks_for(spec, n)
    assert parts["s"].shape[-2] == blocks
    if spec.scale_layout != "row_blocks":
        n = 1  # column-parallel: rows are not split, one scale per output column
    assert blocks % n == 0
    rows = spec.shape[-2] // n
    for d in range(n):
        local = {"w": parts["w"][..., d * rows:(d + 1) * rows, :],
                 "s": parts["s"][..., d * blocks // n:(d + 1) * blocks // n, :]}
        got = np.asarray(dequant(local, jnp.bfloat16))
        assert got.dtype == ml_dtypes.bfloat16
        assert np.array_equal(got.view(np.uint16), want[..., d * rows:(d + 1) * rows, :].view(np.uint16))


@pytest.mark.slow
def test_row_block_scales_reblocked_end_to_end(tmp_path, jax_devices):
    """4 row blocks on 8 devices: the loader repeats the blocks (lcm 8) and the model is exact."""
    import dataclasses

    from grokfetch.checkpoint.fixture import write_fixture
    from grokfetch.smoke.load import open_source

    cfg = dataclasses.replace(preset("tiny"), name="tiny-4blocks", scale_row_blocks=4)
    write_fixture(tmp_path / "c", config=cfg)
    src = open_source(tmp_path / "c")
    assert src.table.get("attn_o", 0).scales_shape[-2] == 4
    eng, params = _engine(src, jax_devices, "float32", kinds=("prefill",))
    assert params["layers"][0]["moe_down"]["s"].shape[-2] == 8
    rparams, rcfg = ref.load(tmp_path / "c")
    assert rel_err(eng.prefill_logits(params, PROMPT), ref.forward(rparams, rcfg, PROMPT)) < 1e-4


def test_uneven_device_count_is_a_usage_error():
    from grokfetch.smoke.mesh import check_devices

    with pytest.raises(UsageError, match="--gpus 1, 2, 4, 8"):
        check_devices(preset("grok-1"), 3)


# --- preflight from shapes --------------------------------------------------------------------


def test_preflight_grok1_on_8x80gb():
    from grokfetch.smoke.mesh import preflight

    table = TensorTable(preset("grok-1"))
    plan = preflight(table, 8, 80 * 10**9, layers=64, tokens=16, cache_len=16)
    # Independent: every int8 matrix and the embedding split 8 ways, norms/routers replicated.
    split = sum(s.payload_bytes for s in table if s.quantized or s.slot.key == "embed")
    whole = sum(s.payload_bytes for s in table if not (s.quantized or s.slot.key == "embed"))
    assert plan.weights == split // 8 + whole
    assert 39.7e9 < plan.weights < 39.9e9  # ≈ 318 GB / 8
    kv = 64 * 2 * 16 * 1 * 128 * 2  # layers × (k, v) × S × kv heads per device × d × bf16
    assert plan.kv_cache == kv
    assert 0 < plan.temporaries < 2 * 2**30
    assert plan.fits
    # 8 × 40 GB cannot hold it; one 141 GB H200 only a few layers.
    assert not preflight(table, 8, 40 * 10**9, layers=64, tokens=16, cache_len=16).fits


def test_preflight_one_h200_suggests_layers():
    from grokfetch.smoke.mesh import fitting_layers, preflight

    table = TensorTable(preset("grok-1"))
    budget = 141 * 10**9
    k = fitting_layers(table, 1, budget, tokens=16, cache_len=16)
    per_layer = sum(s.payload_bytes for s in table if s.layer == 0)
    globals_ = sum(s.payload_bytes for s in table if s.layer is None)
    # Weights alone bound K from above; with up to 8 GB of temporaries and cache, from below.
    hi = (budget / 1.08 - globals_) / per_layer
    lo = (budget / 1.08 - globals_ - 8e9) / per_layer
    assert math.floor(lo) <= k <= math.floor(hi)
    assert 20 <= k <= 28  # smoke-notes §3.4: "about 25 to 28 layers" on 139 GiB
    assert preflight(table, 1, budget, layers=k, tokens=16, cache_len=16).fits
    assert not preflight(table, 1, budget, layers=k + 1, tokens=16, cache_len=16).fits


def test_preflight_error_names_the_numbers(tmp_path):
    from grokfetch.smoke.load import open_source
    from grokfetch.smoke.run import SmokeOptions, _plan

    (tmp_path / "ckpt-0").mkdir()
    source = open_source(tmp_path, "grok-1")
    with pytest.raises(InsufficientMemoryError) as exc:
        _plan(source, SmokeOptions(), 8, 64, 16, 16, 30 * 10**9)
    assert "does not fit 8 device(s)" in str(exc.value) and "GiB" in str(exc.value)
    assert "--layers" in exc.value.hint
    assert exc.value.needed > exc.value.available


@pytest.mark.slow
def test_xla_memory_analysis_of_full_size_grok1(jax_devices):
    """Compile the real-width programs from shapes only (nothing allocated) on 8 devices."""
    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine
    from grokfetch.smoke.mesh import preflight

    table = TensorTable(preset("grok-1"))
    eng = Engine(table, make_mesh(devices=jax_devices), "bfloat16", "int8", 16)
    stats = eng.compile(("decode",))
    layer = stats["decode/layer"]
    per_layer = sum(s.payload_bytes for s in table if s.layer == 0)
    assert layer["argument"] == pytest.approx(per_layer / 8, rel=0.01)
    temps = eng.temporaries(stats)
    estimate = preflight(table, 8, None, layers=64, tokens=16, cache_len=16).temporaries
    assert 0 < temps < estimate  # the analytic bound is generous


# --- tokenizer --------------------------------------------------------------------------------


def test_real_tokenizer_vectors(real_tokenizer):
    from grokfetch.smoke.tokenizer import GROK1_TOKENIZER_SHA256, Tokenizer

    tok = Tokenizer(real_tokenizer)
    assert tok.vocab_size == 131072
    assert tok.encode("hello world") == [21560, 1135]
    ids = tok.encode("The answer to life the universe and everything is of course")
    assert ids == [422, 3033, 356, 1180, 333, 9072, 360, 2175, 391, 359, 1805]
    assert tok.decode(ids) == "The answer to life the universe and everything is of course"
    assert tok.sha256() == GROK1_TOKENIZER_SHA256


def test_tokenizer_check(real_tokenizer, tiny_ckpt):
    from grokfetch.smoke.run import check_tokenizer
    from grokfetch.smoke.tokenizer import Tokenizer

    grok = preset("grok-1")
    assert check_tokenizer(Tokenizer(real_tokenizer), grok).passed
    assert check_tokenizer(Tokenizer(tiny_ckpt / TOKENIZER_FILENAME), preset("tiny")).passed
    # A tokenizer that is not the released one, in front of the real model, fails.
    bad = check_tokenizer(Tokenizer(tiny_ckpt / TOKENIZER_FILENAME), grok)
    assert not bad.passed and "sha256" in bad.detail


def test_missing_tensor_file_is_a_checkpoint_error(tmp_path, tiny_ckpt, jax_devices):
    import shutil

    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine
    from grokfetch.smoke.load import load_params, open_source

    shutil.copytree(tiny_ckpt, tmp_path / "c")
    src = open_source(tmp_path / "c")
    (tmp_path / "c" / "ckpt-0" / src.table.get("moe_down", 1).file).unlink()
    eng = Engine(src.table, make_mesh(devices=jax_devices[:1]), "float32", "int8", CACHE)
    with pytest.raises(CheckpointError, match="missing"):
        load_params(src, eng, 2)


# --- several processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_through_jax_distributed(tiny_ckpt, tmp_path, f32_engine):
    """Two fresh CPU processes with 2 devices each (set by the command itself: XLA_FLAGS is
    removed from their environment) form one 4-device mesh; logits match one process."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    tokens = ",".join(map(str, PROMPT))
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "grokfetch", "smoke", str(tiny_ckpt), "--gpus", "4",
               "--platform", "cpu", "--dtype", "float32", "--tokens", tokens,
               "--max-new-tokens", "2", "--coordinator", f"127.0.0.1:{port}",
               "--num-processes", "2", "--process-id", str(i), "--json",
               "--dump-logits", str(tmp_path / f"p{i}.npy")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    eng, params = f32_engine
    want = eng.prefill_logits(params, PROMPT)
    assert rel_err(np.load(tmp_path / "p0.npy"), want) < 1e-5
    assert not (tmp_path / "p1.npy").exists()  # only process 0 writes --dump-logits
    import json

    report = json.loads(outs[0][0].strip().splitlines()[-1])
    assert report["devices"] == 4 and report["ok"]
    assert len(report["memory_per_device"]) == 2  # each process holds its 2 local devices
    assert math.isfinite(report["timings"]["decode_tokens_per_s"])


def test_reference_file_formula_matches_doc_table():
    """The reference's own index formula reproduces the doc's layer → file table."""
    assert [ref.file_index(L, "gate", 64) for L in (0, 1, 2, 9, 10, 63)] == [2, 14, 146, 758, 26, 722]
    assert Path(ref.__file__).name == "numpy_reference.py"
