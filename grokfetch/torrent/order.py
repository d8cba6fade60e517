"""``--order model`` at swarm speed: piece priorities that finish files in model order while
every connected peer always has wanted pieces to serve.

The old scheme requested 16 pieces at a time and moved on per finished file, which starved a
swarm of many peers (25-35x slower than rarest-first on loopback). Here every wanted piece has a
priority: a gradient over the whole remaining selection in model order (:func:`gradient`), in
steps that double in size. The gradient counts only pieces nobody is fetching yet, and the top
step holds what peers ask for between two re-applications, so every new request goes to one of
the next pieces in model order while peers keep full pipelines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from grokfetch.torrent.selection import LOW, TOP, Selection

REQUEST_SECONDS = 1      # request_queue_time in model order (libtorrent's default: 3 s)
REAPPLY_SECONDS = 0.25   # re-applied at least this often while pieces arrive


def gradient(sel: Selection, ranges: list[tuple[int, int]], have: list[bool],
             window: int, busy: set[int] = frozenset()) -> list[int]:
    """Piece priorities for model order.

    Wanted files are walked in model order (non-tensor files first: they are small and
    conversion needs the tokenizer); each piece neither had nor ``busy`` (being downloaded)
    takes the next position the first time a file holding it comes up. Steps double:
    positions ``[0, w)`` get 7, ``[w, 3w)`` 6, ``[3w, 7w)`` 5, … ``[31w, 63w)`` 2, and
    everything after gets 1 -- so no wanted piece waits at 0, and the next piece a peer asks for
    is one of the next ``w`` in model order. Busy pieces keep 7, pieces already had get 1,
    pieces of unwanted files 0 (unless shared with a wanted file).

    Apply as *piece* priorities: a file priority of 0 would send boundary data to the part
    file, and raising it again later made libtorrent 2.1.1 fail with "file too short".
    """
    out = [0] * len(have)
    for pos, p in enumerate(queue(sel, ranges, have, busy)):
        out[p] = max(LOW, TOP - (pos // window + 1).bit_length() + 1)
    for i, w in enumerate(sel.wanted):
        if w:
            for p in range(ranges[i][0], ranges[i][1] + 1):
                out[p] = out[p] or (TOP if p in busy and not have[p] else LOW)
    return out


def queue(sel: Selection, ranges: list[tuple[int, int]], have: list[bool],
          busy: set[int] = frozenset()) -> list[int]:
    """The wanted pieces neither had nor busy, in model order of the first file holding each."""
    order = sorted((i for i, w in enumerate(sel.wanted) if w),
                   key=lambda i: (-1 if sel.model_rank[i] is None else sel.model_rank[i], i))
    seen: set[int] = set()
    out = []
    for i in order:
        for p in range(ranges[i][0], ranges[i][1] + 1):
            if p not in seen and not have[p] and p not in busy:
                seen.add(p)
                out.append(p)
    return out


def window_for(download_rate: float, piece_length: int) -> int:
    """The top step's size ``w``: the pieces peers ask for between two re-applications (at the
    current rate), so each request takes one of the next pieces in model order. A power of two,
    so small swings of the rate do not re-prioritize."""
    need = max(1, int(download_rate * REAPPLY_SECONDS / max(1, piece_length)) + 1)
    return 1 << (need - 1).bit_length()


@dataclass
class ModelOrder:
    """Keeps a torrent's piece priorities in model order (see the module docstring)."""

    sel: Selection
    ranges: list[tuple[int, int]]         # first and last piece of each file
    piece_length: int
    num_pieces: int
    applied: tuple[int, int, frozenset] | None = None   # (pieces had, window, busy) last applied
    at: float = 0.0

    def apply(self, h, st, force: bool = False) -> None:
        """Re-apply the gradient when pieces arrived or started, or the window changed."""
        busy = frozenset(p["piece_index"] for p in h.get_download_queue())
        window = window_for(st.download_payload_rate, self.piece_length)
        key = (st.num_pieces, window, busy)
        now = time.monotonic()
        if force or (key != self.applied and now - self.at >= 0.02):
            self.applied, self.at = key, now
            have = list(st.pieces) or [False] * self.num_pieces
            h.prioritize_pieces(gradient(self.sel, self.ranges, have, window, set(busy)))
