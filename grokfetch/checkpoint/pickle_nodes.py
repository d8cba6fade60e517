"""What the tensor-file scanner may build: the bounds on its work, the allow-listed globals, and
the symbolic node types that stand for objects on its stack (nothing a file describes is ever
really constructed).
"""

from __future__ import annotations

from grokfetch.pickle_layout import QW8_CLASS

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("ml_dtypes", "bfloat16"): "bfloat16",
    ("ml_dtypes._ml_dtypes_ext", "bfloat16"): "bfloat16",
    QW8_CLASS: "qw8",
}

#: Bounds on the work one header may cause (a real file needs ~130 opcodes, ~40 memo slots,
#: nesting 4, strings under 40 bytes, integers under 2**40).
MAX_OPS = 1024
MAX_MEMO = 256
MAX_STACK = 128
MAX_DEPTH = 8
MAX_STR = 256
MAX_INT_BYTES = 8
MAX_NDIM = 8
MAX_DIM = 1 << 40
MAX_PAYLOADS = 4


class Mark:
    """The MARK opcode's stack entry (one shared instance, :data:`MARK`)."""

    depth = 0


MARK = Mark()


class GlobalNode:
    """An allow-listed global, by kind (``reconstruct``, ``ndarray``, ``dtype``, ``bfloat16``, ``qw8``)."""

    depth = 0

    def __init__(self, kind: str):
        self.kind = kind


class TupleNode:
    """A tuple of scalars and nodes."""

    def __init__(self, items: tuple):
        self.items = items
        self.depth = 1 + max((depth_of(x) for x in items), default=0)


class DictNode:
    """A dict with string keys (the ``QuantizedWeight8bit`` state)."""

    depth = 1

    def __init__(self) -> None:
        self.items: dict[str, object] = {}


class CallNode:
    """An allow-listed call (REDUCE / NEWOBJ), with the state a BUILD gave it."""

    def __init__(self, func: GlobalNode, args: TupleNode):
        self.func, self.args, self.state = func, args, None
        self.depth = args.depth + 1


class PayloadNode:
    """A byte payload: where it lies in the file, never its bytes."""

    depth = 0

    def __init__(self, offset: int, nbytes: int):
        self.offset, self.nbytes = offset, nbytes


def depth_of(obj: object) -> int:
    """Nesting depth of a stack entry (0 for scalars)."""
    return getattr(obj, "depth", 0)


def safe_text(s: str) -> str:
    """A file-supplied name made safe to print: short and ASCII."""
    return ascii(s[:60])[1:-1]
