"""The slots of the Grok-1 parameter dict: the 2 globals and the 12 parameters of a decoder layer.

Each :class:`Slot` names its Haiku path, its quantization and scale layout, the logical axis of
every dimension (which :mod:`grokfetch.sharding` maps to mesh axes and :func:`slot_shape` to
config sizes) and its tensor names in GGUF, HF and sglang. :mod:`grokfetch.spec` builds the
tensor table from them (and re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass

from grokfetch.config import ModelConfig

# --- the per-layer slot pattern -------------------------------------------------------------


#: Logical axis → the :class:`ModelConfig` size it stands for. Every dimension of a slot's JAX
#: ``(in, out)`` shape names one; :mod:`grokfetch.sharding` maps them to mesh axes. The model
#: dimension has three names because the official rules split it three ways: as a matrix input or
#: output (``embed``), in the embedding table (``embed_table``) and in a norm scale (``norm``).
AXIS_SIZES: dict[str, str] = {
    "expert": "num_experts",
    "vocab": "vocab_size",
    "embed": "emb_size",
    "embed_table": "emb_size",
    "norm": "emb_size",
    "q": "q_size",
    "kv": "kv_size",
    "ffn": "ffn_size",
}


@dataclass(frozen=True)
class Slot:
    """One of the 12 parameters of a decoder layer (or a global one), in flatten order."""

    key: str  # short name used across the code base, e.g. "moe_down"
    haiku: str  # Haiku module path below the layer (or the global path)
    leaf: str  # "w", "scale" or "embeddings"
    quantized: bool
    scale_layout: str | None  # "per_channel", "row_blocks" or None
    gguf: str  # gguf-py TENSOR_NAMES template (checked against gguf in the tests)
    hf: str  # keyfan GrokForCausalLM name ({L} layer, {E} expert)
    sglang: str  # sglang Grok1ForCausalLM name
    transpose: bool  # (in, out) -> (out, in) for GGUF / PyTorch layouts
    axes: tuple[str, ...]  # logical axis (an AXIS_SIZES key) of each JAX (in, out) dimension

    @property
    def expert_axis(self) -> int | None:
        """The JAX dimension that runs over experts: 0 for the expert stacks, the output axis
        of the router, None for the rest."""
        return self.axes.index("expert") if "expert" in self.axes else None

    def gguf_name(self, block: int | None) -> str:
        """The GGUF tensor name in block ``block`` (None for the global tensors)."""
        return self.gguf.format(bid=block) + ".weight"


GLOBAL_SLOTS = (
    Slot("embed", "language_model/in_out_embed", "embeddings", False, None, "token_embd",
         "transformer.in_out_embed.weight", "model.embed_tokens.weight", False,
         ("vocab", "embed_table")),
    Slot("final_norm", "language_model/rms_norm", "scale", False, None, "output_norm",
         "transformer.rms_norm.weight", "model.norm.weight", False, ("norm",)),
)
_L = "transformer.decoder_layer.{L}."
_S = "model.layers.{L}."
LAYER_SLOTS = (
    Slot("moe_gate", "moe/linear", "w", True, "per_channel", "blk.{bid}.ffn_gate_exps",
         _L + "moe.{E}.linear.weight", _S + "block_sparse_moe.experts.{E}.w1.weight", True,
         ("expert", "embed", "ffn")),
    Slot("moe_down", "moe/linear_1", "w", True, "row_blocks", "blk.{bid}.ffn_down_exps",
         _L + "moe.{E}.linear_1.weight", _S + "block_sparse_moe.experts.{E}.w2.weight", True,
         ("expert", "ffn", "embed")),
    Slot("moe_up", "moe/linear_v", "w", True, "per_channel", "blk.{bid}.ffn_up_exps",
         _L + "moe.{E}.linear_v.weight", _S + "block_sparse_moe.experts.{E}.w3.weight", True,
         ("expert", "embed", "ffn")),
    Slot("attn_k", "multi_head_attention/key", "w", True, "per_channel", "blk.{bid}.attn_k",
         _L + "multi_head_attention.key.weight", _S + "self_attn.k_proj.weight", True,
         ("embed", "kv")),
    Slot("attn_o", "multi_head_attention/linear", "w", True, "row_blocks", "blk.{bid}.attn_output",
         _L + "multi_head_attention.linear.weight", _S + "self_attn.o_proj.weight", True,
         ("q", "embed")),
    Slot("attn_q", "multi_head_attention/query", "w", True, "per_channel", "blk.{bid}.attn_q",
         _L + "multi_head_attention.query.weight", _S + "self_attn.q_proj.weight", True,
         ("embed", "q")),
    Slot("attn_v", "multi_head_attention/value", "w", True, "per_channel", "blk.{bid}.attn_v",
         _L + "multi_head_attention.value.weight", _S + "self_attn.v_proj.weight", True,
         ("embed", "kv")),
    Slot("norm_attn_in", "rms_norm", "scale", False, None, "blk.{bid}.attn_norm",
         _L + "rms_norm.weight", _S + "pre_attn_norm.weight", False, ("norm",)),
    Slot("norm_attn_out", "rms_norm_1", "scale", False, None, "blk.{bid}.attn_output_norm",
         _L + "rms_norm_1.weight", _S + "post_attn_norm.weight", False, ("norm",)),
    Slot("norm_moe_in", "rms_norm_2", "scale", False, None, "blk.{bid}.ffn_norm",
         _L + "rms_norm_2.weight", _S + "pre_moe_norm.weight", False, ("norm",)),
    Slot("norm_moe_out", "rms_norm_3", "scale", False, None, "blk.{bid}.layer_output_norm",
         _L + "rms_norm_3.weight", _S + "post_moe_norm.weight", False, ("norm",)),
    Slot("router", "router", "w", False, None, "blk.{bid}.ffn_gate_inp",
         _L + "router.weight", _S + "block_sparse_moe.gate.weight", True, ("embed", "expert")),
)
SLOTS = {s.key: s for s in GLOBAL_SLOTS + LAYER_SLOTS}


def slot_shape(cfg: ModelConfig, slot: Slot) -> tuple[int, ...]:
    """The JAX (in, out) shape of a slot's weight: the config size of each logical axis."""
    return tuple(getattr(cfg, AXIS_SIZES[axis]) for axis in slot.axes)


def scales_shape(cfg: ModelConfig, slot: Slot, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Per output channel: size 1 on the input axis; row blocks: ``scale_row_blocks`` there."""
    if not slot.quantized:
        return None
    blocks = cfg.scale_row_blocks if slot.scale_layout == "row_blocks" else 1
    return shape[:-2] + (blocks, shape[-1])


def layer_file_order(num_layers: int) -> list[int]:
    """Layers in the order their files appear: lexicographic by decimal string."""
    return sorted(range(num_layers), key=str)
