"""Write tensor files in the exact Grok-1 release format, and quantize floats the way it is.

The writer streams: the pickle framing comes from :func:`encode_layout` and the array memory is
written straight from the caller's buffer, so a 1.6 GB expert tensor is never copied. Files
name ``numpy.core.multiarray`` (numpy 1.x) so that the official numpy 1.26 loader reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from grokfetch.checkpoint.reader import BF16
from grokfetch.errors import CheckpointError
from grokfetch.fsutil import atomic_file
from grokfetch.pickle_layout import encode_layout
from grokfetch.spec import TensorSpec


def write_tensor_file(path: Path | str, spec: TensorSpec, weight: np.ndarray,
                      scales: np.ndarray | None = None) -> int:
    """Write one tensor file atomically; returns its size in bytes.

    Raises:
        CheckpointError: the arrays do not match ``spec`` (shape, dtype, scales).
    """
    path = Path(path)
    want = np.int8 if spec.quantized else np.float32
    if weight.shape != spec.shape or weight.dtype != want:
        raise CheckpointError(path, f"refusing to write {spec.path}",
                              expected=f"{np.dtype(want)}{list(spec.shape)}",
                              actual=f"{weight.dtype}{list(weight.shape)}")
    if spec.quantized and (scales is None or scales.shape != spec.scales_shape
                           or scales.dtype != BF16):
        raise CheckpointError(path, f"refusing to write {spec.path}: bad scales",
                              expected=f"bfloat16{list(spec.scales_shape or ())}",
                              actual=None if scales is None else f"{scales.dtype}{list(scales.shape)}")
    payloads = [weight, scales] if spec.quantized else [weight]

    def put(f: BinaryIO, i: int, nbytes: int) -> None:
        data = memoryview(np.ascontiguousarray(payloads[i]).reshape(-1).view(np.uint8))
        assert len(data) == nbytes
        f.write(data)

    return write_tensor_pieces(path, spec, put)


def write_tensor_pieces(path: Path | str, spec: TensorSpec,
                        put: Callable[[BinaryIO, int, int], None]) -> int:
    """Write one tensor file atomically, the payloads coming from ``put``; returns its size.

    The pickle framing is written here; ``put(f, i, nbytes)`` must write (or seek over, for a
    sparse file) exactly ``nbytes`` of payload ``i`` (0 = the weight, 1 = the bf16 scales) at
    the file position. Used by :func:`write_tensor_file` and by generators that stream a large
    payload in chunks.
    """
    written = 0
    with atomic_file(path) as f:
        i = 0
        for piece in encode_layout(spec.shape, spec.scales_shape):
            if isinstance(piece, bytes):
                f.write(piece)
                written += len(piece)
            else:
                put(f, i, piece)
                i += 1
                written += piece
        f.truncate()  # a payload skipped with seek at the very end still counts
    return written


def quantize_int8(w: np.ndarray, spec: TensorSpec) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with bf16 scales in the spec's layout (per output channel or row blocks).

    ``w`` has the spec's (in, out) shape (experts first). Scales are ``max|w| / 127`` over the
    input axis (or each row block of it), rounded to bf16; the int8 values are then
    ``round(w / scale)`` against the rounded scale, so ``q · s`` is the best int8 fit.
    """
    w = np.asarray(w, dtype=np.float32)
    blocks = spec.scales_shape[-2]  # type: ignore[index]
    rows = w.shape[-2]
    grouped = w.reshape(w.shape[:-2] + (blocks, rows // blocks, w.shape[-1]))
    amax = np.abs(grouped).max(axis=-2)  # (..., blocks, out)
    scales = (np.maximum(amax, 1e-12) / 127.0).astype(BF16)
    s32 = scales.astype(np.float32)[..., :, None, :]
    q = np.clip(np.rint(grouped / s32), -127, 127).astype(np.int8).reshape(w.shape)
    return q, scales
