"""GGML block types dequantized in JAX, bit-identical to gguf-py's ``gguf.quants.dequantize``.

A GGUF tensor of a block type stays on the device as its stored bytes, shaped
``(..., rows, blocks, type_size)`` uint8 (``rows`` = GGUF rows, i.e. output channels; the blocks
run along ``ne0``, the input axis). :func:`dequantize` turns such an array (or any local shard
of it: whole rows, whole blocks) into float32 ``(..., rows, blocks * block_size)`` inside a jitted
program. Every formula is gguf-py's, step for step and in the same float32 roundings, so the
values equal its numpy dequantizer bit for bit (``tests/test_ggml_dequant.py``, per type).

Covered: every block type ``grokfetch convert --to gguf`` writes (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the float types (F32, F16, BF16).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from jax import lax

F32 = jnp.float32
I32 = jnp.int32
QK_K = 256


def _f16(b: jax.Array, start: int) -> jax.Array:
    """The little-endian f16 at byte ``start`` of each block, as f32 ``(..., 1)``.

    Assembled as a uint16 and bitcast at equal width: XLA's CPU backend runs a two-byte slice
    bitcast to f16 several times slower.
    """
    u = b[..., start].astype(jnp.uint16) | (b[..., start + 1].astype(jnp.uint16) << 8)
    return lax.bitcast_convert_type(u, jnp.float16).astype(F32)[..., None]


def _fields(b: jax.Array, *sizes: int) -> list[jax.Array]:
    """Split the last axis into consecutive fields of the given byte sizes (widened to int32)."""
    out, at = [], 0
    for n in sizes:
        out.append(b[..., at:at + n].astype(I32))
        at += n
    return out


def _unpack(x: jax.Array, width: int, shifts: tuple[int, ...], mask: int) -> jax.Array:
    """gguf-py's ``x.reshape(..., -1, 1, width) >> shifts & mask``, flattened back per block."""
    lead = x.shape[:-1]
    return _planes(x.reshape(lead + (-1, width)), shifts, mask).reshape(lead + (-1,))


def _planes(x: jax.Array, shifts: tuple[int, ...], mask: int) -> jax.Array:
    """``(..., n)`` bytes → ``(..., len(shifts), n)``: one bit plane per shift, stacked.

    The same values as gguf-py's ``x >> shifts & mask`` broadcast, written as separate
    elementwise planes, which XLA's CPU backend vectorizes (a broadcast shift it does not).
    """
    return jnp.stack([(x >> s) & mask for s in shifts], axis=-2)


def _q8_0(b):
    d = _f16(b, 0)
    x = lax.bitcast_convert_type(b[..., 2:], jnp.int8).astype(F32)
    return x * d


def _q4_0(b):
    d = _f16(b, 0)
    (qs,) = _fields(b[..., 2:], 16)
    q = (_unpack(qs, 16, (0, 4), 0x0F) - 8).astype(F32)
    return d * q


def _q4_1(b):
    d, m = _f16(b, 0), _f16(b, 2)
    (qs,) = _fields(b[..., 4:], 16)
    q = _unpack(qs, 16, (0, 4), 0x0F).astype(F32)
    return (d * q) + m


def _q5_bits(qh: jax.Array) -> jax.Array:
    """The 32 fifth bits of a Q5_0/Q5_1 block (``qh`` read as a little-endian uint32)."""
    return _unpack(qh, 4, tuple(range(8)), 1).reshape(qh.shape[:-1] + (8, 4)).swapaxes(-1, -2) \
        .reshape(qh.shape[:-1] + (32,))


def _q5_0(b):
    d = _f16(b, 0)
    qh, qs = _fields(b[..., 2:], 4, 16)
    q = (_unpack(qs, 16, (0, 4), 0x0F) | (_q5_bits(qh) << 4)) - 16
    return d * q.astype(F32)


def _q5_1(b):
    d, m = _f16(b, 0), _f16(b, 2)
    qh, qs = _fields(b[..., 4:], 4, 16)
    q = (_unpack(qs, 16, (0, 4), 0x0F) | (_q5_bits(qh) << 4)).astype(F32)
    return (d * q) + m


def _sub_scaled(b, dl, q, ml=None):
    """``dl·q − ml`` per 16- or 32-value group: ``q`` is ``(..., 256)`` ints, ``dl``/``ml``
    ``(..., groups)`` f32 (gguf-py's order of roundings: the product, then the difference)."""
    groups = dl.shape[-1]
    q = q.reshape(q.shape[:-1] + (groups, -1)).astype(F32)
    out = dl[..., None] * q
    if ml is not None:
        out = out - ml[..., None]
    return out.reshape(b.shape[:-1] + (QK_K,))


def _crumbs(qs: jax.Array) -> list[jax.Array]:
    """Q2_K/Q3_K: the 2-bit values of 64 bytes as 8 planes of 32 in output order
    (half ``h``, shift ``2k``: bits ``2k..2k+1`` of bytes ``32h..32h+31``)."""
    return [(qs[..., 32 * h:32 * h + 32] >> (2 * k)) & 3 for h in range(2) for k in range(4)]


def _q2_k(b):
    scales = b[..., :16]
    dl = _f16(b, 80) * (scales & 0xF).astype(F32)
    ml = _f16(b, 82) * (scales >> 4).astype(F32)
    q = jnp.stack([c.astype(F32) for c in _crumbs(b[..., 16:80])], axis=-2)
    return _sub_scaled(b, dl, q.reshape(b.shape[:-1] + (QK_K,)), ml)


def _q3_k(b):
    hmask, sc = b[..., :32], b[..., 96:108]
    low = _planes(sc[..., :8], (0, 4), 0x0F).reshape(sc.shape[:-1] + (16,))
    high = _planes(sc[..., 8:], (0, 2, 4, 6), 0x03).reshape(sc.shape[:-1] + (16,))
    scales = ((low | (high << 4)).astype(I32) - 32).astype(F32)
    # Plane j = 4h + k subtracts 4 where bit j of the hmask byte is clear.
    q = jnp.stack([(c.astype(I32) - (((hmask >> j) & 1) ^ 1).astype(I32) * 4).astype(F32)
                   for j, c in enumerate(_crumbs(b[..., 32:96]))], axis=-2)
    return _sub_scaled(b, _f16(b, 108) * scales, q.reshape(b.shape[:-1] + (QK_K,)))


def _scale_min_k4(sc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """gguf-py's ``Q4_K.get_scale_min``: eight 6-bit scales and mins from 12 bytes."""
    d, m, m_d = sc[..., 0:4], sc[..., 4:8], sc[..., 8:12]
    scale = jnp.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = jnp.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return scale, mins


def _k4_scales(b) -> tuple[jax.Array, jax.Array]:
    """Q4_K/Q5_K ``(d·scale, dmin·min)`` per 32-value sub-block, ``(..., 4, 2)`` f32."""
    d, dmin = _f16(b, 0), _f16(b, 2)
    scale, mins = _scale_min_k4(b[..., 4:16])
    dl, ml = d * scale.astype(F32), dmin * mins.astype(F32)
    return dl.reshape(dl.shape[:-1] + (4, 2)), ml.reshape(ml.shape[:-1] + (4, 2))


def _stack_planes(planes: list[jax.Array], lead: tuple[int, ...]) -> jax.Array:
    """f32 planes ``(..., G, 32)`` → ``(..., 256)`` with the plane axis before the 32 values.

    Each plane is finished in f32 on its own (elementwise, vectorized) and only the results are
    interleaved, which XLA's CPU backend runs several times faster than unpacking into one array.
    """
    return jnp.stack(planes, axis=-2).reshape(lead + (QK_K,))


def _q4_k(b):
    dl, ml = _k4_scales(b)
    x = b[..., 16:].reshape(b.shape[:-1] + (4, 32))
    planes = [dl[..., n, None] * q.astype(F32) - ml[..., n, None]
              for n, q in enumerate((x & 0x0F, x >> 4))]
    return _stack_planes(planes, b.shape[:-1])


def _q5_k(b):
    dl, ml = _k4_scales(b)
    qh = b[..., 16:48][..., None, :]  # bit 2j + n of byte l: the fifth bit of value (j, n, l)
    x = b[..., 48:].reshape(b.shape[:-1] + (4, 32))
    shift = jnp.arange(0, 8, 2, dtype=jnp.uint8)[:, None]
    planes = []
    for n, low in enumerate((x & 0x0F, x >> 4)):
        q = low | (((qh >> (shift + n)) & 1) << 4)
        planes.append(dl[..., n, None] * q.astype(F32) - ml[..., n, None])
    return _stack_planes(planes, b.shape[:-1])


def _q6_k(b):
    lead = b.shape[:-1]
    ql = b[..., :128].reshape(lead + (2, 2, 32))  # (half, 32-byte row, byte)
    qh = b[..., 128:192].reshape(lead + (2, 32))
    scales = lax.bitcast_convert_type(b[..., 192:208], jnp.int8).astype(F32)
    dl = (_f16(b, 208) * scales).reshape(lead + (2, 8, 1))  # per 16 values: (half, group)
    low = (ql[..., 0, :] & 0x0F, ql[..., 1, :] & 0x0F, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4)
    planes = []
    for k, lo in enumerate(low):  # plane k: values 32k..32k+31 of each half, groups 2k and 2k+1
        q = ((lo | (((qh >> (2 * k)) & 3) << 4)).astype(I32) - 32).astype(F32)
        planes.append((dl[..., 2 * k:2 * k + 2, :] * q.reshape(lead + (2, 2, 16))).reshape(lead + (2, 32)))
    return jnp.stack(planes, axis=-2).reshape(lead + (QK_K,))  # values (half, k, byte)


def _f32(b):
    return lax.bitcast_convert_type(b.reshape(b.shape[:-1] + (-1, 4)), F32)


def _f16_t(b):
    return lax.bitcast_convert_type(b.reshape(b.shape[:-1] + (-1, 2)), jnp.float16).astype(F32)


def _bf16(b):
    return lax.bitcast_convert_type(b.reshape(b.shape[:-1] + (-1, 2)), jnp.bfloat16).astype(F32)


T = GGMLQuantizationType
#: Per type, a function of ``(..., type_size)`` uint8 blocks → ``(..., block_size)`` float32.
DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[jax.Array], jax.Array]] = {
    T.F32: _f32, T.F16: _f16_t, T.BF16: _bf16,
    T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
}
#: Block types kept as stored bytes on the device (the float types are placed as arrays).
BLOCK_TYPES = frozenset(t for t in DEQUANTIZERS if t not in (T.F32, T.F16, T.BF16))


def block_shape(qtype: GGMLQuantizationType) -> tuple[int, int]:
    """``(block_size, type_size)``: values per block and stored bytes per block."""
    return GGML_QUANT_SIZES[qtype]


def dequantize(blocks: jax.Array, qtype: GGMLQuantizationType | str) -> jax.Array:
    """float32 ``(..., rows, nb * block_size)`` from stored blocks ``(..., rows, nb, type_size)``.

    Exactly gguf-py's ``gguf.quants.dequantize`` of the same bytes, reshaped.
    """
    qtype = T[qtype] if isinstance(qtype, str) else qtype
    bs, ts = block_shape(qtype)
    if blocks.dtype != jnp.uint8 or blocks.shape[-1] != ts:
        raise ValueError(f"{qtype.name} blocks must be uint8 (..., {ts}), not {blocks.dtype} "
                         f"{blocks.shape}")
    out = DEQUANTIZERS[qtype](blocks)
    return out.reshape(blocks.shape[:-2] + (blocks.shape[-2] * bs,))
