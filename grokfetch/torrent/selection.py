"""Which files of a torrent to fetch, and in what order (``--include/--exclude``, ``--layers``,
``--order model``).

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


def model_order_priorities(sel: Selection, done: list[bool], sizes: list[int], window: int,
                           lookahead: int) -> list[int]:
    """Priorities that make files complete in model order.

    Wanted, unfinished files are sorted by model rank (non-tensor files first: they are small
    and conversion needs the tokenizer). Files in the first ``lookahead`` bytes of that queue
    get 7 for the first ``window`` files, 6 for the next ``window``, ... down to 1; files past
    the lookahead get 0 for now and move up as files finish. Finished files keep 1, unwanted 0.
    Apply these as *piece* priorities (:func:`piece_priorities`): a file priority of 0 would
    send boundary data to the part file, and flipping it later made libtorrent 2.1.1 fail with
    "file too short".
    """
    order = [i for i, w in enumerate(sel.wanted) if w and not done[i]]
    order.sort(key=lambda i: (-1 if sel.model_rank[i] is None else sel.model_rank[i], i))
    prios = [LOW if w else 0 for w in sel.wanted]
    ahead = 0
    for pos, i in enumerate(order):
        if pos > 0 and ahead >= lookahead:
            prios[i] = 0
        else:
            prios[i] = max(LOW, TOP - pos // max(1, window))
        ahead += sizes[i]
    return prios


def piece_priorities(file_prios: list[int], piece_ranges: list[tuple[int, int]],
                     num_pieces: int) -> list[int]:
    """Per-piece priority = the highest priority of the files it holds bytes of."""
    out = [0] * num_pieces
    for prio, (first, last) in zip(file_prios, piece_ranges, strict=True):
        if prio:
            for p in range(first, last + 1):
                if out[p] < prio:
                    out[p] = prio
    return out
