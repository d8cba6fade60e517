"""Every checkpoint format → parameters placed on the mesh, one tensor at a time.

:func:`open_source` detects the format from the files (``*.gguf``; ``model.safetensors.index.json``
or ``*.safetensors``; ``ckpt-0/tensor*`` pickles; OCDBT/orbax markers such as ``_METADATA`` or
``manifest.ocdbt``) and wraps its reader. Each reader yields ``(spec, weight, scales | None)`` in
JAX layout: the original pickles through :func:`~grokfetch.checkpoint.reader.open_checkpoint`
(int8 + bf16 scales, memory-mapped), the converted formats through ``iter_params(out, table)`` of
``convert.gguf`` / ``convert.safetensors`` / ``convert.jaxstore``. Placement copies only the slice
each device owns (``jax.make_array_from_callback``), so no tensor sits on the host twice and the
same code works when the mesh spans several processes.
"""

from __future__ import annotations

import copy
import importlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.errors import CheckpointError, NotFoundError, UsageError
from grokfetch.spec import TENSOR_DIR, ModelConfig, TensorSpec, TensorTable, load_config

Item = tuple[TensorSpec, np.ndarray, "np.ndarray | None"]
FORMATS = ("pickle", "gguf", "safetensors", "jaxstore")
#: Where each converted format's reader lives (the first importable module wins).
READER_MODULES = {
    "gguf": ("convert.gguf", "grokfetch.convert.gguf"),
    "safetensors": ("convert.safetensors", "grokfetch.convert.safetensors"),
    "jaxstore": ("convert.jaxstore", "grokfetch.convert.jaxstore"),
}
JAXSTORE_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA", "_sharding")
GGUF_LOSSLESS_TYPES = {"F32", "BF16"}


def detect_format(path: Path) -> tuple[str, Path]:
    """``(format, root)`` of a checkpoint path, from the files it holds.

    Raises:
        NotFoundError: nothing that looks like a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(path, "checkpoint")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path.parent
        if path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json"):
            return "safetensors", path.parent
        raise NotFoundError(path, "checkpoint folder", hint="give the folder the checkpoint is in")
    if any(path.glob("*.gguf")):
        return "gguf", path
    if (path / "model.safetensors.index.json").is_file() or any(path.glob("*.safetensors")):
        return "safetensors", path
    has_tensors = any(path.glob("tensor?????_000")) or any(path.glob(f"{TENSOR_DIR}/tensor?????_000"))
    if not has_tensors:
        for marker in JAXSTORE_MARKERS:
            if (path / marker).exists() or any(path.glob(f"*/{marker}")) \
                    or any(path.glob(f"*/*/{marker}")):
                return "jaxstore", path
    from grokfetch.checkpoint.reader import find_layout

    try:
        return "pickle", find_layout(path).root
    except NotFoundError:
        raise NotFoundError(path, "checkpoint (ckpt-0/ pickles, *.gguf, *.safetensors or an "
                                  "orbax store)") from None


def reader_for(fmt: str) -> Callable[[Path, TensorTable], Iterator[Item]]:
    """The ``iter_params`` function of a converted format."""
    errors = []
    for name in READER_MODULES[fmt]:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        fn = getattr(mod, "iter_params", None)
        if fn is not None:
            return fn
        errors.append(f"{name} has no iter_params")
    raise UsageError(f"this looks like a {fmt} checkpoint, but its reader is not available "
                     f"({'; '.join(errors)})")


@dataclass
class Source:
    """A checkpoint of any format: its config, table, tokenizer and a tensor iterator."""

    fmt: str
    root: Path
    config: ModelConfig
    table: TensorTable
    tokenizer: Path | None
    lossless: bool
    _iter: Callable[[list[TensorSpec]], Iterator[Item]] = field(repr=False)
    _peeked: dict[int, Item] = field(default_factory=dict, repr=False)

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
        """``"int8"`` when the quantized slots come as int8 + scales, else ``"dense"``."""
        if self.fmt in ("pickle",):
            return "int8"
        spec = self.table.get("attn_k", 0)
        item = next(iter(self._iter([spec])), None)
        if item is None:
            raise CheckpointError(self.root, f"no tensor {spec.path} in the {self.fmt} checkpoint")
        self._peeked[spec.index] = item
        if item[2] is None and item[1].dtype == np.float16:
            self.lossless = False
        return "int8" if item[2] is not None else "dense"


def _pickle_iter(root: Path, config: ModelConfig) -> Callable[[list[TensorSpec]], Iterator[Item]]:
    from grokfetch.checkpoint.reader import open_checkpoint

    ck = open_checkpoint(root, config=config)

    def it(specs: list[TensorSpec]) -> Iterator[Item]:
        for spec in specs:
            with ck.open(spec) as tf:
                yield spec, tf.weight, tf.scales

    return it


def _convert_iter(fmt: str, root: Path, table: TensorTable):
    fn = reader_for(fmt)

    def it(specs: list[TensorSpec]) -> Iterator[Item]:
        # The readers walk ``table.model_order()``: hand them a view holding only these specs,
        # so a peek or a ``--layers`` subset reads nothing else.
        sub = copy.copy(table)
        sub.specs = tuple(table.model_order(list(specs)))
        wanted = {s.index for s in specs}
        for spec, w, s in fn(root, sub):
            if spec.index in wanted:
                yield spec, w, s

    return it


def _gguf_lossless(root: Path) -> bool:
    try:
        from gguf import GGUFReader
    except ImportError:
        return False
    for path in sorted(root.glob("*.gguf")):
        reader = GGUFReader(str(path))
        if any(t.tensor_type.name not in GGUF_LOSSLESS_TYPES for t in reader.tensors):
            return False
    return True


def open_source(path: Path | str, preset: str | None = None) -> Source:
    """Detect and open a checkpoint. Config: its ``model-config.json``, else ``preset``."""
    fmt, root = detect_format(Path(path))
    config = load_config(root, preset)
    table = TensorTable(config)
    tok = next((p for p in (root / "tokenizer.model", root.parent / "tokenizer.model",
                            root / TENSOR_DIR / "tokenizer.model") if p.is_file()), None)
    if fmt == "pickle":
        it = _pickle_iter(root, config)
        lossless = True
    else:
        it = _convert_iter(fmt, root, table)
        lossless = _gguf_lossless(root) if fmt == "gguf" else True
    return Source(fmt, root, config, table, tok, lossless, it)


# --- placement ----------------------------------------------------------------------------------


def place(arr: np.ndarray, sharding: Any):
    """A global ``jax.Array`` from a host array; each device copies only its own slice."""
    import jax

    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: np.array(arr[idx]))


def prepare(spec: TensorSpec, weight: np.ndarray, scales: np.ndarray | None, n: int,
            weight_kind: str, dtype: Any) -> dict[str, np.ndarray]:
    """Check a tensor against its spec and bring it into the placed form ``{"w"[, "s"]}``."""
    import ml_dtypes

    from grokfetch.smoke.mesh import scale_blocks_for

    if tuple(weight.shape) != spec.shape:
        raise CheckpointError(spec.path, "wrong shape", expected=list(spec.shape),
                              actual=list(weight.shape))
    if not spec.quantized:
        return {"w": np.asarray(weight, np.float32) if weight.dtype != np.float32 else weight}
    if weight_kind == "dense":
        if scales is not None:
            raise CheckpointError(spec.path, "mixed int8 and dense weights in one checkpoint")
        return {"w": np.asarray(weight).astype(np.dtype(dtype), copy=False)}
    if scales is None or weight.dtype != np.int8:
        raise CheckpointError(spec.path, "expected int8 weights with scales",
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
    """Place the globals and layers ``0..layers-1`` on the engine's mesh, by table lookup
    (``table.get(slot, layer)``; the files' lexicographic order never leaks into the model)."""
    import jax.numpy as jnp

    table, n = source.table, engine.n
    specs = table.select(range(layers))
    params: dict[str, Any] = {"layers": [dict() for _ in range(layers)]}
    total = sum(s.payload_bytes for s in specs)
    if progress is not None:
        progress.task("load", total, f"loading {len(specs)} tensors ({source.fmt})")
    dtype = jnp.dtype(engine.dtype)
    for spec, weight, scales in source.items(specs):
        parts = prepare(spec, weight, scales, n, engine.weight_kind, dtype)
        sharding = engine.slot_sharding(spec.slot.key)
        placed = {k: place(v, sharding) for k, v in parts.items()}
        if spec.layer is None:
            params[spec.slot.key] = placed["w"]
        else:
            params["layers"][spec.layer][spec.slot.key] = placed
        if progress is not None:
            progress.advance("load", spec.payload_bytes)
    if progress is not None:
        progress.done("load")
    return params


def device_bytes_held(trees: list[Any]) -> dict[str, int]:
    """Bytes each local device holds of the given arrays (params, caches)."""
    import jax

    held: dict[str, int] = {}
    for leaf in itertools.chain.from_iterable(jax.tree_util.tree_leaves(t) for t in trees):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            held[key] = held.get(key, 0) + shard.data.nbytes
    return held
