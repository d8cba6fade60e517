"""``convert --to safetensors``: read back with the real ``safetensors.safe_open`` and compared
with the checkpoint reader (``TensorFile.dequantize`` / the raw int8 + scales)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from progress_doubles import InterruptAfter
from safetensors import safe_open

from grokfetch.checkpoint.reader import BF16, open_checkpoint
from grokfetch.convert.base import ConvertOptions
from grokfetch.convert.run import convert
from grokfetch.convert.safetensors import HF_CONFIG_NAME, hf_config
from grokfetch.convert.safetensors_header import StTensor, encode_header, plan_shards
from grokfetch.errors import CheckpointError, OutputExistsError, UsageError
from grokfetch.formats.safetensors import INDEX_NAME, iter_tensors, lm_head
from grokfetch.spec import PRESETS, TensorTable, load_config

SHARD = 600_000  # a few shards for the ~8 MB tiny bf16 export


@pytest.fixture(scope="module")
def outputs(tiny_ckpt, tmp_path_factory):
    """The tiny fixture converted once per layout/dtype combination used below."""
    root = tmp_path_factory.mktemp("st")
    made = {}
    for layout, dtype in (("hf", "bf16"), ("hf", "int8"), ("sglang", "bf16")):
        out = root / f"{layout}-{dtype}"
        convert(tiny_ckpt, out, ConvertOptions(target="safetensors", layout=layout, dtype=dtype,
                                               shard_size=SHARD))
        made[(layout, dtype)] = out
    return made


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("model-*-of-*.safetensors"))


def _all_tensors(out: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for shard in _shards(out):
        with safe_open(str(shard), framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def test_shard_files_follow_the_format(outputs):
    """Raw bytes: u64 header length, padded JSON, data 8-aligned, offsets contiguous and
    covering the file, every tensor aligned to its item size."""
    for out in outputs.values():
        shards = _shards(out)
        assert len(shards) > 1
        n = len(shards)
        assert [s.name for s in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        for shard in shards:
            raw = shard.read_bytes()
            (hlen,) = struct.unpack("<Q", raw[:8])
            assert (8 + hlen) % 8 == 0
            header = json.loads(raw[8:8 + hlen])
            assert header.pop("__metadata__") == {"format": "pt"}
            spans = sorted((v["data_offsets"], v["dtype"]) for v in header.values())
            pos = 0
            for (begin, end), dtype in spans:
                assert begin == pos
                assert begin % {"F32": 4, "BF16": 2, "I8": 1}[dtype] == 0
                pos = end
            assert 8 + hlen + pos == len(raw)


def test_bf16_is_bit_exact_with_dequantize(outputs, tiny_ckpt):
    out = outputs[("hf", "bf16")]
    got = _all_tensors(out)
    ckpt = open_checkpoint(tiny_ckpt)
    expected_names = set()
    for spec in ckpt.table:
        with ckpt.open(spec) as tf:
            if not spec.quantized:
                name = spec.hf_name()
                expected_names.add(name)
                ref = tf.weight.T if spec.slot.transpose else tf.weight
                assert got[name].dtype == np.float32 and got[name].shape == ref.shape
                assert np.array_equal(got[name], ref), name
                continue
            for e in range(spec.shape[0]) if spec.per_expert else [None]:
                name = spec.hf_name(e)
                expected_names.add(name)
                ref = tf.dequantize(expert=e).T
                assert got[name].dtype == BF16 and got[name].shape == ref.shape, name
                assert np.array_equal(got[name].view(np.uint16), ref.view(np.uint16)), name
    assert set(got) == expected_names


def test_int8_weights_and_scales_are_exact(outputs, tiny_ckpt):
    """int8 ``NAME.weight`` (out, in) and bf16 ``NAME.weight_scale`` (out, blocks); the
    documented formula reproduces the reference's effective weight."""
    got = _all_tensors(outputs[("hf", "int8")])
    ckpt = open_checkpoint(tiny_ckpt)
    for spec in ckpt.table:
        if not spec.quantized:
            continue
        with ckpt.open(spec) as tf:
            for e in range(spec.shape[0]) if spec.per_expert else [None]:
                name = spec.hf_name(e)
                w, s = got[name], got[name + "_scale"]
                q_src = tf.weight[e] if e is not None else tf.weight
                s_src = tf.scales[e] if e is not None else tf.scales
                assert w.dtype == np.int8 and np.array_equal(w, q_src.T)
                assert s.dtype == BF16 and s.shape == (q_src.shape[1], s_src.shape[0])
                assert np.array_equal(s.view(np.uint16), s_src.T.view(np.uint16))
                block = w.shape[1] // s.shape[1]
                rebuilt = (w.astype(np.float32) * np.repeat(s.astype(np.float32), block, axis=1)).astype(BF16)
                assert np.array_equal(rebuilt.view(np.uint16), tf.dequantize(expert=e).T.view(np.uint16))


def test_index_matches_the_shards(outputs):
    for (layout, dtype), out in outputs.items():
        index = json.loads((out / INDEX_NAME).read_text())
        found, total = {}, 0
        for shard in _shards(out):
            data = 0
            with safe_open(str(shard), framework="numpy") as f:
                names = list(f.keys())
                for name in names:
                    found[name] = shard.name
                    data += f.get_tensor(name).nbytes
            assert data <= SHARD or len(names) == 1
            total += data
        assert index["weight_map"] == found
        assert index["metadata"]["total_size"] == total
        assert index["metadata"]["layout"] == layout and index["metadata"]["dtype"] == dtype


def test_shard_plan_is_greedy_and_bounded():
    ts = [StTensor(f"t{i}", "BF16", (n,)) for i, n in enumerate([100, 200, 50, 400, 10, 10])]
    shards = plan_shards(ts, 500)  # bytes: 200, 400, 100, 800, 20, 20
    assert [[t.name for t in s] for s in shards] == [["t0"], ["t1", "t2"], ["t3"], ["t4", "t5"]]
    mixed = plan_shards([StTensor("a", "I8", (3,)), StTensor("b", "F32", (2,))], 100)
    assert [t.name for t in mixed[0]] == ["b", "a"]  # 4-byte items before 1-byte ones
    head = encode_header(mixed[0], {"format": "pt"})
    assert len(head) % 8 == 0
    with pytest.raises(ValueError, match="strings"):
        encode_header(mixed[0], {"n": 1})  # type: ignore[dict-item]


def test_config_json_has_the_true_grok1_values():
    c = hf_config(PRESETS["grok-1"], "hf", "bf16")
    assert c["architectures"] == ["GrokForCausalLM"] and c["model_type"] == "grok"
    assert (c["vocab_size"], c["hidden_size"], c["intermediate_size"]) == (131072, 6144, 32768)
    assert (c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"],
            c["head_dim"]) == (64, 48, 8, 128)
    assert (c["hidden_act"], c["rope_theta"], c["max_position_embeddings"], c["rms_norm_eps"]) \
        == ("gelu", 10000.0, 8192, 1e-5)
    assert (c["num_local_experts"], c["num_experts_per_tok"]) == (8, 2)
    assert c["embedding_multiplier_scale"] == pytest.approx(78.38367176906169)
    assert c["output_multiplier_scale"] == pytest.approx(0.5773502691896257)
    assert c["attn_output_multiplier"] == pytest.approx(0.08838834764831845)
    assert c["tie_word_embeddings"] is True
    assert (c["pad_token_id"], c["bos_token_id"], c["eos_token_id"]) == (0, 1, 2)


def test_output_config_json_describes_the_output(outputs, tiny_ckpt):
    cfg = load_config(tiny_ckpt)
    c = json.loads((outputs[("hf", "bf16")] / HF_CONFIG_NAME).read_text())
    assert (c["hidden_size"], c["num_local_experts"], c["num_hidden_layers"]) == \
        (cfg.emb_size, cfg.num_experts, cfg.num_layers)
    assert "quantization_config" not in c
    c8 = json.loads((outputs[("hf", "int8")] / HF_CONFIG_NAME).read_text())
    assert c8["quantization_config"]["quant_method"] == "grokfetch-int8"
    for out in outputs.values():
        assert (out / "tokenizer.model").read_bytes() == (tiny_ckpt / "tokenizer.model").read_bytes()


def test_hf_names_are_the_ones_llama_cpp_maps(outputs, tiny_ckpt):
    """gguf-py's Grok tensor map (what convert_hf_to_gguf.py uses) knows every non-expert name;
    per-expert names follow the pattern its GrokModel merges into the mapped 3-D names."""
    table = TensorTable(load_config(tiny_ckpt))
    by_name = {s.hf_name(): s for s in table if not s.per_expert}
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GROK, table.config.num_layers)
    expert = re.compile(r"transformer\.decoder_layer\.(\d+)\.moe\.(\d+)\.(linear|linear_1|linear_v)\.weight")
    for name in json.loads((outputs[("hf", "bf16")] / INDEX_NAME).read_text())["weight_map"]:
        m = expert.fullmatch(name)
        if m:
            merged = f"transformer.decoder_layer.{m[1]}.moe.{m[3]}.weight"
            spec = table.get({"linear": "moe_gate", "linear_1": "moe_down", "linear_v": "moe_up"}[m[3]],
                             int(m[1]))
        else:
            merged, spec = name, by_name[name]
        assert tmap.get_name(merged, try_suffixes=(".weight",)) == spec.gguf_name, name


def test_sglang_layout_names_and_lm_head(outputs, tiny_ckpt):
    out = outputs[("sglang", "bf16")]
    got = _all_tensors(out)
    table = TensorTable(load_config(tiny_ckpt))
    want = {"lm_head.weight"}
    for spec in table:
        want |= {spec.sglang_name(e) for e in range(spec.shape[0])} if spec.per_expert \
            else {spec.sglang_name()}
    assert set(got) == want
    ckpt = open_checkpoint(tiny_ckpt)
    with ckpt.open(table.get("embed")) as tf:
        assert np.array_equal(got["lm_head.weight"], tf.weight)
        assert np.array_equal(got["model.embed_tokens.weight"], tf.weight)
    c = json.loads((out / HF_CONFIG_NAME).read_text())
    assert c["architectures"] == ["Grok1ForCausalLM"]
    assert all(c[k] is False for k in ("load_presharded_moe", "load_presharded_attn",
                                       "load_presharded_mlp", "load_presharded_embedding"))


@pytest.mark.parametrize("key", [("hf", "int8"), ("sglang", "bf16")])
def test_iter_tensors_gives_jax_layout(outputs, tiny_ckpt, key):
    out = outputs[key]
    ckpt = open_checkpoint(tiny_ckpt)
    seen = 0
    for spec, w, s in iter_tensors(out, TensorTable(load_config(out))):
        seen += 1
        with ckpt.open(ckpt.table[spec.index]) as tf:
            assert w.shape == spec.shape
            if not spec.quantized:
                assert s is None and np.array_equal(w, tf.weight)
            elif key[1] == "int8":
                assert np.array_equal(w, tf.weight)
                assert np.array_equal(s.view(np.uint16), tf.scales.view(np.uint16))
            else:
                assert s is None
                assert np.array_equal(w.view(np.uint16), tf.dequantize().view(np.uint16))
    assert seen == len(ckpt.table)


def test_layer_and_expert_subset_is_renumbered(tiny_ckpt, tmp_path):
    out = tmp_path / "sub"
    convert(tiny_ckpt, out, ConvertOptions(target="safetensors", dtype="int8", layers=(2, 10),
                                           experts=(1, 3)))
    cfg = load_config(out)
    assert (cfg.num_layers, cfg.num_experts) == (2, 2)
    got = _all_tensors(out)
    assert "transformer.decoder_layer.1.moe.1.linear_1.weight" in got
    assert not any(".decoder_layer.2." in n or ".moe.2." in n for n in got)
    ckpt = open_checkpoint(tiny_ckpt)
    with ckpt.open(ckpt.table.get("moe_down", 10)) as tf:
        assert np.array_equal(got["transformer.decoder_layer.1.moe.1.linear_1.weight"], tf.weight[3].T)
    with ckpt.open(ckpt.table.get("router", 2)) as tf:
        assert np.array_equal(got["transformer.decoder_layer.0.router.weight"], tf.weight[:, [1, 3]].T)
    assert json.loads((out / HF_CONFIG_NAME).read_text())["num_local_experts"] == 2




def _digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in _shards(out)}


def test_resume_after_interruption_gives_identical_bytes(tiny_ckpt, tmp_path, outputs):
    out = tmp_path / "resumed"
    opts = ConvertOptions(target="safetensors", shard_size=SHARD)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_ckpt, out, opts, progress=InterruptAfter(60))
    assert list(out.glob("*.partial")) and not (out / INDEX_NAME).exists()
    report = convert(tiny_ckpt, out, opts)
    assert report.resumed
    assert _digest(out) == _digest(outputs[("hf", "bf16")])
    assert not list(out.glob("*.partial"))
    from grokfetch.integrity.manifest import MANIFEST_NAME, build_manifest

    assert json.loads((out / MANIFEST_NAME).read_text()) == build_manifest(out)


@pytest.mark.parametrize("shard", ["../x.safetensors", "/tmp/x.safetensors", "link/x.safetensors"])
def test_index_naming_files_outside_the_output_is_refused(outputs, tmp_path, shard):
    """A crafted index never makes the reader open a file outside OUT."""
    src = outputs[("sglang", "bf16")]
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside)
    index = json.loads((src / INDEX_NAME).read_text())
    real = _shards(src)[0]
    (tmp_path / "x.safetensors").write_bytes(real.read_bytes())  # readable, were it opened
    (outside / "x.safetensors").write_bytes(real.read_bytes())
    index["weight_map"] = {k: shard for k in index["weight_map"]}
    (out / INDEX_NAME).write_text(json.dumps(index))
    table = TensorTable(load_config(src))
    for read in (lambda: list(iter_tensors(out, table)), lambda: lm_head(out)):
        with pytest.raises(CheckpointError, match="bad index") as ei:
            read()
        assert shard in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("body", ['{"weight_map": ["a"]}', '{"weight_map": {"a": 3}}', '[1]'])
def test_malformed_index_is_one_checkpoint_error(tmp_path, body):
    (tmp_path / INDEX_NAME).write_text(body)
    with pytest.raises(CheckpointError, match="bad index"):
        lm_head(tmp_path)


def test_worker_threads_give_identical_bytes(tiny_ckpt, tmp_path, outputs):
    out = tmp_path / "threads"
    convert(tiny_ckpt, out, ConvertOptions(target="safetensors", shard_size=SHARD, workers=3,
                                           chunk_bytes=4096))  # many small blocks per tensor
    assert _digest(out) == _digest(outputs[("hf", "bf16")])


def test_refusals(tiny_ckpt, tmp_path, outputs):
    # a finished output is not overwritten: the rerun finds it complete
    assert convert(tiny_ckpt, outputs[("hf", "bf16")],
                   ConvertOptions(target="safetensors", shard_size=SHARD)).already_complete
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        convert(tiny_ckpt, other, ConvertOptions(target="safetensors"))
    assert (other / "notes.txt").read_text() == "mine"
    for bad in ({"layout": "torch"}, {"dtype": "fp8"}, {"shard_size": 0}):
        with pytest.raises(UsageError):
            convert(tiny_ckpt, tmp_path / "x", ConvertOptions(target="safetensors", **bad))
    assert not (tmp_path / "x").exists()


def test_cli_converts_and_reports(tiny_ckpt, tmp_path, run_cli):
    out = tmp_path / "cli"
    code, stdout, _ = run_cli(["convert", tiny_ckpt, "--to", "safetensors", "--out", out,
                               "--layout", "sglang", "--dtype", "int8", "--shard-size", "2MB",
                               "--json"])
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["target"] == "safetensors" and result["details"]["layout"] == "sglang"
    assert "lm_head.weight" in json.loads((out / INDEX_NAME).read_text())["weight_map"]
    code, _, stderr = run_cli(["convert", tiny_ckpt, "--to", "safetensors", "--out",
                               tmp_path / "bad", "--layout", "bogus"])
    assert code == 2 and "layout" in stderr and "Traceback" not in stderr
