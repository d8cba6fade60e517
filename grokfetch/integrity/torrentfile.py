"""What a ``.torrent`` says about its files and pieces (v1, v2 or hybrid), parsed without
libtorrent.

v1 (BEP 3): files are concatenated in order and cut into ``piece_length`` pieces, each with a
SHA-1 in ``pieces``; pieces span file boundaries. v2 (BEP 52): each file has a SHA-256 merkle
tree over 16 KiB blocks (``pieces root``) and its piece-level hashes in ``piece layers``; files
are piece-aligned. Hybrids carry both, with ``.pad`` files in the v1 list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import UsageError
from grokfetch.integrity.bencode import decode_torrent


@dataclass(frozen=True)
class TorrentFile:
    """One file of the torrent: ``path`` is relative to the content root ('/'-separated);
    ``offset`` is its position in the v1 byte stream. ``unsafe`` says why the path is refused."""

    path: str
    size: int
    offset: int = 0
    pad: bool = False
    root: bytes | None = None  # v2 pieces root
    unsafe: str | None = None


@dataclass
class Torrent:
    name: str
    piece_length: int
    files: list[TorrentFile]
    multi_file: bool
    v1_pieces: bytes | None = None
    v2: bool = False
    piece_layers: dict[bytes, bytes] = field(default_factory=dict)
    infohash_v1: str | None = None
    infohash_v2: str | None = None

    @property
    def has_v1(self) -> bool:
        return self.v1_pieces is not None

    @property
    def total_size(self) -> int:
        """Length of the v1 byte stream (pad files included)."""
        return sum(f.size for f in self.files)

    @property
    def num_pieces_v1(self) -> int:
        return -(-self.total_size // self.piece_length)

    @property
    def infohash(self) -> str:
        return self.infohash_v1 or self.infohash_v2 or ""

    def data_files(self) -> list[TorrentFile]:
        """The files that live on disk (no pad files)."""
        return [f for f in self.files if not f.pad]


def _text(b: Any, what: str) -> str:
    if not isinstance(b, bytes):
        raise UsageError(f"bad torrent: {what} is not a string")
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _unsafe_component(c: str) -> str | None:
    if c in ("", ".", ".."):
        return f"'{c}' component"
    if "/" in c or "\\" in c or "\x00" in c:
        return "separator or NUL inside a path component"
    return None


def _join(parts: list[str]) -> tuple[str, str | None]:
    why = next((w for w in map(_unsafe_component, parts) if w), None)
    if not parts:
        why = "empty path"
    return "/".join(parts), why


#: Bounds on a torrent's numbers, checked before any arithmetic (a 318 GB release needs far less).
MAX_LENGTH = 1 << 50
MAX_PIECE_LENGTH = 1 << 30
MAX_FILES = 1 << 20


def _int(v: Any, what: str, limit: int = MAX_LENGTH) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise UsageError(f"bad torrent: {what} is not an integer from 0 to {limit:,}")
    return v


def parse_torrent(data: bytes) -> Torrent:
    """Parse ``.torrent`` bytes. Paths that would escape are kept but marked ``unsafe``.

    Raises:
        UsageError: not a torrent, or a required field is missing or malformed.
    """
    top, info_raw = decode_torrent(data)
    info = top[b"info"]
    if not isinstance(info, dict):
        raise UsageError("bad torrent: info is not a dictionary")
    name = _text(info.get(b"name.utf-8", info.get(b"name")), "name")
    if _unsafe_component(name) or not name:
        raise UsageError(f"bad torrent: unsafe top-level name {name!r}")
    plen = _int(info.get(b"piece length"), "piece length", MAX_PIECE_LENGTH)
    v2 = info.get(b"meta version") == 2 and isinstance(info.get(b"file tree"), dict)
    if plen <= 0 or (v2 and (plen < 16384 or plen & (plen - 1))):
        raise UsageError(f"bad torrent: piece length {plen}")
    t = Torrent(name=name, piece_length=plen, files=[], multi_file=True, v2=v2)
    pieces = info.get(b"pieces")
    if pieces is not None:
        if not isinstance(pieces, bytes) or len(pieces) % 20:
            raise UsageError("bad torrent: pieces is not a multiple of 20 bytes")
        t.v1_pieces = pieces
        t.infohash_v1 = hashlib.sha1(info_raw).hexdigest()
    if v2:
        t.infohash_v2 = hashlib.sha256(info_raw).hexdigest()
        layers = top.get(b"piece layers", {})
        if isinstance(layers, dict):
            t.piece_layers = {k: v for k, v in layers.items()
                              if isinstance(k, bytes) and isinstance(v, bytes)}
    if t.v1_pieces is None and not v2:
        raise UsageError("bad torrent: neither v1 pieces nor a v2 file tree")

    roots: dict[str, bytes] = {}
    v2_order: list[tuple[str, int, str | None]] = []
    if v2:
        _walk_tree(info[b"file tree"], [], roots, v2_order, 0)
    if t.v1_pieces is not None:
        if b"files" in info:
            offset = 0
            if not isinstance(info[b"files"], list) or len(info[b"files"]) > MAX_FILES:
                raise UsageError(f"bad torrent: files is not a list of at most {MAX_FILES:,}")
            for i, f in enumerate(info[b"files"]):
                if not isinstance(f, dict):
                    raise UsageError(f"bad torrent: file entry {i} is not a dictionary")
                size = _int(f.get(b"length"), f"length of file {i}")
                raw = f.get(b"path.utf-8", f.get(b"path"))
                if not isinstance(raw, list):
                    raise UsageError(f"bad torrent: path of file {i} is not a list")
                rel, why = _join([_text(p, "path component") for p in raw])
                attr = f.get(b"attr", b"")
                pad = isinstance(attr, bytes) and b"p" in attr
                if isinstance(attr, bytes) and b"l" in attr:
                    why = why or "a BEP-47 symlink entry (never created or followed)"
                t.files.append(TorrentFile(rel, size, offset, pad, roots.get(rel), why))
                offset += size
        else:
            size = _int(info.get(b"length"), "length")
            t.multi_file = False
            t.files.append(TorrentFile(name, size, 0, False, roots.get(name)))
    else:
        single = (len(v2_order) == 1 and v2_order[0][0] == name
                  and isinstance(info[b"file tree"].get(name.encode()), dict)
                  and b"" in info[b"file tree"][name.encode()])
        t.multi_file = not single
        for rel, size, why in v2_order:
            t.files.append(TorrentFile(rel, size, 0, False, roots.get(rel), why))
    if len(t.files) > MAX_FILES:
        raise UsageError(f"bad torrent: more than {MAX_FILES:,} files")
    if t.v1_pieces is not None and len(t.v1_pieces) // 20 != t.num_pieces_v1:
        raise UsageError(f"bad torrent: {len(t.v1_pieces) // 20:,} piece hashes for "
                         f"{t.num_pieces_v1:,} pieces")
    return t


def _walk_tree(node: Any, parts: list[str], roots: dict[str, bytes],
               order: list[tuple[str, int, str | None]], depth: int) -> None:
    if depth > 64 or not isinstance(node, dict):
        raise UsageError("bad torrent: malformed v2 file tree")
    for key in sorted(node):
        child = node[key]
        if key == b"":
            leaf = child if isinstance(child, dict) else {}
            size = _int(leaf.get(b"length"), "v2 file length")
            rel, why = _join(parts)
            attr = leaf.get(b"attr", b"")
            if isinstance(attr, bytes) and b"l" in attr:
                why = why or "a BEP-47 symlink entry (never created or followed)"
            root = leaf.get(b"pieces root")
            if isinstance(root, bytes) and len(root) == 32:
                roots[rel] = root
            order.append((rel, size, why))
        else:
            _walk_tree(child, parts + [_text(key, "v2 path component")], roots, order, depth + 1)


def load_torrent(path: Path) -> Torrent:
    """Read and parse a ``.torrent`` file (raises :class:`UsageError` when unreadable)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"torrent not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"unreadable torrent {path}: {exc.strerror}") from None
    return parse_torrent(data)


def content_root(path: Path, torrent: Torrent) -> Path:
    """The folder the torrent's file paths are relative to: ``path/name`` for a multi-file
    torrent given its download folder, ``path`` itself when it already is the top folder."""
    if not torrent.multi_file:
        return path
    if (path / torrent.name).is_dir():
        return path / torrent.name
    if path.name == torrent.name:
        return path
    for tf in torrent.data_files()[:64]:
        if not tf.unsafe and (path / tf.path).exists():
            return path
    return path / torrent.name


@dataclass
class Avail:
    """How much of one torrent file can be read, and where."""

    tf: TorrentFile
    path: Path | None
    avail: int
