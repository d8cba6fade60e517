"""GGUF tensor types: ``--bits``/``--quant`` → a scheme, the per-tensor recipe, the quantizers.

A *scheme* is what the user asks for (``Q4_K_M``, ``Q8_0``, ``BF16``, ...), named and numbered
like llama.cpp's ``llama_ftype``. :func:`tensor_type` picks each tensor's GGML type the way
llama.cpp's ``llama_tensor_get_type`` (``src/llama-quant.cpp``) does for a model with Grok-1's
shape (no ``output.weight``, so ``token_embd`` follows the output rule; 8 experts bump
``attn_k``/``attn_v`` to Q8_0), including the fallback for rows that are not a multiple of the
block size. ``docs/convert.md`` lists the resulting recipe per scheme.

:func:`quantize_rows` turns float32 rows into the type's bytes: gguf-py's numpy quantizers for
F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 (bit-identical to ggml's C reference), the project's
:mod:`grokfetch.convert.kquants` for Q2_K..Q6_K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants as gq

from grokfetch.checkpoint.dequant import BF16
from grokfetch.errors import UsageError
from grokfetch.spec import TensorSpec

T = GGMLQuantizationType


@dataclass(frozen=True)
class Scheme:
    """One ``--quant`` choice: its llama.cpp file type and default tensor type."""

    name: str
    ftype: LlamaFileType
    default: GGMLQuantizationType

    @property
    def is_float(self) -> bool:
        return self.default in (T.F32, T.F16, T.BF16)


_S = [
    Scheme("F32", LlamaFileType.ALL_F32, T.F32),
    Scheme("F16", LlamaFileType.MOSTLY_F16, T.F16),
    Scheme("BF16", LlamaFileType.MOSTLY_BF16, T.BF16),
    Scheme("Q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    Scheme("Q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
    Scheme("Q4_1", LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
    Scheme("Q5_0", LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
    Scheme("Q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
    Scheme("Q2_K", LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
    Scheme("Q3_K_S", LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
    Scheme("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
    Scheme("Q3_K_L", LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
    Scheme("Q4_K_S", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    Scheme("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
    Scheme("Q5_K_S", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
    Scheme("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
    Scheme("Q6_K", LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
]
SCHEMES: dict[str, Scheme] = {s.name: s for s in _S}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
BITS = {16: "BF16", 8: "Q8_0", 6: "Q6_K", 5: "Q5_K_M", 4: "Q4_K_M", 3: "Q3_K_M", 2: "Q2_K"}
DEFAULT_SCHEME = "Q8_0"
K_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
NUMPY_TYPES = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1)
#: llama.cpp's ``tensor_type_fallback`` for a row length the block size does not divide (current
#: llama.cpp; builds before it used IQ4_NL for Q2_K/Q3_K). Where llama.cpp throws (a plain
#: 32-block type), and when the fallback still does not divide the row, F16.
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def resolve_scheme(bits: int | None = None, quant: str | None = None) -> Scheme:
    """The scheme for ``--bits N`` or ``--quant TYPE`` (default Q8_0); UsageError otherwise."""
    if bits is not None and quant is not None:
        raise UsageError("give --bits or --quant, not both")
    if bits is not None:
        if bits not in BITS:
            raise UsageError(f"unsupported --bits {bits}; choose one of: "
                             + ", ".join(f"{b} ({n})" for b, n in BITS.items()))
        return SCHEMES[BITS[bits]]
    name = (quant or DEFAULT_SCHEME).strip().upper()
    name = ALIASES.get(name, name)
    if name not in SCHEMES:
        raise UsageError(f"unsupported --quant {quant!r}; choose one of: {', '.join(SCHEMES)}"
                         f" (aliases: {', '.join(ALIASES)})")
    return SCHEMES[name]


def block_size(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def type_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of numpy ``shape`` (last axis = ne0) stored as ``qtype``."""
    blk, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape[:-1]:
        n *= d
    assert shape[-1] % blk == 0, (shape, qtype)
    return n * (shape[-1] // blk) * size


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(scheme: Scheme, spec: TensorSpec, *, layer: int | None, n_layers: int,
                n_experts: int, ne0: int, n_gqa: int) -> GGMLQuantizationType:
    """The GGML type of one tensor under ``scheme`` (``layer`` = output layer index).

    Follows ``llama_tensor_get_type`` for the ftypes offered here; ``attn_v`` counts as its
    layer index because tensors are written in layer order.
    """
    # norms, and the expert router, which llama.cpp recognizes by name ("do not quantize expert
    # gating tensors": ``ffn_gate_inp.weight``), are never quantized
    if len(spec.shape) == 1 or spec.slot.gguf.endswith("ffn_gate_inp"):
        return T.F32
    if scheme.is_float:
        return scheme.default
    ft, new = scheme.name, scheme.default
    key = spec.slot.key
    if key == "embed":  # no output.weight: token_embd is quantized like the output tensor
        new = T.Q8_0 if ne0 % block_size(new) else (new if new == T.Q8_0 else T.Q6_K)
    elif key == "attn_v":
        i = layer or 0
        if ft == "Q2_K":
            new = T.Q4_K if n_gqa >= 4 else T.Q3_K
        elif ft == "Q3_K_M":
            new = T.Q5_K if i < 2 else T.Q4_K
        elif ft == "Q3_K_L":
            new = T.Q5_K
        elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n_layers):
            new = T.Q6_K
        elif ft == "Q4_K_S" and i < 4:
            new = T.Q5_K
        if n_experts == 8:  # "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
            new = T.Q8_0
    elif key == "attn_k":
        if n_experts == 8:
            new = T.Q8_0
    elif key == "moe_down":
        i = layer or 0
        if ft == "Q2_K":
            new = T.Q3_K
        elif ft == "Q3_K_M":
            new = T.Q5_K if i < n_layers // 16 else T.Q4_K
        elif ft == "Q3_K_L":
            new = T.Q5_K
        elif ft == "Q4_K_M":
            if _use_more_bits(i, n_layers):
                new = T.Q6_K
        elif ft == "Q5_K_M" and _use_more_bits(i, n_layers):
            new = T.Q6_K
        elif ft == "Q4_K_S" and i < n_layers // 8:
            new = T.Q5_K
    elif key == "attn_o":
        if n_experts == 8:
            if ft in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                new = T.Q5_K
        elif ft == "Q2_K":
            new = T.Q3_K
        elif ft == "Q3_K_M":
            new = T.Q4_K
        elif ft == "Q3_K_L":
            new = T.Q5_K
    if ne0 % block_size(new):
        # llama.cpp's "using fallback quantization"; where it would throw (plain types) use F16
        new = _FALLBACK.get(new, T.F16)
        if ne0 % block_size(new):
            new = T.F16
    return new


def kquant_fn(qtype: GGMLQuantizationType):
    """The K-quant quantizer for ``qtype`` from :mod:`grokfetch.convert.kquants`; UsageError if absent."""
    try:
        from grokfetch.convert import kquants  # type: ignore[attr-defined]
    except ImportError as exc:
        raise UsageError(f"{qtype.name} needs convert.kquants, which is not available ({exc})",
                         hint="use --quant Q8_0/Q5_0/Q4_0 or --bits 16") from None
    fn = getattr(kquants, "KQUANTS", {}).get(qtype)
    if fn is None:
        raise UsageError(f"convert.kquants has no quantizer for {qtype.name}")
    return fn


def check_available(qtypes: set[GGMLQuantizationType]) -> None:
    """Raise UsageError now (before writing) if a needed quantizer is missing."""
    for t in sorted(qtypes, key=int):
        if t in K_TYPES:
            kquant_fn(t)
        elif t not in NUMPY_TYPES:
            raise UsageError(f"no quantizer for {t.name}")


def quantize_rows(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Quantize rows (last axis = ne0) to ``qtype``; returns the stored bytes as uint8.

    ``x`` may be float32 or bf16. A bf16 input stored as BF16 is copied bit for bit.
    """
    if qtype == T.BF16 and x.dtype == BF16:
        return np.ascontiguousarray(x).view(np.uint8)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if qtype == T.F32:
        return np.ascontiguousarray(x).view(np.uint8)
    if qtype == T.F16:
        return x.astype(np.float16).view(np.uint8)
    if qtype in K_TYPES:
        return np.asarray(kquant_fn(qtype)(x), dtype=np.uint8)
    return np.asarray(gq.quantize(x, qtype)).view(np.uint8)

