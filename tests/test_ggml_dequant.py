"""JAX dequantization of GGML blocks against gguf-py's numpy ``dequantize``, bit for bit.

Two kinds of input per type: what grokfetch's own quantizers write (``quantize_rows``, rows at
several magnitudes so the f16 scales include subnormals), and random bytes with finite f16
scale fields, so every quant/scale bit pattern occurs.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from grokfetch.convert.quant import SCHEMES, quantize_rows
from grokfetch.smoke.ggml import BLOCK_TYPES, DEQUANTIZERS, dequantize

#: Byte offsets of the f16 scale fields per block type (gguf-py's block layouts).
F16_FIELDS = {T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
              T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
ROWS = 24


def _written_types() -> set[T]:
    """Every tensor type a grokfetch GGUF can hold: each scheme's default, its recipe's bumps
    (Q5_K, Q6_K, Q8_0) and the block-size fallbacks (Q4_0, Q5_0, Q5_1, F16)."""
    return {s.default for s in SCHEMES.values()} | {T.Q4_0, T.Q5_0, T.Q5_1, T.Q5_K, T.Q6_K,
                                                    T.Q8_0, T.F16, T.F32}


def test_every_written_type_has_a_jax_dequantizer():
    assert _written_types() <= set(DEQUANTIZERS)
    assert BLOCK_TYPES == set(F16_FIELDS)


def _jax(blocks: np.ndarray, qtype: T) -> np.ndarray:
    return np.asarray(jax.jit(lambda b: dequantize(b, qtype))(blocks))


def _same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    want = np.asarray(want, np.float32)
    return got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("qtype", sorted(_written_types(), key=int), ids=lambda t: t.name)
def test_quantizer_output_dequantizes_bit_identically(qtype):
    bs, ts = GGML_QUANT_SIZES[qtype]
    ne0 = 4 * 256
    rng = np.random.default_rng(int(qtype))
    mags = np.array([1e-7, 1e-4, 1e-2, 1.0, 30.0] * 5)[:ROWS, None].astype(np.float32)
    x = (rng.standard_normal((ROWS, ne0)) * mags).astype(np.float32)
    x[3, :300] = 0.0  # all-zero blocks (d = 0)
    raw = quantize_rows(x, qtype)
    want = gq.dequantize(raw, qtype)
    got = _jax(raw.reshape(ROWS, ne0 // bs, ts), qtype)
    assert _same_bits(got, want)


@pytest.mark.parametrize("qtype", sorted(BLOCK_TYPES, key=int), ids=lambda t: t.name)
def test_random_blocks_dequantize_bit_identically(qtype):
    bs, ts = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(100 + int(qtype))
    nb = 16
    raw = rng.integers(0, 256, (ROWS, nb, ts), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scale = rng.standard_normal((ROWS, nb)) * rng.choice([1e-6, 1e-3, 1.0, 100.0], (ROWS, nb))
        raw[..., at:at + 2] = scale.astype(np.float16).view(np.uint8).reshape(ROWS, nb, 2)
    want = gq.dequantize(raw.reshape(ROWS, nb * ts), qtype)
    got = _jax(raw, qtype)
    assert _same_bits(got, want)
    # A shard of whole rows and whole blocks dequantizes to the same slice.
    part = _jax(raw[5:11, 4:12], qtype)
    assert _same_bits(part, np.asarray(want)[5:11, 4 * bs:12 * bs])


def test_float_types_and_leading_axes():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    for qtype, arr in ((T.F32, x), (T.F16, x.astype(np.float16)), (T.BF16, x.astype(ml_dtypes.bfloat16))):
        _, ts = GGML_QUANT_SIZES[qtype]
        got = _jax(np.ascontiguousarray(arr).view(np.uint8).reshape(2, 3, 64, ts), qtype)
        assert _same_bits(got, arr.astype(np.float32))


def test_wrong_block_bytes_are_refused():
    with pytest.raises(ValueError, match="Q4_K blocks must be uint8"):
        dequantize(np.zeros((2, 3, 143), np.uint8), T.Q4_K)
