"""Which files of a torrent to fetch (``--include/--exclude``, ``--layers``) and each tensor
file's model rank (used by :mod:`grokfetch.torrent.order` for ``--order model``).

Tensor files are matched to the tensor table by their basename (``tensorNNNNN_000``); the
table, not this module, knows which file holds which layer and what model order is.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from grokfetch.spec import TensorTable

TOP, LOW = 7, 1   # libtorrent file priorities: 0 skip, 1 lowest, 4 default, 7 top


@dataclass(frozen=True)
class Selection:
    """One flag per torrent file (torrent order) plus the model-order rank of tensor files."""

    wanted: list[bool]
    model_rank: list[int | None]   # position in table.model_order(); None = not a tensor file

    @property
    def count(self) -> int:
        return sum(self.wanted)


def _candidates(path: str) -> list[str]:
    """A torrent path as matched by globs: with and without the torrent's top folder."""
    out = [path]
    if "/" in path:
        out.append(path.split("/", 1)[1])
    return out


def matches(path: str, patterns: list[str]) -> bool:
    """Whether a '/'-separated torrent path matches any glob (``*`` also crosses '/')."""
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(c, pat) for pat in patterns for c in (*_candidates(path), base))


def select(paths: list[str], table: TensorTable | None, *, include: list[str] | None = None,
           exclude: list[str] | None = None, layers: list[int] | None = None) -> Selection:
    """Decide which files to fetch.

    ``layers`` keeps the tensor files of those layers plus the global tensors (embedding,
    final norm) and every non-tensor file (tokenizer, config); ``include`` keeps only matching
    files; ``exclude`` drops matching files. All three combine (AND).
    """
    keep_specs = None
    if layers is not None and table is not None:
        keep_specs = {s.index for s in table.select(layers)}
    rank_of = {}
    if table is not None:
        rank_of = {s.index: i for i, s in enumerate(table.model_order())}
    wanted: list[bool] = []
    ranks: list[int | None] = []
    for path in paths:
        spec = table.by_file(path) if table is not None else None
        ok = True
        if keep_specs is not None and spec is not None:
            ok = spec.index in keep_specs
        if include:
            ok = ok and matches(path, include)
        if exclude:
            ok = ok and not matches(path, exclude)
        wanted.append(ok)
        ranks.append(rank_of.get(spec.index) if spec is not None else None)
    return Selection(wanted, ranks)


def base_priorities(sel: Selection) -> list[int]:
    """File priorities without ordering: 4 for wanted, 0 (not created) for the rest."""
    return [4 if w else 0 for w in sel.wanted]
