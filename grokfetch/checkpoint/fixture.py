"""A deterministic miniature checkpoint in exactly the Grok-1 layout, for tests and the demo.

``write_fixture(out, "mini")`` writes ``out/ckpt-0/tensor*_000`` (weights drawn as floats and
quantized to int8 with the real scale layouts), ``out/tokenizer.model`` (a small SentencePiece
BPE model trained on the spot with Grok-1's special pieces and ids) and ``out/model-config.json``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME
from grokfetch.checkpoint.writer import quantize_int8, write_tensor_file
from grokfetch.errors import OutputExistsError
from grokfetch.fsutil import folder_lock, write_atomic
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.spec import CONFIG_FILENAME, TENSOR_DIR, ModelConfig, TensorSpec, TensorTable, preset

#: Grok-1's user-defined pieces, ids 4-68 (runs of newlines, digits, tabs, spaces, markers).
USER_DEFINED = (
    ["\n" * n for n in range(1, 11)] + [str(d) for d in range(10)]
    + ["\t" * n for n in range(1, 9)] + [" " * n for n in range(2, 17)]
    + ["<|separator|>", "<|mask|>"] + [f"<|control{i}|>" for i in range(1, 21)]
)


def tensor_values(spec: TensorSpec, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The fixture's arrays for one spec: (weight, scales) — int8 + bf16, or float32 + None."""
    rng = np.random.default_rng([seed, spec.index])
    kind = spec.slot.key
    if kind == "embed":
        return rng.normal(0.0, 0.5, spec.shape).astype(np.float32), None
    if kind.startswith("norm") or kind == "final_norm":
        return (1.0 + 0.1 * rng.standard_normal(spec.shape)).astype(np.float32), None
    fan_in = spec.shape[-2]
    w = rng.standard_normal(spec.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
    if not spec.quantized:  # the router
        return w.astype(np.float32), None
    # Give channels and row blocks different magnitudes so the scale layout matters.
    w *= rng.uniform(0.5, 2.0, spec.shape[:-2] + (1, spec.shape[-1])).astype(np.float32)
    return quantize_int8(w, spec)


def _training_text(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic pseudo-English with digits, tabs and newlines, for the tokenizer."""
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "th", "st", "tr", "pl", "gr", "sh", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "rk"]
    words = []
    for _ in range(600):
        k = int(rng.integers(1, 4))
        words.append("".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))]
                             + codas[rng.integers(len(codas))] for _ in range(k)))
    words += ["hello", "world", "the", "answer", "to", "life", "universe", "and", "everything",
              "is", "of", "course", "Grok", "model", "weights", "torrent"]
    out = []
    for _ in range(lines):
        n = int(rng.integers(3, 14))
        ws = [words[int(rng.zipf(1.3)) % len(words)] for _ in range(n)]
        if rng.random() < 0.2:
            ws.append(str(int(rng.integers(0, 10**6))))
        line = " ".join(ws)
        if rng.random() < 0.1:
            line = "\t" + line
        out.append(line.capitalize() + rng.choice([".", ",", "!", "?", ":"]))
    return out


def train_tokenizer(vocab_size: int, seed: int = 0) -> bytes:
    """A SentencePiece BPE model with Grok-1's special pieces: [PAD]=0 [BOS]=1 [EOS]=2 [UNK]=3,
    the 65 user-defined pieces at 4-68, byte fallback pieces next."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_text(seed)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="[PAD]", bos_piece="[BOS]", eos_piece="[EOS]", unk_piece="[UNK]",
        user_defined_symbols=USER_DEFINED,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def prepare_checkpoint_dir(out: Path, force: bool) -> Path:
    """Create ``out/ckpt-0`` for a generated checkpoint and return it.

    Raises:
        OutputExistsError: ``out`` already holds checkpoint files and ``force`` is False.
    """
    tdir = out / TENSOR_DIR
    if not force:
        for existing in (tdir, out / TOKENIZER_FILENAME, out / CONFIG_FILENAME):
            if existing.is_file() or (existing.is_dir() and any(existing.iterdir())):
                raise OutputExistsError(existing)
    tdir.mkdir(parents=True, exist_ok=True)
    return tdir


def write_fixture(out: Path | str, preset_name: str = "mini", *, seed: int = 0,
                  config: ModelConfig | None = None, force: bool = False,
                  progress: Progress = NULL_PROGRESS) -> TensorTable:
    """Write a complete miniature checkpoint; returns its tensor table.

    Raises:
        OutputExistsError: ``out`` already holds a checkpoint and ``force`` is False.
    """
    out = Path(out)
    cfg = config or preset(preset_name)
    table = TensorTable(cfg)
    with folder_lock(out, "write a fixture"):
        tdir = prepare_checkpoint_dir(out, force)
        progress.task("fixture", table.file_bytes, f"writing {cfg.name} fixture")
        for spec in table:
            weight, scales = tensor_values(spec, seed)
            progress.advance("fixture", write_tensor_file(tdir / spec.file, spec, weight, scales))
        write_atomic(out / TOKENIZER_FILENAME, train_tokenizer(cfg.vocab_size, seed))
        write_atomic(out / CONFIG_FILENAME, json.dumps(cfg.to_json(), indent=2) + "\n")
    progress.done("fixture")
    return table
