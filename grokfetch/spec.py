"""The Grok-1 checkpoint described once: slots, tensor specs and the tensor table.

The model config and presets it is built from are :mod:`grokfetch.config` (re-exported here).

Every other module (reader, writers, manifest, verify, download selection, smoke) walks the
:class:`TensorTable` built here; none of them spells a shape, a name or a file order of its own.

The order of the table is the official flatten order of the Haiku parameter dict: JAX sorts dict
keys, so layers appear in lexicographic order of their decimal index (0, 1, 10, 11, ..., 19, 2,
20, ...). Within a layer the 12 parameters also come in sorted key order (``moe/linear`` first,
``router`` last); see ``docs/checkpoint-format.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from grokfetch.config import (  # noqa: F401  (re-exported: the table's users read the config here)
    CONFIG_FILENAME,
    CONFIG_FORMAT,
    CONFIG_LIMITS,
    GROK_1,
    MAX_CONFIG_BYTES,
    PRESETS,
    TENSOR_DIR,
    ModelConfig,
    load_config,
    preset,
)
from grokfetch.errors import UsageError
from grokfetch.pickle_layout import predicted_file_bytes
from grokfetch.slots import (  # noqa: F401  (re-exported: one module for the table's users)
    AXIS_SIZES,
    GLOBAL_SLOTS,
    LAYER_SLOTS,
    SLOTS,
    Slot,
    layer_file_order,
    scales_shape,
    slot_shape,
)

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
        """A stack of per-expert matrices: the expert axis leads."""
        return self.slot.expert_axis == 0

    @property
    def gguf_name(self) -> str:
        return self.slot.gguf_name(self.layer)

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

    def subset(self, layers: Sequence[int] | None = None,
               experts: Sequence[int] | None = None) -> TableSubset:
        """This table cut to ``layers`` and ``experts`` (None = all), renumbered from 0: the one
        place a ``--layers``/``--experts`` output's names and shapes come from."""
        cfg = self.config
        kept_layers = tuple(range(cfg.num_layers)) if layers is None else tuple(layers)
        kept_experts = tuple(range(cfg.num_experts)) if experts is None else tuple(experts)
        for what, kept, n in (("layers", kept_layers, cfg.num_layers),
                              ("experts", kept_experts, cfg.num_experts)):
            if not kept or any(not 0 <= k < n for k in kept) or len(set(kept)) != len(kept):
                raise UsageError(f"bad {what} {list(kept)}: need distinct values in 0-{n - 1}")
        out = cfg if (layers, experts) == (None, None) else dataclasses.replace(
            cfg, num_layers=len(kept_layers), num_experts=len(kept_experts),
            num_selected_experts=min(cfg.num_selected_experts, len(kept_experts)))
        return TableSubset(self, TensorTable(out) if out is not cfg else self,
                           kept_layers, kept_experts)

    @property
    def payload_bytes(self) -> int:
        return sum(s.payload_bytes for s in self.specs)

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.specs)

    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.specs)


@dataclass(frozen=True)
class TableSubset:
    """A table cut to some layers and experts, with the table of what is kept.

    Output layer ``i`` is source layer ``layers[i]`` and output expert ``j`` source expert
    ``experts[j]``; :attr:`out` describes the output (its names, shapes and config).
    """

    source: TensorTable
    out: TensorTable
    layers: tuple[int, ...]
    experts: tuple[int, ...]

    @cached_property
    def _out_layer(self) -> dict[int, int]:
        return {src: i for i, src in enumerate(self.layers)}

    def out_layer(self, layer: int | None) -> int | None:
        """The output number of source ``layer`` (None for globals); KeyError if not kept."""
        return None if layer is None else self._out_layer[layer]

    def out_spec(self, spec: TensorSpec) -> TensorSpec:
        """The output table's counterpart of the source ``spec``."""
        return self.out.get(spec.slot.key, self.out_layer(spec.layer))

    def specs(self) -> list[TensorSpec]:
        """The source specs kept: globals and the kept layers, in file order."""
        return self.source.select(self.layers)

    def model_order(self, specs: Sequence[TensorSpec]) -> list[TensorSpec]:
        """Source ``specs`` in the output's model order (globals, then output layer 0, 1, ...)."""
        return sorted(specs, key=lambda s: (-1 if s.layer is None else self._out_layer[s.layer],
                                            s.index))


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
