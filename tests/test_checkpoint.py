"""Checkpoint I/O: the byte-exact pickle format, the safe reader, the writer and the fixture."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from numpy_reference import dequantize as ref_dequantize

from grokfetch.checkpoint.dequant import dequantize
from grokfetch.checkpoint.fixture import USER_DEFINED, tensor_values, write_fixture
from grokfetch.checkpoint.pickle_format import scan
from grokfetch.checkpoint.reader import BF16, open_checkpoint
from grokfetch.checkpoint.writer import quantize_int8, write_tensor_file
from grokfetch.errors import CheckpointError, NotFoundError, OutputExistsError, UnsafePickleError
from grokfetch.pickle_layout import encode_layout
from grokfetch.spec import PRESETS, TensorTable


@dataclass
class QuantizedWeight8bit:  # what the official checkpoint.py registers as __main__.QuantizedWeight8bit
    weight: np.ndarray
    scales: np.ndarray


@pytest.fixture
def official_class(monkeypatch):
    QuantizedWeight8bit.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "QuantizedWeight8bit", QuantizedWeight8bit, raising=False)
    return QuantizedWeight8bit


def _official_pickle(weight, scales, cls) -> bytes:
    """What numpy's own pickling writes (numpy 2 names numpy._core; numpy 1.26 numpy.core)."""
    obj = weight if scales is None else cls(weight, scales)
    return pickle.dumps(obj, protocol=4)


def _emit(spec, weight, scales, module) -> bytes:
    arrays = iter([weight] if scales is None else [weight, scales])
    return b"".join(p if isinstance(p, bytes) else next(arrays).tobytes()
                    for p in encode_layout(spec.shape, spec.scales_shape, module))


@pytest.mark.parametrize("preset_name", ["tiny", "mini"])
def test_emitter_is_byte_identical_to_cpython_pickle(preset_name, official_class):
    table = TensorTable(PRESETS[preset_name])
    for spec in table:
        weight, scales = tensor_values(spec, seed=1)
        ref = _official_pickle(weight, scales, official_class)
        assert _emit(spec, weight, scales, "numpy._core.multiarray") == ref, spec.path
        # The numpy 1.x name is one byte shorter (and so is the frame that holds it).
        assert spec.file_bytes == len(ref) - 1


def test_fixture_files_load_with_the_official_unpickler(tiny_ckpt, official_class):
    ck = open_checkpoint(tiny_ckpt)
    for spec in ck.table:
        data = ck.file_path(spec).read_bytes()
        assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
        obj = pickle.loads(data)  # our own fixture bytes, the way the official loader reads them
        weight, scales = tensor_values(spec, seed=0)
        if spec.quantized:
            assert type(obj).__name__ == "QuantizedWeight8bit"
            np.testing.assert_array_equal(obj.weight, weight)
            assert obj.scales.dtype == BF16
            np.testing.assert_array_equal(obj.scales.view(np.uint16), scales.view(np.uint16))
        else:
            np.testing.assert_array_equal(obj, weight)


def test_fixture_reads_back_bit_exactly(mini_ckpt):
    ck = open_checkpoint(mini_ckpt)
    assert ck.config.name == "mini"
    for tf in ck.tensors():
        weight, scales = tensor_values(tf.spec, seed=0)
        assert tf.weight.dtype == weight.dtype and tf.weight.shape == tf.spec.shape
        assert tf.weight.tobytes() == weight.tobytes()
        if tf.spec.quantized:
            assert tf.scales.tobytes() == scales.tobytes()
            assert np.isfinite(tf.scales.astype(np.float32)).all()
        assert ck.file_path(tf.spec).stat().st_size == tf.spec.file_bytes


def test_reader_views_are_zero_copy(mini_ckpt):
    ck = open_checkpoint(mini_ckpt)
    with ck.open(ck.table.get("moe_down", 3)) as tf:
        w = tf.weight
        assert not w.flags.owndata and not w.flags.writeable
        del w


def test_dequantize_matches_jax_reference(tiny_ckpt):
    import jax.numpy as jnp

    ck = open_checkpoint(tiny_ckpt)
    for slot in ("moe_down", "moe_gate", "attn_o", "attn_q"):
        with ck.open(ck.table.get(slot, 2)) as tf:
            q, s = np.array(tf.weight), np.array(tf.scales)
            if tf.spec.scale_layout == "row_blocks":  # the official reshape for sharded scales
                blocks = s.shape[-2]
                qq = q.reshape(q.shape[:-2] + (blocks, q.shape[-2] // blocks, q.shape[-1]))
                ref = (jnp.asarray(qq, jnp.bfloat16) * jnp.asarray(s, jnp.bfloat16)[..., :, None, :])
                ref = np.asarray(ref).reshape(q.shape)
            else:
                ref = np.asarray(jnp.asarray(q, jnp.bfloat16) * jnp.asarray(s, jnp.bfloat16))
            full = tf.dequantize()
            assert full.dtype == BF16
            assert full.view(np.uint16).tobytes() == ref.view(np.uint16).tobytes(), slot
            # Row chunks and single experts give the same bits as the whole.
            rows = slice(5, tf.spec.shape[-2] - 3)
            np.testing.assert_array_equal(tf.dequantize(rows=rows).view(np.uint16),
                                          full[..., rows, :].view(np.uint16))
            if tf.spec.per_expert:
                np.testing.assert_array_equal(tf.dequantize(expert=1, rows=rows).view(np.uint16),
                                              full[1, rows].view(np.uint16))


@pytest.mark.parametrize("slot", ["moe_down", "moe_gate", "attn_o", "attn_k"])
def test_dequantize_matches_numpy_reference_any_slice_either_orientation(tiny_ckpt, slot):
    """The one dequantization (reader, converters) against the test suite's own float64 one:
    row-block and per-channel scales, (in, out) and transposed (out, in), whole and partial
    blocks, slices starting and ending inside a block."""
    ck = open_checkpoint(tiny_ckpt)
    with ck.open(ck.table.get(slot, 1)) as tf:
        q, s = tf.weight, tf.scales
        ref = ref_dequantize(q, s).view(np.uint16)
        assert np.array_equal(tf.dequantize().view(np.uint16), ref)
        n, blocks = q.shape[-2], s.shape[-2]
        block = n // blocks
        q_t, s_t, ref_t = (np.swapaxes(a, -1, -2) for a in (q, s, ref))
        for start, stop in ((0, n), (block, n), (3, n - 5), (block - 1, block + 1), (n - 1, n),
                            (2, 2)):
            got = dequantize(q[..., start:stop, :], s, start=start, length=n)
            assert got.dtype == BF16 and np.array_equal(got.view(np.uint16), ref[..., start:stop, :])
            got_t = dequantize(q_t[..., start:stop], s_t, axis=-1, start=start, length=n)
            assert np.array_equal(got_t.view(np.uint16), ref_t[..., start:stop])
        with pytest.raises(ValueError):  # the slice runs past the axis
            dequantize(q, s, start=1, length=n)
        with pytest.raises(ValueError):  # scales without their block axis
            dequantize(q, s[..., 0, :])
        if blocks > 1:
            with pytest.raises(ValueError):  # blocks that do not divide the axis
                dequantize(q[..., 1:, :], s)


def test_quantize_int8_layouts():
    table = TensorTable(PRESETS["tiny"])
    rng = np.random.default_rng(0)
    for slot in ("moe_down", "attn_k"):
        spec = table.get(slot, 0)
        w = rng.standard_normal(spec.shape).astype(np.float32)
        q, s = quantize_int8(w, spec)
        assert q.dtype == np.int8 and s.dtype == BF16 and s.shape == spec.scales_shape
        assert np.abs(q).max() <= 127
        blocks = s.shape[-2]
        deq = (q.reshape(q.shape[:-2] + (blocks, -1, q.shape[-1])).astype(np.float32)
               * s.astype(np.float32)[..., :, None, :]).reshape(q.shape)
        # Error is at most half a quantization step (plus bf16 rounding of the scale).
        step = np.repeat(s.astype(np.float32), q.shape[-2] // blocks, axis=-2)
        assert (np.abs(deq - w) <= 0.5 * step * 1.01 + 1e-7).all()


def test_fixture_is_deterministic(tmp_path, tiny_ckpt):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    write_fixture(tmp_path / "again", "tiny", seed=0)
    write_fixture(tmp_path / "other", "tiny", seed=1)
    assert digest(tmp_path / "again") == digest(tiny_ckpt)
    assert digest(tmp_path / "other") != digest(tiny_ckpt)
    with pytest.raises(OutputExistsError):
        write_fixture(tmp_path / "again", "tiny", seed=0)


def test_fixture_tokenizer_has_grok_special_ids(tiny_ckpt):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    assert sp.get_piece_size() == PRESETS["tiny"].vocab_size
    assert [sp.id_to_piece(i) for i in range(4)] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4, 69)] == USER_DEFINED
    assert sp.id_to_piece(69) == "<0x00>" and sp.id_to_piece(324) == "<0xFF>"
    ids = sp.encode("hello world 42")
    assert ids and ids[0] != sp.bos_id() and sp.decode(ids) == "hello world 42"


def test_real_tokenizer_layout_matches_fixture_convention(real_tokenizer):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(real_tokenizer))
    assert sp.get_piece_size() == PRESETS["grok-1"].vocab_size
    assert [sp.id_to_piece(i) for i in range(4, 69)] == USER_DEFINED
    assert sp.encode("hello world") == [21560, 1135]


# --- hostile and broken files -----------------------------------------------------------------

MARKER_NAME = "pwned-marker"


def _hostile_pickles(marker: Path) -> dict[str, bytes]:
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    cmd = f"touch {marker}".encode()
    return {
        "reduce_os_system": pickle.dumps(Evil(), protocol=4),
        "global_opcode": b"\x80\x04cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "builtins_exec": b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93\x8c\x18import os; os.system('x')\x85R.",
        "inside_qw8": (b"\x80\x04\x8c\x08__main__\x8c\x13QuantizedWeight8bit\x93)\x81}(\x8c\x06weight"
                       b"\x8c\x02os\x8c\x06system\x93C\x04true\x85Rub."),
    }


def test_hostile_pickles_are_refused_not_executed(tmp_path):
    marker = tmp_path / MARKER_NAME
    for name, data in _hostile_pickles(marker).items():
        with pytest.raises(UnsafePickleError) as info:
            scan(data, name)
        assert "nothing was executed" in str(info.value)
        assert any(word in str(info.value) for word in ("os", "posix", "builtins", "opcode")), name
    # A protocol-0 pickle is refused before any opcode is looked at.
    with pytest.raises(CheckpointError, match="protocol-4"):
        scan(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.", "proto0")
    assert not marker.exists()


def test_hostile_pickle_through_cli(tmp_path, tiny_ckpt, run_cli):
    ck_dir = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck_dir)
    marker = tmp_path / MARKER_NAME
    victim = ck_dir / "ckpt-0" / "tensor00005_000"
    victim.write_bytes(_hostile_pickles(marker)["reduce_os_system"])
    code, out, err = run_cli(["inspect", ck_dir, "--json"])
    assert code == 1
    import json
    rows = {r["file"]: r for r in json.loads(out)["tensors"]}
    assert rows["tensor00005_000"]["status"] in ("size", "format")
    assert not marker.exists()
    ck = open_checkpoint(ck_dir)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        ck.open(ck.table[5])
    assert not marker.exists()


def test_truncated_and_wrong_files(tmp_path, tiny_ckpt):
    ck_dir = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck_dir)
    ck = open_checkpoint(ck_dir)
    spec = ck.table.get("moe_gate", 0)
    path = ck.file_path(spec)
    path.write_bytes(path.read_bytes()[: spec.file_bytes // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ck.open(spec)
    assert ck.status(spec).status == "size"
    # A valid file in the wrong slot: right format, wrong shape.
    other = ck.table.get("attn_q", 0)
    shutil.copy(ck.file_path(ck.table.get("attn_k", 0)), ck.file_path(other))
    with pytest.raises(CheckpointError, match="wrong shape"):
        ck.open(other)
    # Not a pickle at all.
    ck.file_path(ck.table[1]).write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="protocol-4"):
        ck.open(ck.table[1])


def test_writer_refuses_mismatched_arrays(tmp_path):
    spec = TensorTable(PRESETS["tiny"]).get("attn_k", 0)
    with pytest.raises(CheckpointError, match="refusing"):
        write_tensor_file(tmp_path / "x", spec, np.zeros((3, 3), np.int8),
                          np.zeros(spec.scales_shape, ml_dtypes.bfloat16))
    with pytest.raises(CheckpointError, match="bad scales"):
        write_tensor_file(tmp_path / "x", spec, np.zeros(spec.shape, np.int8), None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_find_layout_variants(tmp_path, tiny_ckpt):
    ck = open_checkpoint(tiny_ckpt / "ckpt-0")
    assert ck.layout.root == tiny_ckpt and ck.config.name == "tiny"
    assert open_checkpoint(tiny_ckpt.parent).layout.root == tiny_ckpt  # download folder
    assert ck.layout.tokenizer == tiny_ckpt / "tokenizer.model"
    with pytest.raises(NotFoundError):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(NotFoundError):
        open_checkpoint(tmp_path)


def test_frame_header_is_what_pickletools_sees(tiny_ckpt):
    import pickletools

    data = (tiny_ckpt / "ckpt-0" / "tensor00002_000").read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ops[0] == ("PROTO", 4) and ops[1][0] == "FRAME"
    assert ("SHORT_BINUNICODE", "QuantizedWeight8bit") in ops
    assert struct.unpack("<Q", data[3:11])[0] == ops[1][1]


OFFICIAL_LOADER = """
import sys, pickle, glob
from dataclasses import dataclass
import numpy as np
assert np.__version__.startswith("1.26"), np.__version__

@dataclass
class QuantizedWeight8bit:  # as the official checkpoint.py registers it
    weight: np.ndarray
    scales: np.ndarray

sys.modules["__main__"].QuantizedWeight8bit = QuantizedWeight8bit
kinds = set()
for path in sorted(glob.glob(sys.argv[1] + "/ckpt-0/tensor*_000")):
    with open(path, "rb") as f:
        obj = pickle.load(f)
    kinds.add(type(obj).__name__ if isinstance(obj, QuantizedWeight8bit) else str(obj.dtype))
    if isinstance(obj, QuantizedWeight8bit):
        assert obj.weight.dtype == np.int8 and obj.scales.dtype.name == "bfloat16"
print(sorted(kinds))
"""


def test_official_numpy_126_environment_loads_the_fixture(tiny_ckpt):
    """The official requirements pin numpy 1.26.4: our files must load there with plain pickle.

    Runs when GROKFETCH_NUMPY126 names a folder with numpy 1.26 + ml_dtypes installed
    (``pip install --target DIR numpy==1.26.4 ml_dtypes==0.4.1``; .ci/run does this).
    """
    target = os.environ.get("GROKFETCH_NUMPY126")
    if not target:
        pytest.skip("set GROKFETCH_NUMPY126 to a pip --target folder with numpy 1.26.4")
    env = {**os.environ, "PYTHONPATH": target}
    proc = subprocess.run([sys.executable, "-c", OFFICIAL_LOADER, str(tiny_ckpt)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['QuantizedWeight8bit', 'float32']"
