"""Placing one host tensor on the mesh: each device copies only its own slice.

:func:`place` builds a global ``jax.Array`` with ``jax.make_array_from_callback``: every device
copies its own slice of a host array, a memory map or a :class:`DenseSlices` view. A GGUF tensor
goes through :func:`place_stored` instead: its memory-mapped blocks go up a chunk at a time
(each chunk's pages then leave the resident set), and for a tensor placed dense whose every
device share is whole blocks (the embedding, in every Grok-1 GGUF) the devices dequantize each
chunk (:mod:`grokfetch.smoke.ggml`, bit-identical to gguf-py) into the dense array. The host
holds about one chunk of a tensor, never its dense values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from grokfetch.fsutil import drop_view_pages

#: Stored bytes of one chunk of rows that :func:`place_dequantized` sends up at a time.
UPLOAD_CHUNK = 32 * 1024 * 1024


def place(arr: Any, sharding: Any):
    """A global ``jax.Array`` from a host array (or anything with ``shape`` and ``[idx]``, such
    as :class:`DenseSlices`); each device copies only its own slice."""
    import jax

    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: _owned(arr[idx]))


def _owned(x: np.ndarray) -> np.ndarray:
    """``x`` when it owns its memory (a freshly dequantized slice), else a copy of it (a view
    into a memory map or a whole tensor, which the device must not keep alive)."""
    if type(x) is np.ndarray and x.flags.owndata:
        return x
    return np.array(x)


@dataclass(frozen=True)
class DenseSlices:
    """A stored GGUF tensor seen as a dense array: indexing dequantizes just that slice."""

    stored: Any
    dtype: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stored.shape

    def __getitem__(self, idx: tuple[slice, ...]) -> np.ndarray:
        return self.stored.dense(idx).astype(self.dtype, copy=False)


def stored_axes(transpose: bool, axes: tuple) -> tuple:
    """Mesh axes of a stored tensor's blocks ``(..., rows, blocks, bytes)``, given the axes of
    its dense JAX-layout array (``transpose``: JAX layout swaps the stored last two axes)."""
    axes = tuple(axes)
    if transpose:
        axes = axes[:-2] + (axes[-1], axes[-2])
    return axes + (None,)


def dequantizable_on_devices(stored: Any, axes: tuple, mesh: Any) -> bool:
    """Whether the devices can dequantize ``stored`` into its dense sharding (``axes``, JAX
    layout): a GGML block type whose blocks axis splits into whole blocks per device."""
    from grokfetch.smoke.ggml import BLOCK_TYPES

    if stored.qtype not in BLOCK_TYPES:
        return False
    blocks_axis = stored_axes(stored.transpose, axes)[-2]
    return blocks_axis is None or stored.blocks.shape[-2] % mesh.shape[blocks_axis] == 0


def place_stored(stored: Any, block_axes: tuple, mesh: Any, dense: tuple[tuple, Any] | None = None):
    """A GGUF tensor on the mesh from its memory-mapped blocks, :data:`UPLOAD_CHUNK` stored
    bytes at a time along its first axis (experts, or rows) when that axis is not split; each
    chunk's pages leave the resident set once it is up, so the host holds about one chunk.

    ``block_axes``: the mesh axes of the blocks. Without ``dense`` the result is the blocks
    themselves; with ``dense = (axes, dtype)`` the devices dequantize each chunk into their
    own slice of the dense JAX-layout array (see :func:`dequantizable_on_devices`).
    """
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    blocks = stored.blocks
    block_sharding = NamedSharding(mesh, P(*block_axes))
    step = blocks.shape[0]
    if block_axes[0] is None:
        step = max(1, UPLOAD_CHUNK // max(1, blocks[:1].nbytes))
    if dense is None and step >= blocks.shape[0]:
        return place(blocks, block_sharding)
    out_axes, dtype = dense if dense is not None else (block_axes, blocks.dtype)
    shape = stored.shape if dense is not None else blocks.shape
    out = _zeros(mesh, tuple(out_axes), tuple(shape), np.dtype(dtype).name)()
    qtype = stored.qtype.name if dense is not None else None
    for r0 in range(0, blocks.shape[0], step):
        view = blocks[r0:r0 + step]
        chunk = place(view, block_sharding)
        update = _updater(mesh, tuple(out_axes), tuple(block_axes), qtype,
                          qtype is not None and stored.transpose, np.dtype(dtype).name)
        out = update(out, chunk, np.int32(r0))
        jax.block_until_ready(out)
        chunk.delete()
        drop_view_pages(view)
    return out


@lru_cache(maxsize=32)
def _zeros(mesh: Any, axes: tuple, shape: tuple, dtype: str):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=NamedSharding(mesh, P(*axes)))


@lru_cache(maxsize=32)
def _updater(mesh: Any, out_axes: tuple, block_axes: tuple, qtype: str | None, swap: bool,
             dtype: str):
    """A jitted ``(out, blocks chunk, first index) → out`` (``out`` donated): each device writes
    its own part of the chunk (dequantized to ``dtype`` when ``qtype`` is given; ``swap``: the
    JAX layout swaps the stored last two axes) into its own slice; no communication."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import PartitionSpec as P

    from grokfetch.smoke.ggml import dequantize

    def local(out, blk, r0):
        vals = blk if qtype is None else dequantize(blk, qtype).astype(dtype)
        if swap:
            vals = jnp.swapaxes(vals, -1, -2)
        start = [0] * out.ndim
        # The chunks run along the stored first axis: a matrix's rows are the swapped layout's
        # last axis; stacked experts stay first.
        start[-1 if swap and out.ndim == 2 else 0] = r0
        return lax.dynamic_update_slice(out, vals, tuple(start))

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(*out_axes), P(*block_axes), P()),
                       out_specs=P(*out_axes), check_vma=False)
    return jax.jit(fn, donate_argnums=0)
