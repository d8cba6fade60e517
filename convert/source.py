"""Checkpoint tensors as row chunks, for every target: memory-mapped, bounded in memory.

:class:`SourceTensor` maps one tensor file (after the safe header check of
:class:`~grokfetch.checkpoint.reader.TensorFile`) and hands out dequantized row chunks in either
orientation:

- ``transposed=False``: JAX layout — rows of the (in, out) matrix (per expert for MoE tensors),
  ``bf16(int8 × scale)`` exactly as ``TensorFile.dequantize``;
- ``transposed=True``: PyTorch / GGUF layout — rows of the (out, in) matrix, i.e. output channels
  ``r0:r1``; the int8 block is transposed first (blocked, cache-friendly), then scaled, so the
  values are bit-identical to transposing ``TensorFile.dequantize()``.

``--experts`` is applied here: ``expert`` arguments count the *kept* experts (output numbering)
and the router's expert columns are sliced to match. :meth:`SourceTensor.release` drops the
mapped pages of a finished expert (``MADV_DONTNEED``), so file-backed pages never pile up in the
process's RSS: a converter holds at most one expert slab (201 MB int8 for Grok-1) plus its
workers' chunks.

:class:`SourceProvider` opens sources for the driver and implements ``--wait`` (convert while
``grokfetch download`` is still running).
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

from grokfetch.checkpoint.dequant import BF16, dequantize
from grokfetch.checkpoint.pickle_format import QW8Ref
from grokfetch.checkpoint.reader import Checkpoint, TensorFile, scales_problem
from grokfetch.errors import CheckpointError, GrokfetchError, UsageError
from grokfetch.fsutil import drop_pages
from grokfetch.integrity.dlstate import find_download
from grokfetch.integrity.pieces import check_torrent
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.spec import TensorSpec

#: Rows per strip of :func:`blocked_transpose` for the dequantizing path (a float32 product
#: follows); the safetensors int8 path uses 64 (the fastest of 64-1024 tried there).
TRANSPOSE_BLOCK = 512


def blocked_transpose(a: np.ndarray, block: int = TRANSPOSE_BLOCK) -> np.ndarray:
    """``np.ascontiguousarray(a.T)`` for a 2-D array, in strips of ``block`` rows (about 3×
    numpy's plain ``.T`` copy on a memory-mapped int8 matrix)."""
    rows, cols = a.shape
    out = np.empty((cols, rows), dtype=a.dtype)
    for r0 in range(0, rows, block):
        out[:, r0:r0 + block] = a[r0:r0 + block].T
    return out


class SourceTensor:
    """One checkpoint tensor, mapped read-only; see the module docstring."""

    def __init__(self, spec: TensorSpec, path: Path, experts: list[int] | None = None):
        self.spec, self.path = spec, path
        # one open and one mapping: the safe scan + shape/dtype checks, then its zero-copy views
        self._tf: TensorFile | None = TensorFile(spec, path)
        ref = self._tf.ref
        self._wref, self._sref = (ref.weight, ref.scales) if isinstance(ref, QW8Ref) else (ref, None)
        ax = spec.slot.expert_axis
        self.experts: list[int] | None = None  # source experts kept, along the expert axis
        if ax is not None:
            self.experts = list(range(spec.shape[ax])) if experts is None else list(experts)
        self.weight = self._tf.weight
        self.scales = self._tf.scales
        problem = scales_problem(self.scales) if self.scales is not None else None
        if problem:
            self.close()
            raise CheckpointError(path, f"{spec.path}: {problem}; refusing to convert it",
                                  hint="the file is damaged: run `grokfetch verify` and download "
                                       "it again")

    @property
    def _map(self) -> mmap.mmap | None:
        return self._tf.mapping if self._tf is not None else None

    # -- shapes -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """JAX-layout shape after the expert subset."""
        s = list(self.spec.shape)
        ax = self.spec.slot.expert_axis
        if ax is not None:
            s[ax] = len(self.experts)  # type: ignore[arg-type]
        return tuple(s)

    @property
    def transposed_shape(self) -> tuple[int, ...]:
        s = self.shape
        return s if not self.spec.slot.transpose else s[:-2] + (s[-1], s[-2])

    def matrix_shape(self, transposed: bool) -> tuple[int, ...]:
        """Shape of the per-expert (or whole) matrix that :meth:`rows` slices."""
        s = self.transposed_shape if transposed else self.shape
        return s[1:] if self.spec.per_expert else s

    # -- data -------------------------------------------------------------------------------
    def rows(self, r0: int, r1: int, expert: int | None = None, transposed: bool = False,
             dtype: np.dtype | type = BF16) -> np.ndarray:
        """Rows ``r0:r1`` of the (expert's) matrix, dequantized, C-contiguous.

        Quantized tensors come as bf16 (or the same values widened to ``np.float32``); float32
        tensors (embedding, norms, router) keep their float32 values unless ``dtype`` is given
        as something else than bf16/float32.
        """
        spec = self.spec
        if spec.per_expert:
            if expert is None:
                raise ValueError(f"{spec.path}: expert index required")
            src_e = self.experts[expert]  # type: ignore[index]
            w = self.weight[src_e]
            s = self.scales[src_e] if self.scales is not None else None
        else:
            w, s = self.weight, self.scales
            ax = spec.slot.expert_axis  # the router: keep the selected experts' columns
            if ax is not None and self.experts != list(range(spec.shape[ax])):
                w = w.take(self.experts, axis=ax)
                s = None if s is None else s.take(self.experts, axis=ax)
        if w.ndim == 1:
            out = np.array(w[r0:r1], dtype=np.float32)
        elif not spec.quantized:
            part = w[:, r0:r1].T if transposed else w[r0:r1]
            out = np.ascontiguousarray(part, dtype=np.float32)
        else:
            out = self._dequant_rows(w, s, r0, r1, transposed)  # type: ignore[arg-type]
            return out if np.dtype(dtype) == BF16 else out.astype(dtype)
        return out if np.dtype(dtype) in (BF16, np.dtype(np.float32)) else out.astype(dtype)

    def _dequant_rows(self, w: np.ndarray, s: np.ndarray, r0: int, r1: int,
                      transposed: bool) -> np.ndarray:
        if not transposed:
            return dequantize(w[r0:r1], s, start=r0, length=w.shape[0])
        # transpose the int8 block first (blocked, cache-friendly), then scale it: (c, in) × (c, blocks)
        return dequantize(blocked_transpose(w[:, r0:r1]), s[:, r0:r1].T, axis=-1)

    def release(self, expert: int | None = None) -> None:
        """Drop the mapped pages of one kept expert (or the whole tensor) from memory."""
        if self._map is None:
            return
        if expert is not None and self.spec.per_expert:
            per = self._wref.nbytes // self.spec.shape[0]
            self._drop(self._wref.offset + per * self.experts[expert], per)  # type: ignore[index]
        else:
            self._drop(0, len(self._map))

    def release_rows(self, r0: int, r1: int) -> None:
        """Drop the pages of rows ``r0:r1`` of a non-expert tensor read in JAX orientation
        (the embedding: 3.2 GB of float32 for Grok-1, read front to back)."""
        if self._map is None or self.spec.per_expert or self.weight.ndim != 2:
            return
        row = self._wref.nbytes // self.spec.shape[0]
        self._drop(self._wref.offset + r0 * row, (r1 - r0) * row)

    def _drop(self, start: int, length: int) -> None:
        assert self._map is not None
        drop_pages(self._map, start, length)

    def close(self) -> None:
        self.weight = self.scales = None  # type: ignore[assignment]
        if self._tf is not None:
            self._tf.close()  # a view still held by a caller keeps the mapping alive
            self._tf = None

    def __enter__(self) -> SourceTensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenSources:
    """Hands out one open :class:`SourceTensor` at a time, reopening only when the checkpoint
    file changes (targets walk their items in file order, so each file is opened once)::

        with OpenSources(source) as sources:
            for item, src in sources.pending(ofile.items, sink, spec_of):
                ...
    """

    def __init__(self, source: SourceProvider):
        self.source = source
        self._index: int | None = None
        self._open: SourceTensor | None = None

    def get(self, spec: TensorSpec) -> SourceTensor:
        if self._open is None or self._index != spec.index:
            self.close()
            self._open = self.source.open(spec)
            self._index = spec.index
        return self._open

    def pending(self, items, sink, spec_of):
        """``(item, source tensor)`` for each item ``sink`` has not committed yet, in order;
        ``spec_of(item)`` names the checkpoint tensor it reads."""
        for item in items:
            if not sink.done(item.key):
                yield item, self.get(spec_of(item))

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
        self._open = self._index = None

    def __enter__(self) -> OpenSources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WaitTimeout(GrokfetchError):
    """``--wait`` gave up on a checkpoint file that never completed."""


class SourceProvider:
    """Opens :class:`SourceTensor` objects for a target; waits for files under ``--wait``.

    When the download folder holds a saved torrent (``.grokfetch/<infohash>.torrent``) every file
    must pass its piece hashes before it is converted: a preallocated file with unwritten ranges
    (a download killed mid-way) has the right size and header but is refused. Without ``--wait``
    a failing file is a :class:`CheckpointError` ("run `grokfetch verify`"); with ``wait=True`` a
    file is used once it has exactly ``spec.file_bytes`` bytes, passes the header check and its
    pieces. ``checked_by`` records which check was applied ("pieces" or "size+header").
    """

    def __init__(self, ckpt: Checkpoint, experts: list[int] | tuple[int, ...] | None = None, *,
                 wait: bool = False, wait_timeout: float | None = None, poll: float = 1.0,
                 progress: Progress = NULL_PROGRESS):
        self.ckpt, self.wait, self.wait_timeout, self.poll = ckpt, wait, wait_timeout, poll
        self.experts = list(experts) if experts is not None else None
        self.progress = progress
        self.checked_by: dict[str, str] = {}
        self._piece_check = _find_piece_checker(ckpt)

    @property
    def hashes_pieces(self) -> bool:
        """True when a saved torrent's piece hashes are checked before each file is used."""
        return self._piece_check is not None

    def open(self, spec: TensorSpec) -> SourceTensor:
        path = self.ckpt.file_path(spec)
        if self.wait:
            return self._wait_for(spec, path)
        ok = self._piece_check(spec) if self._piece_check is not None else None
        if ok is False:
            raise CheckpointError(path, f"fails the saved torrent's piece hashes ({spec.path}): "
                                  "unwritten or damaged ranges",
                                  hint="run `grokfetch verify` on the download folder, then "
                                       "`grokfetch download` again to repair it")
        src = SourceTensor(spec, path, self.experts)
        self.checked_by[spec.file] = "size+header" if ok is None else "pieces"
        return src

    def _wait_for(self, spec: TensorSpec, path: Path) -> SourceTensor:
        """The source once its file is complete: the header is checked by the very open that
        maps it (no second open that a still-running download could race)."""
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        announced = False
        while True:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = None
            reason = "missing" if size is None else f"{size} bytes, expected {spec.file_bytes}"
            if size == spec.file_bytes:
                try:
                    src = SourceTensor(spec, path, self.experts)
                except CheckpointError as exc:
                    reason = f"bad header: {exc.problem}"
                else:
                    ok = self._piece_check(spec) if self._piece_check is not None else None
                    if ok is None or ok:
                        self.checked_by[spec.file] = "size+header" if ok is None else "pieces"
                        return src
                    src.close()
                    reason = "complete but fails the torrent's piece hashes"
            if not announced:
                self.progress.event("status", text=f"waiting for {spec.file}")
                announced = True
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"timed out waiting for {path} ({reason})",
                                  hint="is `grokfetch download` still running? raise --wait-timeout")
            time.sleep(self.poll)


def _find_piece_checker(ckpt: Checkpoint):
    """A ``spec -> bool`` piece-hash check when ``.grokfetch/*.torrent`` and
    ``grokfetch.integrity.pieces.check_torrent`` are available (else None: size + header only).

    The torrent's files are matched to checkpoint files by path (``ckpt-0/tensorNNNNN_000``,
    possibly below the torrent's top folder); only the pieces covering that one file are hashed
    (``check_torrent(..., only={index})``). A v1 piece that spans into a neighbour still being
    downloaded cannot be read yet; ``check_torrent`` reports it against the neighbour, so such a
    boundary piece is not held against the file.
    """
    try:  # an unreadable or ambiguous saved torrent: size + header only (a planted link: refused)
        saved = find_download(ckpt.layout.root, parents=2)
    except (UsageError, OSError, ValueError):
        return None
    if saved is None:
        return None
    torrent = saved.torrent
    by_path = {f.path: i for i, f in enumerate(torrent.files) if not f.pad}

    def check(spec: TensorSpec) -> bool | None:
        rel = next((p for p in by_path if p == spec.relpath or p.endswith("/" + spec.relpath)), None)
        if rel is None:
            return None  # not in this torrent: size + header only
        path = ckpt.file_path(spec)
        content_root = path.parents[rel.count("/")]
        try:
            rep = check_torrent(content_root, torrent, only={by_path[rel]})
        except (GrokfetchError, OSError, ValueError):
            return False
        return not [f for f in rep.errors if f.path == rel]

    return check


