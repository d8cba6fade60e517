"""The Grok-1 tensor-file pickle format, and a safe, zero-copy scanner for it.

A tensor file is one protocol-4 pickle written by numpy 1.26's ``pickle.dump``: either a plain
``ndarray`` (float32) or a ``__main__.QuantizedWeight8bit`` whose state dict holds ``weight``
(int8) and ``scales`` (``ml_dtypes.bfloat16``). Arrays are rebuilt through
``numpy.core.multiarray._reconstruct`` + BUILD with the raw bytes in one BINBYTES payload.
(``pickle_emit`` writes exactly these bytes.)

The scanner never runs the unpickler: it walks the opcodes, allows only the handful of globals
such a file names, evaluates the stack symbolically and returns where each payload lies, so a
1.6 GB expert tensor is memory-mapped, never copied. Anything else raises
:class:`UnsafePickleError` naming the opcode or global.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

QW8_CLASS = ("__main__", "QuantizedWeight8bit")

#: dtype descriptors as numpy pickles them: (dtype arg or None for a type global, byte order,
#: state tail (elsize, alignment, flags), itemsize)
DTYPES = {
    "float32": ("f4", "<", (-1, -1, 0), 4),
    "int8": ("i1", "|", (-1, -1, 0), 1),
    "bfloat16": (None, "<", (2, 2, 64), 2),
}
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("ml_dtypes", "bfloat16"): "bfloat16",
    ("ml_dtypes._ml_dtypes_ext", "bfloat16"): "bfloat16",
    QW8_CLASS: "qw8",
}
_DTYPE_CODES = {"f4": "float32", "<f4": "float32", "i1": "int8", "|i1": "int8"}


@dataclass(frozen=True)
class ArrayRef:
    """Where an array's raw bytes lie in a tensor file."""

    shape: tuple[int, ...]
    dtype: str  # "float32", "int8" or "bfloat16"
    offset: int
    nbytes: int


@dataclass(frozen=True)
class QW8Ref:
    weight: ArrayRef
    scales: ArrayRef


TensorRef = Union[ArrayRef, QW8Ref]


_MARK = object()


class _Global:
    def __init__(self, kind: str):
        self.kind = kind


class _Call:
    def __init__(self, func: _Global, args: tuple):
        self.func, self.args, self.state = func, args, None


class _Payload:
    def __init__(self, offset: int, nbytes: int):
        self.offset, self.nbytes = offset, nbytes


def _iter_ops(buf, path: str) -> Iterator[tuple[int, int, object]]:
    """Yield ``(position, opcode, argument)``; byte payloads are yielded as ``_Payload``."""
    pos, n = 0, len(buf)

    def take(k: int) -> bytes:
        nonlocal pos
        if pos + k > n:
            from grokfetch.errors import CheckpointError
            raise CheckpointError(path, "truncated pickle", expected=f"{pos + k} bytes", actual=n)
        out = bytes(buf[pos:pos + k])
        pos += k
        return out

    while True:
        start = pos
        op = take(1)[0]
        if op in (0x8C,):  # SHORT_BINUNICODE
            arg: object = take(take(1)[0]).decode("utf-8", "replace")
        elif op == 0x58:  # BINUNICODE
            arg = take(struct.unpack("<I", take(4))[0]).decode("utf-8", "replace")
        elif op in (0x43, 0x42, 0x8E):  # SHORT_BINBYTES, BINBYTES, BINBYTES8: skip the payload
            size = take(1)[0] if op == 0x43 else \
                struct.unpack("<I", take(4))[0] if op == 0x42 else struct.unpack("<Q", take(8))[0]
            if pos + size > n:
                from grokfetch.errors import CheckpointError
                raise CheckpointError(path, "truncated payload", expected=f"{pos + size} bytes", actual=n)
            arg = _Payload(pos, size)
            pos += size
        elif op == 0x95:  # FRAME
            arg = struct.unpack("<Q", take(8))[0]
        elif op == 0x4B:  # BININT1
            arg = take(1)[0]
        elif op == 0x4D:  # BININT2
            arg = struct.unpack("<H", take(2))[0]
        elif op == 0x4A:  # BININT
            arg = struct.unpack("<i", take(4))[0]
        elif op == 0x8A:  # LONG1
            arg = int.from_bytes(take(take(1)[0]), "little", signed=True)
        elif op == 0x68:  # BINGET
            arg = take(1)[0]
        elif op == 0x6A:  # LONG_BINGET
            arg = struct.unpack("<I", take(4))[0]
        elif op == 0x71:  # BINPUT
            arg = take(1)[0]
        elif op == 0x72:  # LONG_BINPUT
            arg = struct.unpack("<I", take(4))[0]
        elif op == 0x80:  # PROTO
            arg = take(1)[0]
        else:
            arg = None
        yield start, op, arg
        if op == 0x2E:  # STOP
            return


_SIMPLE = {0x89: False, 0x88: True, 0x4E: None}  # NEWFALSE, NEWTRUE, NONE
_NAMES = {0x63: "GLOBAL", 0x69: "INST", 0x6F: "OBJ", 0x92: "NEWOBJ_EX", 0x2E: "STOP"}


def scan(buf, path: str) -> TensorRef:
    """Safely decode a tensor file held in ``buf`` (bytes, mmap or memoryview).

    Raises:
        UnsafePickleError: a global or opcode outside the allow-list (nothing is executed).
        CheckpointError: a truncated or malformed file.
    """
    from grokfetch.errors import CheckpointError, UnsafePickleError

    if len(buf) < 2 or bytes(buf[:2]) != b"\x80\x04":
        raise CheckpointError(path, "not a protocol-4 pickle", expected="b'\\x80\\x04'",
                              actual=repr(bytes(buf[:2])))
    stack: list = []
    memo: dict[int, object] = {}

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise CheckpointError(path, "malformed pickle (no MARK)")

    def pop() -> object:
        if not stack:
            raise CheckpointError(path, "malformed pickle (stack underflow)")
        return stack.pop()

    for pos, op, arg in _iter_ops(buf, path):
        if op in (0x80, 0x95):
            continue
        if op in (0x8C, 0x58, 0x4B, 0x4D, 0x4A, 0x8A) or isinstance(arg, _Payload):
            stack.append(arg)
        elif op in _SIMPLE:
            stack.append(_SIMPLE[op])
        elif op == 0x94:  # MEMOIZE
            memo[len(memo)] = stack[-1] if stack else None
        elif op in (0x71, 0x72):
            memo[arg] = stack[-1] if stack else None  # type: ignore[index]
        elif op in (0x68, 0x6A):
            if arg not in memo:
                raise CheckpointError(path, f"malformed pickle (memo {arg} unset)")
            stack.append(memo[arg])  # type: ignore[index]
        elif op == 0x28:  # MARK
            stack.append(_MARK)
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(())
        elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
            k = op - 0x84
            if len(stack) < k:
                raise CheckpointError(path, "malformed pickle (stack underflow)")
            items = tuple(stack[-k:])
            del stack[-k:]
            stack.append(items)
        elif op == 0x74:  # TUPLE
            stack.append(tuple(pop_mark()))
        elif op == 0x7D:  # EMPTY_DICT
            stack.append({})
        elif op == 0x75:  # SETITEMS
            items = pop_mark()
            target = stack[-1] if stack else None
            if not isinstance(target, dict) or len(items) % 2:
                raise CheckpointError(path, "malformed pickle (SETITEMS)")
            for k, v in zip(items[::2], items[1::2], strict=True):
                target[k] = v
        elif op == 0x93:  # STACK_GLOBAL
            name, module = pop(), pop()
            key = (module, name)
            if key not in ALLOWED_GLOBALS:
                raise UnsafePickleError(path, f"global {module}.{name} at byte {pos}")
            stack.append(_Global(ALLOWED_GLOBALS[key]))
        elif op == 0x52:  # REDUCE: only allow-listed callables, evaluated symbolically
            args, func = pop(), pop()
            if not isinstance(func, _Global) or func.kind not in ("reconstruct", "dtype") \
                    or not isinstance(args, tuple):
                raise UnsafePickleError(path, f"REDUCE of a non-allowed callable at byte {pos}")
            stack.append(_Call(func, args))
        elif op == 0x81:  # NEWOBJ
            args, cls = pop(), pop()
            if not isinstance(cls, _Global) or cls.kind != "qw8" or args != ():
                raise UnsafePickleError(path, f"NEWOBJ of a non-allowed class at byte {pos}")
            stack.append(_Call(cls, ()))
        elif op == 0x62:  # BUILD
            state, obj = pop(), (stack[-1] if stack else None)
            if not isinstance(obj, _Call) or obj.state is not None:
                raise UnsafePickleError(path, f"BUILD on a non-allowed object at byte {pos}")
            obj.state = state
        elif op == 0x2E:  # STOP
            if len(stack) != 1:
                raise CheckpointError(path, "malformed pickle (stack not empty at STOP)")
            return _interpret(stack[0], path)
        else:
            name = _NAMES.get(op, f"0x{op:02x}")
            raise UnsafePickleError(path, f"opcode {name} at byte {pos}")
    raise CheckpointError(path, "truncated pickle (no STOP)")  # pragma: no cover


def _interpret(obj: object, path: str) -> TensorRef:
    from grokfetch.errors import CheckpointError

    if isinstance(obj, _Call) and obj.func.kind == "qw8":
        state = obj.state
        if not isinstance(state, dict) or set(state) != {"weight", "scales"}:
            raise CheckpointError(path, "QuantizedWeight8bit without weight and scales")
        return QW8Ref(_array(state["weight"], path), _array(state["scales"], path))
    return _array(obj, path)


def _array(obj: object, path: str) -> ArrayRef:
    from grokfetch.errors import CheckpointError

    bad = CheckpointError(path, "not a numpy array reconstruction")
    if not (isinstance(obj, _Call) and obj.func.kind == "reconstruct" and len(obj.args) == 3):
        raise bad
    cls, _, _ = obj.args
    if not (isinstance(cls, _Global) and cls.kind == "ndarray") or not isinstance(obj.state, tuple):
        raise bad
    if len(obj.state) != 5:
        raise bad
    _, shape, dtype, fortran, data = obj.state
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad
    if fortran is not False:
        raise CheckpointError(path, "Fortran-ordered array")
    if not (isinstance(dtype, _Call) and dtype.func.kind == "dtype" and dtype.args):
        raise bad
    spec = dtype.args[0]
    if isinstance(spec, _Global) and spec.kind == "bfloat16":
        name = "bfloat16"
    elif isinstance(spec, str) and spec in _DTYPE_CODES:
        name = _DTYPE_CODES[spec]
    else:
        raise CheckpointError(path, "unsupported dtype", expected="float32, int8 or bfloat16",
                              actual=spec if isinstance(spec, str) else "other")
    order = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else None
    if order == ">":
        raise CheckpointError(path, "big-endian array")
    if isinstance(data, _Payload):
        offset, nbytes = data.offset, data.nbytes
    else:
        raise CheckpointError(path, "array data is not a raw byte payload")
    expected = DTYPES[name][3]
    for d in shape:
        expected *= d
    if nbytes != expected:
        raise CheckpointError(path, "payload size does not match the array shape",
                              expected=expected, actual=nbytes)
    return ArrayRef(tuple(shape), name, offset, nbytes)
