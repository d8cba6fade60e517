"""Every checkpoint format → parameters placed on the mesh, one tensor at a time.

:func:`open_source` detects the format from the files (:func:`grokfetch.formats.detect_format`)
and wraps its reader. Each reader yields ``(spec, weight, scales | None)`` in JAX layout: the
formats' ``iter_tensors`` (the pickles as int8 + bf16 scales, memory-mapped; safetensors and
the JAX store), imported when used, and for GGUF ``grokfetch.formats.gguf.open_gguf`` (parsed
once; the same parse decides ``lossless`` and each tensor's form) with ``iter_stored``. A
damaged file is one :class:`~grokfetch.errors.CheckpointError`.

Forms (:mod:`grokfetch.smoke.mesh`): the pickles and int8 exports stay int8 + scales on the
devices; a GGUF's block types stay its stored bytes (:meth:`Source.form_fn`), so nothing is
dequantized on the host; bf16/f32 exports are dense. Placement copies only the slice each
device owns (:mod:`grokfetch.smoke.place`): a block tensor's bytes straight from the memory
map; a GGUF tensor placed dense is dequantized on the devices from its blocks (or, where a
device's share is not whole blocks, on the host from the blocks that cover the slice). So no
tensor sits on the host twice, host memory stays within about one tensor's stored bytes, and the
same code works when the mesh spans several processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME
from grokfetch.errors import CheckpointError, GrokfetchError
from grokfetch.formats import detect_format
from grokfetch.smoke.place import DenseSlices, dequantizable_on_devices, place, place_stored, stored_axes
from grokfetch.spec import TENSOR_DIR, ModelConfig, TensorSpec, TensorTable, load_config

if TYPE_CHECKING:
    from grokfetch.formats.gguf import GGUFModel

#: ``(spec, weight, scales)``: the weight is an array, or for GGUF a ``StoredTensor``.
Item = tuple[TensorSpec, Any, "np.ndarray | None"]
Iter = Callable[[list[TensorSpec]], Iterator[Item]]
#: GGUF tensor types that hold the effective bf16 weights exactly.
GGUF_LOSSLESS_TYPES = {"F32", "BF16"}


@dataclass
class Source:
    """A checkpoint of any format: its config, table, tokenizer and a tensor iterator."""

    fmt: str
    root: Path
    config: ModelConfig
    table: TensorTable
    tokenizer: Path | None
    lossless: bool
    _iter: Iter = field(repr=False)
    _peeked: dict[int, Item] = field(default_factory=dict, repr=False)
    gguf_types: dict[int, Any] | None = field(default=None, repr=False)

    def items(self, specs: list[TensorSpec]) -> Iterator[Item]:
        """``(spec, weight, scales)`` for the given specs (any order the format stores them)."""
        wanted = {s.index for s in specs}
        for index in list(self._peeked):
            if index in wanted:
                wanted.discard(index)
                yield self._peeked.pop(index)
        if not wanted:
            return
        for item in self._iter([s for s in specs if s.index in wanted]):
            if item[0].index in wanted:
                wanted.discard(item[0].index)
                yield item
        if wanted:
            missing = sorted(self.table[i].path for i in wanted)
            raise CheckpointError(self.root, f"{len(missing)} tensors missing from the {self.fmt} "
                                  f"checkpoint, e.g. {missing[0]}")

    def check_files(self, specs: list[TensorSpec]) -> None:
        """Before anything is compiled: every needed pickle file exists with its header.

        Raises:
            CheckpointError: naming the first bad file and how many there are.
        """
        if self.fmt != "pickle":
            return
        from grokfetch.checkpoint.reader import open_checkpoint

        ck = open_checkpoint(self.root, config=self.config)
        # A size that differs from the prediction is left to the header check at load time.
        bad = [st for st in (ck.status(s) for s in specs) if st.status in ("missing", "format")]
        if bad:
            first = bad[0]
            what = ("missing tensor file" if first.status == "missing"
                    else f"bad tensor file ({first.detail})")
            more = f"; {len(bad) - 1} more files are missing or bad" if len(bad) > 1 else ""
            raise CheckpointError(ck.file_path(first.spec), f"{what} for {first.spec.path}{more}",
                                  hint="download or verify the checkpoint first")

    def weight_kind(self) -> str:
        """``"int8"`` when the quantized slots come as int8 + scales, else ``"dense"`` (GGUF:
        ``"gguf"``, whose forms are per tensor, see :meth:`form_fn`)."""
        if self.fmt in ("pickle", "gguf"):
            return "int8" if self.fmt == "pickle" else "gguf"
        spec = self.table.get("attn_k", 0)
        item = next(iter(self._iter([spec])), None)
        if item is None:
            raise CheckpointError(self.root, f"no tensor {spec.path} in the {self.fmt} checkpoint")
        self._peeked[spec.index] = item
        if item[2] is None and item[1].dtype == np.float16:
            self.lossless = False
        return "int8" if item[2] is not None else "dense"

    def form_fn(self, n: int) -> Callable[[TensorSpec], str]:
        """The form each tensor is placed in on ``n`` devices (``grokfetch.smoke.mesh``)."""
        from grokfetch.smoke.mesh import gguf_form, uniform_forms

        if self.gguf_types is None:
            return uniform_forms(self.weight_kind())
        types = self.gguf_types
        return lambda spec: gguf_form(spec, types[spec.index], n) if spec.index in types else "dense"


def _reader_iter(fmt: str, fn: Callable[..., Iterator[Item]], root: Path, table: TensorTable,
                 damaged: tuple[type[BaseException], ...] = ()) -> Iter:
    """Wrap a format's ``iter_tensors(path, table, specs)``; ``damaged``: the exceptions its
    library raises for an unreadable file, reported as one :class:`CheckpointError`."""

    def it(specs: list[TensorSpec]) -> Iterator[Item]:
        try:
            yield from fn(root, table, specs)
        except GrokfetchError:
            raise
        except damaged as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(root, f"unreadable {fmt} checkpoint: {detail[:300]}") from exc

    return it


def _gguf_iter(model: GGUFModel, table: TensorTable) -> Iter:
    """The stored tensors of an already-parsed GGUF (the file is not parsed again)."""
    from grokfetch.formats.gguf import iter_stored

    return lambda specs: iter_stored(model, table, specs)


def _gguf_lossless(model: GGUFModel) -> bool:
    return all(t.tensor_type.name in GGUF_LOSSLESS_TYPES for t in model.tensors.values())


def open_source(path: Path | str, preset: str | None = None) -> Source:
    """Detect and open a checkpoint. Config: its ``model-config.json``, else ``preset``.

    A GGUF is parsed here, once (a damaged file is a :class:`CheckpointError` before anything
    is compiled); the other formats open their files as they are read.
    """
    fmt, root = detect_format(Path(path), preset)
    config = load_config(root, preset)
    table = TensorTable(config)
    tok = next((p for p in (root / TOKENIZER_FILENAME, root.parent / TOKENIZER_FILENAME,
                            root / TENSOR_DIR / TOKENIZER_FILENAME) if p.is_file()), None)
    lossless = True
    types = None
    if fmt == "pickle":
        from grokfetch.formats.pickles import iter_tensors as pickle_iter

        it = _reader_iter(fmt, pickle_iter, root, table)
    elif fmt == "gguf":
        from grokfetch.formats.gguf import open_gguf, tensor_types

        model = open_gguf(Path(path) if Path(path).is_file() else root)
        it = _gguf_iter(model, table)
        lossless = _gguf_lossless(model)
        types = tensor_types(model, table)
    elif fmt == "safetensors":
        from safetensors import SafetensorError

        from grokfetch.formats.safetensors import iter_tensors as st_iter

        it = _reader_iter(fmt, st_iter, root, table, (SafetensorError, ValueError))
    else:
        from grokfetch.formats.jaxstore import iter_tensors as jax_iter

        # tensorstore reports a damaged store as ValueError (e.g. OUT_OF_RANGE, DATA_LOSS).
        it = _reader_iter(fmt, jax_iter, root, table, (ValueError,))
    return Source(fmt, root, config, table, tok, lossless, it, gguf_types=types)


# --- placement ----------------------------------------------------------------------------------


def prepare(spec: TensorSpec, weight: Any, scales: np.ndarray | None, n: int,
            form: str, dtype: Any) -> dict[str, Any]:
    """Check a tensor against its spec and bring it into its placed form: ``{"w"[, "s"]}``
    arrays, or ``{TYPE: blocks}`` for a GGML block type (see ``grokfetch.smoke.mesh``)."""
    import ml_dtypes

    from grokfetch.smoke.mesh import scale_blocks_for

    if tuple(weight.shape) != spec.shape:
        raise CheckpointError(spec.path, "wrong shape", expected=list(spec.shape),
                              actual=list(weight.shape))
    stored = weight if hasattr(weight, "qtype") else None
    if stored is not None:
        if form not in ("int8", "dense") and spec.quantized:
            if stored.qtype.name != form:
                raise CheckpointError(spec.path, f"stored as {stored.qtype.name}, expected {form}")
            return {form: stored.blocks}
        if form == "int8":
            raise CheckpointError(spec.path, "expected int8 weights with scales",
                                  actual=f"GGUF {stored.qtype.name}")
        return {"w": DenseSlices(stored, np.dtype(dtype) if spec.quantized else np.float32)}
    if not spec.quantized:
        return {"w": np.asarray(weight, np.float32) if weight.dtype != np.float32 else weight}
    if form == "dense":
        if scales is not None:
            raise CheckpointError(spec.path, "mixed int8 and dense weights in one checkpoint")
        return {"w": np.asarray(weight).astype(np.dtype(dtype), copy=False)}
    if scales is None or weight.dtype != np.int8 or form != "int8":
        raise CheckpointError(spec.path, f"expected {form} weights",
                              actual=f"{weight.dtype}, scales {'none' if scales is None else 'present'}")
    if tuple(scales.shape) != spec.scales_shape:
        raise CheckpointError(spec.path, "wrong scales shape", expected=list(spec.scales_shape or ()),
                              actual=list(scales.shape))
    scales = np.asarray(scales).astype(ml_dtypes.bfloat16, copy=False)
    blocks = scale_blocks_for(spec, n)
    if blocks != scales.shape[-2]:
        # Re-block for N that does not divide the 8 row blocks: repeat each scale block.
        scales = np.repeat(scales, blocks // scales.shape[-2], axis=-2)
    return {"w": weight, "s": scales}


def load_params(source: Source, engine: Any, layers: int, progress: Any = None) -> dict:
    """Place the globals and layers ``0..layers-1`` on the engine's mesh, each tensor in the
    engine's form for it, by table lookup (``table.get(slot, layer)``; the files'
    lexicographic order never leaks into the model)."""
    import jax.numpy as jnp

    from grokfetch.smoke.mesh import placed_axes

    table, n = source.table, engine.n
    specs = table.select(range(layers))
    params: dict[str, Any] = {"layers": [dict() for _ in range(layers)]}
    total = sum(s.payload_bytes for s in specs)
    if progress is not None:
        progress.task("load", total, f"loading {len(specs)} tensors ({source.fmt})")
    dtype = jnp.dtype(engine.dtype)
    for spec, weight, scales in source.items(specs):
        form = engine.form(spec)
        parts = prepare(spec, weight, scales, n, form, dtype)
        sharding = engine.slot_sharding(spec.slot.key, form)
        axes = placed_axes(spec.slot.key, form)
        placed = {k: _place(v, weight, axes, sharding, engine.mesh) for k, v in parts.items()}
        if spec.layer is None:
            params[spec.slot.key] = placed["w"]
        else:
            params["layers"][spec.layer][spec.slot.key] = placed
        if progress is not None:
            progress.advance("load", spec.payload_bytes)
    if progress is not None:
        progress.done("load")
    return params


def _place(part: Any, weight: Any, axes: tuple, sharding: Any, mesh: Any):
    """One placed array: GGUF tensors from their memory-mapped blocks (chunked, dequantized on
    the devices when placed dense and the devices' shares are whole blocks), else each
    device's slice of the host array."""
    if isinstance(part, DenseSlices) and dequantizable_on_devices(part.stored, axes, mesh):
        return place_stored(part.stored, stored_axes(part.stored.transpose, axes), mesh,
                            (axes, part.dtype))
    if hasattr(weight, "qtype") and part is getattr(weight, "blocks", None):
        return place_stored(weight, axes, mesh)
    return place(part, sharding)


def device_bytes_held(trees: list[Any]) -> dict[str, int]:
    """Bytes each local device holds of the given arrays (params, caches)."""
    import jax

    held: dict[str, int] = {}
    for leaf in itertools.chain.from_iterable(jax.tree_util.tree_leaves(t) for t in trees):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            held[key] = held.get(key, 0) + shard.data.nbytes
    return held
