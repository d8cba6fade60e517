"""A deterministic encoder of tensorstore's OCDBT format: one b-tree generation over values
that are already on disk, with no random file names and no clock.

tensorstore writes OCDBT with random 128-bit data-file names (``GenerateDataFileId`` reads
``RAND_bytes``; only a prefix is configurable) and stamps every commit with the wall clock, so its
bytes differ on every run. This module writes the same format (the spec in tensorstore's
``kvstore/ocdbt/index.rst``, byte layout as in ``kvstore/ocdbt/format/*_codec``) from a sorted
key list whose values are either small byte strings or :class:`Ref`\\ s into data files the caller
wrote itself. Everything is a pure function of its input:

* data files are whatever paths the caller names; the b-tree nodes (and any value too large to
  store inline) go into one *index* file whose bytes :func:`encode_tree` returns;
* the manifest holds one generation (number 1) with ``commit_time`` 0 and a caller-chosen uuid;
* nothing is compressed (``compression_method`` 0), so no zstd version can change the bytes.

Leaves are filled in key order up to ``max_decoded_node_bytes`` and interior levels are added
until one root remains (entries keep their full keys: ``subtree_common_prefix_length`` 0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MANIFEST_MAGIC = 0x0CDB3A2A
BTREE_MAGIC = 0x0CDB20DE
#: Per-entry bytes of a decoded node besides its key and inline value (an upper bound).
_ENTRY_OVERHEAD = 40


@dataclass(frozen=True)
class Ref:
    """An out-of-line value: ``length`` bytes at ``offset`` of the data file ``file`` (a path
    relative to the database root, e.g. ``d/<32 hex digits>``)."""

    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class Config:
    """The database configuration written to the manifest (tensorstore's ``config`` spec)."""

    uuid: bytes  # 16 bytes
    max_inline_value_bytes: int = 1024
    max_decoded_node_bytes: int = 100_000_000
    version_tree_arity_log2: int = 4


@dataclass(frozen=True)
class Tree:
    """An encoded b-tree: the index file's bytes and where its root node lies."""

    index: bytes
    root: Ref
    height: int
    num_keys: int
    num_tree_bytes: int
    num_indirect_value_bytes: int


def varint(n: int) -> bytes:
    """LEB128, as riegeli's ``WriteVarint64``."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of every OCDBT manifest and node."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _frame(magic: int, body: bytes) -> bytes:
    """Header (magic, total length, format version 0, compression 0), body, CRC-32C footer."""
    head = struct.pack(">I", magic) + struct.pack("<Q", 12 + 2 + len(body) + 4) + b"\0\0"
    data = head + body
    return data + struct.pack("<I", crc32c(data))


def _common(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _file_table(files: list[tuple[str, str]]) -> tuple[bytes, dict[tuple[str, str], int]]:
    """The data file table of ``(base_path, relative_path)`` pairs, sorted, prefix-compressed
    (a prefix reaches into the relative path only when the base paths are equal)."""
    files = sorted(set(files))
    paths = [(b.encode(), r.encode()) for b, r in files]
    prefixes = [0]
    for (pb, pr), (cb, cr) in zip(paths, paths[1:], strict=False):
        n = _common(pb, cb)
        prefixes.append(n + _common(pr, cr) if pb == cb else n)
    out = [varint(len(files))] + [varint(p) for p in prefixes[1:]]
    out += [varint(len(b) + len(r) - p) for (b, r), p in zip(paths, prefixes, strict=True)]
    out += [varint(len(b)) for b, _ in paths]
    out += [(b + r)[p:] for (b, r), p in zip(paths, prefixes, strict=True)]
    return b"".join(out), {f: i for i, f in enumerate(files)}


def _keys(keys: list[bytes], subtree_prefix: bool) -> bytes:
    """Key columns of a node (nothing excluded): prefix lengths, suffix lengths, [subtree common
    prefix lengths, all 0,] suffixes."""
    prefixes = [0] + [_common(a, b) for a, b in zip(keys, keys[1:], strict=False)]
    out = [varint(p) for p in prefixes[1:]]
    out += [varint(len(k) - p) for k, p in zip(keys, prefixes, strict=True)]
    if subtree_prefix:
        out += [varint(0)] * len(keys)
    return b"".join(out) + b"".join(k[p:] for k, p in zip(keys, prefixes, strict=True))


def _refs(refs: list[Ref], table: dict[tuple[str, str], int], lengths: bool = True) -> bytes:
    out = [varint(table[("", r.file)]) for r in refs] + [varint(r.offset) for r in refs]
    if lengths:
        out += [varint(r.length) for r in refs]
    return b"".join(out)


def _leaf(entries: list[tuple[bytes, bytes | Ref]]) -> bytes:
    indirect = [v for _, v in entries if isinstance(v, Ref)]
    table_bytes, table = _file_table([("", r.file) for r in indirect])
    body = [b"\0", table_bytes, varint(len(entries)), _keys([k for k, _ in entries], False)]
    body += [varint(v.length if isinstance(v, Ref) else len(v)) for _, v in entries]
    body.append(bytes(1 if isinstance(v, Ref) else 0 for _, v in entries))
    body.append(_refs(indirect, table, lengths=False))
    body += [v for _, v in entries if not isinstance(v, Ref)]
    return _frame(BTREE_MAGIC, b"".join(body))


@dataclass(frozen=True)
class _Child:
    key: bytes  # the first key below it
    ref: Ref
    num_keys: int
    tree_bytes: int
    indirect_bytes: int


def _interior(height: int, children: list[_Child]) -> bytes:
    table_bytes, table = _file_table([("", c.ref.file) for c in children])
    body = [bytes([height]), table_bytes, varint(len(children)),
            _keys([c.key for c in children], True), _refs([c.ref for c in children], table)]
    body += [varint(c.num_keys) for c in children] + [varint(c.tree_bytes) for c in children]
    body += [varint(c.indirect_bytes) for c in children]
    return _frame(BTREE_MAGIC, b"".join(body))


def _groups(sizes: list[int], limit: int, min_arity: int = 1) -> list[range]:
    """Consecutive runs of entries whose summed size stays within ``limit`` (but at least
    ``min_arity`` entries each, so that every interior level shrinks)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i >= start + min_arity and total + n > limit:
            out.append(range(start, i))
            start, total = i, 0
        total += n
    if out and len(sizes) - start < min_arity:  # too short a tail joins the run before it
        start = out.pop().start
    out.append(range(start, len(sizes)))
    return out


def encode_tree(entries: dict[bytes, bytes | Ref], index_file: str, config: Config) -> Tree:
    """The b-tree over ``entries`` (``bytes`` values above ``max_inline_value_bytes`` are moved
    into the index file), to be written to ``index_file`` (a path relative to the database)."""
    if not entries:
        raise ValueError("an OCDBT tree needs at least one key")
    index = bytearray()
    items: list[tuple[bytes, bytes | Ref]] = []
    for key in sorted(entries):
        value = entries[key]
        if not isinstance(value, Ref) and len(value) > config.max_inline_value_bytes:
            ref = Ref(index_file, len(index), len(value))
            index += value
            value = ref
        items.append((key, value))

    def put(node: bytes) -> Ref:
        ref = Ref(index_file, len(index), len(node))
        index.extend(node)
        return ref

    level: list[_Child] = []
    sizes = [len(k) + _ENTRY_OVERHEAD + (0 if isinstance(v, Ref) else len(v)) for k, v in items]
    for group in _groups(sizes, config.max_decoded_node_bytes):
        chunk = items[group.start:group.stop]
        node = _leaf(chunk)
        level.append(_Child(chunk[0][0], put(node), len(chunk), len(node),
                            sum(v.length for _, v in chunk if isinstance(v, Ref))))
    height = 0
    while len(level) > 1:
        height += 1
        sizes = [len(c.key) + _ENTRY_OVERHEAD for c in level]
        nxt = []
        for group in _groups(sizes, config.max_decoded_node_bytes, 2):
            kids = level[group.start:group.stop]
            node = _interior(height, kids)
            nxt.append(_Child(kids[0].key, put(node), sum(c.num_keys for c in kids),
                              len(node) + sum(c.tree_bytes for c in kids),
                              sum(c.indirect_bytes for c in kids)))
        level = nxt
    root = level[0]
    return Tree(bytes(index), root.ref, height, root.num_keys, root.tree_bytes, root.indirect_bytes)


def manifest(config: Config, tree: Tree, base_path: str = "") -> bytes:
    """A single-file manifest (``manifest_kind`` single) holding one generation of ``tree``.

    ``base_path`` prefixes the root node's file (``"ocdbt.process_0/"`` lets a parent database
    use a child's tree as is: every path below the root resolves under that prefix)."""
    table_bytes, table = _file_table([(base_path, tree.root.file)])
    file_id = table[(base_path, tree.root.file)]
    body = [config.uuid, b"\0", varint(config.max_inline_value_bytes),
            varint(config.max_decoded_node_bytes), bytes([config.version_tree_arity_log2]),
            varint(0),  # no compression
            table_bytes,
            varint(1), varint(1), bytes([tree.height]),  # one version: generation 1
            varint(file_id), varint(tree.root.offset), varint(tree.root.length),
            varint(tree.num_keys), varint(tree.num_tree_bytes),
            varint(tree.num_indirect_value_bytes),
            struct.pack("<Q", 0),  # commit_time
            varint(0)]  # no version tree nodes
    return _frame(MANIFEST_MAGIC, b"".join(body))
