"""A Grok-1-shaped checkpoint of the first K layers: the real shapes, scale layouts and file names,
generated payloads — for benchmarks and slow tests at real scale without the 318 GB download.

``write_real_layers(out, layers=1)`` writes ``out/ckpt-0/tensor00000_000 ... tensor00013_000``
(the embedding, the final norm and layer 0, named and laid out exactly as in the release: the
tensor table of the 64-layer Grok-1 config decides every index) plus a ``tokenizer.model`` with
Grok-1's 131,072 pieces. Like the release it has no ``model-config.json``, so every tool reads it
as ``grok-1``; only the files of layers ``0..K-1`` exist, so select them (``convert --layers
0-{K-1}``, ``smoke --layers K``).

Payloads (``payload=``):

- ``"random"`` (default): int8 weights drawn from a triangular distribution on −127..127 (the sum
  of two uniform draws: bell-shaped like real quantized weights, and fast to draw), bf16 scales
  ``U(0.5, 2)/127/sqrt(fan_in)``, float tensors as in the miniature fixture. Deterministic for a
  seed; streamed in chunks of :data:`CHUNK_BYTES`, so host memory stays at a few tens of MB
  whatever the tensor size (a MoE tensor is 1.6 GB). One layer is 4.9 GB of int8 plus the
  3.2 GB float32 embedding.
- ``"sparse"``: every payload is a hole in a sparse file (all zeros) except the scales; it takes
  no disk and no time, for runs that only need the shapes (device bytes, planning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import ml_dtypes
import numpy as np

from grokfetch.checkpoint.fixture import train_tokenizer
from grokfetch.checkpoint.reader import TOKENIZER_FILENAME
from grokfetch.checkpoint.writer import write_tensor_pieces
from grokfetch.errors import OutputExistsError, UsageError
from grokfetch.fsutil import write_atomic
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.spec import CONFIG_FILENAME, GROK_1, TENSOR_DIR, ModelConfig, TensorSpec, TensorTable

#: Payload bytes generated per step (bounds the generator's memory).
CHUNK_BYTES = 32 * 1024 * 1024
PAYLOADS = ("random", "sparse")
TASK = "realshape"


def real_layer_specs(layers: int, config: ModelConfig = GROK_1) -> list[TensorSpec]:
    """The specs (globals first, then layers ``0..layers-1``) of ``config``'s full table, in file order."""
    if not 1 <= layers <= config.num_layers:
        raise UsageError(f"layers must be 1-{config.num_layers}, not {layers}")
    return TensorTable(config).select(list(range(layers)))


def _float_chunk(spec: TensorSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    kind = spec.slot.key
    if kind == "embed":
        return rng.normal(0.0, 0.5, n).astype(np.float32)
    if kind.startswith("norm") or kind == "final_norm":
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)
    return rng.standard_normal(n, dtype=np.float32) / np.float32(np.sqrt(spec.shape[-2]))


def _int8_chunk(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.integers(-64, 64, n, dtype=np.int8)
    a += rng.integers(-63, 64, n, dtype=np.int8)  # -127..127, no overflow
    return a


def _scales(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    s = rng.uniform(0.5, 2.0, spec.scales_shape) / 127 / np.sqrt(spec.shape[-2])
    return s.astype(ml_dtypes.bfloat16)


def _payload_writer(spec: TensorSpec, seed: int, payload: str, progress: Progress):
    """``put(f, i, nbytes)`` for :func:`write_tensor_pieces`: payload ``i`` of ``spec``."""

    def put(f: BinaryIO, i: int, nbytes: int) -> None:
        rng = np.random.default_rng([seed, spec.index, i])
        if i == 1:  # the bf16 scales: small, always real values
            data = _scales(spec, rng)
            assert data.nbytes == nbytes
            f.write(memoryview(data.reshape(-1).view(np.uint8)))
            progress.advance(TASK, nbytes)
            return
        if payload == "sparse":
            f.seek(nbytes, os.SEEK_CUR)
            progress.advance(TASK, nbytes)
            return
        item = 1 if spec.quantized else 4
        left = nbytes // item
        step = CHUNK_BYTES // item
        while left:
            n = min(step, left)
            data = _int8_chunk(rng, n) if spec.quantized else _float_chunk(spec, rng, n)
            f.write(memoryview(data.view(np.uint8)))
            progress.advance(TASK, n * item)
            left -= n

    return put


def padded_tokenizer(vocab_size: int, seed: int = 0, base_vocab: int = 1024) -> bytes:
    """A SentencePiece model with exactly ``vocab_size`` pieces: a small BPE model with Grok-1's
    special pieces (:func:`train_tokenizer`) padded with UNUSED pieces ``<|unused_N|>``."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(train_tokenizer(min(base_vocab, vocab_size), seed))
    for i in range(len(proto.pieces), vocab_size):
        piece = proto.pieces.add()
        piece.piece = f"<|unused_{i}|>"
        piece.score = 0.0
        piece.type = pb.ModelProto.SentencePiece.UNUSED
    return proto.SerializeToString()


def write_real_layers(out: Path | str, layers: int = 1, *, seed: int = 0, payload: str = "random",
                      tokenizer: Path | str | None = None, config: ModelConfig = GROK_1,
                      force: bool = False, progress: Progress = NULL_PROGRESS) -> list[TensorSpec]:
    """Write the globals and the first ``layers`` layers of a ``config``-shaped checkpoint.

    ``tokenizer`` is copied when given (e.g. the release's ``tokenizer.model``); otherwise a
    :func:`padded_tokenizer` of the config's vocabulary size is written. A ``config`` other than
    Grok-1 is stored as ``model-config.json``. Returns the specs written, in file order.

    Raises:
        UsageError: bad ``layers`` or ``payload``.
        OutputExistsError: ``out`` already holds checkpoint files and ``force`` is False.
    """
    if payload not in PAYLOADS:
        raise UsageError(f"unknown payload {payload!r}; choose one of: {', '.join(PAYLOADS)}")
    specs = real_layer_specs(layers, config)
    out = Path(out)
    tdir = out / TENSOR_DIR
    if not force:
        for existing in (tdir, out / TOKENIZER_FILENAME, out / CONFIG_FILENAME):
            if existing.is_file() or (existing.is_dir() and any(existing.iterdir())):
                raise OutputExistsError(existing)
    tdir.mkdir(parents=True, exist_ok=True)
    progress.task(TASK, sum(s.payload_bytes for s in specs),
                  f"writing {layers} {config.name}-shaped layer(s) ({payload})")
    for spec in specs:
        write_tensor_pieces(tdir / spec.file, spec, _payload_writer(spec, seed, payload, progress))
    tok = Path(tokenizer).read_bytes() if tokenizer is not None \
        else padded_tokenizer(config.vocab_size, seed)
    write_atomic(out / TOKENIZER_FILENAME, tok)
    if config != GROK_1:
        write_atomic(out / CONFIG_FILENAME, json.dumps(config.to_json(), indent=2) + "\n")
    progress.done(TASK)
    return specs
