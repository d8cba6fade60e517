"""The deterministic OCDBT encoder, read back with tensorstore's own OCDBT driver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from grokfetch.convert.jax_layout import plan_arrays
from grokfetch.convert.jaxstore import zarr_json
from grokfetch.convert.ocdbt import Config, Ref, crc32c, encode_tree, manifest
from grokfetch.spec import PRESETS, TensorTable


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's CRC-32C check value
    assert crc32c(b"") == 0


def _database(root: Path, n_keys: int, config: Config) -> dict[bytes, bytes]:
    """A child database in ``root/child/`` (values in one data file, some inline, some too big
    for inline) and a root database over its tree; returns the expected key → value map."""
    rng = np.random.default_rng(0)
    data, want, entries = bytearray(), {}, {}
    for i in range(n_keys):
        key = f"arr{i % 7}/c/{i}".encode()
        value = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        want[key] = value
        if i % 3:  # out of line, in a data file the caller wrote
            entries[key] = Ref("d/data", len(data), len(value))
            data += value
        else:  # small ones inline, big ones moved into the index file
            entries[key] = value
    (root / "child" / "d").mkdir(parents=True)
    (root / "child" / "d" / "data").write_bytes(data)
    tree = encode_tree(entries, "d/index", config)
    (root / "child" / "d" / "index").write_bytes(tree.index)
    (root / "child" / "manifest.ocdbt").write_bytes(manifest(config, tree))
    (root / "manifest.ocdbt").write_bytes(manifest(config, tree, base_path="child/"))
    assert tree.num_keys == n_keys
    return want


@pytest.mark.parametrize("node_bytes", [100_000_000, 2_000])  # one leaf; a tree 2+ levels high
def test_tensorstore_reads_every_key(tmp_path, node_bytes):
    config = Config(uuid=bytes(range(16)), max_decoded_node_bytes=node_bytes)
    want = _database(tmp_path, 300, config)
    for base in (tmp_path / "child", tmp_path):
        kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{base}/"}).result()
        assert sorted(kv.list().result()) == sorted(want)  # (listing order is not defined)
        for key, value in want.items():
            assert kv.read(key).result().value == value, key
        dump = ts.ocdbt.dump(kv.base).result()
        (version,) = dump["versions"]
        assert version["commit_time"] == 0 and version["generation_number"] == 1
        assert (version["root_height"] > 0) == (node_bytes < 100_000)
        assert dump["config"]["uuid"] == bytes(range(16)).hex()


def test_encoding_is_a_function_of_the_entries(tmp_path):
    config = Config(uuid=b"u" * 16, max_decoded_node_bytes=2_000)
    _database(tmp_path / "a", 200, config)
    _database(tmp_path / "b", 200, config)
    for rel in ("manifest.ocdbt", "child/manifest.ocdbt", "child/d/index"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_zarr_json_is_what_tensorstore_writes():
    table = TensorTable(PRESETS["grok-1"])
    specs = [table.get("attn_q", 0), table.get("final_norm")]
    arrays = plan_arrays(specs, table.subset(), (1, 8))
    assert {a.dtype.name for a in arrays} >= {"int8", "bfloat16", "float32"}
    for a in arrays:
        ctx = ts.Context()
        ts.open({"driver": "zarr3", "kvstore": {"driver": "memory"}, "create": True,
                 "metadata": json.loads(zarr_json(a))}, context=ctx).result()
        kv = ts.KvStore.open({"driver": "memory"}, context=ctx).result()
        assert kv.read(b"zarr.json").result().value == zarr_json(a), a.name
