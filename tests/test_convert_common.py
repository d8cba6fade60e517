"""The shared convert machinery: sources, sinks, resume state, the driver's refusals, --wait."""

from __future__ import annotations

import json
import shutil
import threading
import time

import ml_dtypes
import numpy as np
import pytest
from numpy_reference import dequantize as ref_dequantize

from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.convert.base import (
    ConvertOptions,
    OutputFile,
    OutputItem,
    Target,
    get_target,
    parse_experts,
)
from grokfetch.convert.output import STATE_FILENAME, ConvertState, FileSink, ordered_map
from grokfetch.convert.run import convert
from grokfetch.convert.source import OpenSources, SourceProvider, SourceTensor, blocked_transpose
from grokfetch.errors import (
    CheckpointError,
    InsufficientSpaceError,
    OutputExistsError,
    UnsafePathError,
    UsageError,
)
from grokfetch.integrity.manifest import MANIFEST_NAME, build_manifest
from grokfetch.spec import PRESETS, TensorTable

BF16 = np.dtype(ml_dtypes.bfloat16)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint16 if a.dtype == BF16 else np.uint32)


# --- sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize("slot", ["moe_down", "moe_gate", "attn_o", "attn_q", "router", "embed",
                                  "norm_attn_in"])
def test_source_rows_match_reference_both_orientations(tiny_ckpt, slot):
    ck = open_checkpoint(tiny_ckpt)
    spec = ck.table.get(slot, None if slot == "embed" else 3)
    with ck.open(spec) as tf:  # bf16 for int8 tensors (the test suite's own product), else float32
        ref = np.array(tf.weight) if tf.scales is None else ref_dequantize(tf.weight, tf.scales)
    with SourceTensor(spec, ck.file_path(spec)) as src:
        for e in (range(spec.shape[0]) if spec.per_expert else [None]):
            m = ref[e] if e is not None else ref
            if m.ndim == 1:
                assert (_bits(src.rows(0, m.shape[0])) == _bits(m)).all()
                continue
            # JAX orientation, in two uneven chunks
            got = np.concatenate([src.rows(0, 5, e), src.rows(5, m.shape[0], e)])
            assert got.dtype == m.dtype and (_bits(got) == _bits(m)).all()
            # transposed (out, in), in chunks of 7 output rows
            n_out = m.shape[1]
            got_t = np.concatenate([src.rows(r, min(r + 7, n_out), e, transposed=True)
                                    for r in range(0, n_out, 7)])
            assert (_bits(got_t) == _bits(np.ascontiguousarray(m.T))).all()
            src.release(e)


def test_source_expert_subset_and_router_slice(tiny_ckpt):
    ck = open_checkpoint(tiny_ckpt)
    gate, router = ck.table.get("moe_gate", 2), ck.table.get("router", 2)
    with ck.open(gate) as tf:
        ref = np.array(tf.dequantize())
    with ck.open(router) as tf:
        rref = np.array(tf.weight)
    with SourceTensor(gate, ck.file_path(gate), experts=[1, 3]) as src:
        assert src.shape == (2,) + gate.shape[1:]
        assert (_bits(src.rows(0, 4, expert=1)) == _bits(ref[3, 0:4])).all()
    with SourceTensor(router, ck.file_path(router), experts=[1, 3]) as src:
        assert src.shape == (router.shape[0], 2)
        assert np.array_equal(src.rows(0, 2, transposed=True), rref[:, [1, 3]].T)


def test_blocked_transpose_matches_numpy():
    a = np.arange(1000 * 37, dtype=np.int8).reshape(1000, 37)
    for block in (1, 64, 512, 5000):
        t = blocked_transpose(a, block=block)
        assert t.flags.c_contiguous and np.array_equal(t, a.T)


class _CountingProvider(SourceProvider):
    """The real provider, counting opens and closes."""

    def __init__(self, ckpt):
        super().__init__(ckpt)
        self.opened: list[int] = []
        self.live: list[SourceTensor] = []

    def open(self, spec):
        src = super().open(spec)
        self.opened.append(spec.index)
        self.live.append(src)
        return src


def test_open_sources_opens_each_file_once_and_closes(tiny_ckpt):
    ck = open_checkpoint(tiny_ckpt)
    a, b = ck.table.get("moe_gate", 1), ck.table.get("norm_attn_in", 1)
    prov = _CountingProvider(ck)
    with OpenSources(prov) as sources:
        first = sources.get(a)
        assert sources.get(a) is first
        second = sources.get(b)
        assert first.weight is None  # the previous file was closed on the switch
        assert sources.get(b) is second and second.weight is not None
    assert prov.opened == [a.index, b.index]
    assert all(s.weight is None and s._tf is None for s in prov.live)


def test_source_tensor_maps_the_file_once(tiny_ckpt):
    ck = open_checkpoint(tiny_ckpt)
    spec = ck.table.get("moe_down", 0)
    with SourceTensor(spec, ck.file_path(spec)) as src, ck.open(spec) as tf:
        assert src._map is src._tf.mapping and src._map is not None
        assert np.array_equal(src.weight, tf.weight) and np.array_equal(
            src.scales.view(np.uint16), tf.scales.view(np.uint16))
    assert src._map is None


# --- small helpers ------------------------------------------------------------------------------


def test_ordered_map_keeps_order_and_bounds_inflight():
    live, peak = [0], [0]
    lock = threading.Lock()

    def fn(x):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002 * (x % 3))
        with lock:
            live[0] -= 1
        return x * x

    assert list(ordered_map(fn, range(40), workers=3)) == [x * x for x in range(40)]
    assert peak[0] <= 3
    assert list(ordered_map(fn, range(5), workers=1)) == [0, 1, 4, 9, 16]


def test_table_subset_renumbers_layers_and_experts_and_expert_parsing():
    cfg = PRESETS["mini"]
    sub = TensorTable(cfg).subset((5, 0), (2, 3))
    out = sub.out.config
    assert (out.num_layers, out.num_experts, out.num_selected_experts) == (2, 2, 2)
    assert TensorTable(cfg).subset((0, 5), (2,)).out.config.num_selected_experts == 1
    src = TensorTable(cfg).get("moe_down", 0)
    o = sub.out_spec(src)  # source layer 0 is output layer 1: the order given is kept
    assert (o.layer, o.shape, o.gguf_name) == (1, (2,) + src.shape[1:], "blk.1.ffn_down_exps.weight")
    assert sub.out_spec(TensorTable(cfg).get("router", 5)).shape == (cfg.emb_size, 2)
    assert [s.layer for s in sub.model_order(sub.specs())][:3] == [None, None, 5]
    table = TensorTable(cfg)
    assert table.subset().out is table
    for bad in ((0, 0), (cfg.num_layers,), ()):
        with pytest.raises(UsageError, match="layers"):
            TensorTable(cfg).subset(bad)
    assert parse_experts("0-2,5", 8) == (0, 1, 2, 5)
    assert parse_experts("all", 8) is None
    with pytest.raises(UsageError, match="expert"):
        parse_experts("9", 8)


def test_unknown_target_lists_choices():
    with pytest.raises(UsageError, match="gguf"):
        get_target("onnx")


# --- sinks and resume ---------------------------------------------------------------------------


def test_file_sink_resume_truncates_to_last_durable_commit(tmp_path):
    state = ConvertState(tmp_path, {"x": 1})
    sink = FileSink(tmp_path, "a.bin", state)
    sink.begin(b"HEAD")
    sink.write(b"one")
    sink.commit("one", durable=True)
    sink.write(b"two")
    sink.commit("two")  # not durable yet: lost in a crash
    sink.write(b"garbage")  # an item half-written when the process died
    sink.close()  # crash: no finish()
    assert (tmp_path / "a.bin.partial").read_bytes() == b"HEADonetwogarbage"

    again = ConvertState.load(tmp_path)
    assert again is not None and again.fingerprint == {"x": 1}
    sink = FileSink(tmp_path, "a.bin", again)
    assert sink.resumed and sink.done("one") and not sink.done("two")
    sink.begin(b"HEAD")
    assert sink.tell() == len(b"HEADone")
    sink.write(b"two")
    sink.commit("two")
    sink.finish()
    assert (tmp_path / "a.bin").read_bytes() == b"HEADonetwo"
    assert not (tmp_path / "a.bin.partial").exists()
    assert ConvertState.load(tmp_path).is_complete("a.bin")
    # the resumed sink hashed the bytes of the first run too
    assert sink.manifest_entry() == {"path": "a.bin",
                                     **build_manifest(tmp_path, ["a.bin"])["files"][0]}


def test_file_sink_restarts_when_header_differs(tmp_path):
    state = ConvertState(tmp_path, {})
    sink = FileSink(tmp_path, "b.bin", state)
    sink.begin(b"OLDHEAD")
    sink.write(b"x")
    sink.commit("x", durable=True)
    sink.close()
    sink = FileSink(tmp_path, "b.bin", ConvertState.load(tmp_path))
    sink.begin(b"NEWHEAD")
    assert not sink.done("x")
    sink.finish()
    assert (tmp_path / "b.bin").read_bytes() == b"NEWHEAD"
    assert sink.manifest_entry() == build_manifest(tmp_path, ["b.bin"])["files"][0]


@pytest.mark.parametrize("relpath", ["../x.bin", "/tmp/x.bin", "a/../../x.bin", "link/x.bin"])
def test_sinks_refuse_paths_outside_their_root(tmp_path, relpath):
    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    state = ConvertState(root, {})
    with pytest.raises(UnsafePathError):
        FileSink(root, relpath, state)
    assert list(outside.iterdir()) == [] and not (tmp_path / "x.bin").exists()
    assert sorted(p.name for p in root.iterdir()) == ["link"]


# --- a minimal target through the real driver ---------------------------------------------------


class _NormsTarget(Target, name="test-norms"):
    """Writes the raw float32 norm scales of the selected layers, one file per layer."""

    option_fields = ("name",)

    def plan(self):
        files = []
        for spec in self.specs:
            if spec.slot.key == "norm_attn_in":
                files.append(OutputFile(f"norm-{spec.layer}.bin",
                                        [OutputItem(spec.path, (spec,), spec.payload_bytes,
                                                    spec.payload_bytes)],
                                        spec.payload_bytes))
        return files

    def write_file(self, ofile, sink, source, progress):
        sink.begin(b"")
        for item in ofile.items:
            if sink.done(item.key):
                continue
            with source.open(item.specs[0]) as src:
                sink.write(src.rows(0, item.specs[0].shape[0]))
                progress.advance(item.key, item.in_bytes)
            sink.commit(item.key)


class _EscapingTarget(_NormsTarget, name="test-escape"):
    """A (buggy or hostile) target that plans a file outside OUT."""

    def plan(self):
        files = super().plan()
        files[0].relpath = "../escaped.bin"
        return files


def test_driver_never_writes_or_deletes_outside_out(tiny_ckpt, tmp_path):
    out, victim = tmp_path / "out", tmp_path / "escaped.bin"
    victim.write_bytes(b"user data")
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    for force in (False, True):
        with pytest.raises(UnsafePathError):
            convert(tiny_ckpt, out, ConvertOptions(target="test-escape", layers="1", force=force))
        assert victim.read_bytes() == b"user data"
        assert [p.name for p in out.iterdir()] == ["old.bin"]


def test_manifest_is_hashed_while_writing(tiny_ckpt, tmp_path, monkeypatch):
    import grokfetch.convert.run as run

    asked: list[list[str]] = []
    real = run.build_manifest
    monkeypatch.setattr(run, "build_manifest", lambda root, files, **kw: asked.append(files)
                        or real(root, files, **kw))
    out = tmp_path / "out"
    convert(tiny_ckpt, out, ConvertOptions(target="test-norms", layers="2,7"))
    assert asked == []  # every file was hashed as it was written: nothing read back
    assert json.loads((out / MANIFEST_NAME).read_text()) == build_manifest(out)


def test_driver_writes_config_tokenizer_manifest_last(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    rep = convert(tiny_ckpt, out, ConvertOptions(target="test-norms", layers="2,7"))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["norm-2.bin", "norm-7.bin", "model-config.json", "tokenizer.model",
                            "grokfetch-manifest.json"])
    ck = open_checkpoint(tiny_ckpt)
    with ck.open(ck.table.get("norm_attn_in", 7)) as tf:
        assert (out / "norm-7.bin").read_bytes() == tf.weight.tobytes()
    cfg = json.loads((out / "model-config.json").read_text())["config"]
    assert cfg["num_layers"] == 2 and cfg["name"] == "tiny"
    assert (out / "tokenizer.model").read_bytes() == (tiny_ckpt / "tokenizer.model").read_bytes()
    man = json.loads((out / "grokfetch-manifest.json").read_text())
    assert sorted(e["path"] for e in man["files"]) == sorted(n for n in names
                                                             if n != "grokfetch-manifest.json")
    assert rep.bytes_in == 2 * 4 * PRESETS["tiny"].emb_size and rep.layers == [2, 7]
    # a rerun finds the finished output complete and leaves it alone; --force redoes it
    again = convert(tiny_ckpt, out, ConvertOptions(target="test-norms", layers="2,7"))
    assert again.already_complete and again.bytes_in == 0
    (out / "norm-2.bin").write_bytes(b"tampered")
    convert(tiny_ckpt, out, ConvertOptions(target="test-norms", layers="2,7", force=True))
    assert (out / "norm-2.bin").stat().st_size == 4 * PRESETS["tiny"].emb_size


def test_driver_refuses_other_unfinished_conversion(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ConvertState(out, {"something": "else"}).save()
    with pytest.raises(OutputExistsError) as ei:
        convert(tiny_ckpt, out, ConvertOptions(target="test-norms"))
    assert "resume" in (ei.value.hint or "")
    assert (out / STATE_FILENAME).exists()


def test_driver_refuses_bad_input_before_writing(tiny_ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    victim = bad / "ckpt-0" / "tensor00005_000"
    victim.write_bytes(victim.read_bytes()[:-10])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="tensor00005_000"):
        convert(bad, out, ConvertOptions(target="gguf", bits=16))
    assert not out.exists()
    with pytest.raises(UsageError, match="layers"):
        convert(tiny_ckpt, out, ConvertOptions(target="test-norms", layers="11-12"))
    assert not out.exists()


def test_no_space_refused_on_small_tmpfs(tiny_ckpt, tmpfs):
    mnt = tmpfs("1m")
    with pytest.raises(InsufficientSpaceError):
        convert(tiny_ckpt, mnt / "out", ConvertOptions(target="gguf", bits=16))
    assert list(mnt.iterdir()) == []


# --- --wait -------------------------------------------------------------------------------------


def test_wait_converts_files_as_they_arrive(tiny_ckpt, tmp_path):
    ck = open_checkpoint(tiny_ckpt)
    dl = tmp_path / "dl"
    (dl / "ckpt-0").mkdir(parents=True)
    for name in ("tokenizer.model", "model-config.json"):
        shutil.copy(tiny_ckpt / name, dl / name)
    files = [s.file for s in ck.table.model_order()]
    for f in files[:3]:
        shutil.copy(tiny_ckpt / "ckpt-0" / f, dl / "ckpt-0" / f)

    def arrive():
        time.sleep(0.3)
        for f in files[3:]:
            data = (tiny_ckpt / "ckpt-0" / f).read_bytes()
            part = dl / "ckpt-0" / f
            part.write_bytes(data[: len(data) // 2])  # a half-downloaded file first
            part.write_bytes(data)

    t = threading.Thread(target=arrive)
    t.start()
    rep = convert(dl, tmp_path / "out", ConvertOptions(target="gguf", bits=16, wait=True,
                                                       wait_timeout=30))
    t.join()
    ref = convert(tiny_ckpt, tmp_path / "ref", ConvertOptions(target="gguf", bits=16))
    a = (tmp_path / "out" / rep.files[0]["path"]).read_bytes()
    assert a == (tmp_path / "ref" / ref.files[0]["path"]).read_bytes()
    assert sum(rep.checked_by.values()) == len(files)


def test_wait_times_out_with_clear_error(tiny_ckpt, tmp_path):
    dl = tmp_path / "dl"
    shutil.copytree(tiny_ckpt, dl)
    (dl / "ckpt-0" / "tensor00009_000").unlink()
    from grokfetch.convert.source import WaitTimeout

    ck = open_checkpoint(dl)
    prov = SourceProvider(ck, wait=True, wait_timeout=0.3, poll=0.05)
    with pytest.raises(WaitTimeout, match="tensor00009_000"):
        prov.open(ck.table[9])


def test_wait_maps_the_file_it_checked(tiny_ckpt, tmp_path):
    """Under --wait a full-size file with a bad header is waited on; once good, the source
    that checked it is the one handed out (no second open)."""
    from grokfetch.convert.source import WaitTimeout

    dl = tmp_path / "dl"
    shutil.copytree(tiny_ckpt, dl)
    victim = dl / "ckpt-0" / "tensor00004_000"
    good = victim.read_bytes()
    victim.write_bytes(b"\0" * len(good))  # preallocated by a downloader, not yet written
    ck = open_checkpoint(dl)
    prov = SourceProvider(ck, wait=True, wait_timeout=0.3, poll=0.05)
    with pytest.raises(WaitTimeout, match="bad header"):
        prov.open(ck.table[4])
    victim.write_bytes(good)
    with prov.open(ck.table[4]) as src, ck.open(ck.table[4]) as tf:
        assert prov.checked_by[ck.table[4].file] == "size+header"
        assert np.array_equal(src.weight, tf.weight)


def test_wait_hash_checks_pieces_when_the_torrent_is_saved(tiny_ckpt, tmp_path):
    from grokfetch.convert.source import WaitTimeout
    from grokfetch.torrent.create import create_torrent

    dl = tmp_path / "dl"
    content = dl / "grok-tiny"
    shutil.copytree(tiny_ckpt, content)
    (dl / ".grokfetch").mkdir()
    create_torrent(content, dl / ".grokfetch" / "t.torrent", piece_size=16384)
    rep = convert(content, tmp_path / "out", ConvertOptions(target="gguf", bits=8, wait=True,
                                                            wait_timeout=5, layers="0"))
    assert rep.checked_by == {"pieces": 2 + 12}
    # same size, good header, one flipped payload byte: never accepted
    ck = open_checkpoint(content)
    spec = ck.table.get("attn_q", 0)
    path = ck.file_path(spec)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert ck.status(spec).status == "ok"
    prov = SourceProvider(ck, wait=True, wait_timeout=0.5, poll=0.1)
    with pytest.raises(WaitTimeout, match="piece hashes"):
        prov.open(spec)


def test_progress_reports_every_input_byte(tiny_ckpt, tmp_path):
    from progress_doubles import RecordingProgress

    prog = RecordingProgress()
    rep = convert(tiny_ckpt, tmp_path / "out", ConvertOptions(target="gguf", bits=8, workers=2),
                  progress=prog)
    total = open_checkpoint(tiny_ckpt).table.payload_bytes
    assert prog.totals["convert"] == total and prog.completed["convert"] == total
    assert rep.bytes_in == total
