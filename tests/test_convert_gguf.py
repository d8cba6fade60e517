"""``grokfetch convert --to gguf``: bytes, types, metadata, tokenizer, splits, subsets, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
import sentencepiece as spm
from gguf import GGMLQuantizationType as T

from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.convert.base import ConvertOptions
from grokfetch.convert.gguf import add_metadata, load_vocab
from grokfetch.convert.output import STATE_FILENAME
from grokfetch.convert.quant import resolve_scheme
from grokfetch.convert.run import convert
from grokfetch.errors import CheckpointError, UsageError
from grokfetch.formats.gguf import GGUFModel, iter_tensors
from grokfetch.integrity.manifest import MANIFEST_NAME, build_manifest
from grokfetch.spec import GROK_1, ModelConfig, TensorTable

BF16 = np.dtype(ml_dtypes.bfloat16)
REPO = Path(__file__).resolve().parents[1]


def _convert(ckpt: Path, out: Path, **kw) -> Path:
    rep = convert(ckpt, out, ConvertOptions(target="gguf", **kw))
    assert len(rep.files) == 1
    return out / rep.files[0]["path"]


def _ref_gguf_array(ck, spec) -> np.ndarray:
    """The checkpoint tensor in GGUF numpy layout, float32 (bf16-exact values)."""
    with ck.open(spec) as tf:
        ref = np.array(tf.dequantize(dtype=np.float32))
    return np.ascontiguousarray(np.swapaxes(ref, -1, -2)) if spec.slot.transpose else ref


@pytest.fixture(scope="module")
def tiny_bf16(tiny_ckpt, tmp_path_factory) -> Path:
    return _convert(tiny_ckpt, tmp_path_factory.mktemp("gguf") / "bf16", bits=16)


# --- bytes and values ---------------------------------------------------------------------------


def test_bf16_is_bit_exact_against_the_reader(tiny_ckpt, tiny_bf16):
    ck = open_checkpoint(tiny_ckpt)
    seen = 0
    for spec, arr, extra in iter_tensors(tiny_bf16.parent, ck.table):
        assert extra is None
        with ck.open(spec) as tf:
            ref = tf.dequantize()
        assert arr.shape == spec.shape
        if spec.quantized:
            assert arr.dtype == BF16 and (arr.view(np.uint16) == ref.view(np.uint16)).all(), spec.path
        elif spec.slot.key == "embed":  # float32 in the checkpoint, stored bf16 (nearest even)
            assert (arr.view(np.uint16) == ref.astype(BF16).view(np.uint16)).all()
        else:  # norms and router stay float32
            assert arr.dtype == np.float32 and np.array_equal(arr, ref), spec.path
        seen += 1
    assert seen == len(ck.table)


@pytest.mark.parametrize("quant", ["Q8_0", "F32"])
def test_file_is_byte_identical_to_gguf_py_whole_tensor_path(tiny_ckpt, tmp_path, quant):
    """Streaming in row chunks == gguf-py's own buffered GGUFWriter on whole dequantized tensors."""
    path = _convert(tiny_ckpt, tmp_path / "out", quant=quant, chunk_bytes=4096, workers=2)
    ck = open_checkpoint(tiny_ckpt)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    ref_path = tmp_path / "ref.gguf"
    w = gguf.GGUFWriter(ref_path, "grok")
    cfg = ck.config
    add_metadata(w, cfg, resolve_scheme(quant=quant), load_vocab(tiny_ckpt / "tokenizer.model"),
                 list(range(cfg.num_layers)), list(range(cfg.num_experts)))
    for name in types:
        spec = next(s for s in ck.table if s.gguf_name == name)
        w.add_tensor(name, gguf.quants.quantize(_ref_gguf_array(ck, spec), types[name]),
                     raw_dtype=types[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert path.read_bytes() == ref_path.read_bytes()


# relative RMS error vs the bf16 reference: generous upper bounds per type (uniform-ish data)
BOUNDS = {T.F32: 0.0, T.F16: 1e-3, T.BF16: 0.0, T.Q8_0: 0.01, T.Q5_0: 0.05, T.Q5_1: 0.05,
          T.Q4_0: 0.11, T.Q4_1: 0.11, T.Q6_K: 0.02, T.Q5_K: 0.04, T.Q4_K: 0.08, T.Q3_K: 0.2,
          T.Q2_K: 0.4}


def _check_errors(ckpt: Path, path: Path) -> dict[str, str]:
    ck = open_checkpoint(ckpt)
    model = GGUFModel(path)
    by_name = {s.gguf_name: s for s in ck.table}
    types = {}
    for name, t in model.tensors.items():
        spec = by_name[name]
        ref = _ref_gguf_array(ck, spec)
        got = model.array(name).astype(np.float32)
        assert got.shape == spec.gguf_shape, name
        err = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
        assert err <= BOUNDS[t.tensor_type], (name, t.tensor_type.name, err)
        types[name] = t.tensor_type.name
    return types


@pytest.mark.parametrize("quant", ["F32", "F16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1"])
def test_numpy_types_round_trip_within_bounds(tiny_ckpt, tmp_path, quant):
    types = _check_errors(tiny_ckpt, _convert(tiny_ckpt, tmp_path / "out", quant=quant))
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == quant
    # tiny's expert hidden size (176) is not a multiple of 32: ffn_down falls back to F16
    assert types["blk.0.ffn_down_exps.weight"] == ("F32" if quant == "F32" else "F16")


# The K mixes on `mini` (8 experts, emb 256, ffn 1368), two layers: the expected recipe written out
# by hand from llama.cpp's llama_tensor_get_type (see docs/convert.md).
K_RECIPES = {
    # scheme: (token_embd, attn_q, attn_k, attn_v, attn_output, ffn_gate/up, down L0, down L1)
    "Q2_K": ("Q6_K", "Q2_K", "Q8_0", "Q8_0", "Q5_K", "Q2_K", "F16", "F16"),
    "Q3_K_M": ("Q6_K", "Q3_K", "Q8_0", "Q8_0", "Q5_K", "Q3_K", "F16", "F16"),
    "Q4_K_M": ("Q6_K", "Q4_K", "Q8_0", "Q8_0", "Q5_K", "Q4_K", "F16", "F16"),
    "Q5_K_M": ("Q6_K", "Q5_K", "Q8_0", "Q8_0", "Q5_K", "Q5_K", "F16", "F16"),
    "Q6_K": ("Q6_K", "Q6_K", "Q8_0", "Q8_0", "Q6_K", "Q6_K", "F16", "F16"),
    "Q4_0": ("Q6_K", "Q4_0", "Q8_0", "Q8_0", "Q4_0", "Q4_0", "F16", "F16"),
}


@pytest.mark.slow
@pytest.mark.parametrize("quant", list(K_RECIPES))
def test_k_mixes_follow_llama_cpp_recipe(mini_ckpt, tmp_path, quant):
    types = _check_errors(mini_ckpt, _convert(mini_ckpt, tmp_path / "out", quant=quant,
                                              layers="0,1", workers=2))
    emb, q, k, v, o, gu, d0, d1 = K_RECIPES[quant]
    assert types["token_embd.weight"] == emb
    for b, down in ((0, d0), (1, d1)):
        assert (types[f"blk.{b}.attn_q.weight"], types[f"blk.{b}.attn_k.weight"],
                types[f"blk.{b}.attn_v.weight"], types[f"blk.{b}.attn_output.weight"]) == (q, k, v, o)
        assert types[f"blk.{b}.ffn_gate_exps.weight"] == types[f"blk.{b}.ffn_up_exps.weight"] == gu
        assert types[f"blk.{b}.ffn_down_exps.weight"] == down
        assert types[f"blk.{b}.ffn_norm.weight"] == types[f"blk.{b}.ffn_gate_inp.weight"] == "F32"


# llama.cpp's llama_tensor_get_type (src/llama-quant.cpp) evaluated by hand for Grok-1: 64 layers,
# 8 experts, n_gqa 6, no output.weight (token_embd takes the output branch), every row length a
# multiple of 256, no imatrix. Written out literally, not recomputed with our own helpers.
# ffn_down gets Q6_K in Q4_K_M/Q5_K_M on use_more_bits layers: the first and last eighth and every
# third layer in between, counting from n/8 + 2.
MORE_BITS_64 = [0, 1, 2, 3, 4, 5, 6, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40, 43, 46, 49, 52,
                55, 56, 57, 58, 59, 60, 61, 62, 63]
# scheme: token_embd, attn_q, attn_k, attn_v, attn_output, ffn_gate/up, ffn_down {layer: type}
LLAMA_CPP_GROK1 = {
    "Q2_K": ("Q6_K", "Q2_K", "Q8_0", "Q8_0", "Q5_K", "Q2_K", {i: "Q3_K" for i in range(64)}),
    "Q3_K_S": ("Q6_K", "Q3_K", "Q8_0", "Q8_0", "Q5_K", "Q3_K", {i: "Q3_K" for i in range(64)}),
    "Q3_K_M": ("Q6_K", "Q3_K", "Q8_0", "Q8_0", "Q5_K", "Q3_K",
               {i: "Q5_K" if i < 4 else "Q4_K" for i in range(64)}),
    "Q3_K_L": ("Q6_K", "Q3_K", "Q8_0", "Q8_0", "Q3_K", "Q3_K", {i: "Q5_K" for i in range(64)}),
    "Q4_K_S": ("Q6_K", "Q4_K", "Q8_0", "Q8_0", "Q5_K", "Q4_K",
               {i: "Q5_K" if i < 8 else "Q4_K" for i in range(64)}),
    "Q4_K_M": ("Q6_K", "Q4_K", "Q8_0", "Q8_0", "Q5_K", "Q4_K",
               {i: "Q6_K" if i in MORE_BITS_64 else "Q4_K" for i in range(64)}),
    "Q5_K_S": ("Q6_K", "Q5_K", "Q8_0", "Q8_0", "Q5_K", "Q5_K", {i: "Q5_K" for i in range(64)}),
    "Q5_K_M": ("Q6_K", "Q5_K", "Q8_0", "Q8_0", "Q5_K", "Q5_K",
               {i: "Q6_K" if i in MORE_BITS_64 else "Q5_K" for i in range(64)}),
    "Q6_K": ("Q6_K", "Q6_K", "Q8_0", "Q8_0", "Q6_K", "Q6_K", {i: "Q6_K" for i in range(64)}),
    "Q8_0": ("Q8_0", "Q8_0", "Q8_0", "Q8_0", "Q8_0", "Q8_0", {i: "Q8_0" for i in range(64)}),
    "Q4_0": ("Q6_K", "Q4_0", "Q8_0", "Q8_0", "Q4_0", "Q4_0", {i: "Q4_0" for i in range(64)}),
}


@pytest.mark.parametrize("scheme", list(LLAMA_CPP_GROK1))
def test_recipes_on_grok1_match_llama_cpp(scheme):
    """Every tensor of the real Grok-1 table gets the type llama.cpp's recipe gives it."""
    from grokfetch.convert.quant import tensor_type

    table = TensorTable(GROK_1)
    sch = resolve_scheme(quant=scheme)
    emb, q, k, v, o, gate_up, down = LLAMA_CPP_GROK1[scheme]
    want = {"embed": emb, "attn_q": q, "attn_k": k, "attn_v": v, "attn_o": o,
            "moe_gate": gate_up, "moe_up": gate_up}
    for spec in table:
        got = tensor_type(sch, spec, layer=spec.layer, n_layers=64, n_experts=8,
                          ne0=spec.gguf_shape[-1], n_gqa=6).name
        if len(spec.shape) == 1 or spec.slot.key == "router":
            assert got == "F32", spec.path
        elif spec.slot.key == "moe_down":
            assert got == down[spec.layer], (spec.layer, got)
        else:
            assert got == want[spec.slot.key], (spec.path, got)


@pytest.mark.slow
@pytest.mark.parametrize("bits,ktype", [(6, "Q6_K"), (5, "Q5_K"), (4, "Q4_K"), (3, "Q3_K"), (2, "Q2_K")])
def test_kquant_fixture_converts_every_k_type(tmp_path_factory, tmp_path, bits, ktype):
    """The `kquant` preset (rows multiples of 256): the K types really run through convert."""
    from grokfetch.checkpoint.fixture import write_fixture

    root = tmp_path_factory.getbasetemp() / "kquant-fixture"
    if not (root / "ckpt-0").is_dir():
        write_fixture(root, "kquant", seed=0)
    types = _check_errors(root, _convert(root, tmp_path / "out", bits=bits, layers="0,1"))
    for b in (0, 1):
        assert types[f"blk.{b}.ffn_gate_exps.weight"] == types[f"blk.{b}.ffn_up_exps.weight"] == ktype
        assert types[f"blk.{b}.ffn_down_exps.weight"].endswith("_K")
    assert types["blk.0.attn_q.weight"] == ktype


# --- metadata and tokenizer ---------------------------------------------------------------------


def test_metadata_key_by_key(tiny_ckpt, tiny_bf16):
    cfg = open_checkpoint(tiny_ckpt).config
    r = gguf.GGUFReader(tiny_bf16)

    def v(key):
        f = r.get_field(key)
        assert f is not None, key
        return f.contents()

    assert v("general.architecture") == "grok"
    assert v("general.file_type") == gguf.LlamaFileType.MOSTLY_BF16
    expect = {
        "grok.context_length": cfg.sequence_len, "grok.embedding_length": cfg.emb_size,
        "grok.block_count": cfg.num_layers, "grok.feed_forward_length": cfg.ffn_size,
        "grok.attention.head_count": cfg.num_q_heads,
        "grok.attention.head_count_kv": cfg.num_kv_heads, "grok.expert_count": cfg.num_experts,
        "grok.expert_used_count": cfg.num_selected_experts, "grok.rope.dimension_count": cfg.key_size,
        "grok.vocab_size": cfg.vocab_size, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.model": "llama",
    }
    for key, want in expect.items():
        assert v(key) == want, key
    floats = {
        "grok.embedding_scale": cfg.embedding_multiplier_scale,
        "grok.logit_scale": cfg.output_multiplier_scale,
        "grok.attention.output_scale": cfg.attn_output_multiplier,
        "grok.attn_logit_softcapping": cfg.attn_logit_softcap,
        "grok.attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
        "grok.rope.freq_base": cfg.rope_base,
    }
    for key, want in floats.items():
        assert v(key) == pytest.approx(want, rel=1e-7), key
    assert v("grok.embedding_scale") != pytest.approx(78.38367176906169)  # tiny's own value
    # tensor names and shapes from the table; ggml ne order is the numpy shape reversed
    table = open_checkpoint(tiny_ckpt).table
    infos = {t.name: t for t in r.tensors}
    assert set(infos) == {s.gguf_name for s in table}
    for spec in table:
        assert tuple(int(x) for x in infos[spec.gguf_name].shape) == tuple(reversed(spec.gguf_shape))


def test_tokenizer_arrays_match_sentencepiece(tiny_ckpt, tiny_bf16):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    r = gguf.GGUFReader(tiny_bf16)
    tokens = r.get_field("tokenizer.ggml.tokens").contents()
    scores = r.get_field("tokenizer.ggml.scores").contents()
    types = r.get_field("tokenizer.ggml.token_type").contents()
    assert tokens == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert np.allclose(scores, [sp.get_score(i) for i in range(sp.vocab_size())])
    assert types[:4] == [3, 3, 3, 2]  # [PAD] [BOS] [EOS] control, [UNK] unknown
    assert set(types[4:69]) == {4}  # Grok-1's user-defined pieces
    assert all(types[i] == 6 for i in range(sp.vocab_size()) if sp.is_byte(i))


def test_real_tokenizer_types(real_tokenizer):
    vocab = load_vocab(real_tokenizer, 131072)
    assert vocab.types[:4] == [3, 3, 3, 2]
    assert set(vocab.types[4:69]) == {4} and set(vocab.types[69:325]) == {6}
    assert set(vocab.types[325:]) == {1}
    assert vocab.tokens[326] == "▁t" and vocab.scores[326] == -1.0
    assert vocab.tokens[47] == "<|separator|>" and vocab.add_space_prefix is True


# --- split files and subsets --------------------------------------------------------------------


def test_split_files_hold_every_tensor(tiny_ckpt, tiny_bf16, tmp_path):
    rep = convert(tiny_ckpt, tmp_path / "split", ConvertOptions(bits=16, split_size=2_000_000))
    n = len(rep.files)
    assert n >= 3
    names = [f["path"] for f in rep.files]
    assert names == [f"tiny-BF16-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    whole = GGUFModel(tiny_bf16)
    total = 0
    for i, name in enumerate(names):
        r = gguf.GGUFReader(tmp_path / "split" / name)
        assert r.get_field("split.no").contents() == i
        assert r.get_field("split.count").contents() == n
        assert r.get_field("split.tensors.count").contents() == len(whole.tensors)
        assert (r.get_field("general.architecture") is not None) == (i == 0)
        assert sum(int(t.n_bytes) for t in r.tensors) <= 2_000_000 or len(r.tensors) == 1
        total += len(r.tensors)
    assert total == len(whole.tensors)
    split = GGUFModel(tmp_path / "split")
    for name in whole.tensors:
        assert np.array_equal(split.array(name).view(np.uint16), whole.array(name).view(np.uint16)) \
            if whole.array(name).dtype == BF16 else np.array_equal(split.array(name), whole.array(name))


def test_layer_and_expert_subset(tiny_ckpt, tmp_path):
    out = tmp_path / "sub"
    path = _convert(tiny_ckpt, out, bits=16, layers="3,10", experts="1,3")
    model = GGUFModel(path)
    assert model.get("grok.block_count") == 2 and model.get("grok.expert_count") == 2
    assert model.source_layers == [3, 10] and model.get("grokfetch.source_experts") == [1, 3]
    assert len(model.tensors) == 2 + 2 * 12
    ck = open_checkpoint(tiny_ckpt)
    sub_cfg = ModelConfig.from_json(json.loads((out / "model-config.json").read_text()))
    assert (sub_cfg.num_layers, sub_cfg.num_experts) == (2, 2)
    got = {(s.layer, s.slot.key): a for s, a, _ in iter_tensors(out, TensorTable(sub_cfg))}
    assert len(got) == 2 + 2 * 12
    with ck.open(ck.table.get("moe_down", 10)) as tf:
        ref = tf.dequantize()
    assert (got[(1, "moe_down")].view(np.uint16) == ref[[1, 3]].view(np.uint16)).all()
    with ck.open(ck.table.get("router", 3)) as tf:
        assert np.array_equal(got[(0, "router")], np.array(tf.weight)[:, [1, 3]])
    # a full-model table works too: the source layers come back under their own numbers
    full = {(s.layer, s.slot.key) for s, _, _ in iter_tensors(out, ck.table)}
    assert {k[0] for k in full} == {None, 3, 10}


# --- resume after kill -9 -----------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_kill_9_gives_identical_bytes(mini_ckpt, tmp_path):
    ref = _convert(mini_ckpt, tmp_path / "ref", bits=8)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "grokfetch", "convert", str(mini_ckpt), "--to", "gguf",
           "--out", str(out), "--bits", "8", "--chunk-size", "64KiB", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    state = out / STATE_FILENAME
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            files = json.loads(state.read_text())["files"]
            committed = max((len(f["items"]) for f in files.values()), default=0)
        except (OSError, ValueError, KeyError):
            pass
        if committed >= 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "conversion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out / (ref.name + ".partial")
    assert partial.exists() and not (out / ref.name).exists()
    assert partial.stat().st_size < ref.stat().st_size
    rep = convert(mini_ckpt, out, ConvertOptions(bits=8, chunk_bytes=64 * 1024))
    assert rep.resumed and 0 < rep.bytes_in < open_checkpoint(mini_ckpt).table.payload_bytes
    assert (out / ref.name).read_bytes() == ref.read_bytes()
    assert not state.exists() and not partial.exists()


# --- refusals (CLI) -----------------------------------------------------------------------------


def test_cli_refusals(tiny_ckpt, tmp_path, run_cli):
    out = tmp_path / "o"
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out, "--quant", "Q7_X"])
    assert code == 2 and "Q4_K_M" in err and not out.exists()
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out, "--bits", "8",
                            "--quant", "Q8_0"])
    assert code == 2 and "not both" in err
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out, "--layout", "hf"])
    assert code == 2 and "--layout" in err and not out.exists()
    notok = tmp_path / "notok"
    shutil.copytree(tiny_ckpt, notok)
    (notok / "tokenizer.model").unlink()
    code, _, err = run_cli(["convert", notok, "--to", "gguf", "--out", out])
    assert code == 2 and "tokenizer" in err and "--tokenizer" in err and not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out, "--bits", "16"])
    assert code == 2 and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "old-Q8_0.gguf").write_bytes(b"stale")
    code, _, _ = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out, "--bits", "16",
                          "--force", "--quiet"])
    assert code == 0 and (out / "mine.txt").read_text() == "user data"  # --force spares it
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-BF16.gguf"]


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../evil", "a/b", "/tmp/evil", "..", ".", "x y", ""])
def test_name_option_cannot_leave_out(tiny_ckpt, tmp_path, run_cli, name):
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", work / "o",
                            "--bits", "16", "--name", name, "--force"])
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--name" in errors[0] and "Traceback" not in err
    assert _tree(tmp_path) == before and not Path("/tmp/evil.gguf").exists()


def test_config_name_cannot_leave_out(tiny_ckpt, tmp_path, run_cli):
    """A hostile ``model-config.json`` name never becomes a path outside OUT."""
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "ckpt-0").symlink_to(tiny_ckpt / "ckpt-0")
    shutil.copy(tiny_ckpt / "tokenizer.model", ck / "tokenizer.model")
    doc = json.loads((tiny_ckpt / "model-config.json").read_text())
    doc["config"]["name"] = "../../evil"
    (ck / "model-config.json").write_text(json.dumps(doc))
    out = tmp_path / "a" / "o"
    before = _tree(tmp_path)
    code, _, err = run_cli(["convert", ck, "--to", "gguf", "--out", out, "--bits", "16"])
    assert code == 2 and "name" in err and "Traceback" not in err
    assert _tree(tmp_path) == before and not (tmp_path / "evil-BF16.gguf").exists()


def test_output_stem_is_checked_whatever_the_config_says(tiny_ckpt):
    """Defence in depth: the GGUF stem is checked even for a config built in code."""
    import copy

    from grokfetch.convert.gguf import GGUFTarget

    ck = open_checkpoint(tiny_ckpt)
    target = GGUFTarget(ck, ck.table.select(None), ConvertOptions(bits=16))
    target.validate()
    assert target.plan()[0].relpath == "tiny-BF16.gguf"
    hostile = copy.copy(target.out_config)
    object.__setattr__(hostile, "name", "../x")  # past ModelConfig's own check
    target.out_config = hostile
    with pytest.raises(UsageError, match="model name"):
        target.plan()


def test_manifest_equals_a_fresh_hash_of_the_output(tiny_bf16):
    out = tiny_bf16.parent
    assert json.loads((out / MANIFEST_NAME).read_text()) == build_manifest(out)


@pytest.mark.parametrize("cut", [0, 3, 100, -100])
def test_corrupt_gguf_is_one_checkpoint_error(tiny_bf16, tmp_path, cut):
    bad = tmp_path / "bad.gguf"
    data = tiny_bf16.read_bytes()
    bad.write_bytes(data[:cut] if cut else b"not a gguf file at all" * 8)
    with pytest.raises(CheckpointError, match="not a valid GGUF") as ei:
        GGUFModel(bad)
    assert "\n" not in str(ei.value)


def test_cli_json_report(tiny_ckpt, tmp_path, run_cli):
    code, stdout, _ = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", tmp_path / "j",
                               "--bits", "8", "--json", "-j", "2"])
    assert code == 0
    lines = [json.loads(x) for x in stdout.splitlines()]
    final = lines[-1]
    assert final["target"] == "gguf" and final["details"]["scheme"] == "Q8_0"
    assert final["bytes_out"] == (tmp_path / "j" / "tiny-Q8_0.gguf").stat().st_size
    assert final["bytes_in"] == open_checkpoint(tiny_ckpt).table.payload_bytes
    assert final["peak_rss_bytes"] > 0 and final["mb_per_s"] > 0
    assert any(x.get("event") == "task" for x in lines[:-1])


def test_bad_bits_is_usage_error():
    with pytest.raises(UsageError, match="16 \\(BF16\\)"):
        resolve_scheme(bits=7)
    assert resolve_scheme(quant="q4_k").name == "Q4_K_M"


def test_tensors_are_what_llama_cpp_grok_loader_creates(tiny_ckpt, tiny_bf16):
    """Names are in gguf-py's GROK tensor list; ne as llama.cpp's create_tensor asks for them."""
    cfg = open_checkpoint(tiny_ckpt).config
    d, q, kv, f, e, v = (cfg.emb_size, cfg.q_size, cfg.kv_size, cfg.ffn_size, cfg.num_experts,
                         cfg.vocab_size)
    ne = {"token_embd": (d, v), "output_norm": (d,), "attn_norm": (d,), "attn_q": (d, q),
          "attn_k": (d, kv), "attn_v": (d, kv), "attn_output": (q, d), "attn_output_norm": (d,),
          "ffn_norm": (d,), "ffn_gate_inp": (d, e), "ffn_gate_exps": (d, f, e),
          "ffn_up_exps": (d, f, e), "ffn_down_exps": (f, d, e), "layer_output_norm": (d,)}
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GROK]}
    r = gguf.GGUFReader(tiny_bf16)
    for t in r.tensors:
        base = t.name.removesuffix(".weight")
        template = base if not base.startswith("blk.") else "blk.{bid}." + base.split(".", 2)[2]
        assert template in allowed, t.name
        assert tuple(int(x) for x in t.shape) == ne[template.rsplit(".", 1)[-1]], t.name
    assert len(r.tensors) == 2 + 12 * cfg.num_layers


def test_interrupted_split_conversion_resumes_to_identical_files(tiny_ckpt, tmp_path, monkeypatch):
    from grokfetch.convert import gguf as gguf_target

    ref = convert(tiny_ckpt, tmp_path / "ref", ConvertOptions(bits=8, split_size=1_000_000))
    assert len(ref.files) >= 3
    real = gguf_target.GGUFTarget._write_tensor
    calls = [0]

    def dying(self, *a, **kw):
        calls[0] += 1
        if calls[0] == 90:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(gguf_target.GGUFTarget, "_write_tensor", dying)
    monkeypatch.setattr("grokfetch.convert.output.SYNC_BYTES", 100_000)  # durable commits every ~100 kB
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_ckpt, out, ConvertOptions(bits=8, split_size=1_000_000))
    done_files = [p.name for p in out.glob("*.gguf")]
    assert done_files and len(done_files) < len(ref.files)  # some files finished, some partial
    assert list(out.glob("*.partial"))
    monkeypatch.setattr(gguf_target.GGUFTarget, "_write_tensor", real)
    rep = convert(tiny_ckpt, out, ConvertOptions(bits=8, split_size=1_000_000))
    assert rep.resumed
    for f in ref.files:
        assert (out / f["path"]).read_bytes() == (tmp_path / "ref" / f["path"]).read_bytes()
    assert not list(out.glob("*.partial"))
    # files finished before, resumed and fresh ones: the manifest is what hashing OUT gives
    assert json.loads((out / MANIFEST_NAME).read_text()) == build_manifest(out)


def test_wrong_config_or_tokenizer_is_refused(tiny_ckpt, mini_ckpt, tmp_path, run_cli, real_tokenizer):
    out = tmp_path / "o"
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out,
                            "--tokenizer", real_tokenizer])
    assert code == 2 and "131072" in err and not out.exists()
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_ckpt, mixed)
    shutil.copy(mini_ckpt / "model-config.json", mixed / "model-config.json")
    code, _, err = run_cli(["convert", mixed, "--to", "gguf", "--out", out])
    assert code == 1 and "tensor00000_000" in err and not out.exists()
