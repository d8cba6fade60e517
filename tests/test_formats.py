"""The format readers: one ``iter_tensors`` over every format, detection from the files, and
their guards (a damaged metadata file is one CheckpointError, never a crash)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from numpy_reference import dequantize as ref_dequantize

import grokfetch.formats as formats
from grokfetch.checkpoint.reader import BF16
from grokfetch.convert.base import ConvertOptions
from grokfetch.convert.run import convert
from grokfetch.errors import CheckpointError, NotFoundError
from grokfetch.formats.jaxstore import tree_names
from grokfetch.formats.safetensors import INDEX_NAME, read_index
from grokfetch.spec import PRESETS, TensorTable, load_config

#: Output name → the conversion (layers 0 and 2 of the tiny fixture, renumbered 0 and 1).
CONVERSIONS = {"gguf-bf16": dict(target="gguf", bits=16),
               "st-int8": dict(target="safetensors", dtype="int8"),
               "st-bf16": dict(target="safetensors", dtype="bf16", layout="sglang"),
               "jax": dict(target="jax")}
LAYERS = (0, 2)


@pytest.fixture(scope="module")
def outputs(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    outs = {"pickle": tiny_ckpt}
    for name, kw in CONVERSIONS.items():
        convert(tiny_ckpt, root / name, ConvertOptions(layers=LAYERS, **kw))
        outs[name] = root / name
    return outs


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("name", ["pickle", *CONVERSIONS])
def test_iter_tensors_reads_every_format_the_same_way(outputs, name):
    """One call for every format; the values against the pickles and the test suite's own
    int8 × scale product, in JAX layout, with each format's documented dtype."""
    src = TensorTable(load_config(outputs["pickle"]))
    ref = {(s.layer, s.slot.key): (w, sc) for s, w, sc in formats.iter_tensors(outputs["pickle"], src)}
    table = TensorTable(load_config(outputs[name]))
    got = list(formats.iter_tensors(outputs[name], table))
    assert [s.index for s, _, _ in got] == [s.index for s in table.model_order()]
    for spec, w, scales in got:
        q, s = ref[(spec.layer if name == "pickle" or spec.layer is None else LAYERS[spec.layer],
                    spec.slot.key)]
        assert w.shape == spec.shape, spec.path
        if name == "gguf-bf16" and not spec.quantized and w.dtype == BF16:  # stored as BF16
            assert scales is None and _bits(w) == _bits(q.astype(BF16)), spec.path
        elif not spec.quantized:
            assert scales is None and w.dtype == np.float32 and _bits(w) == _bits(q), spec.path
        elif name in ("pickle", "st-int8", "jax"):
            assert w.dtype == np.int8 and scales.dtype == BF16, spec.path
            assert _bits(w) == _bits(q) and _bits(scales) == _bits(s), spec.path
        else:  # bf16 effective weights (GGUF: BF16 tensors)
            assert scales is None and w.dtype == BF16, spec.path
            assert _bits(w) == _bits(ref_dequantize(q, s)), spec.path


@pytest.mark.parametrize("name", ["pickle", *CONVERSIONS])
def test_iter_tensors_reads_only_the_specs_asked_for(outputs, name):
    table = TensorTable(load_config(outputs[name]))
    want = [table.get("router", 1), table.get("embed"), table.get("moe_down", 0)]
    got = [s for s, _, _ in formats.iter_tensors(outputs[name], table, want)]
    assert got == table.model_order(want)


def test_pickle_arrays_are_zero_copy_views(outputs):
    table = TensorTable(load_config(outputs["pickle"]))
    (_, w, s), = formats.iter_tensors(outputs["pickle"], table, [table.get("moe_up", 1)])
    assert not w.flags.owndata and not w.flags.writeable and not s.flags.owndata
    assert w.dtype == np.int8 and w.shape == table.get("moe_up", 1).shape


def test_detect_format(outputs, tmp_path):
    assert formats.detect_format(outputs["pickle"]) == ("pickle", outputs["pickle"])
    assert formats.detect_format(outputs["pickle"] / "ckpt-0") == ("pickle", outputs["pickle"])
    gguf = next(outputs["gguf-bf16"].glob("*.gguf"))
    assert formats.detect_format(gguf) == ("gguf", outputs["gguf-bf16"])
    assert formats.detect_format(outputs["gguf-bf16"]) == ("gguf", outputs["gguf-bf16"])
    assert formats.detect_format(outputs["st-int8"] / INDEX_NAME) == ("safetensors", outputs["st-int8"])
    assert formats.detect_format(outputs["jax"]) == ("jaxstore", outputs["jax"])
    # tensor files win over a stray orbax marker; an empty ckpt-0/ is still a pickle checkpoint
    mixed = tmp_path / "mixed"
    shutil.copytree(outputs["pickle"], mixed)
    (mixed / "_METADATA").write_text("{}")
    assert formats.detect_format(mixed)[0] == "pickle"
    (tmp_path / "empty" / "ckpt-0").mkdir(parents=True)
    assert formats.detect_format(tmp_path / "empty")[0] == "pickle"
    (tmp_path / "other").mkdir()
    with pytest.raises(NotFoundError):
        formats.detect_format(tmp_path / "other")
    with pytest.raises(NotFoundError):
        formats.detect_format(tmp_path / "missing")


def test_a_gguf_file_path_reads_that_file(outputs):
    gguf = next(outputs["gguf-bf16"].glob("*.gguf"))
    table = TensorTable(load_config(outputs["gguf-bf16"]))
    spec = table.get("attn_q", 1)
    (got, w, _), = formats.iter_tensors(gguf, table, [spec])
    assert got == spec and w.dtype == BF16 and w.shape == spec.shape


def test_fast_gguf_reader_parses_what_gguf_py_parses(outputs):
    """``formats.gguf``'s reader overrides a private gguf-py method for speed: every field and
    tensor must come out as gguf-py's own reader gives them."""
    from gguf import GGUFReader

    from grokfetch.formats import gguf as gguf_format

    path = next(outputs["gguf-bf16"].glob("*.gguf"))
    fast, ref = gguf_format._open_reader(path), GGUFReader(path, "r")
    assert type(fast) is not GGUFReader or not gguf_format._FAST_READER
    assert list(fast.fields) == list(ref.fields)
    for name, f in ref.fields.items():
        g = fast.fields[name]
        assert (g.name, g.offset, g.types, g.data) == (f.name, f.offset, f.types, f.data)
        assert [_bits(p) for p in g.parts] == [_bits(p) for p in f.parts]
    assert [(t.name, t.tensor_type, list(t.shape), t.data_offset, _bits(t.data))
            for t in fast.tensors] == [(t.name, t.tensor_type, list(t.shape), t.data_offset,
                                        _bits(t.data)) for t in ref.tensors]


def test_pickle_reader_takes_the_table_config_not_a_preset(tmp_path):
    """A pickle checkpoint without model-config.json is read with the caller's table."""
    from grokfetch.checkpoint.fixture import write_fixture

    write_fixture(tmp_path / "t", config=PRESETS["tiny"])
    (tmp_path / "t" / "model-config.json").unlink()
    table = TensorTable(PRESETS["tiny"])
    (spec, w, s), = formats.iter_tensors(tmp_path / "t", table, [table.get("attn_o", 3)])
    assert spec.layer == 3 and s.shape == spec.scales_shape


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b'{"tree_metadata": 3}',
                                  b'{"tree_metadata": {"a": {"key_metadata": [{"nokey": 1}]}}}'])
def test_damaged_jax_metadata_is_a_checkpoint_error(tmp_path, body):
    (tmp_path / "_METADATA").write_bytes(body)
    with pytest.raises(CheckpointError):
        tree_names(tmp_path)


def test_jax_metadata_names(tmp_path):
    doc = {"tree_metadata": {"x": {"key_metadata": [{"key": "params"}, {"key": "a.b"}]}}}
    (tmp_path / "_METADATA").write_text(json.dumps(doc))
    assert tree_names(tmp_path) == ["params.a.b"]


@pytest.mark.parametrize("reader, name", [(tree_names, "_METADATA"), (read_index, INDEX_NAME)])
def test_metadata_reads_are_bounded(tmp_path, monkeypatch, reader, name):
    (tmp_path / name).write_text(json.dumps({"weight_map": {}, "pad": "x" * 200}))
    monkeypatch.setattr(formats, "MAX_METADATA_BYTES", 100)
    with pytest.raises(CheckpointError, match="larger than 100 bytes"):
        reader(tmp_path)


@pytest.mark.parametrize("reader", [tree_names, read_index])
def test_missing_metadata_says_which_output(tmp_path, reader):
    with pytest.raises(CheckpointError, match="not a grokfetch .* output"):
        reader(tmp_path)
