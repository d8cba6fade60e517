"""The format readers' own guards: a damaged metadata file is one CheckpointError, never a crash."""

from __future__ import annotations

import json

import pytest

import grokfetch.formats as formats
from grokfetch.errors import CheckpointError
from grokfetch.formats.jaxstore import tree_names
from grokfetch.formats.safetensors import INDEX_NAME, read_index


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
