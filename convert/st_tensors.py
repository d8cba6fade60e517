"""What goes into a safetensors export, and how each tensor's bytes are produced in row chunks.

The export has one entry per output tensor (:class:`StEntry`): a PyTorch-layout weight (out, in)
per matrix and per expert, its int8 scale for ``--dtype int8``, or a float32 tensor (embedding,
norms, router). Names come from the output tensor table (``spec.hf_name(e)`` /
``spec.sglang_name(e)``), so a ``--layers``/``--experts`` subset is renumbered from 0 like its
``model-config.json``.

``--dtype int8`` naming and layout (the compressed-tensors / vLLM "channel-wise" convention,
extended to Grok-1's row blocks)::

    NAME.weight        int8  (out, in)
    NAME.weight_scale  bf16  (out, blocks)     W[o, i] = weight[o, i] * weight_scale[o, i // (in / blocks)]

``blocks`` is 1 for per-output-channel weights (Q, K, V, expert gate/up) and 8 for row-block
weights (attention output, expert down), i.e. the JAX scales ``(blocks, out)`` transposed.
``--dtype bf16`` stores ``bf16(int8 × scale)``, bit-exact with ``TensorFile.dequantize()``.
Float tensors stay float32 in both modes (lossless; the reference keeps them float32 too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from grokfetch.checkpoint.dequant import dequantize
from grokfetch.convert.safetensors_header import StTensor
from grokfetch.convert.source import SourceTensor, blocked_transpose
from grokfetch.formats.safetensors import LM_HEAD, scale_name
from grokfetch.spec import TableSubset, TensorSpec

LAYOUTS = ("hf", "sglang")
DTYPES = ("bf16", "int8")
#: Rows per strip of the blocked transpose (the fastest of 64-1024 tried for int8 here).
TRANSPOSE_STRIP = 64


@dataclass(frozen=True)
class StEntry:
    """One output tensor: its safetensors name/dtype/shape and where its values come from."""

    tensor: StTensor
    spec: TensorSpec  # the source (checkpoint) spec
    part: str  # "weight" (quantized matrix), "scale" (its int8 scales) or "float"
    expert: int | None = None  # output (kept) expert for per-expert tensors

    @property
    def name(self) -> str:
        return self.tensor.name


def plan_entries(specs: Sequence[TensorSpec], subset: TableSubset, layout: str, dtype: str
                 ) -> list[StEntry]:
    """All output tensors in model order (embedding, final norm, layer 0, 1, ...; sglang's
    ``lm_head.weight`` last); ``subset`` renumbers the kept layers and experts."""
    specs = subset.model_order(specs)
    entries: list[StEntry] = []
    for spec in specs:
        ospec = subset.out_spec(spec)
        namer = ospec.hf_name if layout == "hf" else ospec.sglang_name
        if not spec.quantized:
            # the output spec's shape: the router keeps only the selected experts' columns
            entries.append(StEntry(StTensor(namer(), "F32", ospec.transposed_shape), spec, "float"))
            continue
        out_shape = spec.transposed_shape[-2:]  # (out, in)
        blocks = spec.scales_shape[-2]  # type: ignore[index]
        for out_e in range(len(subset.experts)) if spec.per_expert else [None]:
            name = namer(out_e)
            wdtype = "BF16" if dtype == "bf16" else "I8"
            entries.append(StEntry(StTensor(name, wdtype, out_shape), spec, "weight", out_e))
            if dtype == "int8":
                entries.append(StEntry(StTensor(scale_name(name), "BF16", (out_shape[0], blocks)),
                                       spec, "scale", out_e))
    if layout == "sglang":
        embed = next((s for s in specs if s.slot.key == "embed"), None)
        if embed is not None:  # sglang does not tie: an unscaled copy of the embedding
            entries.append(StEntry(StTensor(LM_HEAD, "F32", embed.shape), embed, "float"))
    return entries


def entry_chunks(entry: StEntry, src: SourceTensor, chunk_bytes: int, workers: int = 1
                 ) -> Iterator[np.ndarray]:
    """The entry's values in C order, as consecutive blocks of output rows.

    ``src`` is the opened source tensor (``--experts`` applied: ``entry.expert`` counts kept
    experts). Each block needs about ``chunk_bytes`` of float32 work space at most; with
    ``workers > 1`` up to ``workers + 1`` blocks are computed at once on threads (numpy releases
    the GIL in the casts, multiplies and copies), still yielded in order.
    """
    from grokfetch.convert.output import ordered_map

    yield from ordered_map(lambda job: job(), _chunk_jobs(entry, src, chunk_bytes), workers)


def _chunk_jobs(entry: StEntry, src: SourceTensor, chunk_bytes: int) -> list:
    """One zero-argument function per output block of ``entry`` (see :func:`entry_chunks`)."""
    if entry.part == "float":
        transposed = entry.spec.slot.transpose and len(src.shape) == 2  # the router: (E, in)
        n_rows = src.matrix_shape(transposed)[0]
        width = 1 if len(src.shape) == 1 else src.matrix_shape(transposed)[1]
        rows = n_rows if len(src.shape) == 1 else max(1, chunk_bytes // (width * 4))
        return [lambda r=r: src.rows(r, min(n_rows, r + rows), transposed=transposed)
                for r in range(0, n_rows, rows)]
    src_e = None if entry.expert is None else src.experts[entry.expert]  # type: ignore[index]
    w = src.weight if src_e is None else src.weight[src_e]
    s = src.scales if src_e is None else src.scales[src_e]  # type: ignore[index]
    if entry.part == "scale":
        return [lambda: blocked_transpose(s, block=TRANSPOSE_STRIP)]  # (blocks, out) -> (out, blocks)
    n_in, n_out = w.shape
    cols = max(1, chunk_bytes // (n_in * 4))
    int8 = entry.tensor.dtype == "I8"

    def block(c0: int) -> np.ndarray:
        q_t = blocked_transpose(w[:, c0:c0 + cols], block=TRANSPOSE_STRIP)
        return q_t if int8 else dequantize(q_t, s[:, c0:c0 + cols].T, axis=-1)

    return [lambda c0=c0: block(c0) for c0 in range(0, n_out, cols)]
