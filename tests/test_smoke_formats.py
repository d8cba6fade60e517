"""Every input format on the devices in its stored form, against the preflight and XLA.

The ``k256`` fixture (tests/kquant_fixture.py: 512 wide, 8 experts, 4 layers) goes through the
converters; a GGUF's block types stay bytes on the devices and are dequantized inside the
sharded layer. The reference is the same GGUF dequantized on the host by gguf-py and placed
dense (what smoke did before): the logits must agree to f32 (bf16) rounding, while the devices
hold the GGUF's bytes instead of a dense copy.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader
from kquant_fixture import blocks_config

CACHE = 16
TOKENS = [5, 100, 200, 300, 17, 42, 99, 7, 250, 3]


@pytest.fixture(scope="module")
def jax_devices():
    from grokfetch.smoke.mesh import setup_jax

    return setup_jax("cpu", 8)


@pytest.fixture(scope="module")
def k256(tmp_path_factory):
    """The fixture and its conversions: {name: path}."""
    from grokfetch.checkpoint.fixture import write_fixture
    from grokfetch.cli import main

    root = tmp_path_factory.mktemp("k256")
    write_fixture(root / "pickle", config=blocks_config())
    outs = {"pickle": root / "pickle"}
    for name, args in {"gguf-q4km": ["--to", "gguf", "--quant", "Q4_K_M"],
                       "gguf-q8": ["--to", "gguf", "--quant", "Q8_0"],
                       "st-int8": ["--to", "safetensors", "--dtype", "int8"],
                       "st-bf16": ["--to", "safetensors", "--dtype", "bf16"],
                       "jax-int8": ["--to", "jax"]}.items():
        assert main(["convert", str(root / "pickle"), *args, "-o", str(root / name), "-q"]) == 0, name
        outs[name] = root / name
    return outs


def _run(src, devices, dtype, forms=None):
    """Compile the prefill programs for ``src`` (its own forms unless given), load, run."""
    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine, layer_signatures
    from grokfetch.smoke.load import load_params

    forms = forms or layer_signatures(src.table, src.form_fn(len(devices)))
    eng = Engine(src.table, make_mesh(devices=devices), dtype, forms, CACHE)
    stats = eng.compile(("prefill",))
    params = load_params(src, eng, src.config.num_layers)
    return eng, stats, params, eng.prefill_logits(params, TOKENS)


def _host_dense(path):
    """The GGUF as the old smoke read it: gguf-py dequantizes every tensor on the host."""
    from grokfetch.formats.gguf import iter_tensors, open_gguf
    from grokfetch.smoke.load import Source, open_source

    src = open_source(path)
    model = open_gguf(path)
    return Source("gguf", src.root, src.config, src.table, None, False,
                  lambda specs: iter_tensors(model, src.table, specs))


@pytest.mark.parametrize("n", [2, 8])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_q4_k_m_blocks_on_device_equal_host_dequantized(k256, jax_devices, n, dtype):
    from grokfetch.smoke.load import device_bytes_held, open_source
    from grokfetch.smoke.mesh import preflight

    src = open_source(k256["gguf-q4km"])
    devices = jax_devices[:n]
    eng, _, params, got = _run(src, devices, dtype)
    used = {f for sig in eng.forms for f in sig}
    if n == 2:  # the Q4_K_M recipe as stored; ffn_down is Q4_K or Q6_K by layer
        assert used == {"Q4_K", "Q6_K", "Q5_K", "Q8_0", "dense"} and len(eng.signatures) == 2
    else:  # 64 rows per device: the row-parallel K-quant tensors cannot split whole blocks
        assert used == {"Q4_K", "Q8_0", "dense"} and len(eng.signatures) == 1
        assert eng.form(src.table.get("attn_o", 0)) == eng.form(src.table.get("moe_down", 3)) == "dense"
    # What the devices hold is what the preflight says, and (n=2) the GGUF's own bytes.
    plan = preflight(src.table, n, None, layers=4, tokens=CACHE, cache_len=CACHE,
                     forms=src.form_fn(n), compute_dtype=dtype)
    held = device_bytes_held([params])
    assert set(held.values()) == {plan.weights}
    blocks_held = plan.weights - plan.held_as["dense"]
    if n == 2:
        reader = GGUFReader(next(k256["gguf-q4km"].glob("*.gguf")))
        stored = {t.name: int(t.n_bytes) for t in reader.tensors}
        assert blocks_held == sum(stored[s.gguf_name] for s in src.table if s.quantized) // 2
    dense_src = _host_dense(k256["gguf-q4km"])
    _, _, dparams, want = _run(dense_src, devices, dtype, forms="dense")
    # The same weights (tests/test_ggml_dequant.py: bit for bit), but the matmul reads the
    # blocks' dequantized (out, in) array transposed, so f32 sums run in another order; in bf16
    # XLA also fuses the two programs differently (it may keep a bf16-rounded activation in f32).
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert np.abs(got - want).max() < tol * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= (1.0 if dtype == "float32" else 0.9)
    # The dense copy the old path placed is several times larger (bf16: 16 bits a weight).
    dense_held = set(device_bytes_held([dparams]).values()).pop() - plan.held_as["dense"]
    assert dense_held > (2.5 if n == 2 else 1.2) * blocks_held


@pytest.mark.parametrize(("n", "chunk"), [(1, None), (2, None), (8, None), (2, 4096), (8, 4096)])
def test_gguf_tensors_placed_as_stored_and_as_gguf_py(k256, jax_devices, monkeypatch, n, chunk):
    """Every GGUF tensor on the devices is its stored bytes (block forms) or gguf-py's
    dequantized values bit for bit in the JAX layout (placed dense), whether the devices
    dequantized its uploaded blocks (the embedding for N ≤ 2) or the host did, and whether it
    went up whole or in chunks (``chunk``: a few KiB, so every tensor takes several)."""
    import ml_dtypes
    from gguf import quants

    from grokfetch.sharding import make_mesh
    from grokfetch.smoke import place
    from grokfetch.smoke.engine import Engine, layer_signatures
    from grokfetch.smoke.load import load_params, open_source
    from grokfetch.smoke.mesh import placed_axes

    if chunk is not None:
        monkeypatch.setattr(place, "UPLOAD_CHUNK", chunk)
    path = k256["gguf-q4km"]
    src = open_source(path)
    eng = Engine(src.table, make_mesh(devices=jax_devices[:n]), "bfloat16",
                 layer_signatures(src.table, src.form_fn(n)), CACHE)
    params = load_params(src, eng, src.config.num_layers)
    stored = {t.name: t for t in GGUFReader(next(path.glob("*.gguf"))).tensors}
    on_devices = set()
    for spec in src.table:
        t = stored[spec.gguf_name]
        where = params if spec.layer is None else params["layers"][spec.layer]
        form = eng.form(spec)
        if form != "dense":  # the stored bytes, (..., rows, blocks, type_size)
            got = np.asarray(where[spec.slot.key][form])
            assert np.array_equal(got.reshape(-1), np.asarray(t.data).reshape(-1).view(np.uint8))
            continue
        want = quants.dequantize(np.asarray(t.data), t.tensor_type)
        want = want.reshape(tuple(int(x) for x in reversed(t.shape)))
        if spec.slot.transpose:
            want = np.ascontiguousarray(np.swapaxes(want, -1, -2))
        if spec.quantized:  # placed in the compute dtype
            want = want.astype(ml_dtypes.bfloat16)
        got = np.asarray(where[spec.slot.key] if spec.layer is None else where[spec.slot.key]["w"])
        assert got.dtype == want.dtype and got.shape == want.shape, spec.path
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), spec.path
        (_, weight, _), = src.items([spec])
        if place.dequantizable_on_devices(weight, placed_axes(spec.slot.key, "dense"), eng.mesh):
            on_devices.add(spec.slot.key)
    # The embedding is Q6_K (256-value blocks, 512 wide): whole blocks per device up to N = 2.
    assert on_devices == ({"embed"} if n <= 2 else set())


FORMATS = ["pickle", "st-int8", "st-bf16", "jax-int8", "gguf-q8", "gguf-q4km"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_preflight_matches_xla_memory_analysis(k256, jax_devices, name):
    """For every format and N: the weights and KV cache the preflight plans per device are the
    arguments XLA's compiled programs take, the analytic temporaries bound XLA's, and the
    loaded arrays hold exactly the planned bytes."""
    from grokfetch.sharding import make_mesh
    from grokfetch.smoke.engine import Engine, layer_signatures
    from grokfetch.smoke.load import device_bytes_held, load_params, open_source
    from grokfetch.smoke.mesh import preflight

    src = open_source(k256[name])
    cfg, dtype = src.config, "bfloat16"
    for n in (1, 2, 8):
        forms = layer_signatures(src.table, src.form_fn(n))
        eng = Engine(src.table, make_mesh(devices=jax_devices[:n]), dtype, forms, CACHE)
        stats = eng.compile(("prefill",))
        plan = preflight(src.table, n, None, layers=cfg.num_layers, tokens=CACHE, cache_len=CACHE,
                         forms=src.form_fn(n), compute_dtype=dtype)
        h = CACHE * cfg.emb_size * 2  # the bf16 residual stream, replicated
        per_layer = [stats[eng._layer_key("prefill", i)]["argument"] - h - 4 - CACHE
                     for i in range(cfg.num_layers)]  # minus pos (int32) and key_ok (bool)
        xla = sum(per_layer) + stats["prefill/head"]["argument"] - h
        assert xla == plan.weights + plan.kv_cache, (name, n)
        assert 0 < eng.temporaries(stats) <= plan.temporaries, (name, n)
        if n == 2:
            params = load_params(src, eng, cfg.num_layers)
            assert set(device_bytes_held([params]).values()) == {plan.weights}, name
        if name == "st-bf16":
            assert set(plan.held_as) == {"dense"}  # bf16 exports stay dense, and the plan says so
        elif name.startswith("gguf"):  # stored blocks (Q8_0; Q4_K, Q5_K, Q6_K, Q8_0) + dense globals
            blocks = set(plan.held_as) - {"dense"}
            assert blocks == ({"Q8_0"} if name == "gguf-q8" else
                              {"Q4_K", "Q5_K", "Q6_K", "Q8_0"} if n < 8 else {"Q4_K", "Q8_0"})
        else:
            assert set(plan.held_as) == {"int8", "dense"}


def _scheme_forms(table, scheme: str, n: int):
    """``(form, type)`` functions of a ``convert --quant SCHEME`` GGUF of ``table`` (no file)."""
    from grokfetch.convert.quant import SCHEMES, tensor_type
    from grokfetch.smoke.mesh import gguf_form

    cfg = table.config

    def qtype(spec):
        return tensor_type(SCHEMES[scheme], spec, layer=spec.layer, n_layers=cfg.num_layers,
                           n_experts=cfg.num_experts, ne0=spec.gguf_shape[-1],
                           n_gqa=cfg.num_q_heads // cfg.num_kv_heads)

    return (lambda spec: gguf_form(spec, qtype(spec), n)), qtype


@pytest.mark.parametrize("scheme,per_device_gib", [("Q4_K_M", 22.64), ("Q8_0", 39.34)])
def test_grok1_gguf_preflight_is_the_file_over_n(scheme, per_device_gib):
    """docs/smoke.md's real-scale table: a Grok-1 GGUF on 8 devices holds its own bytes / 8
    (plus the f32 embedding, norms and routers), not a dense copy."""
    from grokfetch.convert.quant import type_nbytes
    from grokfetch.smoke.mesh import preflight
    from grokfetch.spec import TensorTable, preset

    table = TensorTable(preset("grok-1"))
    forms, qtype = _scheme_forms(table, scheme, 8)
    plan = preflight(table, 8, 80 * 10**9, layers=64, tokens=24, cache_len=24, forms=forms)
    stored = sum(type_nbytes(s.gguf_shape, qtype(s)) for s in table if s.quantized)
    f32 = sum(s.payload_bytes // (8 if s.slot.key == "embed" else 1) for s in table if not s.quantized)
    assert plan.weights == stored // 8 + f32
    assert round(plan.weights / 2**30, 2) == per_device_gib
    assert "dense" not in {forms(s) for s in table if s.quantized}  # every matrix stays blocks
    assert plan.fits
    if scheme == "Q4_K_M":  # 192 GB / 8 + activations; 4 × 80 GB hold it too, 2 × 80 GB do not
        assert 190e9 < stored < 200e9
        assert preflight(table, 4, 80 * 10**9, layers=64, tokens=24, cache_len=24,
                         forms=_scheme_forms(table, scheme, 4)[0]).fits
        assert not preflight(table, 2, 80 * 10**9, layers=64, tokens=24, cache_len=24,
                             forms=_scheme_forms(table, scheme, 2)[0]).fits
