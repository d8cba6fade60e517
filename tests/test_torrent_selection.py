"""File selection and model-order priorities (pure functions, no network)."""

from __future__ import annotations

from grokfetch.spec import TensorTable, preset
from grokfetch.torrent.selection import matches, model_order_priorities, piece_priorities, select

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


def test_model_order_priorities_front_is_top_and_rest_waits():
    sel = select(PATHS, TABLE)
    sizes = [s.file_bytes for s in TABLE] + [700, 9000]
    done = [False] * len(PATHS)
    front = [s.index for s in TABLE.select([0])]             # globals + layer 0
    lookahead = sum(sizes[i] for i in front) + 9700
    prios = model_order_priorities(sel, done, sizes, window=2, lookahead=lookahead)
    assert prios[-2] == prios[-1] == 7                       # non-tensor files first
    assert all(prios[i] > 0 for i in front)
    assert all(prios[i] == 0 for i in TABLE.layer_range(11))  # far ahead: waits
    ranked = [s.index for s in TABLE.model_order()]
    assert [prios[i] for i in ranked] == sorted((prios[i] for i in ranked), reverse=True)
    for i in front + [len(PATHS) - 2, len(PATHS) - 1]:       # finishing the front moves the queue up
        done[i] = True
    later = model_order_priorities(sel, done, sizes, window=2, lookahead=lookahead)
    layer1 = TABLE.layer_range(1)
    assert all(prios[i] == 0 for i in layer1[4:]) and all(later[i] > 0 for i in layer1)
    assert piece_priorities([7, 0, 3], [(0, 1), (1, 2), (2, 4)], 6) == [7, 7, 3, 3, 3, 0]
