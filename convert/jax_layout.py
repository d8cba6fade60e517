"""The re-sharded JAX checkpoint described without I/O: array names, partition rules, chunks.

One array per parameter, the quantized ones as two (int8 ``weight``, bf16 ``scales``), in an
orbax-style tree::

    {"params": {"transformer.decoder_layer_0.moe.linear.w": {"weight": int8, "scales": bf16},
                "language_model.in_out_embed.embeddings": float32, ...}}

i.e. ``spec.path`` with ``/`` replaced by ``.`` (of the *output* table: a ``--layers`` subset is
renumbered from 0), so the on-disk array name is ``params.<dotted path>[.weight|.scales]``.

Partition specs come from each slot's logical axes under the official rules
(:data:`grokfetch.sharding.OFFICIAL_RULES`) on a ``("data", "model")`` mesh; a weight and its
scales get the same PartitionSpec (the scales are a pytree child of ``QuantizedWeight8bit``). A mesh axis whose size does not divide the dimension
(e.g. ``data`` over the size-1 input axis of per-channel scales when ``data > 1``) is dropped for
that dimension, which is what the release's own shapes need at ``data = 1`` anyway.

Chunks tile the per-device shard exactly: the chunk is the device shard, split along its leading
axes (expert first, then rows) until it is at most ``max_chunk_bytes`` (default 32 MiB). A device
therefore reads whole chunks and nothing else, and the writer never holds more than a few chunks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from grokfetch.checkpoint.reader import BF16
from grokfetch.errors import UsageError
from grokfetch.formats.jaxstore import ROOT_KEY, param_key
from grokfetch.sharding import MESH_AXES, OFFICIAL_RULES, partition
from grokfetch.spec import Slot, TableSubset, TensorSpec

AXES = MESH_AXES
DEFAULT_MAX_CHUNK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ArrayPlan:
    """One stored array: its tree key, dtype, global shape, partition spec and chunk shape."""

    key: tuple[str, ...]  # ("params", dotted path[, "weight" | "scales"])
    spec: TensorSpec  # the source spec
    part: str  # "weight", "scales" or "float"
    shape: tuple[int, ...]
    dtype: np.dtype
    pspec: tuple  # one entry per dimension: None, an axis name, or a tuple of names
    shard: tuple[int, ...]  # per-device shard shape
    chunk: tuple[int, ...]

    @property
    def name(self) -> str:
        """orbax's parameter name (the key path joined with dots)."""
        return ".".join(self.key)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def chunk_regions(self) -> Iterator[tuple[slice, ...]]:
        """Every chunk's region, in C order of the chunk grid."""
        grid = [range(0, n, c) for n, c in zip(self.shape, self.chunk, strict=True)]
        for starts in np.ndindex(*[len(g) for g in grid]):
            yield tuple(slice(g[i], min(g[i] + c, n)) for g, i, c, n
                        in zip(grid, starts, self.chunk, self.shape, strict=True))


def parse_mesh(mesh: tuple[int, int] | str) -> tuple[int, int]:
    """``"1x8"`` or ``(1, 8)`` → ``(data, model)``."""
    if isinstance(mesh, str):
        try:
            d, m = (int(x) for x in mesh.lower().split("x"))
        except ValueError:
            raise UsageError(f"bad --mesh {mesh!r}; use DATAxMODEL, e.g. 1x8") from None
    else:
        d, m = mesh
    if d < 1 or m < 1:
        raise UsageError(f"bad --mesh {d}x{m}: both sizes must be at least 1")
    return d, m


def slot_rule(slot: Slot) -> tuple:
    """The partition rule of a slot's weight and scales (official rules, one entry per axis)."""
    return partition(slot, OFFICIAL_RULES)


def _axis_size(entry, mesh: dict[str, int]) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh[n] for n in names)


def fit_pspec(rule: tuple, shape: tuple[int, ...], mesh: dict[str, int]) -> tuple:
    """The rule padded to ``len(shape)`` (replicated tail), dropping axes that do not divide."""
    rule = tuple(rule) + (None,) * (len(shape) - len(rule))
    return tuple(e if n % _axis_size(e, mesh) == 0 else None for e, n in zip(rule, shape, strict=True))


def shard_shape(shape: tuple[int, ...], pspec: tuple, mesh: dict[str, int]) -> tuple[int, ...]:
    return tuple(n // _axis_size(e, mesh) for n, e in zip(shape, pspec, strict=True))


def chunk_shape(shard: tuple[int, ...], itemsize: int, max_bytes: int) -> tuple[int, ...]:
    """Split the device shard along its leading axes (by their smallest factors) until one chunk
    is at most ``max_bytes``; the chunks still tile the shard exactly."""
    chunk = list(shard)
    for axis in range(len(chunk)):
        while math.prod(chunk) * itemsize > max_bytes and chunk[axis] > 1:
            n = chunk[axis]
            chunk[axis] = n // next(f for f in range(2, n + 1) if n % f == 0)
    return tuple(max(1, c) for c in chunk)


def plan_arrays(specs: list[TensorSpec], subset: TableSubset, mesh: tuple[int, int],
                max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> list[ArrayPlan]:
    """The arrays of source ``specs`` in file order; each spec's counterpart in the output table
    (``subset.out_spec``: renumbered layers, kept experts) gives the name and shapes."""
    mesh_sizes = dict(zip(AXES, mesh, strict=True))
    arrays = []
    for spec in specs:
        ospec = subset.out_spec(spec)
        rule = slot_rule(spec.slot)
        base = (ROOT_KEY, param_key(ospec))
        parts = [("weight", ospec.shape, np.dtype(np.int8)), ("scales", ospec.scales_shape, BF16)] \
            if spec.quantized else [("float", ospec.shape, np.dtype(np.float32))]
        for part, shape, dtype in parts:
            shape = tuple(shape)  # type: ignore[arg-type]
            # scales follow their weight's rule (one QW8 pytree node), fitted to their shape
            pspec = fit_pspec(rule, shape, mesh_sizes)
            shard = shard_shape(shape, pspec, mesh_sizes)
            arrays.append(ArrayPlan(base + ((part,) if part != "float" else ()), spec, part, shape,
                                    dtype, pspec, shard, chunk_shape(shard, dtype.itemsize,
                                                                     max_chunk_bytes)))
    return arrays


def source_region(src, plan: ArrayPlan, region: tuple[slice, ...]) -> np.ndarray:
    """A contiguous copy of ``region`` of the array, from an opened ``SourceTensor``
    (``--experts`` applied through ``src.experts``)."""
    full = src.weight if plan.part in ("weight", "float") else src.scales
    ax = plan.spec.slot.expert_axis
    if ax is None:
        return np.ascontiguousarray(full[region])
    index: list = list(region)
    index[ax] = src.experts[region[ax]]  # the kept experts' source indices along the expert axis
    return np.ascontiguousarray(full[tuple(index)])
