"""llama.cpp's K-quant quantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): per-block coding and packing.

gguf-py can dequantize the K-quants but not quantize them. These functions are faithful ports of
``quantize_row_q{2,3,4,5,6}_K_ref`` from ``ggml/src/ggml-quants.c`` (no importance matrix) and write
exactly ggml's ``block_q*_K`` byte layout (QK_K = 256), so ``gguf.quants.dequantize`` and llama.cpp
read the output byte for byte. The per-sub-block scale searches and the second pass run compiled
(:mod:`grokfetch.convert.kquants_jit`, numba, GIL released); this module codes the per-block
scales (vectorized numpy over blocks) and packs the bytes. See ``docs/kquants.md`` for the
layouts, the C functions ported and measurements.

Usage::

    q = quantize_q4_k(x)              # x: float32 (..., n), n % 256 == 0 -> uint8 (..., n // 256 * 144)
    q = KQUANTS[GGMLQuantizationType.Q6_K](x)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from grokfetch.convert.kquants_jit import requant, search_qkx2, search_qx

__all__ = [
    "KQUANTS",
    "QK_K",
    "quantize_q2_k",
    "quantize_q3_k",
    "quantize_q4_k",
    "quantize_q5_k",
    "quantize_q6_k",
]

QK_K = 256
F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)  # 1.5 * 2**23
#: Blocks per step: 4096 blocks are 4 MiB of float32 (plus 4 MiB of int32 levels). The numpy
#: per-block code costs a fixed ~60 calls per step, run with the GIL held between the calls; big
#: steps keep that share small, so that many threads scale.
CHUNK_BLOCKS = 4096


def nearest_int(v: np.ndarray) -> np.ndarray:
    """``nearest_int`` of ggml-quants.c, bit for bit (also for out-of-range input): int32 array."""
    t = (np.asarray(v, dtype=F32) + _MAGIC).view(np.int32)
    return (t & 0x007FFFFF) - 0x00400000


def to_fp16(v: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_FP16``: round to nearest even, overflow to inf, NaN to ``sign | 0x7E00``."""
    v = np.asarray(v, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(np.float16)
    nan = np.isnan(v)
    if nan.any():
        bits = h.view(np.uint16)
        bits[nan] = ((v[nan].view(np.uint32) >> 16) & 0x8000).astype(np.uint16) | 0x7E00
    return h


def first_absmax(X: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """C's ``amax = 0; max = 0; if (fabsf(x) > amax) { amax = fabsf(x); max = x; }`` along ``axis``.

    The first occurrence of the largest ``|x|`` wins; NaN never compares greater, so it is skipped.
    """
    X = np.moveaxis(X, axis, 0)
    ax = np.abs(X)
    ax[np.isnan(ax)] = 0
    amax = np.maximum.reduce(ax, axis=0)
    mx = np.zeros_like(amax)
    for i in range(X.shape[0] - 1, -1, -1):  # the lowest index that reaches amax wins
        np.copyto(mx, X[i], where=ax[i] == amax)
    return amax, np.where(amax > 0, mx, F32(0))


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    """float16 (B,) -> (B, 2) uint8, little-endian."""
    return v.astype("<f2").view(np.uint8).reshape(-1, 2)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(B, 256) levels 0..3 -> (B, 64): ``qs[j/4 + l] = L[j+l] | L[j+l+32]<<2 | ... <<6``, j = 0, 128."""
    L4 = L.reshape(-1, 2, 4, 32)
    q = L4[:, :, 0] | (L4[:, :, 1] << 2) | (L4[:, :, 2] << 4) | (L4[:, :, 3] << 6)
    return q.reshape(-1, 64).astype(np.uint8)


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """(B, 256) levels 0..15 -> (B, 128): ``q[l] = L[j+l] | L[j+l+32] << 4`` for j = 0, 64, 128, 192."""
    L2 = L.reshape(-1, 4, 2, 32)
    return (L2[:, :, 0] | (L2[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (B, 8) -> the 12 bytes that ``get_scale_min_k4`` unpacks."""
    out = np.empty((ls.shape[0], 12), dtype=np.int32)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out.astype(np.uint8)


def _max0(v: np.ndarray) -> np.ndarray:
    """C's ``m = 0; if (v > m) m = v;`` over axis 1 (NaN never wins)."""
    return np.fmax(np.fmax.reduce(v, axis=1), F32(0))


# --------------------------------------------------------------------------------------- Q2_K


def _q2_k_blocks(xb: np.ndarray) -> np.ndarray:
    B = xb.shape[0]
    L, scales, mins = search_qkx2(xb, 16, 3, -0.5, 15, True)
    q4scale = F32(15)
    max_scale, max_min = _max0(scales), _max0(mins)
    has_s, has_m = max_scale > 0, max_min > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = nearest_int((q4scale / max_scale)[:, None] * scales) & 0xFF
        lm = nearest_int((q4scale / max_min)[:, None] * mins)
        sc = np.where(has_s[:, None], ls, 0)
        sc = np.where(has_m[:, None], (sc | (lm << 4)) & 0xFF, sc)
        d16 = to_fp16(np.where(has_s, max_scale / q4scale, F32(0)))
        m16 = to_fp16(np.where(has_m, max_min / q4scale, F32(0)))
    d = d16.astype(F32)[:, None] * (sc & 0xF).astype(F32)
    dm = m16.astype(F32)[:, None] * (sc >> 4).astype(F32)
    requant(xb, L, d, dm, 0, 3)
    out = np.empty((B, 84), dtype=np.uint8)
    out[:, 0:16] = sc
    out[:, 16:80] = _pack_2bit(L)
    out[:, 80:82] = _fp16_bytes(d16)
    out[:, 82:84] = _fp16_bytes(m16)
    return out


# --------------------------------------------------------------------------------------- Q3_K


def _pack_scales_q3(l6: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit scales (B, 16) -> 12 bytes: low nibbles in bytes 0..7, high 2-bit pairs in 8..11."""
    out = np.empty((l6.shape[0], 12), dtype=np.int32)
    out[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi = l6 >> 4
    out[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return out.astype(np.uint8)


def _q3_k_blocks(xb: np.ndarray) -> np.ndarray:
    B = xb.shape[0]
    L, scales = search_qx(xb, 4, q3=True)
    _, max_scale = first_absmax(scales, axis=1)
    nz = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-32) / np.where(nz, max_scale, F32(1))
        l8 = ((nearest_int(iscale[:, None] * scales) + 128) & 0xFF) - 128  # int8_t l = nearest_int(..)
        l6 = np.where(nz[:, None], np.clip(l8, -32, 31) + 32, 0)
        d16 = to_fp16(np.where(nz, F32(1) / iscale, F32(0)))
    d = d16.astype(F32)[:, None] * (l6 - 32).astype(F32)
    requant(xb, L, d, None, -4, 3, 4)
    hb = L > 3
    L -= np.where(hb, 4, 0)
    hm = hb.reshape(B, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    out = np.empty((B, 110), dtype=np.uint8)
    out[:, 0:32] = np.bitwise_or.reduce(hm, axis=1)
    out[:, 32:96] = _pack_2bit(L)
    out[:, 96:108] = np.where(nz[:, None], _pack_scales_q3(l6), 0)
    out[:, 108:110] = _fp16_bytes(d16)
    return out


# ------------------------------------------------------------------------------- Q4_K and Q5_K


def _qkx_k_blocks(xb: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """Shared body of Q4_K / Q5_K: returns (L (B,256), 12 scale bytes, d16, dmin16)."""
    L, scales, mins = search_qkx2(xb, 32, nmax, rmin, nstep, False)
    max_scale, max_min = _max0(scales), _max0(mins)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)  # uint8_t ls; MIN(63, ls)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
    d16 = to_fp16(max_scale / F32(63))
    m16 = to_fp16(max_min / F32(63))
    d = d16.astype(F32)[:, None] * ls.astype(F32)
    dm = m16.astype(F32)[:, None] * lm.astype(F32)
    requant(xb, L, d, dm, 0, nmax)
    return L, _pack_scale_min_k4(ls, lm), d16, m16


def _q4_k_blocks(xb: np.ndarray) -> np.ndarray:
    L, sc, d16, m16 = _qkx_k_blocks(xb, 15, -1.0, 20)
    out = np.empty((xb.shape[0], 144), dtype=np.uint8)
    out[:, 0:2] = _fp16_bytes(d16)
    out[:, 2:4] = _fp16_bytes(m16)
    out[:, 4:16] = sc
    out[:, 16:144] = _pack_nibbles(L)
    return out


def _q5_k_blocks(xb: np.ndarray) -> np.ndarray:
    L, sc, d16, m16 = _qkx_k_blocks(xb, 31, -0.5, 15)
    B = xb.shape[0]
    hi = (L >> 4).reshape(B, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    out = np.empty((B, 176), dtype=np.uint8)
    out[:, 0:2] = _fp16_bytes(d16)
    out[:, 2:4] = _fp16_bytes(m16)
    out[:, 4:16] = sc
    out[:, 16:48] = np.bitwise_or.reduce(hi, axis=1)
    out[:, 48:176] = _pack_nibbles(L & 0xF)
    return out


# --------------------------------------------------------------------------------------- Q6_K


def _q6_k_blocks(xb: np.ndarray) -> np.ndarray:
    B = xb.shape[0]
    L, scales = search_qx(xb, 32)
    max_abs, max_scale = first_absmax(scales, axis=1)
    live = ~(max_abs < GROUP_MAX_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / np.where(live, max_scale, F32(1))
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127)
        sc = ((sc + 128) & 0xFF) - 128  # stored as int8_t
        d16 = to_fp16(np.where(live, F32(1) / iscale, F32(0)))
    d = d16.astype(F32)[:, None] * sc.astype(F32)
    requant(xb, L, d, None, -32, 31, 32)
    L4 = L.reshape(B, 2, 4, 32)
    ql = np.concatenate(
        [(L4[:, :, 0] & 0xF) | ((L4[:, :, 2] & 0xF) << 4), (L4[:, :, 1] & 0xF) | ((L4[:, :, 3] & 0xF) << 4)],
        axis=2,
    )
    qh = (
        (L4[:, :, 0] >> 4) | ((L4[:, :, 1] >> 4) << 2) | ((L4[:, :, 2] >> 4) << 4) | ((L4[:, :, 3] >> 4) << 6)
    )
    out = np.empty((B, 210), dtype=np.uint8)
    out[:, 0:128] = ql.reshape(B, 128)
    out[:, 128:192] = qh.reshape(B, 64)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = _fp16_bytes(d16)
    out[~live] = 0
    return out


# ------------------------------------------------------------------------------------- public


def _quantize(x: np.ndarray, qtype: GGMLQuantizationType, blocks_fn) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{qtype.name}: expected an array with at least one dimension, got a scalar")
    n = x.shape[-1]
    if n % QK_K:
        raise ValueError(f"{qtype.name}: row length {n} is not a multiple of {QK_K} (shape {x.shape})")
    type_size = GGML_QUANT_SIZES[qtype][1]
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)
    out = np.empty((xb.shape[0], type_size), dtype=np.uint8)
    with np.errstate(all="ignore"):  # inf/nan intermediates are part of the C semantics (e.g. 1e-40)
        for start in range(0, xb.shape[0], CHUNK_BLOCKS):
            out[start : start + CHUNK_BLOCKS] = blocks_fn(xb[start : start + CHUNK_BLOCKS])
    return out.reshape(*x.shape[:-1], n // QK_K * type_size)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """Quantize float32 ``(..., n)`` (``n % 256 == 0``) to Q2_K bytes ``(..., n // 256 * 84)``."""
    return _quantize(x, GGMLQuantizationType.Q2_K, _q2_k_blocks)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """Quantize float32 ``(..., n)`` (``n % 256 == 0``) to Q3_K bytes ``(..., n // 256 * 110)``."""
    return _quantize(x, GGMLQuantizationType.Q3_K, _q3_k_blocks)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Quantize float32 ``(..., n)`` (``n % 256 == 0``) to Q4_K bytes ``(..., n // 256 * 144)``."""
    return _quantize(x, GGMLQuantizationType.Q4_K, _q4_k_blocks)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """Quantize float32 ``(..., n)`` (``n % 256 == 0``) to Q5_K bytes ``(..., n // 256 * 176)``."""
    return _quantize(x, GGMLQuantizationType.Q5_K, _q5_k_blocks)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Quantize float32 ``(..., n)`` (``n % 256 == 0``) to Q6_K bytes ``(..., n // 256 * 210)``."""
    return _quantize(x, GGMLQuantizationType.Q6_K, _q6_k_blocks)


KQUANTS: dict[GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLQuantizationType.Q2_K: quantize_q2_k,
    GGMLQuantizationType.Q3_K: quantize_q3_k,
    GGMLQuantizationType.Q4_K: quantize_q4_k,
    GGMLQuantizationType.Q5_K: quantize_q5_k,
    GGMLQuantizationType.Q6_K: quantize_q6_k,
}
