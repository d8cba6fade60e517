"""Open a Grok-1 checkpoint folder and hand out its tensors, memory-mapped and checked.

``open_checkpoint(path)`` finds the ``ckpt-0`` folder, the config (the checkpoint's own
``model-config.json`` or a preset) and the tokenizer, and returns a :class:`Checkpoint`.
Each :class:`TensorFile` is checked against its :class:`~grokfetch.spec.TensorSpec` when
opened (safe opcode scan, shapes, dtypes) and gives zero-copy views of the int8 weight and bf16
scales, or dequantized chunks (:mod:`grokfetch.checkpoint.dequant`). Nothing here calls
``pickle.load``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grokfetch.checkpoint.dequant import BF16, dequantize
from grokfetch.checkpoint.pickle_format import ArrayRef, QW8Ref, TensorRef, scan
from grokfetch.errors import CheckpointError, NotFoundError
from grokfetch.fsutil import has_holes
from grokfetch.spec import TENSOR_DIR, ModelConfig, TensorSpec, TensorTable, load_config

_NP_DTYPES = {"float32": np.dtype(np.float32), "int8": np.dtype(np.int8), "bfloat16": BF16}
TOKENIZER_FILENAME = "tokenizer.model"


@dataclass(frozen=True)
class CheckpointLayout:
    """Where the parts of a checkpoint are: ``root/ckpt-0/tensor*`` and friends."""

    root: Path
    tensor_dir: Path

    @property
    def tokenizer(self) -> Path | None:
        for candidate in (self.root / TOKENIZER_FILENAME, self.tensor_dir / TOKENIZER_FILENAME):
            if candidate.is_file():
                return candidate
        return None


def find_layout(path: Path | str) -> CheckpointLayout:
    """Accept the checkpoint root, its ``ckpt-0`` folder, or a download folder one level up.

    Raises:
        NotFoundError: no folder holding ``ckpt-0`` (or tensor files) was found.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(path, "checkpoint folder")
    if not path.is_dir():
        raise NotFoundError(path, "checkpoint folder", hint="give the folder, not a file")
    if (path / TENSOR_DIR).is_dir():
        return CheckpointLayout(path, path / TENSOR_DIR)
    if path.name == TENSOR_DIR or any(path.glob("tensor?????_000")):
        return CheckpointLayout(path.parent, path)
    subs = sorted(p.parent for p in path.glob(f"*/{TENSOR_DIR}") if p.is_dir())
    if len(subs) == 1:
        return CheckpointLayout(subs[0], subs[0] / TENSOR_DIR)
    raise NotFoundError(path / TENSOR_DIR, "checkpoint tensor folder",
                        hint="point at the folder that holds ckpt-0/ (e.g. the download folder)")


class TensorFile:
    """One opened tensor file: checked header, memory-mapped payloads.

    The arrays it returns are read-only views into the file mapping; they stay valid while the
    ``TensorFile`` is open (use it as a context manager or call :meth:`close`).
    """

    def __init__(self, spec: TensorSpec, path: Path):
        self.spec, self.path = spec, path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(path, "missing tensor file", hint="download it again") from None
        if size == 0:
            raise CheckpointError(path, "empty tensor file", expected=f"{spec.file_bytes} bytes",
                                  actual="0 bytes")
        with open(path, "rb") as f:
            if has_holes(f.fileno(), 0, size):
                raise CheckpointError(path, "has unwritten (sparse) ranges: its download did not "
                                      "finish", hint="run `grokfetch download` again to complete "
                                      "it (`grokfetch verify` lists what is missing)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.ref: TensorRef = scan(self._map, str(path))
            self._check()
        except Exception:
            self.close()
            raise

    def _check(self) -> None:
        spec, ref = self.spec, self.ref
        if spec.quantized != isinstance(ref, QW8Ref):
            raise CheckpointError(self.path, f"wrong kind of tensor for {spec.path}",
                                  expected="QuantizedWeight8bit" if spec.quantized else "ndarray",
                                  actual=type(ref).__name__.replace("Ref", ""))
        weight = ref.weight if isinstance(ref, QW8Ref) else ref
        if weight.shape != spec.shape or weight.dtype != spec.dtype:
            raise CheckpointError(self.path, f"wrong shape or dtype for {spec.path}",
                                  expected=f"{spec.dtype}{list(spec.shape)}",
                                  actual=f"{weight.dtype}{list(weight.shape)}")
        if isinstance(ref, QW8Ref) and (ref.scales.shape != spec.scales_shape
                                        or ref.scales.dtype != "bfloat16"):
            raise CheckpointError(self.path, f"wrong scales for {spec.path}",
                                  expected=f"bfloat16{list(spec.scales_shape or ())}",
                                  actual=f"{ref.scales.dtype}{list(ref.scales.shape)}")

    def _view(self, ref: ArrayRef) -> np.ndarray:
        dtype = _NP_DTYPES[ref.dtype]
        arr = np.frombuffer(self._map, dtype=dtype, count=ref.nbytes // dtype.itemsize,
                            offset=ref.offset)
        return arr.reshape(ref.shape)

    @property
    def mapping(self) -> mmap.mmap | None:
        """The read-only mapping of the whole file (for ``madvise``); None once closed."""
        return self._map

    @property
    def weight(self) -> np.ndarray:
        """The stored weight: int8 for quantized tensors, float32 otherwise (zero-copy)."""
        return self._view(self.ref.weight if isinstance(self.ref, QW8Ref) else self.ref)

    @property
    def scales(self) -> np.ndarray | None:
        """The bf16 scales (zero-copy), or None for float32 tensors."""
        return self._view(self.ref.scales) if isinstance(self.ref, QW8Ref) else None

    def dequantize(self, rows: slice | None = None, expert: int | None = None,
                   dtype: np.dtype | type = BF16) -> np.ndarray:
        """The effective weight ``bf16(int8 × scale)``, bit-exact with the JAX reference
        (:func:`grokfetch.checkpoint.dequant.dequantize`).

        Args:
            rows: a slice of the input axis (axis -2) to materialise; None = all rows.
            expert: for MoE tensors, one expert's (in, out) matrix instead of all of them.
            dtype: ``ml_dtypes.bfloat16`` (the reference's effective weight) or ``np.float32``
                (the same values widened).

        Float32 tensors are returned as float32 (cast to ``dtype`` when it is not bf16).
        """
        w = self.weight
        if expert is not None:
            w = w[expert]
        if self.spec.quantized:
            s = self.scales
            if expert is not None:
                s = s[expert]  # type: ignore[index]
            start, stop, _ = (rows or slice(None)).indices(w.shape[-2])
            out = dequantize(w[..., start:stop, :], s, start=start, length=w.shape[-2])  # type: ignore[arg-type]
            return out if np.dtype(dtype) == BF16 else out.astype(dtype)
        if rows is not None:
            w = w[rows] if w.ndim == 1 else w[..., rows, :]
        return np.array(w, dtype=np.float32 if np.dtype(dtype) == BF16 else dtype)

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # a view is still alive; the mapping goes with it
            self._map = None

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scales_problem(scales: np.ndarray) -> str | None:
    """A short sentence when bf16 scales hold values no real checkpoint has (non-finite or
    zero: a zero scale silently zeroes its weights), else None."""
    s = np.asarray(scales, dtype=np.float32)
    bad = int((~np.isfinite(s)).sum())
    if bad:
        return f"{bad} non-finite scales"
    zero = int((s == 0).sum())
    return f"{zero} zero scales" if zero else None


@dataclass
class FileStatus:
    spec: TensorSpec
    status: str  # "ok", "missing", "size", "format"
    detail: str = ""
    size: int | None = None


class Checkpoint:
    """A checkpoint on disk plus the tensor table that says what it must hold."""

    def __init__(self, layout: CheckpointLayout, config: ModelConfig):
        self.layout, self.config = layout, config
        self.table = TensorTable(config)

    def file_path(self, spec: TensorSpec) -> Path:
        return self.layout.tensor_dir / spec.file

    def open(self, spec: TensorSpec) -> TensorFile:
        """Open and check one tensor file (raises :class:`CheckpointError`)."""
        return TensorFile(spec, self.file_path(spec))

    def tensors(self, specs: list[TensorSpec] | None = None) -> Iterator[TensorFile]:
        """Open the given specs (default: all) one at a time, closing each after use."""
        for spec in specs if specs is not None else self.table:
            with self.open(spec) as tf:
                yield tf

    def status(self, spec: TensorSpec) -> FileStatus:
        """Cheap check of one file: exists, size as predicted, header matches the spec."""
        path = self.file_path(spec)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return FileStatus(spec, "missing")
        if size != spec.file_bytes:
            return FileStatus(spec, "size", f"{size} bytes, expected {spec.file_bytes}", size)
        try:
            with self.open(spec):
                pass
        except CheckpointError as exc:
            return FileStatus(spec, "format", str(exc.problem), size)
        return FileStatus(spec, "ok", "", size)

    def extra_files(self) -> list[str]:
        """Files in the tensor folder that the table does not know."""
        known = {s.file for s in self.table}
        return sorted(p.name for p in self.layout.tensor_dir.iterdir() if p.name not in known)


def open_checkpoint(path: Path | str, preset: str | None = None,
                    config: ModelConfig | None = None) -> Checkpoint:
    """Locate a checkpoint and its config.

    Args:
        path: the checkpoint root (holding ``ckpt-0/``), ``ckpt-0`` itself, or its parent.
        preset: the preset to use when the checkpoint has no ``model-config.json``
            (default ``grok-1``, like the real release).
        config: an explicit config, overriding both.
    """
    layout = find_layout(path)
    return Checkpoint(layout, config or load_config(layout.root, preset))
