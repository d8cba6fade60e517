"""The Grok-1-shaped first-K-layers generator: real names, shapes and layouts; readable payloads."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from grokfetch.checkpoint.reader import BF16, open_checkpoint
from grokfetch.checkpoint.realshape import padded_tokenizer, real_layer_specs, write_real_layers
from grokfetch.errors import OutputExistsError, UsageError
from grokfetch.pickle_layout import encode_layout
from grokfetch.spec import GROK_1, PRESETS, TensorTable


def test_sparse_real_layer_has_the_release_names_sizes_and_headers(tmp_path):
    specs = write_real_layers(tmp_path / "g", 2, payload="sparse")
    # the 64-layer table decides the names: globals, then layers 0 and 1 = files 0..25
    assert [s.file for s in specs] == [f"tensor{i:05d}_000" for i in range(26)]
    assert (specs[0].shape, specs[2].shape, specs[3].scales_shape) == (
        (131072, 6144), (8, 6144, 32768), (8, 8, 6144))
    ck = open_checkpoint(tmp_path / "g")
    assert ck.config == GROK_1  # no model-config.json, like the release
    files = sorted(p.name for p in (tmp_path / "g" / "ckpt-0").iterdir())
    assert files == [s.file for s in specs]
    for spec in specs:
        # the reader refuses holes (an unfinished download), so it says so, and nothing else
        st = ck.status(spec)
        assert st.status == "format" and "unwritten (sparse)" in st.detail, (spec.path, st)
        assert ck.file_path(spec).stat().st_size == spec.file_bytes
        with open(ck.file_path(spec), "rb") as f:  # every non-payload byte is the emitter's
            for part in encode_layout(spec.shape, spec.scales_shape):
                if isinstance(part, int):
                    f.seek(part, 1)
                else:
                    assert f.read(len(part)) == part, spec.path
    assert ck.status(TensorTable(GROK_1).get("moe_gate", 2)).status == "missing"


def test_random_payloads_load_with_pickle_and_are_deterministic(tmp_path, monkeypatch):
    cfg = PRESETS["tiny"]

    class QuantizedWeight8bit:  # the official class name the files refer to
        def __setstate__(self, state):
            self.__dict__.update(state)

    QuantizedWeight8bit.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "QuantizedWeight8bit", QuantizedWeight8bit,
                        raising=False)
    a = write_real_layers(tmp_path / "a", 2, config=cfg, seed=3)
    write_real_layers(tmp_path / "b", 2, config=cfg, seed=3)
    write_real_layers(tmp_path / "c", 2, config=cfg, seed=4)
    ck = open_checkpoint(tmp_path / "a")
    assert ck.config == cfg
    for spec in a:
        data = ck.file_path(spec).read_bytes()
        assert data == (tmp_path / "b" / spec.relpath).read_bytes()
        assert data != (tmp_path / "c" / spec.relpath).read_bytes()
        obj = pickle.loads(data)  # our own bytes, read the way the official loader reads them
        with ck.open(spec) as tf:
            if spec.quantized:
                np.testing.assert_array_equal(obj.weight, tf.weight)
                assert obj.scales.dtype == BF16 and obj.scales.shape == spec.scales_shape
                w = obj.weight.astype(np.int32)
                assert w.min() >= -127 and w.max() <= 127
                assert abs(w.std() - 52.25) < 2.0  # two uniform 0..127 draws: sqrt(2 * 1365.25)
            else:
                np.testing.assert_array_equal(obj, tf.weight)
                assert np.isfinite(obj).all() and obj.std() > 0


def test_padded_tokenizer_has_grok_size_and_special_ids():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=padded_tokenizer(GROK_1.vocab_size))
    assert sp.vocab_size() == 131072
    assert [sp.id_to_piece(i) for i in range(4)] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    assert sp.is_unused(131071) and max(sp.encode("hello world")) < 1024


def test_bad_arguments_and_existing_output(tmp_path):
    with pytest.raises(UsageError):
        real_layer_specs(0)
    with pytest.raises(UsageError):
        write_real_layers(tmp_path / "x", 1, payload="dense")
    write_real_layers(tmp_path / "s", 1, payload="sparse")
    with pytest.raises(OutputExistsError):
        write_real_layers(tmp_path / "s", 1, payload="sparse")
    write_real_layers(tmp_path / "s", 1, payload="sparse", force=True)


def test_random_first_experts_only(tmp_path):
    cfg = PRESETS["tiny"]
    specs = write_real_layers(tmp_path / "e", 1, config=cfg, experts=1)
    ck = open_checkpoint(tmp_path / "e")
    moe = [s for s in specs if s.per_expert]
    assert moe
    for spec in moe:
        assert ck.status(spec).status == "ok"
        with ck.open(spec) as tf:
            assert tf.weight[0].any() and not tf.weight[1:].any()
    with pytest.raises(UsageError):
        write_real_layers(tmp_path / "f", 1, config=cfg, experts=cfg.num_experts + 1)
