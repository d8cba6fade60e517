"""File selection and the model-order piece gradient (pure functions, no network)."""

from __future__ import annotations

from grokfetch.spec import TensorTable, preset
from grokfetch.torrent.order import gradient, window_for
from grokfetch.torrent.selection import matches, select

TABLE = TensorTable(preset("tiny"))
PATHS = [f"grok-tiny/{s.relpath}" for s in TABLE] + ["grok-tiny/model-config.json",
                                                     "grok-tiny/tokenizer.model"]


def test_globs_match_with_and_without_top_folder():
    assert matches("grok-1/ckpt-0/tensor00001_000", ["ckpt-0/*"])
    assert matches("grok-1/ckpt-0/tensor00001_000", ["grok-1/ckpt-0/*"])
    assert matches("grok-1/ckpt-0/tensor00001_000", ["tensor0000?_000"])
    assert not matches("grok-1/tokenizer.model", ["ckpt-0/*"])


def test_layers_keep_globals_and_non_tensor_files():
    sel = select(PATHS, TABLE, layers=[3])
    kept = {p.rsplit("/", 1)[-1] for p, w in zip(PATHS, sel.wanted, strict=True) if w}
    want = {s.file for s in TABLE.select([3])} | {"model-config.json", "tokenizer.model"}
    assert kept == want and len(want) == 2 + 12 + 2
    sel = select(PATHS, TABLE, layers=[3], exclude=["*.model"])
    assert "tokenizer.model" not in {p.rsplit("/", 1)[-1] for p, w in zip(PATHS, sel.wanted, strict=True) if w}


def test_model_order_gradient_covers_every_wanted_piece_in_model_order():
    sel = select(PATHS, TABLE)
    # one piece per tensor file; the config shares the last tensor file's piece
    shared = len(TABLE) - 1
    ranges = [(i, i) for i in range(len(TABLE))] + [(shared, shared), (len(TABLE), len(TABLE))]
    n = len(TABLE) + 1
    have = [False] * n
    prios = gradient(sel, ranges, have, window=2)
    assert prios[shared] == prios[len(TABLE)] == 7                 # non-tensor files first
    ranked = [ranges[s.index][0] for s in TABLE.model_order() if ranges[s.index][0] != shared]
    assert [prios[p] for p in ranked] == sorted((prios[p] for p in ranked), reverse=True)
    # steps double (2, 4, 8, ... pieces) and nothing waits at 0
    assert [prios.count(level) for level in (7, 6, 5, 4, 3, 2)] == [2, 4, 8, 16, 32, 64]
    assert min(prios) == 1 and prios.count(1) == n - 126
    for p in ranked[:5]:                     # pieces arrive: the gradient moves up
        have[p] = True
    later = gradient(sel, ranges, have, window=2)
    assert all(later[p] == 1 for p in ranked[:5]) and later[ranked[5]] == 6 > prios[ranked[5]]
    skipped = select(PATHS, TABLE, layers=[0])
    unwanted = [ranges[s.index][0] for s in TABLE if s.layer not in (None, 0)]
    only0 = gradient(skipped, ranges, [False] * n, 4)
    assert all(only0[q] == 0 for q in unwanted if q != shared)
    # pieces being fetched keep the top and take no position: the next free ones lead
    busy = {ranked[5], ranked[6]}
    fetching = gradient(sel, ranges, have, 2, busy)
    assert fetching[ranked[5]] == fetching[ranked[6]] == 7 and fetching[ranked[7]] == 6
    # the top step holds what peers ask for in a quarter second at the current rate
    assert window_for(download_rate=0, piece_length=1 << 16) == 1
    assert window_for(download_rate=24e6, piece_length=1 << 16) == 128
    assert window_for(download_rate=24e6, piece_length=16 << 20) == 1
