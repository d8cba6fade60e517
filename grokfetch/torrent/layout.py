"""Small facts about a torrent's files on disk: paths, piece ranges, bytes already written."""

from __future__ import annotations

from pathlib import Path

from grokfetch.errors import UsageError
from grokfetch.fsutil import safe_join
from grokfetch.spec import TensorTable


def file_paths(ti) -> list[str]:
    fs = ti.layout()
    return [fs.file_path(i).replace("\\", "/") for i in range(fs.num_files())]


def check_paths(dest: Path, paths: list[str]) -> None:
    for p in paths:
        safe_join(dest, p)


def check_table(table: TensorTable, paths: list[str]) -> None:
    """The torrent's tensor files must be exactly the table's, or --layers would pick wrong."""
    names = {p.rsplit("/", 1)[-1] for p in paths}
    tensors = {n for n in names if n.startswith("tensor") and n.endswith("_000")}
    expected = {s.file for s in table}
    if tensors != expected:
        raise UsageError(f"the torrent holds {len(tensors)} tensor files but preset "
                         f"{table.config.name!r} has {len(expected)}",
                         hint="pass the matching --preset (grok-1, mini, tiny)")


def pieces_of(ti, files: list[int]) -> list[int]:
    """Indices of the pieces that hold any byte of ``files``."""
    fs = ti.layout()
    out: set[int] = set()
    for i in files:
        size = fs.file_size(i)
        if size:
            first = ti.map_file(i, 0, 1).piece
            last = ti.map_file(i, size - 1, 1).piece
            out.update(range(first, last + 1))
    return sorted(out)


def piece_range(ti, i: int) -> tuple[int, int]:
    size = ti.layout().file_size(i)
    if not size:
        return (0, -1)
    return ti.map_file(i, 0, 1).piece, ti.map_file(i, size - 1, 1).piece


def bytes_on_disk(path: Path, size: int) -> int:
    try:
        st = path.stat()
    except OSError:
        return 0
    return min(size, st.st_blocks * 512, st.st_size)
