"""The checkpoint's one dequantization: int8 weights × bf16 scales → the bf16 effective weight.

Grok-1 stores each quantized matrix as int8 ``q`` with bf16 scales along its input axis: one
scale per output channel (``per_channel``, 1 block) or one per row block (``row_blocks``, 8
blocks of ``in / 8`` rows). The effective weight the JAX reference computes is
``bf16(q × scale)``: the product is exact in float32 (8 + 8 significant bits), so rounding it
once to bf16 (nearest even) gives the reference bit for bit. :func:`dequantize` is the only
host-side place that product is formed (the reader, every converter); it works on either
orientation and on any slice of the input axis.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)


def dequantize(q: np.ndarray, scales: np.ndarray, *, axis: int = -2, start: int = 0,
               length: int | None = None) -> np.ndarray:
    """``bf16(q × scale)`` with the scales blocked along ``axis`` (the input axis).

    Args:
        q: int8 weights; along ``axis`` the entries ``start .. start + q.shape[axis]`` of an
            input axis of ``length`` entries (JAX layout (in, out) / (E, in, out): ``axis=-2``;
            transposed (out, in): ``axis=-1``).
        scales: bf16 scales, same number of dimensions as ``q``: ``blocks`` entries along
            ``axis`` (1 per output channel, or the row blocks), the other axes as in ``q``
            (or 1 to broadcast). Block ``b`` covers input entries ``b·length/blocks ..``.
        start: offset of ``q``'s first entry along ``axis``; need not be a block boundary.
        length: length of the whole input axis (default: ``q.shape[axis]``, i.e. all of it).

    Returns:
        A new C-contiguous bf16 array of ``q``'s shape. Work space: one float32 copy of ``q``.

    Raises:
        ValueError: the scales do not divide the input axis, or the slice lies outside it.
    """
    axis = axis % q.ndim
    n = q.shape[axis]
    length = n if length is None else length
    blocks = scales.shape[axis]
    if scales.ndim != q.ndim or blocks < 1 or length % blocks or not 0 <= start <= length - n:
        raise ValueError(f"scales {scales.shape} along axis {axis} do not fit entries "
                         f"{start}:{start + n} of {length} (weights {q.shape})")
    block = length // blocks
    prod = q.astype(np.float32)
    first, stop = start // block, -(-(start + n) // block)
    lead = (slice(None),) * axis
    sel = scales[lead + (slice(first, stop),)].astype(np.float32)
    if start % block == 0 and n % block == 0:  # whole blocks: one broadcast multiply
        split = prod.reshape(q.shape[:axis] + (stop - first, block) + q.shape[axis + 1:])
        split *= np.expand_dims(sel, axis + 1)
    else:  # a slice that starts or ends inside a block: one multiply per block it touches
        for b in range(first, stop):
            lo, hi = max(b * block, start) - start, min((b + 1) * block, start + n) - start
            prod[lead + (slice(lo, hi),)] *= sel[lead + (slice(b - first, b - first + 1),)]
    return prod.astype(BF16)
