"""The Grok-1 checkpoint described once: model config, presets and the tensor table.

Every other module (reader, writers, manifest, verify, download selection, smoke) walks the
:class:`TensorTable` built here; none of them spells a shape, a name or a file order of its own.

The order of the table is the official flatten order of the Haiku parameter dict: JAX sorts dict
keys, so layers appear in lexicographic order of their decimal index (0, 1, 10, 11, ..., 19, 2,
20, ...). Within a layer the 12 parameters also come in sorted key order (``moe/linear`` first,
``router`` last); see ``docs/formats.md``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from grokfetch.errors import ConfigError, UsageError, brief
from grokfetch.fsutil import read_json

_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CONFIG_FILENAME = "model-config.json"
CONFIG_FORMAT = "grokfetch-model-config"
TENSOR_DIR = "ckpt-0"
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Grok-1-shaped model (names follow the official ``run.py``)."""

    name: str
    vocab_size: int
    emb_size: int
    key_size: int
    num_q_heads: int
    num_kv_heads: int
    num_layers: int
    widening_factor: float
    num_experts: int
    num_selected_experts: int
    sequence_len: int
    embedding_multiplier_scale: float
    output_multiplier_scale: float
    attn_output_multiplier: float
    attn_logit_softcap: float = 30.0
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    #: Row-parallel int8 weights (attention output, expert down projection) carry one bf16
    #: scale per (input-row block, output channel); the release uses 8 blocks.
    scale_row_blocks: int = 8
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    unk_token_id: int = 3

    def __post_init__(self) -> None:
        if not _NAME_OK.fullmatch(str(self.name)):
            # The name becomes part of output file names: keep it a plain file-name word.
            raise ConfigError(repr(self.name), "name must be letters, digits, '.', '_' or '-'")
        problems = [p for f in dataclasses.fields(self) if (p := _number_problem(f, getattr(self, f.name)))]
        if problems:  # the divisibility checks below need sane numbers
            raise ConfigError(self.name, "; ".join(problems))
        if self.num_q_heads % self.num_kv_heads:
            problems.append("num_q_heads must be a multiple of num_kv_heads")
        if self.key_size % 2:
            problems.append("key_size must be even (rotate-half RoPE)")
        for what, n in (("attention output input", self.q_size), ("ffn_size", self.ffn_size)):
            if n % self.scale_row_blocks:
                problems.append(f"{what} {n} is not divisible by {self.scale_row_blocks} row blocks")
        if not 0 < self.num_selected_experts <= self.num_experts:
            problems.append("num_selected_experts must be in 1..num_experts")
        if problems:
            raise ConfigError(self.name, "; ".join(problems))

    @property
    def ffn_size(self) -> int:
        """Expert hidden size by the official ``ffn_size`` rule (2/3 of the widened size, ×8)."""
        size = int(self.widening_factor * self.emb_size) * 2 // 3
        return size + (8 - size) % 8

    @property
    def q_size(self) -> int:
        return self.num_q_heads * self.key_size

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.key_size

    def to_json(self) -> dict[str, Any]:
        """The config as written into ``model-config.json`` (with derived sizes for readers)."""
        data = dataclasses.asdict(self)
        data["ffn_size"] = self.ffn_size
        return {"format": CONFIG_FORMAT, "version": 1, "config": data}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        if data.get("format") != CONFIG_FORMAT or not isinstance(data.get("config"), dict):
            raise ConfigError(source, f"not a {CONFIG_FORMAT} file")
        fields = {f.name for f in dataclasses.fields(cls)}
        raw = dict(data["config"])
        derived_ffn = raw.pop("ffn_size", None)
        unknown = set(raw) - fields
        if unknown:
            raise ConfigError(source, f"unknown keys {brief(sorted(unknown))}")
        try:
            cfg = cls(**raw)
        except ConfigError as exc:
            raise ConfigError(source, exc.problem) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(source, brief(str(exc), 200)) from None
        if derived_ffn is not None and derived_ffn != cfg.ffn_size:
            raise ConfigError(source, f"ffn_size {derived_ffn} disagrees with the rule ({cfg.ffn_size})")
        return cfg


#: Upper bounds of the config numbers (generous multiples of Grok-1's), so a hostile
#: ``model-config.json`` cannot make a table of millions of tensors or absurd shapes.
CONFIG_LIMITS: dict[str, float] = {
    "vocab_size": 1 << 21, "emb_size": 1 << 16, "key_size": 1024, "num_q_heads": 1024,
    "num_kv_heads": 1024, "num_layers": 1024, "widening_factor": 64, "num_experts": 1024,
    "num_selected_experts": 1024, "sequence_len": 1 << 20, "scale_row_blocks": 1024,
}
_FLOAT_LIMIT = 1e9
_TOKEN_LIMIT = 1 << 21


def _number_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with a numeric config field (fields are ``int`` or ``float``), if anything."""
    if f.type not in ("int", "float"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        return f"{f.name} must be a number, not {brief(value)}"
    if f.type == "int" and not isinstance(value, int):
        return f"{f.name} must be a whole number, not {brief(value)}"
    limit = _TOKEN_LIMIT if f.name.endswith("_token_id") else \
        CONFIG_LIMITS.get(f.name, _FLOAT_LIMIT)
    if value > limit:
        return f"{f.name} {brief(value)} is larger than {limit:g}"
    if f.name.endswith("_token_id"):
        return None if value >= 0 else f"{f.name} must not be negative"
    return None if value > 0 else f"{f.name} must be positive, not {brief(value)}"


GROK_1 = ModelConfig(
    name="grok-1",
    vocab_size=128 * 1024,
    emb_size=48 * 128,
    key_size=128,
    num_q_heads=48,
    num_kv_heads=8,
    num_layers=64,
    widening_factor=8,
    num_experts=8,
    num_selected_experts=2,
    sequence_len=8192,
    embedding_multiplier_scale=78.38367176906169,
    output_multiplier_scale=0.5773502691896257,
    attn_output_multiplier=0.08838834764831845,
)

PRESETS: dict[str, ModelConfig] = {
    "grok-1": GROK_1,
    # About 100 MB with Grok-1's structure: 8 kv heads and 8 scale row blocks (so 8-way
    # sharding works) and 12 layers (so the lexicographic file order matters).
    "mini": dataclasses.replace(
        GROK_1,
        name="mini",
        vocab_size=1024,
        emb_size=256,
        key_size=16,
        num_q_heads=16,
        num_layers=12,
        sequence_len=512,
        embedding_multiplier_scale=16.0,
        attn_output_multiplier=0.25,
    ),
    # A few MB, for fast unit tests; still 12 layers and 8 kv heads.
    "tiny": dataclasses.replace(
        GROK_1,
        name="tiny",
        vocab_size=512,
        emb_size=128,
        key_size=8,
        num_q_heads=16,
        num_layers=12,
        widening_factor=2,
        num_experts=4,
        sequence_len=128,
        embedding_multiplier_scale=math.sqrt(128),
        attn_output_multiplier=1 / math.sqrt(8),
    ),
    # Like mini, but every GGUF row length (256 wide, ffn 512) is a multiple of 256, so each
    # K-quant type runs through convert instead of falling back; 4 layers, about 20 MB.
    "kquant": dataclasses.replace(
        GROK_1,
        name="kquant",
        vocab_size=1024,
        emb_size=256,
        key_size=16,
        num_q_heads=16,
        num_layers=4,
        widening_factor=3,
        sequence_len=512,
        embedding_multiplier_scale=16.0,
        attn_output_multiplier=0.25,
    ),
}


def preset(name: str) -> ModelConfig:
    """Look up a preset by name; raises :class:`UsageError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def load_config(root: Path | None, preset_name: str | None = None) -> ModelConfig:
    """The checkpoint's own ``model-config.json`` when ``root`` has one, else the preset.

    The real release carries no config file, so the default preset is ``grok-1``. Only
    ``root`` itself is looked at (never a parent folder someone else controls).
    """
    if root is not None and (root / CONFIG_FILENAME).is_file():
        candidate = root / CONFIG_FILENAME
        try:
            data = read_json(candidate, MAX_CONFIG_BYTES)
        except (OSError, ValueError) as exc:
            raise ConfigError(str(candidate), f"unreadable: {brief(str(exc), 200)}") from None
        if not isinstance(data, dict):
            raise ConfigError(str(candidate), f"not a {CONFIG_FORMAT} file")
        return ModelConfig.from_json(data, str(candidate))
    return preset(preset_name or "grok-1")


# --- the per-layer slot pattern -------------------------------------------------------------


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


GLOBAL_SLOTS = (
    Slot("embed", "language_model/in_out_embed", "embeddings", False, None, "token_embd",
         "transformer.in_out_embed.weight", "model.embed_tokens.weight", False),
    Slot("final_norm", "language_model/rms_norm", "scale", False, None, "output_norm",
         "transformer.rms_norm.weight", "model.norm.weight", False),
)
_L = "transformer.decoder_layer.{L}."
_S = "model.layers.{L}."
LAYER_SLOTS = (
    Slot("moe_gate", "moe/linear", "w", True, "per_channel", "blk.{bid}.ffn_gate_exps",
         _L + "moe.{E}.linear.weight", _S + "block_sparse_moe.experts.{E}.w1.weight", True),
    Slot("moe_down", "moe/linear_1", "w", True, "row_blocks", "blk.{bid}.ffn_down_exps",
         _L + "moe.{E}.linear_1.weight", _S + "block_sparse_moe.experts.{E}.w2.weight", True),
    Slot("moe_up", "moe/linear_v", "w", True, "per_channel", "blk.{bid}.ffn_up_exps",
         _L + "moe.{E}.linear_v.weight", _S + "block_sparse_moe.experts.{E}.w3.weight", True),
    Slot("attn_k", "multi_head_attention/key", "w", True, "per_channel", "blk.{bid}.attn_k",
         _L + "multi_head_attention.key.weight", _S + "self_attn.k_proj.weight", True),
    Slot("attn_o", "multi_head_attention/linear", "w", True, "row_blocks", "blk.{bid}.attn_output",
         _L + "multi_head_attention.linear.weight", _S + "self_attn.o_proj.weight", True),
    Slot("attn_q", "multi_head_attention/query", "w", True, "per_channel", "blk.{bid}.attn_q",
         _L + "multi_head_attention.query.weight", _S + "self_attn.q_proj.weight", True),
    Slot("attn_v", "multi_head_attention/value", "w", True, "per_channel", "blk.{bid}.attn_v",
         _L + "multi_head_attention.value.weight", _S + "self_attn.v_proj.weight", True),
    Slot("norm_attn_in", "rms_norm", "scale", False, None, "blk.{bid}.attn_norm",
         _L + "rms_norm.weight", _S + "pre_attn_norm.weight", False),
    Slot("norm_attn_out", "rms_norm_1", "scale", False, None, "blk.{bid}.attn_output_norm",
         _L + "rms_norm_1.weight", _S + "post_attn_norm.weight", False),
    Slot("norm_moe_in", "rms_norm_2", "scale", False, None, "blk.{bid}.ffn_norm",
         _L + "rms_norm_2.weight", _S + "pre_moe_norm.weight", False),
    Slot("norm_moe_out", "rms_norm_3", "scale", False, None, "blk.{bid}.layer_output_norm",
         _L + "rms_norm_3.weight", _S + "post_moe_norm.weight", False),
    Slot("router", "router", "w", False, None, "blk.{bid}.ffn_gate_inp",
         _L + "router.weight", _S + "block_sparse_moe.gate.weight", True),
)
SLOTS = {s.key: s for s in GLOBAL_SLOTS + LAYER_SLOTS}


def slot_shape(cfg: ModelConfig, slot: Slot) -> tuple[int, ...]:
    """The JAX (in, out) shape of a slot's weight; experts lead with the expert axis."""
    d, f, e = cfg.emb_size, cfg.ffn_size, cfg.num_experts
    return {
        "embed": (cfg.vocab_size, d),
        "final_norm": (d,),
        "moe_gate": (e, d, f),
        "moe_down": (e, f, d),
        "moe_up": (e, d, f),
        "attn_k": (d, cfg.kv_size),
        "attn_o": (cfg.q_size, d),
        "attn_q": (d, cfg.q_size),
        "attn_v": (d, cfg.kv_size),
        "router": (d, e),
    }.get(slot.key, (d,))


def scales_shape(cfg: ModelConfig, slot: Slot, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Per output channel: size 1 on the input axis; row blocks: ``scale_row_blocks`` there."""
    if not slot.quantized:
        return None
    blocks = cfg.scale_row_blocks if slot.scale_layout == "row_blocks" else 1
    return shape[:-2] + (blocks, shape[-1])


def layer_file_order(num_layers: int) -> list[int]:
    """Layers in the order their files appear: lexicographic by decimal string."""
    return sorted(range(num_layers), key=str)


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One checkpoint file: one parameter, quantized (int8 + bf16 scales) or float32."""

    index: int
    layer: int | None
    slot: Slot
    shape: tuple[int, ...]
    scales_shape: tuple[int, ...] | None
    file_bytes: int

    @property
    def file(self) -> str:
        return f"tensor{self.index:05d}_000"

    @property
    def relpath(self) -> str:
        return f"{TENSOR_DIR}/{self.file}"

    @property
    def path(self) -> str:
        """The Haiku parameter path, e.g. ``transformer/decoder_layer_10/moe/linear_1/w``."""
        if self.layer is None:
            return f"{self.slot.haiku}/{self.slot.leaf}"
        return f"transformer/decoder_layer_{self.layer}/{self.slot.haiku}/{self.slot.leaf}"

    @property
    def quantized(self) -> bool:
        return self.slot.quantized

    @property
    def dtype(self) -> str:
        return "int8" if self.quantized else "float32"

    @property
    def scale_layout(self) -> str | None:
        return self.slot.scale_layout

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def payload_bytes(self) -> int:
        weight = self.numel * (1 if self.quantized else 4)
        return weight + (math.prod(self.scales_shape) * 2 if self.scales_shape else 0)

    @property
    def row_block(self) -> int | None:
        """Input rows per scale block for row-block layouts."""
        if self.scale_layout != "row_blocks":
            return None
        return self.shape[-2] // self.scales_shape[-2]  # type: ignore[index]

    @property
    def per_expert(self) -> bool:
        return self.slot.key.startswith("moe_")

    @property
    def gguf_name(self) -> str:
        return self.slot.gguf.format(bid=self.layer) + ".weight" if self.layer is not None \
            else self.slot.gguf + ".weight"

    @property
    def gguf_shape(self) -> tuple[int, ...]:
        """Numpy shape of the GGUF tensor: matrices (out, in), experts (E, out, in)."""
        return self.transposed_shape

    @property
    def transposed_shape(self) -> tuple[int, ...]:
        if not self.slot.transpose:
            return self.shape
        return self.shape[:-2] + (self.shape[-1], self.shape[-2])

    def hf_name(self, expert: int | None = None) -> str:
        """keyfan ``GrokForCausalLM`` name (per expert for MoE tensors)."""
        return self.slot.hf.format(L=self.layer, E=expert)

    def sglang_name(self, expert: int | None = None) -> str:
        """sglang ``Grok1ForCausalLM`` name (per expert for MoE tensors)."""
        return self.slot.sglang.format(L=self.layer, E=expert)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": self.file,
            "path": self.path,
            "layer": self.layer,
            "slot": self.slot.key,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "quantized": self.quantized,
            "scales_shape": list(self.scales_shape) if self.scales_shape else None,
            "scale_layout": self.scale_layout,
            "payload_bytes": self.payload_bytes,
            "file_bytes": self.file_bytes,
            "gguf_name": self.gguf_name,
            "gguf_shape": list(self.gguf_shape),
            "hf_name": self.hf_name("{E}") if self.per_expert else self.hf_name(),
            "sglang_name": self.sglang_name("{E}") if self.per_expert else self.sglang_name(),
        }


class TensorTable:
    """All checkpoint files of a config, in official flatten (= file index) order."""

    def __init__(self, config: ModelConfig):
        from grokfetch.checkpoint.pickle_emit import predicted_file_bytes

        self.config = config
        rows: list[TensorSpec] = []

        def add(layer: int | None, slot: Slot) -> None:
            shape = slot_shape(config, slot)
            sshape = scales_shape(config, slot, shape)
            size = predicted_file_bytes(shape, sshape)
            rows.append(TensorSpec(len(rows), layer, slot, shape, sshape, size))

        for slot in GLOBAL_SLOTS:
            add(None, slot)
        for layer in layer_file_order(config.num_layers):
            for slot in LAYER_SLOTS:
                add(layer, slot)
        self.specs: tuple[TensorSpec, ...] = tuple(rows)

    def __iter__(self) -> Iterator[TensorSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> TensorSpec:
        return self.specs[index]

    @cached_property
    def _by_key(self) -> dict[tuple[int | None, str], TensorSpec]:
        return {(s.layer, s.slot.key): s for s in self.specs}

    def get(self, slot: str, layer: int | None = None) -> TensorSpec:
        """The spec of ``slot`` (a :data:`SLOTS` key) in ``layer`` (None for globals)."""
        return self._by_key[(layer, slot)]

    def by_file(self, name: str) -> TensorSpec | None:
        """The spec for a file name such as ``tensor00013_000`` (or ``ckpt-0/...``)."""
        name = name.rsplit("/", 1)[-1]
        if len(name) != 15 or not name.startswith("tensor") or not name.endswith("_000"):
            return None
        try:
            index = int(name[6:11])
        except ValueError:
            return None
        return self.specs[index] if 0 <= index < len(self.specs) else None

    def layer_range(self, layer: int) -> range:
        """File indices of one layer: ``2 + 12 * rank(str(layer))`` onwards."""
        rank = layer_file_order(self.config.num_layers).index(layer)
        start = len(GLOBAL_SLOTS) + len(LAYER_SLOTS) * rank
        return range(start, start + len(LAYER_SLOTS))

    def select(self, layers: Iterator[int] | list[int] | None = None) -> list[TensorSpec]:
        """Globals plus the given layers (all when None), in file order."""
        if layers is None:
            return list(self.specs)
        wanted = set(layers)
        bad = sorted(wanted - set(range(self.config.num_layers)))
        if bad:
            raise UsageError(f"layers {bad} do not exist; {self.config.name} has layers "
                             f"0-{self.config.num_layers - 1}")
        return [s for s in self.specs if s.layer is None or s.layer in wanted]

    def model_order(self, specs: list[TensorSpec] | None = None) -> list[TensorSpec]:
        """Specs in model order: embedding, final norm, layer 0, 1, 2, ... (slots in file order)."""
        specs = list(self.specs) if specs is None else specs
        return sorted(specs, key=lambda s: (-1 if s.layer is None else s.layer, s.index))

    @property
    def payload_bytes(self) -> int:
        return sum(s.payload_bytes for s in self.specs)

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.specs)

    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.specs)


def parse_layers(text: str | None, num_layers: int) -> list[int] | None:
    """Parse ``"0-3"``, ``"0,2,5-7"`` or ``"all"`` into a sorted layer list (None = all)."""
    if text is None or text.strip().lower() == "all":
        return None
    layers: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                if lo < 0 or hi >= num_layers:  # before expanding: "0-99999999999" is one line
                    raise UsageError(f"layers {lo}-{hi} out of range 0-{num_layers - 1}")
                layers.update(range(lo, hi + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise UsageError(f"bad layer list {text!r}; use e.g. 0-3 or 0,2,5-7") from None
    bad = sorted(x for x in layers if not 0 <= x < num_layers)
    if bad:
        raise UsageError(f"layers {bad} out of range 0-{num_layers - 1}")
    return sorted(layers)
