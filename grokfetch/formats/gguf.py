"""The GGUF reader: a grokfetch GGUF back as checkpoint tensors (smoke, tests), and its metadata keys.

:func:`iter_tensors` (the signature of every reader in :mod:`grokfetch.formats`) opens ``path``
(a folder holding one GGUF, possibly split, a ``.gguf`` file, or an open :class:`GGUFModel`),
and yields ``(spec, array, None)`` for each spec of ``table`` in model order, in JAX layout
((in, out); experts (E, in, out); embedding (vocab, d)), dequantized with gguf-py: bf16 for
BF16 tensors (bit-exact), float32 otherwise. :func:`iter_stored` yields the same tensors
as they are stored (:class:`StoredTensor`: the type and the memory-mapped blocks, nothing
dequantized), for the smoke test, which keeps block types as bytes on the devices and reads
dense slices (:meth:`StoredTensor.dense`) only where a tensor is placed as an array.

Which table to pass: the output folder's own ``model-config.json`` describes the output (a
``--layers``/``--experts`` subset has ``num_layers``/``num_experts`` of what it kept, renumbered
0..k-1), and its table matches the GGUF names directly. A table of the *full* source model works
too: ``grokfetch.source_layers`` maps each GGUF block back to its checkpoint layer, and specs of
layers the file does not hold are skipped.
"""

from __future__ import annotations

import inspect
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, Keys
from gguf import quants as gq

from grokfetch.checkpoint.reader import BF16
from grokfetch.errors import CheckpointError, NotFoundError
from grokfetch.fsutil import drop_view_pages
from grokfetch.spec import TensorSpec, TensorTable

#: ``general.architecture`` of the files grokfetch writes (llama.cpp's ``grok``).
ARCH = "grok"
KEY_BLOCK_COUNT = Keys.LLM.BLOCK_COUNT.format(arch=ARCH)
KEY_SOURCE_LAYERS = "grokfetch.source_layers"
KEY_SOURCE_EXPERTS = "grokfetch.source_experts"
KEY_SCHEME = "grokfetch.scheme"
#: Values dequantized per step by :meth:`StoredTensor.dense` (16 MiB of f32).
DENSE_CHUNK = 4 * 1024 * 1024
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def dequantize_bytes(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """gguf-py's dequantizer (float32), for the readers and tests."""
    if qtype == GGMLQuantizationType.BF16:
        return np.ascontiguousarray(data).view(BF16).astype(np.float32)
    return gq.dequantize(data, qtype)


def gguf_files(out: Path | str) -> list[Path]:
    """The GGUF file(s) of one model under ``out``, first split first."""
    out = Path(out)
    if out.is_file():
        m = _SPLIT.match(out.name)
        if not m:
            return [out]
        stem, count = m["stem"], int(m["count"])
        return [out.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    if not out.is_dir():
        raise NotFoundError(out, "GGUF output")
    found = sorted(p for p in out.glob("*.gguf") if p.is_file())
    if not found:
        raise NotFoundError(out / "*.gguf", "GGUF file")
    singles = [p for p in found if not _SPLIT.match(p.name)]
    firsts = [p for p in found if (m := _SPLIT.match(p.name)) and int(m["no"]) == 1]
    if len(singles) + len(firsts) != 1:
        raise CheckpointError(out, "more than one GGUF model in the folder",
                              actual=", ".join(p.name for p in singles + firsts),
                              expected="one")
    return singles if singles else gguf_files(firsts[0])


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    return default if f is None else f.contents()


class _Reader(GGUFReader):
    """gguf-py's reader, slicing a plain ``ndarray`` view of its memory map: slicing the
    ``np.memmap`` subclass costs most of the parse of a GGUF's 3 × 131072-entry tokenizer
    arrays (5.0 s → 1.4 s for Grok-1's); the fields and tensors are the same."""

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self._plain = self.data.view(np.ndarray)
        dtype, count = np.dtype(dtype), int(count)
        arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


#: The fast reader only where gguf-py's private ``_get`` is the one it was written against;
#: any other gguf-py gets its own reader (slower to open, same result).
_FAST_READER = list(inspect.signature(GGUFReader._get).parameters) == [
    "self", "offset", "dtype", "count", "override_order"]


def _open_reader(path: Path) -> GGUFReader:
    """gguf-py's reader, with a damaged or foreign file as one :class:`CheckpointError`."""
    try:
        return (_Reader if _FAST_READER else GGUFReader)(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, struct.error) as exc:
        raise CheckpointError(path, f"not a valid GGUF: {exc}") from None


class GGUFModel:
    """All tensors and the metadata of a (split) GGUF, memory-mapped."""

    def __init__(self, out: Path | str):
        self.paths = gguf_files(out)
        for p in self.paths:
            if not p.is_file():
                raise NotFoundError(p, "GGUF split file")
        self.readers = [_open_reader(p) for p in self.paths]
        first = self.readers[0]
        count = field_value(first, Keys.Split.LLM_KV_SPLIT_COUNT, 1)
        if count != len(self.readers):
            raise CheckpointError(self.paths[0], "split.count disagrees with the files found",
                                  expected=count, actual=len(self.readers))
        self.tensors = {t.name: t for r in self.readers for t in r.tensors}
        self._owner = {t.name: r for r in self.readers for t in r.tensors}
        total = field_value(first, Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(self.tensors))
        if total != len(self.tensors):
            raise CheckpointError(self.paths[0], "split.tensors.count disagrees with the tensors",
                                  expected=total, actual=len(self.tensors))
        self.reader = first

    def get(self, key: str, default: Any = None) -> Any:
        return field_value(self.reader, key, default)

    @property
    def block_count(self) -> int:
        return int(self.get(KEY_BLOCK_COUNT, 0))

    @property
    def source_layers(self) -> list[int]:
        v = self.get(KEY_SOURCE_LAYERS)
        return [int(x) for x in v] if v is not None else list(range(self.block_count))

    def array(self, name: str) -> np.ndarray:
        """A tensor in GGUF numpy shape: bf16 for BF16, float32 otherwise."""
        t = self.tensors[name]
        shape = tuple(int(x) for x in reversed(t.shape))
        if t.tensor_type == GGMLQuantizationType.BF16:
            return np.ascontiguousarray(t.data).view(BF16).reshape(shape)
        if t.tensor_type == GGMLQuantizationType.F32:
            return np.asarray(t.data, dtype=np.float32).reshape(shape)
        return dequantize_bytes(np.asarray(t.data), t.tensor_type).reshape(shape)

    def stored(self, name: str, transpose: bool) -> StoredTensor:
        """A tensor as stored (memory-mapped, nothing read yet); ``transpose``: JAX layout is
        the GGUF layout with the last two axes swapped."""
        t = self.tensors[name]
        shape = tuple(int(x) for x in reversed(t.shape))
        bs, ts = GGML_QUANT_SIZES[t.tensor_type]
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        return StoredTensor(name, t.tensor_type, shape, raw.reshape(shape[:-1] + (shape[-1] // bs, ts)),
                            transpose)


    def release(self, name: str) -> None:
        """Drop a tensor's pages from this process's resident memory (the page cache keeps
        them), so reading a model tensor by tensor holds about one tensor at a time."""
        drop_view_pages(self.tensors[name].data)


@dataclass(frozen=True)
class StoredTensor:
    """One GGUF tensor as stored: its GGML type and its bytes, memory-mapped.

    ``blocks`` is uint8 ``(..., rows, ne0 / block_size, type_size)`` in the GGUF layout (rows =
    output channels of a matrix). Indexing copies only what is asked for.
    """

    name: str
    qtype: GGMLQuantizationType
    gguf_shape: tuple[int, ...]
    blocks: np.ndarray
    transpose: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The JAX-layout shape ((in, out) for transposed matrices)."""
        g = self.gguf_shape
        return g[:-2] + (g[-1], g[-2]) if self.transpose else g

    def dense(self, idx: tuple[slice, ...] | None = None) -> np.ndarray:
        """float32 values (bf16 for BF16) of a JAX-layout slice ``idx`` (default: all of it),
        dequantized with gguf-py from the whole blocks that cover it, :data:`DENSE_CHUNK` values
        at a time (gguf-py's temporaries stay small next to the result)."""
        full = tuple(slice(None) for _ in self.shape)
        idx = tuple(idx or ()) + full[len(idx or ()):]
        if self.transpose:
            idx = idx[:-2] + (idx[-1], idx[-2])
        c0, c1, _ = idx[-1].indices(self.gguf_shape[-1])
        bs = GGML_QUANT_SIZES[self.qtype][0]
        b0, b1 = c0 // bs, -(-c1 // bs)
        raw = self.blocks[idx[:-1] + (slice(b0, b1),)]
        rows = raw.reshape(-1, raw.shape[-2] * raw.shape[-1])
        bf16 = self.qtype == GGMLQuantizationType.BF16
        vals = np.empty((len(rows), c1 - c0), BF16 if bf16 else np.float32)
        step = max(1, DENSE_CHUNK // ((b1 - b0) * bs))
        for r in range(0, len(rows), step):
            part = np.ascontiguousarray(rows[r:r + step])
            got = part.view(BF16) if bf16 else dequantize_bytes(part, self.qtype)
            vals[r:r + step] = got.reshape(len(part), -1)[:, c0 - b0 * bs:c1 - b0 * bs]
        vals = vals.reshape(raw.shape[:-2] + (c1 - c0,))
        return np.ascontiguousarray(np.swapaxes(vals, -1, -2)) if self.transpose else vals


def open_gguf(out: Path | str) -> GGUFModel:
    return GGUFModel(out)


def _names(model: GGUFModel, table: TensorTable,
           specs: list[TensorSpec] | None) -> Iterator[tuple[TensorSpec, str]]:
    """``(spec, GGUF tensor name)`` for the specs the GGUF holds, in model order."""
    n_blocks = model.block_count
    if table.config.num_layers == n_blocks:
        to_block = {i: i for i in range(n_blocks)}
    else:  # a full-model table against a subset file
        to_block = {src: i for i, src in enumerate(model.source_layers)}
    for spec in table.model_order(None if specs is None else list(specs)):
        if spec.layer is not None and spec.layer not in to_block:
            continue
        bid = None if spec.layer is None else to_block[spec.layer]
        name = spec.slot.gguf_name(bid)
        if name not in model.tensors:
            raise CheckpointError(model.paths[0], f"tensor {name} missing")
        yield spec, name


def tensor_types(model: GGUFModel, table: TensorTable) -> dict[int, GGMLQuantizationType]:
    """The stored GGML type of each spec the GGUF holds, by spec index (header only)."""
    return {spec.index: model.tensors[name].tensor_type for spec, name in _names(model, table, None)}


def iter_stored(model: GGUFModel, table: TensorTable,
                specs: list[TensorSpec] | None = None) -> Iterator[tuple[TensorSpec, StoredTensor, None]]:
    """Yield ``(spec, stored tensor, None)`` for the specs the GGUF holds, in model order; a
    tensor's pages leave the resident set once the consumer asks for the next one."""
    for spec, name in _names(model, table, specs):
        yield spec, model.stored(name, spec.slot.transpose), None
        model.release(name)


def iter_tensors(path: Path | str | GGUFModel, table: TensorTable,
                 specs: list[TensorSpec] | None = None) -> Iterator[tuple[TensorSpec, np.ndarray, None]]:
    """Yield ``(spec, array in JAX layout, None)`` for the specs of ``table`` (or ``specs``)
    that the GGUF holds, in model order: bf16 for BF16 tensors, float32 for every other type.
    ``path`` is the output folder, a ``.gguf`` file or an open model."""
    model = path if isinstance(path, GGUFModel) else GGUFModel(path)
    for spec, name in _names(model, table, specs):
        arr = model.array(name)
        if spec.slot.transpose:
            arr = np.ascontiguousarray(np.swapaxes(arr, -1, -2))
        yield spec, arr, None
