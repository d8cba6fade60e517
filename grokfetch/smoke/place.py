"""Placing one host tensor on the mesh: each device copies only its own slice.

:func:`place` builds a global ``jax.Array`` with ``jax.make_array_from_callback``: every device
copies its own slice of a host array, a memory map or a :class:`DenseSlices` view. A GGUF tensor
placed dense whose every device share is whole blocks (the embedding, in every Grok-1 GGUF) goes
through :func:`place_dequantized` instead: its stored blocks go up a chunk of rows at a time and
the devices dequantize them (:mod:`grokfetch.smoke.ggml`, bit-identical to gguf-py) into the
dense array, so the host never holds more than the tensor's stored bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

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
    """Whether the devices can dequantize ``stored`` into its dense sharding: a GGML block type
    whose stored rows are not split (they go up in chunks) and whose blocks axis splits into
    whole blocks per device."""
    from grokfetch.smoke.ggml import BLOCK_TYPES

    if stored.qtype not in BLOCK_TYPES:
        return False
    *_, rows_axis, blocks_axis, _ = stored_axes(stored.transpose, axes)
    return rows_axis is None and (blocks_axis is None
                                  or stored.blocks.shape[-2] % mesh.shape[blocks_axis] == 0)


def place_dequantized(stored: Any, axes: tuple, mesh: Any, dtype: Any):
    """The dense ``dtype`` array of a GGUF block tensor, sharded as ``axes`` (JAX layout),
    dequantized on the devices from its stored blocks, a chunk of :data:`UPLOAD_CHUNK` stored
    bytes at a time (the host holds one chunk's copies besides the memory map)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    blocks = stored.blocks
    rows = blocks.shape[-3]
    row_bytes = blocks[..., :1, :, :].nbytes
    step = max(1, UPLOAD_CHUNK // row_bytes)
    block_sharding = NamedSharding(mesh, P(*stored_axes(stored.transpose, axes)))
    out = _zeros(mesh, tuple(axes), stored.shape, np.dtype(dtype).name)()
    for r0 in range(0, rows, step):
        chunk = place(blocks[..., r0:r0 + step, :, :], block_sharding)
        update = _updater(mesh, tuple(axes), stored.qtype.name, stored.transpose,
                          np.dtype(dtype).name)
        out = update(out, chunk, np.int32(r0))
        chunk.delete()
    jax.block_until_ready(out)
    return out


@lru_cache(maxsize=32)
def _zeros(mesh: Any, axes: tuple, shape: tuple, dtype: str):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=NamedSharding(mesh, P(*axes)))


@lru_cache(maxsize=32)
def _updater(mesh: Any, axes: tuple, qtype: str, transpose: bool, dtype: str):
    """A jitted ``(out, blocks chunk, first row) → out`` (``out`` donated): each device
    dequantizes its own blocks into its own slice; no communication."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import PartitionSpec as P

    from grokfetch.smoke.ggml import dequantize

    blocks_spec = P(*stored_axes(transpose, axes))

    def local(out, blk, r0):
        vals = dequantize(blk, qtype).astype(dtype)  # (..., rows, in) as stored
        start = [0] * out.ndim
        if transpose:  # the stored rows are the JAX layout's last axis
            vals = jnp.swapaxes(vals, -1, -2)
        start[-1 if transpose else -2] = r0
        return lax.dynamic_update_slice(out, vals, tuple(start))

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(*axes), blocks_spec, P()),
                       out_specs=P(*axes), check_vma=False)
    return jax.jit(fn, donate_argnums=0)
