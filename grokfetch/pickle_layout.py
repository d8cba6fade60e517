"""The official tensor pickle's byte layout: its class and dtype vocabulary, and an emitter of
its exact bytes (what numpy 1.26's ``pickle.dump``, protocol 4, writes for a Grok-1 tensor).

:func:`encode_layout` gives the file as verbatim pieces and payload lengths, so writers stream
the array memory without copying it, and :func:`predicted_file_bytes` gives exact file sizes
from shapes alone (the tensor table uses it). Pure and dependency-free, so it sits below
:mod:`grokfetch.spec`; the safe scanner (:mod:`grokfetch.checkpoint.pickle_format`) reads the
same vocabulary. The test suite checks the output against CPython's own pickler for every tensor
of the ``tiny`` and ``mini`` presets.
"""

from __future__ import annotations

import math
import struct

QW8_CLASS = ("__main__", "QuantizedWeight8bit")

#: dtype descriptors as numpy pickles them: (dtype arg or None for a type global, byte order,
#: state tail (elsize, alignment, flags), itemsize)
DTYPES = {
    "float32": ("f4", "<", (-1, -1, 0), 4),
    "int8": ("i1", "|", (-1, -1, 0), 1),
    "bfloat16": (None, "<", (2, 2, 64), 2),
}

FRAME_SIZE_TARGET = 64 * 1024  # CPython's pickler bypasses frames for payloads this large
FRAME_SIZE_MIN = 4


class _Emitter:
    """Reproduces CPython's C pickler (protocol 4) for exactly these objects, payloads apart.

    Output pieces are ``bytes`` (written verbatim) or ``int`` (a payload of that many bytes).
    """

    def __init__(self) -> None:
        self.out: list[bytes | int] = [b"\x80\x04"]
        self.frame: list[bytes | int] = []
        self.frame_len = 0
        self.memo: dict[object, int] = {}

    def op(self, data: bytes | int) -> None:
        self.frame.append(data)
        self.frame_len += data if isinstance(data, int) else len(data)

    def commit(self) -> None:
        if self.frame_len >= FRAME_SIZE_MIN:
            self.out.append(b"\x95" + struct.pack("<Q", self.frame_len))
        self.out += self.frame
        self.frame, self.frame_len = [], 0

    def boundary(self) -> None:
        if self.frame_len >= FRAME_SIZE_TARGET:
            self.commit()

    def memoize(self, key: object | None = None) -> None:
        self.memo[object() if key is None else key] = len(self.memo)
        self.op(b"\x94")

    def get(self, key: object) -> bool:
        if key not in self.memo:
            return False
        i = self.memo[key]
        self.op(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))
        return True

    def string(self, s: str, shared: bool = False) -> None:
        if shared and self.get(("str", s)):
            return
        raw = s.encode()
        head = b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))
        self.op(head + raw)
        self.memoize(("str", s) if shared else None)

    def integer(self, x: int) -> None:
        if 0 <= x < 256:
            self.op(b"K" + bytes([x]))
        elif 0 <= x < 65536:
            self.op(b"M" + struct.pack("<H", x))
        elif -(2**31) <= x < 2**31:
            self.op(b"J" + struct.pack("<i", x))
        else:
            raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(raw)]) + raw)

    def global_(self, module: str, name: str) -> None:
        if self.get(("global", module, name)):
            return
        self.string(module, shared=True)
        self.string(name, shared=True)
        self.op(b"\x93")
        self.memoize(("global", module, name))

    def tuple_of_ints(self, values: tuple[int, ...]) -> None:
        if not values:
            self.op(b")")
            return
        if len(values) > 3:
            self.op(b"(")
        for v in values:
            self.integer(v)
        self.op(b"t" if len(values) > 3 else bytes([0x84 + len(values)]))
        self.memoize()

    def payload(self, nbytes: int) -> None:
        if nbytes < 256:
            header = b"C" + bytes([nbytes])
        elif nbytes < 2**32:
            header = b"B" + struct.pack("<I", nbytes)
        else:
            header = b"\x8e" + struct.pack("<Q", nbytes)
        if nbytes >= FRAME_SIZE_TARGET:  # header and payload go outside any frame
            self.commit()
            self.out += [header, nbytes]
        else:
            self.op(header)
            self.op(nbytes)
        self.memoize()

    def array(self, shape: tuple[int, ...], dtype: str, module: str) -> None:
        code, order, tail, itemsize = DTYPES[dtype]
        self.global_(module, "_reconstruct")
        self.global_("numpy", "ndarray")
        self.integer(0)
        self.op(b"\x85")
        self.memoize()
        if not self.get(("bytes", b"b")):
            self.op(b"C\x01b")
            self.memoize(("bytes", b"b"))
        self.op(b"\x87")
        self.memoize()
        self.op(b"R")
        self.memoize()
        self.op(b"(")
        self.integer(1)
        self.tuple_of_ints(shape)
        self.global_("numpy", "dtype")
        if code is None:
            self.global_("ml_dtypes", dtype)
        else:
            self.string(code)
        self.op(b"\x89\x88\x87")
        self.memoize()
        self.op(b"R")
        self.memoize()
        self.op(b"(")
        self.integer(3)
        self.string(order, shared=True)
        self.op(b"NNN")
        for v in tail:
            self.integer(v)
        self.op(b"t")
        self.memoize()
        self.op(b"b")
        self.boundary()
        self.op(b"\x89")
        self.payload(itemsize * math.prod(shape))
        self.boundary()
        self.op(b"t")
        self.memoize()
        self.op(b"b")
        self.boundary()


def encode_layout(shape: tuple[int, ...], scales_shape: tuple[int, ...] | None,
                  numpy_module: str = "numpy.core.multiarray") -> list[bytes | int]:
    """The file as pieces: ``bytes`` to write verbatim and ``int`` payload lengths.

    Payloads come in file order: the weight (int8, or float32 when ``scales_shape`` is None),
    then the scales (bf16). ``numpy_module`` is the module named for ``_reconstruct``: the
    numpy 1.x name by default, so that the official numpy 1.26 environment can load the file.
    """
    e = _Emitter()
    if scales_shape is None:
        e.array(shape, "float32", numpy_module)
    else:
        e.global_(*QW8_CLASS)
        e.op(b")\x81")
        e.memoize()
        e.op(b"}")
        e.memoize()
        e.op(b"(")
        e.string("weight")
        e.array(shape, "int8", numpy_module)
        e.string("scales")
        e.array(scales_shape, "bfloat16", numpy_module)
        e.op(b"u")
        e.boundary()
        e.op(b"b")
    e.op(b".")
    e.commit()
    merged: list[bytes | int] = []
    for piece in e.out:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def predicted_file_bytes(shape: tuple[int, ...], scales_shape: tuple[int, ...] | None) -> int:
    """Exact size of the tensor file the official writer produces for these shapes."""
    return sum(s if isinstance(s, int) else len(s) for s in encode_layout(shape, scales_shape))
