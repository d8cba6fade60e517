"""The pickle reader: the original Grok-1 checkpoint (``ckpt-0/tensor*`` pickles) as tensors.

:func:`iter_tensors` has the signature of every reader in :mod:`grokfetch.formats`; it opens
each file through :class:`~grokfetch.checkpoint.reader.TensorFile` (the safe opcode scan and
the checks against the spec) and yields its memory-mapped arrays as they are stored: nothing is
copied or dequantized (:func:`grokfetch.checkpoint.dequant.dequantize` gives the bf16 effective
weight when a caller wants it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.spec import TensorSpec, TensorTable


def iter_tensors(path: Path | str, table: TensorTable, specs: list[TensorSpec] | None = None
                 ) -> Iterator[tuple[TensorSpec, np.ndarray, np.ndarray | None]]:
    """Yield ``(spec, weight, scales)`` for the specs of ``table`` (or ``specs``), in model order.

    ``path``: the checkpoint root, its ``ckpt-0`` folder or the download folder above it;
    ``table`` describes the checkpoint (its config is used, not a ``model-config.json`` found
    there). Quantized tensors: int8 weight (in, out) / experts (E, in, out) and bf16 scales
    (``spec.scales_shape``); float tensors (embedding, norms, router): float32, scales None.
    The arrays are read-only zero-copy views of the file mapping; a file is closed when the
    next one is asked for, and its mapping lives on while a view of it does.

    Raises:
        CheckpointError: a missing, incomplete or malformed file (when it is reached).
    """
    ck = open_checkpoint(path, config=table.config)
    for tf in ck.tensors(table.model_order(None if specs is None else list(specs))):
        yield tf.spec, tf.weight, tf.scales
