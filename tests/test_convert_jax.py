"""``convert --to jax``: restored with real orbax on 8 simulated CPU devices (set up by the shared
conftest) and compared bit for bit with the checkpoint reader."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from progress_doubles import InterruptAfter

import grokfetch.convert.jaxstore as jaxstore
from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.convert.base import ConvertOptions
from grokfetch.convert.jax_layout import (
    chunk_shape,
    fit_pspec,
    param_key,
    plan_arrays,
    shard_shape,
    slot_rule,
)
from grokfetch.convert.jaxstore import DATA_DIR, restore
from grokfetch.convert.output import STATE_FILENAME
from grokfetch.convert.run import convert
from grokfetch.errors import UsageError
from grokfetch.formats.jaxstore import iter_tensors
from grokfetch.sharding import make_mesh
from grokfetch.spec import PRESETS, SLOTS, TensorTable, load_config

#: PartitionSpec of each slot at the official 1x8 mesh, as jax prints it (smoke-notes §3.2).
OFFICIAL = {
    "attn_q": ("data", "model"), "attn_k": ("data", "model"), "attn_v": ("data", "model"),
    "attn_o": ("model", "data"), "moe_gate": (None, "data", "model"),
    "moe_up": (None, "data", "model"), "moe_down": (None, "model", "data"),
    "router": ("data", None), "embed": (None, ("data", "model")),
}


@pytest.fixture(scope="module")
def jax_out(tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jax") / "tiny-jax"
    convert(tiny_ckpt, out, ConvertOptions(target="jax"))
    return out


def _leaf(tree, spec):
    return tree["params"][param_key(spec)]


def _assert_same(spec, tf, leaf) -> None:
    if spec.quantized:
        assert leaf["weight"].dtype == np.int8
        assert np.array_equal(np.asarray(leaf["weight"]), tf.weight), spec.path
        assert np.array_equal(np.asarray(leaf["scales"]).view(np.uint16),
                              tf.scales.view(np.uint16)), spec.path
    else:
        assert leaf.dtype == np.float32 and np.array_equal(np.asarray(leaf), tf.weight), spec.path


def test_orbax_restores_without_target_bit_exact_and_sharded(jax_out, tiny_ckpt):
    assert len(jax.devices()) == 8
    tree = ocp.StandardCheckpointer().restore(jax_out.absolute())
    ckpt = open_checkpoint(tiny_ckpt)
    assert set(tree["params"]) == {param_key(s) for s in ckpt.table}
    for spec in ckpt.table:
        leaf = _leaf(tree, spec)
        with ckpt.open(spec) as tf:
            _assert_same(spec, tf, leaf)
        arrays = [leaf["weight"], leaf["scales"]] if spec.quantized else [leaf]
        for arr in arrays:
            assert dict(arr.sharding.mesh.shape) == {"data": 1, "model": 8}
            want = OFFICIAL.get(spec.slot.key, (None,) * arr.ndim)
            pspec = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
            assert pspec == want, spec.path
            split = [8 if e in ("model", ("data", "model")) else 1 for e in want]
            local = tuple(n // k for n, k in zip(arr.shape, split, strict=True))
            assert {s.data.shape for s in arr.addressable_shards} == {local}
            assert len(arr.addressable_shards) == 8


def test_chunks_are_the_device_shards(jax_out, tiny_ckpt):
    table = TensorTable(load_config(tiny_ckpt))
    moe = table.get("moe_down", 0)
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": f"file://{jax_out}/",
                                                 "path": f"params.{param_key(moe)}.weight/"}}).result()
    e, f, d = moe.shape
    assert arr.chunk_layout.read_chunk.shape == (e, f // 8, d)
    meta = ocp.StandardCheckpointer().metadata(jax_out.absolute())
    tree = meta.item_metadata.tree
    emb = tree["params"][param_key(table.get("embed"))]
    assert tuple(emb.storage.chunk_shape) == (table.config.vocab_size, table.config.emb_size // 8)


def test_grok1_plan_uses_the_official_per_device_shapes():
    table = TensorTable(PRESETS["grok-1"])
    specs = [table.get(k, 0) for k in ("attn_q", "attn_o", "moe_gate", "moe_down", "router")] + \
        [table.get("embed")]
    plans = {(p.spec.slot.key, p.part): p for p in
             plan_arrays(specs, table.subset(), (1, 8))}
    assert plans[("attn_q", "weight")].shard == (6144, 768)
    assert plans[("attn_o", "weight")].shard == (768, 6144)
    assert plans[("attn_o", "scales")].shard == (1, 6144)
    assert plans[("moe_gate", "weight")].shard == (8, 6144, 4096)
    assert plans[("moe_down", "scales")].shard == (8, 1, 6144)
    assert plans[("embed", "float")].shard == (131072, 768)
    assert plans[("router", "float")].shard == (6144, 8)
    for p in plans.values():  # chunks are small and tile the shard exactly
        assert math.prod(p.chunk) * p.dtype.itemsize <= 32 * 2**20
        assert all(s % c == 0 for s, c in zip(p.shard, p.chunk, strict=True))
    assert plans[("moe_gate", "weight")].chunk == (1, 6144, 4096)


def test_rules_drop_axes_that_do_not_divide():
    mesh = {"data": 2, "model": 8}
    rule = slot_rule(SLOTS["attn_q"])
    assert fit_pspec(rule, (1, 6144), mesh) == (None, "model")  # per-channel scales
    assert shard_shape((6144, 6144), fit_pspec(rule, (6144, 6144), mesh), mesh) == (3072, 768)
    assert chunk_shape((8, 6144, 4096), 1, 32 * 2**20) == (1, 6144, 4096)
    assert chunk_shape((131072, 768), 4, 32 * 2**20) == (8192, 768)


def test_restore_onto_other_meshes(jax_out, tiny_ckpt):
    ckpt = open_checkpoint(tiny_ckpt)
    for shape in ((2, 4), (1, 1)):
        tree = restore(jax_out, make_mesh(*shape))
        for spec in (ckpt.table.get("attn_o", 3), ckpt.table.get("moe_up", 11), ckpt.table.get("embed")):
            leaf = _leaf(tree, spec)
            with ckpt.open(spec) as tf:
                _assert_same(spec, tf, leaf)
            arr = leaf["weight"] if spec.quantized else leaf
            assert dict(arr.sharding.mesh.shape) == {"data": shape[0], "model": shape[1]}
    q = _leaf(restore(jax_out, make_mesh(2, 4)), ckpt.table.get("attn_q", 0))
    d, n = q["weight"].shape
    assert q["weight"].addressable_shards[0].data.shape == (d // 2, n // 4)
    assert q["scales"].addressable_shards[0].data.shape == (1, n // 4)  # size-1 axis not split


def test_mesh_option_changes_the_recorded_sharding(tiny_ckpt, tmp_path):
    out = tmp_path / "m24"
    convert(tiny_ckpt, out, ConvertOptions(target="jax", mesh=(2, 4), layers=(0,)))
    sharding = json.loads((out / "_sharding").read_text())
    assert {json.loads(v)["shape"] == [2, 4] for v in sharding.values()} == {True}
    tree = ocp.StandardCheckpointer().restore(out.absolute())
    o = tree["params"]["transformer.decoder_layer_0.multi_head_attention.linear.w"]["weight"]
    assert o.addressable_shards[0].data.shape == (o.shape[0] // 4, o.shape[1] // 2)


def test_iter_tensors_reads_with_tensorstore(jax_out, tiny_ckpt):
    ckpt = open_checkpoint(tiny_ckpt)
    n = 0
    for spec, w, s in iter_tensors(jax_out, TensorTable(load_config(jax_out))):
        n += 1
        with ckpt.open(ckpt.table[spec.index]) as tf:
            assert np.array_equal(w, tf.weight)
            assert (s is None) == (not spec.quantized)
            if s is not None:
                assert np.array_equal(s.view(np.uint16), tf.scales.view(np.uint16))
    assert n == len(ckpt.table)


def test_output_manifest_covers_every_file(jax_out):
    from grokfetch.integrity.manifest import MANIFEST_NAME, list_files

    listed = {e["path"] for e in json.loads((jax_out / MANIFEST_NAME).read_text())["files"]}
    assert listed == set(list_files(jax_out))
    assert any(p.startswith(f"{DATA_DIR}/") for p in listed) and "manifest.ocdbt" in listed
    assert (jax_out / "model-config.json").is_file() and (jax_out / "tokenizer.model").is_file()


def test_subset_is_renumbered(tiny_ckpt, tmp_path):
    out = tmp_path / "sub"
    convert(tiny_ckpt, out, ConvertOptions(target="jax", layers=(10,), experts=(0, 2)))
    tree = restore(out, make_mesh(1, 8))
    ckpt = open_checkpoint(tiny_ckpt)
    gate = tree["params"]["transformer.decoder_layer_0.moe.linear.w"]
    router = tree["params"]["transformer.decoder_layer_0.router.w"]
    with ckpt.open(ckpt.table.get("moe_gate", 10)) as tf:
        assert np.array_equal(np.asarray(gate["weight"]), tf.weight[[0, 2]])
    with ckpt.open(ckpt.table.get("router", 10)) as tf:
        assert np.array_equal(np.asarray(router), tf.weight[:, [0, 2]])
    assert load_config(out).num_experts == 2




def _files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (hidden ones too) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_two_clean_runs_give_identical_bytes(jax_out, tiny_ckpt, tmp_path):
    again = tmp_path / "again"
    convert(tiny_ckpt, again, ConvertOptions(target="jax"))
    assert _files(again) == _files(jax_out)


def test_resume_after_interruption_gives_identical_bytes(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(jaxstore, "TARGET_DATA_FILE_SIZE", 1 << 20)  # several data files
    monkeypatch.setattr("grokfetch.convert.output.SYNC_BYTES", 64 * 1024)  # durable commits
    clean = tmp_path / "clean"
    convert(tiny_ckpt, clean, ConvertOptions(target="jax"))
    data = sorted((clean / DATA_DIR / "d").iterdir())
    assert len(data) >= 4  # 3+ data files and the index
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_ckpt, out, ConvertOptions(target="jax"), progress=InterruptAfter(700))
    partials = list(out.rglob("*.partial"))
    assert len(partials) == 1 and partials[0].parent == out / DATA_DIR / "d"
    assert (out / DATA_DIR / "d" / data[0].name).is_file()  # a finished data file
    assert not (out / "_METADATA").exists() and not (out / "manifest.ocdbt").exists()
    report = convert(tiny_ckpt, out, ConvertOptions(target="jax"))
    assert report.resumed and 0 < report.bytes_in < open_checkpoint(tiny_ckpt).table.payload_bytes
    assert _files(out) == _files(clean)  # same files, sizes and bytes: nothing orphaned
    tree = ocp.StandardCheckpointer().restore(out.absolute())
    ckpt = open_checkpoint(tiny_ckpt)
    for spec in ckpt.table:
        with ckpt.open(spec) as tf:
            _assert_same(spec, tf, _leaf(tree, spec))


_KILLABLE = """
import sys, time
import grokfetch.convert.output as output
from grokfetch.cli import main
output.SYNC_BYTES = 1  # every array durable at once
commit = output.FileSink.commit
def slow_commit(self, key, **kw):
    commit(self, key, **kw)
    time.sleep(0.01)  # slow enough to be killed mid-way
output.FileSink.commit = slow_commit
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_9_gives_identical_bytes(jax_out, tiny_ckpt, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, "convert", str(tiny_ckpt),
                             "--to", "jax", "--out", str(out), "--quiet"])
    state, committed = out / STATE_FILENAME, 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and committed < 100:
        with contextlib.suppress(OSError, ValueError, KeyError):
            files = json.loads(state.read_text())["files"]
            committed = sum(len(f["items"]) for f in files.values())
        time.sleep(0.01)
    assert proc.poll() is None, "conversion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.rglob("*.partial")) and not (out / "_METADATA").exists()
    report = convert(tiny_ckpt, out, ConvertOptions(target="jax"))
    assert report.resumed
    assert _files(out) == _files(jax_out)


def test_refusals(tiny_ckpt, jax_out, tmp_path):
    # a finished output is left as it is (a rerun is "already complete"), not overwritten
    assert convert(tiny_ckpt, jax_out, ConvertOptions(target="jax")).already_complete
    with pytest.raises(UsageError):
        convert(tiny_ckpt, tmp_path / "bad", ConvertOptions(target="jax", mesh=(0, 8)))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UsageError):
        make_mesh(4, 4)  # 16 devices on an 8-device host


def test_force_rewrites(tiny_ckpt, tmp_path):
    out = tmp_path / "forced"
    convert(tiny_ckpt, out, ConvertOptions(target="jax", layers=(1,)))
    report = convert(tiny_ckpt, out, ConvertOptions(target="jax", layers=(1,), experts=(3,), force=True))
    assert not report.resumed
    tree = ocp.StandardCheckpointer().restore(out.absolute())
    assert tree["params"]["transformer.decoder_layer_0.moe.linear_1.w"]["weight"].shape[0] == 1


def test_cli(tiny_ckpt, tmp_path, run_cli):
    out = tmp_path / "cli"
    code, stdout, _ = run_cli(["convert", tiny_ckpt, "--to", "jax", "--out", out, "--mesh", "2x4",
                               "--layers", "0", "--json"])
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["details"]["mesh"] == [2, 4] and result["target"] == "jax"
    assert (out / "_METADATA").is_file()
    code, _, stderr = run_cli(["convert", tiny_ckpt, "--to", "jax", "--out", tmp_path / "bad",
                               "--mesh", "eight"])
    assert code == 2 and "--mesh" in stderr and "Traceback" not in stderr
