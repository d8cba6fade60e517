"""The ``gguf`` target: a llama.cpp ``grok`` GGUF, streamed tensor by tensor.

Layout (grok1-format.md §4): ``general.architecture = "grok"``; tensor names from the slot
table (``spec.gguf_name``, layers renumbered 0..k-1 for a ``--layers`` subset) and numpy shapes
``spec.gguf_shape`` (matrices (out, in), merged experts (E, out, in)); no q/k permutation; the
embedding is not pre-scaled; every ``grok.*`` hyperparameter, including ``embedding_scale``,
``logit_scale``, ``attention.output_scale`` and ``attn_logit_softcapping``, comes from the
:class:`~grokfetch.spec.ModelConfig`. The SentencePiece vocabulary goes in as
``tokenizer.ggml.*`` (``model = "llama"``, ``add_bos_token = false`` as in the JAX reference).
``grokfetch.source_layers`` / ``grokfetch.source_experts`` record which checkpoint layer and
expert each output layer/expert came from.

Streaming: every tensor's byte size follows from its shape and type, so the header (metadata +
tensor infos with offsets) is built up front with gguf-py's own ``GGUFWriter`` serialisation and
written first; then each tensor is produced in row chunks (per expert, ~``chunk_bytes`` of float32
rows) straight from the memory-mapped checkpoint file, quantized and appended, with gguf's
32-byte alignment. ``--split-size`` gives llama.cpp split files ``NAME-0000i-of-0000N.gguf``
with ``split.no``/``split.count``/``split.tensors.count``.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, GGUFWriter, Keys, TokenType

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME
from grokfetch.convert.base import (
    TENSOR_TASK,
    OutputFile,
    OutputItem,
    Target,
    check_output_name,
    pack_by_size,
)
from grokfetch.convert.output import ordered_map
from grokfetch.convert.quant import (
    BF16,
    Scheme,
    check_available,
    quantize_rows,
    resolve_scheme,
    tensor_type,
    type_nbytes,
)
from grokfetch.errors import UsageError
from grokfetch.formats.gguf import ARCH, KEY_SCHEME, KEY_SOURCE_EXPERTS, KEY_SOURCE_LAYERS
from grokfetch.fsutil import file_sha256
from grokfetch.spec import ModelConfig, TensorSpec

ALIGN = GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: its name, numpy shape, type, byte size, and where it comes from."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    nbytes: int
    spec: TensorSpec
    out_layer: int | None


# --- tokenizer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool | None


def load_vocab(path: Path, vocab_size: int | None = None) -> Vocab:
    """Tokens, scores and llama.cpp token types of a SentencePiece model.

    Types: control → CONTROL, unknown → UNKNOWN, byte → BYTE, unused → UNUSED, user-defined →
    USER_DEFINED (sentencepiece always matches those pieces whole; llama.cpp does the same for
    USER_DEFINED tokens), everything else NORMAL.
    """
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"cannot load tokenizer {path}: {exc}") from None
    n = sp.vocab_size()
    if vocab_size is not None and n != vocab_size:
        raise UsageError(f"tokenizer {path} has {n} pieces but the model has vocab_size {vocab_size}",
                         hint="pass the tokenizer that belongs to this checkpoint (--tokenizer)")
    user_defined: set[int] = set()
    add_prefix = None
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(path.read_bytes())
        ud = pb.ModelProto.SentencePiece.USER_DEFINED
        user_defined = {i for i, p in enumerate(proto.pieces) if p.type == ud}
        add_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
    except Exception:  # protobuf missing or an unusual model: fall back to the processor's view
        pass
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            t = TokenType.UNKNOWN
        elif sp.is_control(i):
            t = TokenType.CONTROL
        elif sp.is_unused(i):
            t = TokenType.UNUSED
        elif sp.is_byte(i):
            t = TokenType.BYTE
        elif i in user_defined:
            t = TokenType.USER_DEFINED
        else:
            t = TokenType.NORMAL
        types.append(int(t))
    return Vocab(tokens, scores, types, add_prefix)


# --- metadata -----------------------------------------------------------------------------------


def add_metadata(w: GGUFWriter, cfg: ModelConfig, scheme: Scheme, vocab: Vocab,
                 source_layers: list[int], source_experts: list[int]) -> None:
    """Every key llama.cpp's ``grok`` loader reads, with values from ``cfg`` (the output's)."""
    w.add_name(cfg.name)
    w.add_file_type(int(scheme.ftype))
    w.add_quantization_version(2)
    w.add_context_length(cfg.sequence_len)
    w.add_embedding_length(cfg.emb_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.ffn_size)
    w.add_expert_feed_forward_length(cfg.ffn_size)
    w.add_head_count(cfg.num_q_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_expert_count(cfg.num_experts)
    w.add_expert_used_count(cfg.num_selected_experts)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_rope_dimension_count(cfg.key_size)
    w.add_vocab_size(cfg.vocab_size)
    w.add_embedding_scale(cfg.embedding_multiplier_scale)
    w.add_logit_scale(cfg.output_multiplier_scale)
    w.add_attn_output_scale(cfg.attn_output_multiplier)
    w.add_attn_logit_softcapping(cfg.attn_logit_softcap)
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_unk_token_id(cfg.unk_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_add_bos_token(False)  # the reference encodes prompts without BOS
    w.add_add_eos_token(False)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    w.add_key_value(KEY_SOURCE_LAYERS, source_layers, GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT32)
    w.add_key_value(KEY_SOURCE_EXPERTS, source_experts, GGUFValueType.ARRAY,
                    sub_type=GGUFValueType.UINT32)
    w.add_string(KEY_SCHEME, scheme.name)


def build_header(tensors: list[TensorPlan], meta: Any | None, split: tuple[int, int, int] | None) -> bytes:
    """Header + metadata + tensor infos of one GGUF file, padded to the data alignment.

    ``meta(writer)`` adds the metadata (first file only); ``split = (no, count, total_tensors)``.
    Serialised by gguf-py's ``GGUFWriter`` into memory, so the bytes are exactly what its own
    streaming writer would put in the file.
    """
    w = GGUFWriter(None, ARCH)
    if meta is not None:
        meta(w)
    else:
        w.kv_data[0].clear()  # later split files carry only the split keys (like gguf-split)
    if split is not None:
        no, count, total = split
        w.add_key_value(Keys.Split.LLM_KV_SPLIT_NO, no, GGUFValueType.UINT16)
        w.add_key_value(Keys.Split.LLM_KV_SPLIT_COUNT, count, GGUFValueType.UINT16)
        w.add_key_value(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, total, GGUFValueType.INT32)
    for t in tensors:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    with tempfile.TemporaryDirectory(prefix="grokfetch-gguf-header-") as tmp:
        path = Path(tmp) / "header.gguf"  # gguf-py's public writer only writes to files
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        data = path.read_bytes()
    return data + b"\0" * (-len(data) % ALIGN)


def _pad(n: int) -> int:
    return n + (-n % ALIGN)


# --- the target ---------------------------------------------------------------------------------


class GGUFTarget(Target, name="gguf"):
    """``grokfetch convert --to gguf``; see the module docstring."""

    option_fields = ("bits", "quant", "split_size", "name")  # chunking never changes bytes
    stale_patterns = ("*.gguf", "*.gguf.partial")

    def validate(self) -> None:
        self.scheme = resolve_scheme(self.options.bits, self.options.quant)
        if self.options.split_size is not None and self.options.split_size <= 0:
            raise UsageError("--split-size must be positive")
        if self.options.threads < 1:
            raise UsageError("--workers must be at least 1")
        self.tensors = self._tensor_plans()
        check_available({t.qtype for t in self.tensors})
        tok = self.tokenizer_path or self.ckpt.layout.tokenizer
        if tok is None:
            raise UsageError(f"no {TOKENIZER_FILENAME}", hint="pass --tokenizer FILE")
        self.vocab = load_vocab(Path(tok), self.config.vocab_size)
        self.tokenizer_sha = file_sha256(tok)

    def _tensor_plans(self) -> list[TensorPlan]:
        cfg, out, sub = self.config, self.out_config, self.subset
        # llama.cpp's order: the embedding, the layers, then the other globals
        order = sorted(sub.model_order(self.specs),
                       key=lambda s: 0 if s.slot.key == "embed" else 2 if s.layer is None else 1)
        plans = []
        for spec in order:
            li = sub.out_layer(spec.layer)
            ospec = sub.out_spec(spec)  # renumbered layer, the kept experts
            name, shape = ospec.gguf_name, ospec.gguf_shape
            qtype = tensor_type(self.scheme, spec, layer=li, n_layers=out.num_layers,
                                n_experts=out.num_experts, ne0=shape[-1],
                                n_gqa=cfg.num_q_heads // cfg.num_kv_heads)
            plans.append(TensorPlan(name, shape, qtype, type_nbytes(shape, qtype), spec, li))
        return plans

    def _stem(self) -> str:
        if self.options.name:
            return check_output_name(self.options.name)
        return check_output_name(f"{self.out_config.name}-{self.scheme.name}",
                                 "model name (model-config.json)")

    def _groups(self) -> list[list[TensorPlan]]:
        limit = self.options.split_size
        if not limit:
            return [self.tensors]
        # gguf-py's rule: a new file when this tensor would overflow
        return pack_by_size(self.tensors, lambda t: t.nbytes, limit)

    def plan(self) -> list[OutputFile]:
        groups = self._groups()
        n = len(groups)
        stem = self._stem()
        files = []
        for i, group in enumerate(groups):
            relpath = f"{stem}.gguf" if n == 1 else f"{stem}-{i + 1:05d}-of-{n:05d}.gguf"
            meta = self._meta if i == 0 else None
            header = build_header(group, meta, (i, n, len(self.tensors)) if n > 1 else None)
            items = [OutputItem(t.name, (t.spec,), t.nbytes, self._in_bytes(t.spec),
                                {"plan": t}) for t in group]
            size = len(header) + sum(_pad(t.nbytes) for t in group)
            files.append(OutputFile(relpath, items, size,
                                    meta={"header": header,
                                          "header_sha256": hashlib.sha256(header).hexdigest()}))
        return files

    def _meta(self, w: GGUFWriter) -> None:
        add_metadata(w, self.out_config, self.scheme, self.vocab, list(self.subset.layers),
                     list(self.subset.experts))

    def _in_bytes(self, spec: TensorSpec) -> int:
        if spec.per_expert:
            return spec.payload_bytes * self.out_config.num_experts // spec.shape[0]
        return spec.payload_bytes

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["tokenizer_sha256"] = self.tokenizer_sha
        return fp

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        return {"scheme": self.scheme.name, "tensor_types": counts,
                "types": {t.name: t.qtype.name for t in self.tensors}}

    # -- writing ---------------------------------------------------------------------------
    def write_file(self, ofile, sink, source, progress) -> None:
        sink.begin(ofile.meta["header"])
        for item in ofile.items:
            if sink.done(item.key):
                continue
            t: TensorPlan = item.meta["plan"]
            progress.task(TENSOR_TASK, item.in_bytes, f"{item.key} ({t.qtype.name})")
            start = sink.tell()
            with source.open(t.spec) as src:
                self._write_tensor(t, src, sink, progress, item.in_bytes)
            assert sink.tell() - start == t.nbytes, (t.name, sink.tell() - start, t.nbytes)
            sink.pad_to(ALIGN)
            sink.commit(item.key)
            progress.done(TENSOR_TASK)

    def _write_tensor(self, t: TensorPlan, src, sink, progress, in_bytes: int) -> None:
        spec = t.spec
        rows_total = t.shape[-2] if len(t.shape) >= 2 else 1
        ne0 = t.shape[-1]
        step = max(1, self.options.chunk_bytes // (4 * ne0))
        experts = range(t.shape[0]) if spec.per_expert else [None]
        jobs = [(e, r0, min(r0 + step, rows_total)) for e in experts
                for r0 in range(0, rows_total, step)]
        per_job_in = in_bytes / (len(experts) * rows_total)
        want = BF16 if t.qtype == GGMLQuantizationType.BF16 else np.float32

        def work(job: tuple[int | None, int, int]) -> tuple[tuple, np.ndarray]:
            e, r0, r1 = job
            if len(t.shape) == 1:
                rows = src.rows(0, ne0)
            else:
                rows = src.rows(r0, r1, expert=e, transposed=spec.slot.transpose, dtype=want)
            return job, quantize_rows(rows, t.qtype)

        done_in = 0
        last_e = None
        for (e, r0, r1), data in ordered_map(work, jobs, self.options.threads):
            if e != last_e and last_e is not None:
                src.release(last_e)
            last_e = e
            sink.write(data)
            if not spec.slot.transpose:
                src.release_rows(r0, r1)
            n = round(per_job_in * (r1 - r0))
            done_in += n
            progress.advance(TENSOR_TASK, n)
        if in_bytes - done_in:
            progress.advance(TENSOR_TASK, in_bytes - done_in)
        src.release()
