"""``--order model`` at swarm speed: piece priorities that finish files in model order while
every connected peer always has wanted pieces to serve.

The old scheme requested 16 pieces at a time and moved on per finished file, which starved a
swarm of many peers (25-35x slower than rarest-first on loopback). Here every wanted piece has a
priority: a gradient over the whole remaining selection in model order (:func:`gradient`), in
steps that double in size -- fine at the head, where the next pieces are picked, coarse further
on -- scaled by what the swarm keeps in flight (connected peers, and the bytes libtorrent keeps
requested at the current rate), and re-applied as pieces arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grokfetch.torrent.selection import LOW, TOP, Selection

PEER_PIPELINE = 4 << 20  # bytes a peer keeps requested, before its rate is known
REQUEST_SECONDS = 1      # request_queue_time in model order (libtorrent's default: 3 s)
HEAD_SHARE = 16          # the top step holds 1/16 of what is in flight; all six steps ~4x it


def gradient(sel: Selection, ranges: list[tuple[int, int]], have: list[bool],
             window: int) -> list[int]:
    """Piece priorities for model order.

    Wanted files are walked in model order (non-tensor files first: they are small and
    conversion needs the tokenizer); each piece not yet had takes the next position the first
    time a file holding it comes up. Steps double: positions ``[0, w)`` get 7, ``[w, 3w)`` 6,
    ``[3w, 7w)`` 5, … ``[31w, 63w)`` 2, and everything after gets 1 -- so no wanted piece waits
    at 0 and a peer with nothing left at the top takes the next step down. Pieces already had
    get 1; pieces of unwanted files 0 (unless shared with a wanted file).

    Apply as *piece* priorities: a file priority of 0 would send boundary data to the part
    file, and raising it again later made libtorrent 2.1.1 fail with "file too short".
    """
    out = [0] * len(have)
    order = sorted((i for i, w in enumerate(sel.wanted) if w),
                   key=lambda i: (-1 if sel.model_rank[i] is None else sel.model_rank[i], i))
    pos = 0
    for i in order:
        first, last = ranges[i]
        for p in range(first, last + 1):
            if out[p]:
                continue
            if have[p]:
                out[p] = LOW
            else:
                out[p] = max(LOW, TOP - (pos // window + 1).bit_length() + 1)
                pos += 1
    return out


def window_for(peers: int, download_rate: float, piece_length: int) -> int:
    """The top step's size ``w``: 1/16 of what the swarm keeps in flight (every peer's pipeline
    at the current rate), so the six steps (63 ``w``) hold about four times that. Peers fill
    their pipelines in model order and do not reach the lowest step, whose pieces come in random
    order from the whole rest of the model. A power of two, so small swings of the rate do not
    re-prioritize."""
    in_flight = max(peers * PEER_PIPELINE, download_rate * REQUEST_SECONDS) / max(1, piece_length)
    need = max(1, -(-int(in_flight) // HEAD_SHARE))
    return 1 << (need - 1).bit_length()


@dataclass
class ModelOrder:
    """Keeps a torrent's piece priorities in model order (see the module docstring)."""

    sel: Selection
    ranges: list[tuple[int, int]]         # first and last piece of each file
    piece_length: int
    num_pieces: int
    applied: tuple[int, int] | None = field(default=None)   # (pieces had, window) last applied

    def apply(self, h, st, force: bool = False) -> None:
        """Re-apply the gradient when pieces arrived or the window changed (or ``force``)."""
        have = list(st.pieces) or [False] * self.num_pieces
        window = window_for(st.num_peers, st.download_payload_rate, self.piece_length)
        key = (sum(have), window)
        if force or key != self.applied:
            self.applied = key
            h.prioritize_pieces(gradient(self.sel, self.ranges, have, window))
