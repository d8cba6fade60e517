"""Slots' logical axes and the partition rules derived from them, against the official rules and
the literal tables they replaced."""

from __future__ import annotations

import re

import pytest

from grokfetch.convert.jax_layout import slot_rule
from grokfetch.sharding import OFFICIAL_RULES, SMOKE_RULES, partition
from grokfetch.smoke.mesh import WEIGHT_AXES
from grokfetch.spec import AXIS_SIZES, GROK_1, SLOTS, TensorTable, preset, slot_shape

# xai-org/grok-1 model.py, TRANSFORMER_PARTITION_RULES and LM_PARTITION_RULES (the weight rules;
# the bias, layer_norm and positional-embedding entries match no Grok-1 parameter), in order,
# each PartitionSpec written as a tuple.
OFFICIAL = [
    (("multi_head_attention", "(query|key|value)", "w"), ("data", "model")),
    (("multi_head_attention", "linear", "w"), ("model", "data")),
    ((r"decoder_layer_[0-9]+", "linear", "w"), ("data", "model")),
    ((r"decoder_layer_[0-9]+", "linear_v", "w"), ("data", "model")),
    ((r"decoder_layer_[0-9]+", "linear_1", "w"), ("model", "data")),
    ((r"decoder_layer_[0-9]+", "rms_norm", "scale"), (None,)),
    ((r"decoder_layer_[0-9]+", "rms_norm_1", "scale"), (None,)),
    ((r"decoder_layer_[0-9]+", "rms_norm_2", "scale"), (None,)),
    ((r"decoder_layer_[0-9]+", "rms_norm_3", "scale"), (None,)),
    (("router", "w"), ("data",)),
    (("moe", "linear", "w"), (None, "data", "model")),
    (("moe", "linear_v", "w"), (None, "data", "model")),
    (("moe", "linear_1", "w"), (None, "model", "data")),
    (("language_model", "in_out_embed", "embeddings"), (None, ("data", "model"))),
    (("language_model", "rms_norm"), (None,)),
]


def _official(path: str) -> tuple:
    """model.py's ``apply_rules``: the first rule whose regexes fully match a window of the path."""
    keys = path.split("/")
    for patterns, spec in OFFICIAL:
        for i in range(len(keys) - len(patterns) + 1):
            if all(re.fullmatch(p, k) for p, k in zip(patterns, keys[i:], strict=False)):
                return spec
    raise AssertionError(f"no official rule for {path}")


def _padded(rule: tuple, ndim: int) -> tuple:
    return tuple(rule) + (None,) * (ndim - len(rule))


# The literal tables the slots' axes replaced (convert/jax_layout.py RULES, norms replicated, and
# grokfetch/smoke/mesh.py WEIGHT_AXES), as they shipped.
OLD_JAX_RULES = {
    "attn_q": ("data", "model"),
    "attn_k": ("data", "model"),
    "attn_v": ("data", "model"),
    "attn_o": ("model", "data"),
    "moe_gate": (None, "data", "model"),
    "moe_up": (None, "data", "model"),
    "moe_down": (None, "model", "data"),
    "router": ("data",),
    "embed": (None, ("data", "model")),
}
OLD_SMOKE_AXES = {
    "embed": (None, "model"),
    "final_norm": (None,),
    "attn_q": (None, "model"),
    "attn_k": (None, "model"),
    "attn_v": (None, "model"),
    "attn_o": ("model", None),
    "moe_gate": (None, None, "model"),
    "moe_up": (None, None, "model"),
    "moe_down": (None, "model", None),
    "router": (None, None),
    "norm_attn_in": (None,),
    "norm_attn_out": (None,),
    "norm_moe_in": (None,),
    "norm_moe_out": (None,),
}


def _old_slot_shape(cfg, key: str) -> tuple[int, ...]:
    d, f, e = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    return {
        "embed": (cfg.vocab_size, d), "final_norm": (d,), "moe_gate": (e, d, f),
        "moe_down": (e, f, d), "moe_up": (e, d, f), "attn_k": (d, cfg.kv_size),
        "attn_o": (cfg.q_size, d), "attn_q": (d, cfg.q_size), "attn_v": (d, cfg.kv_size),
        "router": (d, e),
    }.get(key, (d,))


def test_rule_maps_cover_every_logical_axis():
    assert set(OFFICIAL_RULES) == set(SMOKE_RULES) == set(AXIS_SIZES)
    assert {a for s in SLOTS.values() for a in s.axes} == set(AXIS_SIZES)


def test_official_rules_match_model_py():
    table = TensorTable(GROK_1)
    # globals, layers 0 and 10 (the regexes must see a multi-digit layer), every slot
    for spec in table.select([0, 10]):
        ndim = len(spec.shape)
        want = _padded(_official(spec.path), ndim)
        assert _padded(slot_rule(spec.slot), ndim) == want, spec.path
        assert partition(spec.slot, OFFICIAL_RULES) == want, spec.path


@pytest.mark.parametrize("key", sorted(SLOTS))
def test_derived_tables_equal_the_old_literals(key):
    slot = SLOTS[key]
    ndim = len(slot.axes)
    assert _padded(slot_rule(slot), ndim) == _padded(OLD_JAX_RULES.get(key, ()), ndim)
    assert WEIGHT_AXES[key] == OLD_SMOKE_AXES[key]
    for cfg in (GROK_1, preset("mini"), preset("tiny")):
        assert slot_shape(cfg, slot) == _old_slot_shape(cfg, key)


def test_expert_axis():
    axes = {k: s.expert_axis for k, s in SLOTS.items()}
    assert axes == {k: 0 if k.startswith("moe_") else 1 if k == "router" else None for k in SLOTS}
    table = TensorTable(GROK_1)
    assert {s.slot.key for s in table if s.per_expert} == {"moe_gate", "moe_down", "moe_up"}
    assert table.get("router", 0).shape[SLOTS["router"].expert_axis] == GROK_1.num_experts


def test_gguf_name_is_formatted_by_the_slot():
    assert SLOTS["attn_q"].gguf_name(12) == "blk.12.attn_q.weight"
    assert SLOTS["embed"].gguf_name(None) == "token_embd.weight"
    assert TensorTable(GROK_1).get("router", 7).gguf_name == "blk.7.ffn_gate_inp.weight"
