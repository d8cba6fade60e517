"""The tensor table: counts, order, sizes and names against the format doc and gguf-py."""

from __future__ import annotations

import json
import math

import gguf
import pytest

from grokfetch.errors import ConfigError, UsageError
from grokfetch.spec import (
    GROK_1,
    PRESETS,
    ModelConfig,
    TensorTable,
    layer_file_order,
    load_config,
    parse_layers,
    preset,
)


@pytest.fixture(scope="module")
def grok() -> TensorTable:
    return TensorTable(GROK_1)


def test_grok1_counts_and_totals(grok):
    assert len(grok) == 770
    # Sums from grok1-format.md §2.6 (payloads, predicted file bytes, unique parameters).
    assert grok.payload_bytes == 318_239_694_848
    assert grok.file_bytes == 318_239_886_140
    assert grok.num_params == 315_684_820_992


def test_layer_positions_follow_lexicographic_rank(grok):
    ranks = sorted(str(k) for k in range(64))
    for layer in range(64):
        base = 2 + 12 * ranks.index(str(layer))
        assert grok.layer_range(layer) == range(base, base + 12)
        assert {grok[i].layer for i in range(base, base + 12)} == {layer}
    # A few fixed points of the doc's table.
    assert grok.layer_range(2) == range(146, 158)
    assert grok.layer_range(9) == range(758, 770)
    assert grok.layer_range(63) == range(722, 734)


def test_slot_table_matches_doc(grok):
    start = grok.layer_range(0).start
    rows = [(grok[start + i].path.split("/", 2)[2], grok[start + i].shape, grok[start + i].scales_shape,
             grok[start + i].payload_bytes) for i in range(12)]
    assert rows == [
        ("moe/linear/w", (8, 6144, 32768), (8, 1, 32768), 1_611_137_024),
        ("moe/linear_1/w", (8, 32768, 6144), (8, 8, 6144), 1_611_399_168),
        ("moe/linear_v/w", (8, 6144, 32768), (8, 1, 32768), 1_611_137_024),
        ("multi_head_attention/key/w", (6144, 1024), (1, 1024), 6_293_504),
        ("multi_head_attention/linear/w", (6144, 6144), (8, 6144), 37_847_040),
        ("multi_head_attention/query/w", (6144, 6144), (1, 6144), 37_761_024),
        ("multi_head_attention/value/w", (6144, 1024), (1, 1024), 6_293_504),
        ("rms_norm/scale", (6144,), None, 24_576),
        ("rms_norm_1/scale", (6144,), None, 24_576),
        ("rms_norm_2/scale", (6144,), None, 24_576),
        ("rms_norm_3/scale", (6144,), None, 24_576),
        ("router/w", (6144, 8), None, 196_608),
    ]
    assert grok[0].path == "language_model/in_out_embed/embeddings"
    assert grok[0].shape == (131072, 6144) and grok[0].file_bytes == 3_221_225_637
    assert grok[1].path == "language_model/rms_norm/scale"
    assert grok[27].path == "transformer/decoder_layer_10/moe/linear_1/w"


def test_predicted_file_sizes_match_doc(grok):
    by_slot = {s.slot.key: s.file_bytes for s in grok if s.layer == 5}
    assert by_slot["moe_gate"] == by_slot["moe_up"] == 1_611_137_347
    assert by_slot["moe_down"] == 1_611_399_491
    assert by_slot["attn_q"] == 37_761_334
    assert by_slot["attn_o"] == 37_847_359
    assert by_slot["attn_k"] == by_slot["attn_v"] == 6_293_814
    assert by_slot["norm_attn_in"] == 24_727
    assert by_slot["router"] == 196_770


def test_gguf_names_come_from_gguf_py(grok):
    names = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GROK]}
    for spec in grok:
        template = spec.slot.gguf
        assert template in names, template
    assert len({s.gguf_name for s in grok}) == 770
    assert grok.get("moe_down", 10).gguf_name == "blk.10.ffn_down_exps.weight"
    assert grok.get("moe_down", 10).gguf_shape == (8, 6144, 32768)
    assert grok.get("router", 3).gguf_shape == (8, 6144)
    assert grok.get("embed").gguf_shape == (131072, 6144)


def test_safetensors_names(grok):
    spec = grok.get("moe_up", 7)
    assert spec.hf_name(3) == "transformer.decoder_layer.7.moe.3.linear_v.weight"
    assert spec.sglang_name(3) == "model.layers.7.block_sparse_moe.experts.3.w3.weight"
    assert grok.get("norm_moe_out", 0).sglang_name() == "model.layers.0.post_moe_norm.weight"


def test_mini_preset_is_pinned():
    m = PRESETS["mini"]
    assert (m.vocab_size, m.emb_size, m.key_size, m.num_q_heads, m.num_kv_heads, m.num_layers,
            m.num_experts, m.num_selected_experts, m.sequence_len) == (1024, 256, 16, 16, 8, 12, 8, 2, 512)
    assert m.ffn_size == 1368
    assert m.embedding_multiplier_scale == 16 == math.sqrt(m.emb_size)
    assert m.output_multiplier_scale == 0.5773502691896257
    assert m.attn_output_multiplier == 0.25 == 1 / math.sqrt(m.key_size)
    table = TensorTable(m)
    assert len(table) == 2 + 12 * 12
    assert 90e6 < table.payload_bytes < 120e6
    # 8 row blocks on the input axis of the row-parallel weights.
    assert table.get("moe_down", 0).scales_shape == (8, 8, 256)
    assert table.get("attn_o", 0).scales_shape == (8, 256)
    # Layer 10 comes before layer 2 on disk.
    assert table.layer_range(10).start < table.layer_range(2).start


def test_layer_file_order():
    assert layer_file_order(12) == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert layer_file_order(3) == [0, 1, 2]


def test_select_and_model_order():
    table = TensorTable(PRESETS["mini"])
    picked = table.select([0, 10])
    assert [s.layer for s in picked[:2]] == [None, None]
    assert {s.layer for s in picked[2:]} == {0, 10}
    ordered = table.model_order()
    layers = [s.layer for s in ordered if s.layer is not None]
    assert layers == sorted(layers)
    with pytest.raises(UsageError):
        table.select([12])


def test_parse_layers():
    assert parse_layers("0-3", 64) == [0, 1, 2, 3]
    assert parse_layers("0,2,5-6", 64) == [0, 2, 5, 6]
    assert parse_layers(None, 64) is None and parse_layers("all", 64) is None
    for bad in ("x", "3-1", "64", "-1"):
        with pytest.raises(UsageError):
            parse_layers(bad, 64)


def test_config_json_round_trip(tmp_path):
    cfg = PRESETS["tiny"]
    (tmp_path / "model-config.json").write_text(json.dumps(cfg.to_json()))
    assert load_config(tmp_path) == cfg
    assert load_config(tmp_path / "ckpt-0") == GROK_1  # a parent folder's config is not used
    assert load_config(None) == GROK_1


def test_bad_config_and_preset(tmp_path):
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        preset("nope")
    data = PRESETS["tiny"].to_json()
    data["config"]["ffn_size"] = 7
    (tmp_path / "model-config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="ffn_size"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="num_kv_heads"):
        ModelConfig(**{**PRESETS["tiny"].__dict__, "num_kv_heads": 5})


@pytest.mark.parametrize("change", [{"name": "../../evil"}, {"name": ""}, {"num_kv_heads": 0},
                                    {"scale_row_blocks": 0}, {"emb_size": -256}, {"rope_base": float("inf")},
                                    {"num_layers": 2.5}, {"vocab_size": "1024"}, {"pad_token_id": -1},
                                    {"num_layers": 2_000_000}, {"emb_size": 10**400},
                                    {"rope_base": 1e300}, {"bos_token_id": 2**64}])
def test_config_json_is_validated(tmp_path, change):
    data = PRESETS["tiny"].to_json()
    data["config"].pop("ffn_size")
    data["config"].update(change)
    (tmp_path / "model-config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_parse_layers_checks_range_before_expanding():
    with pytest.raises(UsageError, match="out of range"):
        parse_layers("0-99999999999", 64)
