"""libtorrent's part file: where a selective download keeps the bytes of skipped files that
share a piece with selected ones.

libtorrent writes those bytes to ``<save path>/.<infohash>.parts`` (``part_file.cpp``): a header
of big-endian uint32s -- ``num_pieces``, ``piece_size``, then one slot index per piece
(``0xffffffff``: not stored) -- padded to a multiple of 1024 bytes, then one ``piece_size`` slot
per stored piece. A byte at offset ``o`` of piece ``p`` lives at ``header + slot(p) * piece_size
+ o``. The v1 check reads a shared piece's skipped bytes from there, so every selected byte can
be hashed. A header that does not match the torrent is ignored, as libtorrent ignores it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from grokfetch.integrity.hashio import Extent

_NONE = 0xFFFFFFFF


@dataclass(frozen=True)
class PartFile:
    """The slots of one part file: ``slots[piece]`` is the slot index of each stored piece."""

    path: Path
    piece_length: int
    header: int
    size: int
    slots: dict[int, int]

    def extent(self, piece: int, start: int, length: int) -> Extent | None:
        """``length`` bytes of ``piece`` from piece offset ``start`` as stored here, or None when
        the piece is not stored (or the file ends before those bytes)."""
        slot = self.slots.get(piece)
        if slot is None:
            return None
        offset = self.header + slot * self.piece_length + start
        return Extent(self.path, offset, length) if offset + length <= self.size else None


def part_file_path(save_path: Path, infohash: str) -> Path:
    """Where libtorrent keeps the part file of a torrent downloaded into ``save_path``."""
    return save_path / f".{infohash}.parts"


def read_part_file(path: Path, num_pieces: int, piece_length: int) -> PartFile | None:
    """The slot map of ``path``, or None when it is absent, short, or made for another torrent.

    Bounded work: the header's size follows from the *torrent's* piece count; slots past the
    end of the file are dropped.
    """
    header = ((2 + num_pieces) * 4 + 1023) & ~1023
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            raw = f.read(header)
    except OSError:
        return None
    if len(raw) < header:
        return None
    n, plen = struct.unpack_from(">II", raw)
    if n != num_pieces or plen != piece_length:
        return None
    slots = {}
    for piece, slot in enumerate(struct.unpack_from(f">{num_pieces}I", raw, 8)):
        if slot != _NONE and slot < num_pieces and header + slot * piece_length < size:
            slots[piece] = slot
    return PartFile(path, piece_length, header, size, slots)
