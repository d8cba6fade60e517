"""The partition rules: logical axes (``Slot.axes``) → mesh axes, for the JAX output and for smoke.

A slot's partition spec is its logical axes looked up in one rule map, so both tables derive from
the slots and neither spells a slot's spec. The mesh is ``("data", "model")`` for both.

* :data:`OFFICIAL_RULES` reproduce the official ``TRANSFORMER_PARTITION_RULES`` and
  ``LM_PARTITION_RULES`` (xai-org/grok-1 ``model.py``): attention q/k/v and the expert gate/up
  split ``(data, model)``, the attention output and the expert down projection ``(model, data)``,
  the router ``(data,)``, the embedding table ``(None, (data, model))``, norms replicated. The
  JAX output (``convert/jax_layout.py``) uses them.
* :data:`SMOKE_RULES` are the same rules with the data axis left out (the smoke mesh is
  ``data = 1``, ``model = N``): q/k/v, gate/up column-parallel, the attention output and expert
  down projection row-parallel, the embedding split along ``emb_size``, norms and routers
  replicated.

A quantized weight and its scales share one spec (the scales are a pytree child of the official
``QuantizedWeight8bit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grokfetch.errors import UsageError
from grokfetch.spec import Slot

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

#: One dimension's placement: replicated (None), one mesh axis, or several (split over their product).
MeshAxes = str | tuple[str, ...] | None

#: Logical axis → mesh axes of the official model.py rules (see the module docstring).
OFFICIAL_RULES: dict[str, MeshAxes] = {
    "expert": None,
    "vocab": None,
    "embed": DATA,
    "embed_table": (DATA, MODEL),
    "norm": None,
    "q": MODEL,
    "kv": MODEL,
    "ffn": MODEL,
}


def _without(axes: MeshAxes, drop: str) -> MeshAxes:
    names = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a != drop)
    return names[0] if len(names) == 1 else (names or None)


#: Logical axis → mesh axes on the smoke mesh: the official rules without the (size 1) data axis.
SMOKE_RULES: dict[str, MeshAxes] = {k: _without(v, DATA) for k, v in OFFICIAL_RULES.items()}

#: The smoke KV cache ``(S, kv_heads, key_size)``: split by kv heads, like ``attn_k``/``attn_v``.
CACHE_AXES: tuple[MeshAxes, ...] = (None, MODEL, None)


def partition(slot: Slot, rules: dict[str, MeshAxes]) -> tuple[MeshAxes, ...]:
    """Mesh axes of each dimension of ``slot``'s JAX ``(in, out)`` weight under ``rules``."""
    return tuple(rules[axis] for axis in slot.axes)


def make_mesh(data: int = 1, model: int | None = None, devices: Sequence[Any] | None = None):
    """A ``("data", "model")`` ``jax.sharding.Mesh`` with Auto axes over the first
    ``data × model`` of ``devices`` (default ``jax.devices()``; ``model`` default: all of them
    over ``data``). Too few devices is a :class:`UsageError`."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    devs = list(devices) if devices is not None else jax.devices()
    model = len(devs) // data if model is None else model
    if data < 1 or model < 1 or len(devs) < data * model:
        raise UsageError(f"a {data}x{model} mesh needs {data * model} devices, "
                         f"{len(devs)} available")
    return Mesh(np.array(devs[:data * model]).reshape(data, model), MESH_AXES)
