"""A corpus of hostile and broken tensor files: ``corpus(valid, marker)`` → ``{kind: bytes}``.

``valid`` is a good quantized tensor file (the ``tiny`` fixture's attention key); most kinds are
built by hand from opcodes, the rest are mutations of ``valid``. Every payload that would run
code if unpickled touches ``marker``, so a test can prove nothing was executed.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

P4 = b"\x80\x04"


def u8(s: str) -> bytes:
    """SHORT_BINUNICODE of ``s``."""
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def glob_(module: str, name: str) -> bytes:
    """STACK_GLOBAL of module.name."""
    return u8(module) + u8(name) + b"\x93"


def long1(x: int) -> bytes:
    raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def nested_tuples(depth: int) -> bytes:
    """``((((),),),)`` ``depth`` levels deep."""
    return b"\x29" + b"\x85" * depth


def dag(levels: int) -> bytes:
    """A tuple chain where each level holds the previous one twice (2**levels leaves)."""
    out = b"\x29\x94"  # (), memo 0
    for i in range(levels):
        out += b"\x68" + bytes([i]) + b"\x68" + bytes([i]) + b"\x86\x94"  # (m[i], m[i]), memo i+1
    return out


def _cmd(marker: Path) -> bytes:
    return f"touch {marker}".encode()


def execution_kinds(marker: Path) -> dict[str, bytes]:
    """Classic payloads that run code when unpickled."""
    cmd = _cmd(marker)
    scmd = u8(cmd.decode())

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (cmd.decode(),))

    class EvilNew:
        def __reduce__(self):
            import subprocess
            return (subprocess.Popen, ((["touch", str(marker)]),))

    return {
        "reduce_os_system_p4": pickle.dumps(Evil(), protocol=4),
        "reduce_os_system_p2": pickle.dumps(Evil(), protocol=2),
        "reduce_os_system_p0": pickle.dumps(Evil(), protocol=0),
        "reduce_popen_p4": pickle.dumps(EvilNew(), protocol=4),
        "reduce_os_system_p5": pickle.dumps(Evil(), protocol=5),
        "global_opcode": P4 + b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "global_posix": P4 + b"cposix\nsystem\n" + scmd + b"\x85R.",
        "inst_opcode": P4 + b"(" + scmd + b"ios\nsystem\n.",
        "obj_opcode": P4 + b"(" + glob_("os", "system") + scmd + b"o.",
        "newobj_popen": P4 + glob_("subprocess", "Popen") + scmd + b"\x85\x85\x81.",
        "newobj_ex": P4 + glob_("subprocess", "Popen") + scmd + b"\x85}\x92.",
        "build_setstate_global": P4 + glob_("os", "system") + b"}\x8c\x01x" + scmd + b"\x86b.",
        "builtins_exec": P4 + glob_("builtins", "exec")
        + u8(f"import os; os.system('touch {marker}')") + b"\x85R.",
        "builtins_eval": P4 + glob_("builtins", "eval")
        + u8(f"__import__('os').system('touch {marker}')") + b"\x85R.",
        "builtins_getattr": P4 + glob_("builtins", "getattr") + glob_("os", "system") + b"\x85R.",
        "subprocess_check_output": P4 + glob_("subprocess", "check_output") + scmd + b"\x85\x85R.",
        "numpy_load_global": P4 + glob_("numpy", "load") + u8("/etc/passwd") + b"\x85R.",
        "torch_rebuild": P4 + glob_("torch._utils", "_rebuild_tensor_v2") + b")R.",
        "reduce_ndarray_callable": P4 + glob_("numpy", "ndarray") + b"K\x01\x85R.",
        "reduce_memoized_system": P4 + glob_("os", "system") + b"\x94h\x00" + scmd + b"\x85R.",
        "qw8_state_os_system": P4 + glob_("__main__", "QuantizedWeight8bit") + b")\x81}("
        + u8("weight") + glob_("os", "system") + scmd + b"\x85Rub.",
        "qw8_newobj_with_args": P4 + glob_("__main__", "QuantizedWeight8bit") + scmd + b"\x85\x81.",
        "ext1": P4 + b"\x82\x01.",
        "ext2": P4 + b"\x83\x01\x00.",
        "ext4": P4 + b"\x84\x01\x00\x00\x00.",
        "persid": P4 + b"P" + cmd + b"\n.",
        "binpersid": P4 + scmd + b"Q.",
        "next_buffer": P4 + b"\x97.",
        "readonly_buffer": P4 + b"\x97\x98.",
        "global_name_dotted": P4 + glob_("os", "path.join.__globals__") + b".",
        "module_with_control_chars": P4 + glob_("os\x00\n\x1b[31m", "system\r\n") + b".",
    }


def opcode_kinds() -> dict[str, bytes]:
    """Opcodes a Grok-1 tensor file never holds (all harmless by themselves)."""
    return {
        "setitem_opcode": P4 + b"}" + u8("a") + b"K\x01s.",
        "list_append": P4 + b"]K\x01a.",
        "list_appends": P4 + b"](K\x01K\x02e.",
        "set_additems": P4 + b"\x8f(K\x01\x90.",
        "frozenset": P4 + b"(K\x01\x91.",
        "bytearray8": P4 + b"\x96" + struct.pack("<Q", 3) + b"abc.",
        "float_binfloat": P4 + b"G" + struct.pack(">d", 1.5) + b".",
        "string_opcodes": P4 + b"U\x03abc.",
        "dup_pop": P4 + b")20.",
        "text_get_put": P4 + b")p0\ng0\n.",
        "long4": P4 + b"\x8b" + struct.pack("<i", 4) + b"\x01\x02\x03\x04.",
        "binunicode8": P4 + b"\x8d" + struct.pack("<Q", 1) + b"a.",
        "unknown_opcode": P4 + b"\xff.",
        "proto5_header": b"\x80\x05)\x94.",
    }


def bounds_kinds() -> dict[str, bytes]:
    """Crashes, hangs and blowups: deep nesting, DAGs, huge numbers, endless small opcodes."""
    return {
        "deep_tuple_dict_key": P4 + b"}(" + nested_tuples(150_000) + b"K\x01u.",
        "deep_tuple_top": P4 + nested_tuples(150_000) + b".",
        "deep_marks": P4 + b"(" * 200_000 + b").",
        "dag_64": P4 + dag(64) + b".",
        "dag_64_dict_key": P4 + b"}(" + dag(64) + b"K\x01u.",
        "dag_30_stack_global": P4 + dag(30) + dag(30) + b"\x93.",
        "dict_stack_global": P4 + b"}\x8c\x01x\x93.",
        "tuple_stack_global": P4 + b")\x8c\x01x\x93.",
        "huge_shape_dims": _array(P4, shape=b"(" + long1(2**2030) * 8 + b"t"),
        "long1_255_bytes": P4 + b"\x8a\xff" + b"\x7f" * 255 + b".",
        "one_byte_pushes": P4 + b"\x88" * 250_000 + b".",
        "memoize_spam": P4 + b")" + b"\x94" * 100_000 + b".",
        "long_binput_huge_index": P4 + b")r\xff\xff\xff\xff.",
        "binget_unset": P4 + b"h\x07.",
        "binunicode_4gb": P4 + b"X\xff\xff\xff\xff" + b"a" * 64 + b".",
        "binunicode_long_name": P4 + b"X" + struct.pack("<I", 5000) + b"o" * 5000 + u8("x")
        + b"\x93.",
        "binbytes8_2pow64": P4 + b"\x8e" + b"\xff" * 8 + b".",
        "binbytes_beyond_end": P4 + b"B" + struct.pack("<I", 1 << 30) + b"xyz.",
        "frame_huge": P4 + b"\x95" + b"\xff" * 8 + b").",
        "many_payloads": P4 + b"(" + b"C\x01x" * 64 + b"t.",
        "stack_underflow": P4 + b"\x87.",
        "tuple_without_mark": P4 + b"K\x01t.",
        "setitems_odd": P4 + b"}(" + u8("a") + b"u.",
        "setitems_non_dict": P4 + b")(" + u8("a") + b"K\x01u.",
        "dict_int_key": P4 + b"}(K\x01K\x02u.",
        "dict_in_tuple": P4 + b"}\x85.",
        "stack_left_at_stop": P4 + b"))).",
        "no_stop": P4 + b")" * 10,
        "empty_file": b"",
        "not_a_pickle": b"hello, this is not a tensor file\n",
        "zeros": b"\0" * 64,
    }


def _array(head: bytes, *, shape: bytes, dtype: str = "i1", payload: bytes = b"") -> bytes:
    """An ndarray reconstruction with a hand-written shape tuple (opcodes)."""
    order = "|" if dtype == "i1" else "<"
    return (head + glob_("numpy.core.multiarray", "_reconstruct") + glob_("numpy", "ndarray")
            + b"K\x00\x85C\x01b\x87R(K\x01" + shape + glob_("numpy", "dtype") + u8(dtype)
            + b"\x89\x88\x87R(K\x03" + u8(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
            + b"B" + struct.pack("<I", len(payload)) + payload + b"tb.")


def structure_kinds(valid: bytes) -> dict[str, bytes]:
    """Well-formed pickles with the wrong content, and mutations of a valid file."""
    weight_at = valid.index(u8("weight"))
    scales_at = valid.index(u8("scales"))
    kinds = {
        "negative_dim": _array(P4, shape=b"J\xff\xff\xff\xff\x85"),
        "nine_dims": _array(P4, shape=b"(" + b"K\x01" * 9 + b"t"),
        "bool_dims": _array(P4, shape=b"\x88\x88\x86"),
        "string_dim": _array(P4, shape=u8("4") + b"\x85"),
        "int_shape": _array(P4, shape=b"K\x04"),
        "payload_short": _array(P4, shape=b"K\x04\x85", payload=b"abc"),
        "payload_long": _array(P4, shape=b"K\x02\x85", payload=b"abc"),
        "dtype_f8": _array(P4, shape=b"K\x01\x85", dtype="f8", payload=b"x" * 8),
        "dtype_object": _array(P4, shape=b"K\x01\x85", dtype="O", payload=b"x" * 8),
        "big_endian": _array(P4, shape=b"K\x01\x85", dtype="f4", payload=b"x" * 4)
        .replace(u8("<"), u8(">")),
        "fortran_order": _array(P4, shape=b"K\x01\x85", payload=b"x").replace(b"tb\x89B", b"tb\x88B"),
        "qw8_without_scales": valid[:scales_at] + b"ub.",
        "qw8_extra_key": valid[:-3] + u8("extra") + b"K\x01ub.",
        "qw8_dup_weight": valid.replace(u8("scales"), u8("weight")),
        "wrong_kind_plain_array": _array(P4, shape=b"K\x01\x85", payload=b"x"),
        "weight_dtype_swapped": valid.replace(u8("i1"), u8("f4")),
        "build_twice": valid[:-1] + b"\x88b.",
        "truncated_header": valid[:weight_at],
        "truncated_in_args": valid[:valid.index(b"\x8c\x15numpy.core") + 3],
        "truncated_in_payload": valid[:len(valid) // 2],
        "truncated_last_byte": valid[:-1],
        "trailing_garbage": valid + b"\0" * 16,
        "two_pickles": valid + valid,
    }
    for at in (2, 12, 47, 130, 165, 191):  # flip single header bytes
        b = bytearray(valid)
        b[at] ^= 0xFF
        kinds[f"flip_byte_{at}"] = bytes(b)
    b = bytearray(valid)
    b[weight_at:weight_at + 20] = b"\x88" * 20
    kinds["overwritten_with_pushes"] = bytes(b)
    return kinds


def corpus(valid: bytes, marker: Path) -> dict[str, bytes]:
    """Every kind, by name."""
    out: dict[str, bytes] = {}
    for part in (execution_kinds(marker), opcode_kinds(), bounds_kinds(), structure_kinds(valid)):
        assert not set(part) & set(out)
        out.update(part)
    return out
