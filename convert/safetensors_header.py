"""The safetensors container, written header-first so a shard can be streamed tensor by tensor.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON + the tensor bytes. The JSON
maps each name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
first data byte; they must be contiguous and cover the data exactly) and holds an optional
``__metadata__`` dict of strings. Every size is known from the tensor table before any data is
read, so :func:`encode_header` builds the header up front and the writer then appends each
tensor's bytes in the planned order; nothing is ever held whole in memory.

Like the official writer we pad the JSON with spaces to a multiple of 8 and place tensors by
descending item size, so every tensor starts aligned to its own item size (mmap-friendly).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

#: safetensors dtype names for the numpy dtypes grokfetch writes.
ST_DTYPES: dict[str, np.dtype] = {
    "I8": np.dtype(np.int8),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
}
#: The reader's limit (``MAX_HEADER_SIZE`` in safetensors' Rust source).
MAX_HEADER_BYTES = 100_000_000
ALIGN = 8


@dataclass(frozen=True)
class StTensor:
    """One named tensor of a safetensors file: dtype name, shape and its place in the data."""

    name: str
    dtype: str  # a key of ST_DTYPES
    shape: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        return ST_DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        n = self.itemsize
        for d in self.shape:
            n *= d
        return n


def data_order(tensors: Iterable[StTensor]) -> list[StTensor]:
    """The order tensors are placed in a file: larger item size first, then as given.

    A stable sort, so tensors of one dtype keep the caller's (model) order.
    """
    return sorted(tensors, key=lambda t: -t.itemsize)


def encode_header(tensors: Sequence[StTensor], metadata: dict[str, str] | None = None) -> bytes:
    """The complete file prefix (length + padded JSON) for ``tensors`` placed in the given order.

    Raises:
        ValueError: duplicate names, a non-string metadata value, or a header over the limit.
    """
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"safetensors metadata values must be strings: {bad}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for t in tensors:
        if t.name in header or t.name == "__metadata__":
            raise ValueError(f"duplicate tensor name {t.name!r}")
        if t.dtype not in ST_DTYPES:
            raise ValueError(f"unsupported dtype {t.dtype!r} for {t.name}")
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % ALIGN)  # the data then starts 8-aligned
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"safetensors header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return struct.pack("<Q", len(raw)) + raw


def file_size(tensors: Sequence[StTensor], metadata: dict[str, str] | None = None) -> int:
    """Exact size of the file :func:`encode_header` + the data of ``tensors`` make."""
    return len(encode_header(tensors, metadata)) + sum(t.nbytes for t in tensors)


def shard_names(n: int) -> list[str]:
    """``model-00001-of-0000n.safetensors`` (always numbered, also for a single shard)."""
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def plan_shards(tensors: Sequence[StTensor], max_bytes: int) -> list[list[StTensor]]:
    """Greedy fill in the given order (huggingface_hub's rule): start a new shard when the next
    tensor would push the current one past ``max_bytes``; a larger tensor gets a shard of its own.

    Each shard's list is already in :func:`data_order`.
    """
    if max_bytes <= 0:
        raise ValueError("shard size must be positive")
    shards: list[list[StTensor]] = []
    current: list[StTensor] = []
    size = 0
    for t in tensors:
        if current and size + t.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    return [data_order(s) for s in shards]


