"""The Grok-1 tensor-file pickle format, and a safe, bounded, zero-copy scanner for it.

A tensor file is one protocol-4 pickle written by numpy 1.26's ``pickle.dump``: either a plain
``ndarray`` (float32) or a ``__main__.QuantizedWeight8bit`` whose state dict holds ``weight``
(int8) and ``scales`` (``ml_dtypes.bfloat16``). Arrays are rebuilt through
``numpy.core.multiarray._reconstruct`` + BUILD with the raw bytes in one BINBYTES payload.
(:mod:`grokfetch.pickle_layout` emits exactly these bytes.)

The scanner never runs the unpickler: it walks the opcodes, allows only the handful of opcodes,
globals and object kinds such a file holds, evaluates the stack symbolically and returns where
each payload lies, so a 1.6 GB expert tensor is memory-mapped, never copied. Its work is bounded
by the header, never by the payload or by what the file asks for (the bounds, the allow-list
and the stack's node types are :mod:`grokfetch.checkpoint.pickle_nodes`): at most
:data:`MAX_OPS` opcodes, :data:`MAX_MEMO` memo slots, :data:`MAX_STACK` stack entries,
:data:`MAX_DEPTH` levels of nesting, short strings and small integers. It never hashes, compares or formats an object the
file built (only its own node types and bounded strings). Anything else raises
:class:`UnsafePickleError` (a forbidden opcode or global) or :class:`CheckpointError` (a
malformed or out-of-bounds structure), naming the byte offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from grokfetch.checkpoint.pickle_nodes import (
    ALLOWED_GLOBALS,
    MARK,
    MAX_DEPTH,
    MAX_DIM,
    MAX_INT_BYTES,
    MAX_MEMO,
    MAX_NDIM,
    MAX_OPS,
    MAX_PAYLOADS,
    MAX_STACK,
    MAX_STR,
    CallNode,
    DictNode,
    GlobalNode,
    Mark,
    PayloadNode,
    TupleNode,
    depth_of,
    safe_text,
)
from grokfetch.pickle_layout import DTYPES

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


_SIMPLE = {0x89: False, 0x88: True, 0x4E: None}  # NEWFALSE, NEWTRUE, NONE
_NAMES = {0x63: "GLOBAL", 0x69: "INST", 0x6F: "OBJ", 0x92: "NEWOBJ_EX", 0x2E: "STOP",
          0x73: "SETITEM", 0x61: "APPEND", 0x65: "APPENDS", 0x5D: "EMPTY_LIST",
          0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x50: "PERSID",
          0x51: "BINPERSID", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x96: "BYTEARRAY8",
          0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER", 0x8B: "LONG4", 0x8D: "BINUNICODE8",
          0x46: "FLOAT", 0x47: "BINFLOAT", 0x49: "INT", 0x4C: "LONG", 0x53: "STRING",
          0x54: "BINSTRING", 0x55: "SHORT_BINSTRING", 0x56: "UNICODE", 0x67: "GET", 0x70: "PUT",
          0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP"}


class _Scanner:
    """One pass over the opcodes of ``buf``; see :func:`scan`."""

    def __init__(self, buf, path: str):
        self.buf, self.path, self.n = buf, path, len(buf)
        self.pos = 0
        self.op_start = 0
        self.stack: list = []
        self.memo: dict[int, object] = {}
        self.payloads = 0

    # --- errors -------------------------------------------------------------------------------
    def bad(self, problem: str, **kw):
        from grokfetch.errors import CheckpointError

        return CheckpointError(self.path, f"{problem} at byte {self.op_start}", **kw)

    def unsafe(self, what: str):
        from grokfetch.errors import UnsafePickleError

        return UnsafePickleError(self.path, f"{what} at byte {self.op_start}")

    # --- reading ------------------------------------------------------------------------------
    def take(self, k: int) -> bytes:
        if self.pos + k > self.n:
            raise self.bad("truncated pickle", expected=f"{self.pos + k} bytes",
                           actual=f"{self.n} bytes")
        out = bytes(self.buf[self.pos:self.pos + k])
        self.pos += k
        return out

    def u(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, size: int) -> str:
        if size > MAX_STR:
            raise self.bad(f"string of {size} bytes (at most {MAX_STR})")
        return self.take(size).decode("utf-8", "replace")

    def payload(self, size: int) -> PayloadNode:
        if self.pos + size > self.n:
            raise self.bad("truncated payload", expected=f"{self.pos + size} bytes",
                           actual=f"{self.n} bytes")
        self.payloads += 1
        if self.payloads > MAX_PAYLOADS:
            raise self.bad(f"more than {MAX_PAYLOADS} byte payloads")
        out = PayloadNode(self.pos, size)
        self.pos += size
        return out

    # --- the stack ----------------------------------------------------------------------------
    def push(self, obj: object) -> None:
        if len(self.stack) >= MAX_STACK:
            raise self.bad(f"pickle stack deeper than {MAX_STACK}")
        self.stack.append(obj)

    def pop(self) -> object:
        if not self.stack:
            raise self.bad("malformed pickle (stack underflow)")
        return self.stack.pop()

    def top(self) -> object:
        if not self.stack:
            raise self.bad("malformed pickle (stack underflow)")
        return self.stack[-1]

    def pop_mark(self) -> list:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise self.bad("malformed pickle (no MARK)")

    def tuple_of(self, items: list) -> TupleNode:
        if any(x is MARK or isinstance(x, DictNode) for x in items):
            raise self.bad("malformed pickle (MARK or dict inside a tuple)")
        t = TupleNode(tuple(items))
        if t.depth > MAX_DEPTH:
            raise self.bad(f"nesting deeper than {MAX_DEPTH}")
        return t

    def memo_put(self, index: int) -> None:
        if index >= MAX_MEMO or (index not in self.memo and len(self.memo) >= MAX_MEMO):
            raise self.bad(f"memo index beyond {MAX_MEMO}")
        self.memo[index] = self.top()

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> object:
        if self.n < 2 or bytes(self.buf[:2]) != b"\x80\x04":
            from grokfetch.errors import CheckpointError
            raise CheckpointError(self.path, "not a protocol-4 pickle", expected="b'\\x80\\x04'",
                                  actual=repr(bytes(self.buf[:2])))
        for _ in range(MAX_OPS):
            self.op_start = self.pos
            op = self.take(1)[0]
            if op == 0x2E:  # STOP
                if len(self.stack) != 1:
                    raise self.bad("malformed pickle (stack not empty at STOP)")
                if self.pos != self.n:
                    raise self.bad(f"{self.n - self.pos} bytes after the end of the pickle")
                return self.stack[0]
            self.step(op)
        raise self.bad(f"more than {MAX_OPS} opcodes")

    def step(self, op: int) -> None:  # noqa: C901 - one branch per allowed opcode
        if op == 0x80:  # PROTO
            if self.take(1)[0] != 4:
                raise self.bad("protocol other than 4")
        elif op == 0x95:  # FRAME: the frame length is only a hint
            self.take(8)
        elif op == 0x8C:  # SHORT_BINUNICODE
            self.push(self.string(self.take(1)[0]))
        elif op == 0x58:  # BINUNICODE
            self.push(self.string(self.u("<I")))
        elif op == 0x43:  # SHORT_BINBYTES
            self.push(self.payload(self.take(1)[0]))
        elif op == 0x42:  # BINBYTES
            self.push(self.payload(self.u("<I")))
        elif op == 0x8E:  # BINBYTES8
            self.push(self.payload(self.u("<Q")))
        elif op == 0x4B:  # BININT1
            self.push(self.take(1)[0])
        elif op == 0x4D:  # BININT2
            self.push(self.u("<H"))
        elif op == 0x4A:  # BININT
            self.push(self.u("<i"))
        elif op == 0x8A:  # LONG1
            size = self.take(1)[0]
            if size > MAX_INT_BYTES:
                raise self.bad(f"integer of {size} bytes (at most {MAX_INT_BYTES})")
            self.push(int.from_bytes(self.take(size), "little", signed=True))
        elif op in _SIMPLE:
            self.push(_SIMPLE[op])
        elif op == 0x94:  # MEMOIZE
            self.memo_put(len(self.memo))
        elif op == 0x71:  # BINPUT
            self.memo_put(self.take(1)[0])
        elif op == 0x72:  # LONG_BINPUT
            self.memo_put(self.u("<I"))
        elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
            index = self.take(1)[0] if op == 0x68 else self.u("<I")
            if index not in self.memo:
                raise self.bad("malformed pickle (memo slot unset)")
            self.push(self.memo[index])
        elif op == 0x28:  # MARK
            self.push(MARK)
        elif op == 0x29:  # EMPTY_TUPLE
            self.push(TupleNode(()))
        elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
            k = op - 0x84
            if len(self.stack) < k:
                raise self.bad("malformed pickle (stack underflow)")
            items = self.stack[-k:]
            del self.stack[-k:]
            self.push(self.tuple_of(items))
        elif op == 0x74:  # TUPLE
            self.push(self.tuple_of(self.pop_mark()))
        elif op == 0x7D:  # EMPTY_DICT
            self.push(DictNode())
        elif op == 0x75:  # SETITEMS
            self.setitems()
        elif op == 0x93:  # STACK_GLOBAL
            name, module = self.pop(), self.pop()
            if not (isinstance(module, str) and isinstance(name, str)):
                raise self.unsafe("STACK_GLOBAL of a non-string")
            if (module, name) not in ALLOWED_GLOBALS:
                raise self.unsafe(f"global {safe_text(module)}.{safe_text(name)}")
            self.push(GlobalNode(ALLOWED_GLOBALS[(module, name)]))
        elif op == 0x52:  # REDUCE: only allow-listed callables, evaluated symbolically
            args, func = self.pop(), self.pop()
            if not (isinstance(func, GlobalNode) and func.kind in ("reconstruct", "dtype")
                    and isinstance(args, TupleNode)):
                raise self.unsafe("REDUCE of a non-allowed callable")
            self.push(CallNode(func, args))
        elif op == 0x81:  # NEWOBJ
            args, cls = self.pop(), self.pop()
            if not (isinstance(cls, GlobalNode) and cls.kind == "qw8" and isinstance(args, TupleNode)
                    and not args.items):
                raise self.unsafe("NEWOBJ of a non-allowed class")
            self.push(CallNode(cls, args))
        elif op == 0x62:  # BUILD
            state, obj = self.pop(), self.top()
            if not isinstance(obj, CallNode) or obj.state is not None:
                raise self.unsafe("BUILD on a non-allowed object")
            if state is obj or depth_of(state) > MAX_DEPTH:
                raise self.bad("malformed pickle (BUILD state)")
            obj.state = state
        else:
            raise self.unsafe(f"opcode {_NAMES.get(op, f'0x{op:02x}')}")

    def setitems(self) -> None:
        items = self.pop_mark()
        target = self.top()
        if not isinstance(target, DictNode) or len(items) % 2 or len(target.items) + len(items) > 8:
            raise self.bad("malformed pickle (SETITEMS)")
        for k, v in zip(items[::2], items[1::2], strict=True):
            if not isinstance(k, str) or isinstance(v, (DictNode, Mark)):
                raise self.bad("malformed pickle (SETITEMS key or value)")
            target.items[k] = v


def scan(buf, path: str) -> TensorRef:
    """Safely decode a tensor file held in ``buf`` (bytes, mmap or memoryview).

    Work and memory are bounded by the header (see the module docstring), never by the payload.

    Raises:
        UnsafePickleError: an opcode, global or object outside the allow-list (nothing is
            executed).
        CheckpointError: a truncated, malformed or out-of-bounds file.
    """
    return _interpret(_Scanner(buf, path).run(), path)


def _interpret(obj: object, path: str) -> TensorRef:
    from grokfetch.errors import CheckpointError

    if isinstance(obj, CallNode) and obj.func.kind == "qw8":
        state = obj.state
        if not isinstance(state, DictNode) or set(state.items) != {"weight", "scales"}:
            raise CheckpointError(path, "QuantizedWeight8bit without weight and scales")
        return QW8Ref(_array(state.items["weight"], path), _array(state.items["scales"], path))
    return _array(obj, path)


def _shape(obj: object, path: str) -> tuple[int, ...]:
    """The shape tuple, refused before any arithmetic when it is absurd."""
    from grokfetch.errors import CheckpointError

    if not isinstance(obj, TupleNode) or len(obj.items) > MAX_NDIM:
        raise CheckpointError(path, f"array shape is not a tuple of at most {MAX_NDIM} sizes")
    dims = obj.items
    if not all(type(d) is int and 0 <= d < MAX_DIM for d in dims):
        raise CheckpointError(path, "array shape holds a size that is not an integer in [0, 2**40)")
    return dims


def _array(obj: object, path: str) -> ArrayRef:
    from grokfetch.errors import CheckpointError

    bad = CheckpointError(path, "not a numpy array reconstruction")
    if not (isinstance(obj, CallNode) and obj.func.kind == "reconstruct" and len(obj.args.items) == 3):
        raise bad
    cls = obj.args.items[0]
    if not (isinstance(cls, GlobalNode) and cls.kind == "ndarray") or not isinstance(obj.state, TupleNode):
        raise bad
    if len(obj.state.items) != 5:
        raise bad
    _, shape_obj, dtype, fortran, data = obj.state.items
    shape = _shape(shape_obj, path)
    if fortran is not False:
        raise CheckpointError(path, "Fortran-ordered array")
    if not (isinstance(dtype, CallNode) and dtype.func.kind == "dtype" and dtype.args.items):
        raise bad
    spec = dtype.args.items[0]
    if isinstance(spec, GlobalNode) and spec.kind == "bfloat16":
        name = "bfloat16"
    elif isinstance(spec, str) and spec in _DTYPE_CODES:
        name = _DTYPE_CODES[spec]
    else:
        raise CheckpointError(path, "unsupported dtype", expected="float32, int8 or bfloat16",
                              actual=safe_text(spec) if isinstance(spec, str) else "other")
    dstate = dtype.state
    order = dstate.items[1] if isinstance(dstate, TupleNode) and len(dstate.items) > 1 else None
    if order == ">":
        raise CheckpointError(path, "big-endian array")
    if not isinstance(data, PayloadNode):
        raise CheckpointError(path, "array data is not a raw byte payload")
    expected = DTYPES[name][3]
    for d in shape:
        expected *= d
        if expected > data.nbytes:
            break
    if data.nbytes != expected:
        raise CheckpointError(path, "payload size does not match the array shape",
                              expected=f"{expected} bytes" if expected <= data.nbytes
                              else f"more than {data.nbytes} bytes", actual=f"{data.nbytes} bytes")
    return ArrayRef(tuple(shape), name, data.offset, data.nbytes)
