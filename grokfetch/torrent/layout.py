"""A torrent's files on disk and which of them one run fetches: paths, piece ranges, bytes
already written, and :func:`plan_files` (selection, space preflight, wanted pieces, model order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import InsufficientSpaceError, UsageError
from grokfetch.fsutil import free_bytes, refuse_symlink_entries, safe_join
from grokfetch.spec import TensorTable, load_config, parse_layers
from grokfetch.torrent import selection
from grokfetch.torrent.options import DownloadOptions
from grokfetch.torrent.order import ModelOrder


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


@dataclass
class FilePlan:
    """What one run fetches once the metadata is known."""

    sel: selection.Selection
    priorities: list[int]          # libtorrent file priorities, torrent order
    wanted_pieces: list[int]       # every piece holding a byte of a selected file
    model: ModelOrder | None       # --order model: the piece-priority gradient


def run_table(ti, dest: Path, opts: DownloadOptions, source_preset: str | None
              ) -> TensorTable | None:
    """The tensor table ``--layers`` / ``--order model`` need (None when neither is asked):
    the downloaded folder's own config when it has one, else the preset."""
    if opts.layers is None and opts.order != "model":
        return None
    root = dest / ti.name()
    return TensorTable(load_config(root if root.is_dir() else None, opts.preset or source_preset))


def plan_files(ti, dest: Path, opts: DownloadOptions, source_preset: str | None) -> FilePlan:
    """Check the torrent's paths, select its files, and check the free space for what is left.

    Raises :class:`UsageError` (unsafe paths, a table mismatch, an empty selection) and
    :class:`InsufficientSpaceError` (unless ``--force``).
    """
    paths = file_paths(ti)
    check_paths(dest, paths)
    refuse_symlink_entries(ti, dest)
    table = run_table(ti, dest, opts, source_preset)
    if table is not None:
        check_table(table, paths)
    layers = parse_layers(opts.layers, table.config.num_layers) if table else None
    sel = selection.select(paths, table, include=opts.include, exclude=opts.exclude, layers=layers)
    if sel.count == 0:
        raise UsageError("the --include/--exclude/--layers filters select no file of the torrent")
    fs = ti.layout()
    remaining = sum(fs.file_size(i) - bytes_on_disk(dest / paths[i], fs.file_size(i))
                    for i in range(len(paths)) if sel.wanted[i])
    free = free_bytes(dest)
    if remaining > free and not opts.force:
        raise InsufficientSpaceError(dest, remaining, free)
    model = None
    if opts.order == "model":
        model = ModelOrder(sel, [piece_range(ti, i) for i in range(len(paths))],
                           ti.piece_length(), ti.num_pieces())
    return FilePlan(sel, selection.base_priorities(sel),
                    pieces_of(ti, [i for i, w in enumerate(sel.wanted) if w]), model)
