"""The safetensors reader: a grokfetch safetensors output back as checkpoint tensors, and the
names the writer shares with it (index file, ``_scale`` suffix, sglang's ``lm_head``).

:func:`iter_tensors` (the signature of every reader in :mod:`grokfetch.formats`) reads an
output with ``safetensors.safe_open`` in JAX layout, for the smoke test and the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.errors import CheckpointError, UnsafePathError
from grokfetch.formats import read_metadata
from grokfetch.fsutil import safe_join
from grokfetch.spec import TensorSpec, TensorTable

#: The index file of a sharded safetensors output (import it rather than spelling it out).
INDEX_NAME = "model.safetensors.index.json"
SCALE_SUFFIX = "_scale"
LM_HEAD = "lm_head.weight"


def scale_name(weight_name: str) -> str:
    """``x.weight`` → ``x.weight_scale``."""
    return weight_name + SCALE_SUFFIX



def read_index(out: Path) -> dict[str, Any]:
    """The parsed ``model.safetensors.index.json`` of an output, checked: a ``weight_map`` of
    tensor names to shard files inside ``out`` (anything else is a :class:`CheckpointError`)."""
    path = Path(out) / INDEX_NAME
    index = read_metadata(path, "safetensors")
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in wm.items()):
        raise CheckpointError(path, "bad index: no weight_map of tensor names to file names")
    for fname in set(wm.values()):
        try:
            safe_join(out, fname)
        except UnsafePathError as exc:
            raise CheckpointError(path, f"bad index: shard {fname!r} {exc.why}") from None
    return index


def iter_tensors(path: Path, table: TensorTable, specs: list[TensorSpec] | None = None
                 ) -> Iterator[tuple[TensorSpec, np.ndarray, np.ndarray | None]]:
    """The tensors of ``table`` (or ``specs``) present in a safetensors output, in model order,
    back in JAX layout.

    ``table`` describes the output (``TensorTable(load_config(path))``: a ``--layers`` /
    ``--experts`` subset is numbered from 0). Yields ``(spec, weight, scales)``:

    - int8 outputs: int8 weight (in, out) / experts (E, in, out) and bf16 scales in the
      checkpoint's layout (``spec.scales_shape``);
    - bf16 outputs: the bf16 effective weight in the same layout, scales None;
    - float tensors (embedding, norms, router (in, E)): float32, scales None.

    Reads through ``safetensors.safe_open(framework="numpy")`` (bf16 as ``ml_dtypes.bfloat16``).
    """
    from safetensors import safe_open

    out = Path(path)
    index = read_index(out)
    layout = index.get("metadata", {}).get("layout", "hf")
    weight_map: dict[str, str] = index["weight_map"]

    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}

        def get(name: str) -> np.ndarray:
            fname = weight_map[name]
            if fname not in handles:
                handles[fname] = stack.enter_context(
                    safe_open(str(safe_join(out, fname)), framework="numpy"))
            return handles[fname].get_tensor(name)

        for spec in table.model_order(None if specs is None else list(specs)):
            namer = spec.hf_name if layout == "hf" else spec.sglang_name
            names = [namer(e) for e in range(spec.shape[0])] if spec.per_expert else [namer()]
            if names[0] not in weight_map:
                continue
            if not spec.quantized:
                w = get(names[0])
                yield spec, (np.ascontiguousarray(w.T) if spec.slot.transpose else w), None
                continue
            ws = [np.ascontiguousarray(get(n).T) for n in names]
            has_scales = scale_name(names[0]) in weight_map
            ss = [np.ascontiguousarray(get(scale_name(n)).T) for n in names] if has_scales else None
            w = np.stack(ws) if spec.per_expert else ws[0]
            s = None if ss is None else (np.stack(ss) if spec.per_expert else ss[0])
            yield spec, w, s


def lm_head(out: Path) -> np.ndarray | None:
    """sglang's ``lm_head.weight`` of an output (None for the hf layout)."""
    from safetensors import safe_open

    index = read_index(Path(out))
    fname = index["weight_map"].get(LM_HEAD)
    if fname is None:
        return None
    with safe_open(str(safe_join(Path(out), fname)), framework="numpy") as f:
        return f.get_tensor(LM_HEAD)
