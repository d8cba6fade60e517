"""The model config described once: :class:`ModelConfig`, its limits, the presets, and
``model-config.json`` (read with bounded work: a hostile file is one :class:`ConfigError`).

:mod:`grokfetch.spec` builds the tensor table from a config and re-exports these names, so a
module that walks the table imports everything from ``grokfetch.spec``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
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
