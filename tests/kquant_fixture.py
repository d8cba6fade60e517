"""A fixture model whose every split of the row-parallel weights holds whole 256-value blocks.

GGUF K-quants store blocks of 256 values along each matrix's input axis; a device can keep its
share as stored bytes only when that share is whole blocks. The presets are too narrow for that
(``mini``'s FFN is 1368 wide), so the smoke tests and ``bench/bench_smoke.py`` use this config:
``emb_size = q_size = ffn_size = width``, 8 experts (Grok-1's recipe bumps), 8 kv heads.
"""

from __future__ import annotations

import dataclasses

from grokfetch.spec import ModelConfig, preset


def blocks_config(width: int = 512, layers: int = 4, name: str = "k256") -> ModelConfig:
    """``width``-wide model: K-quant blocks split whole over ``width // 256`` devices."""
    return dataclasses.replace(preset("mini"), name=name, vocab_size=512, emb_size=width,
                               key_size=width // 16, num_q_heads=16, num_kv_heads=8,
                               widening_factor=1.5, num_layers=layers, sequence_len=128)
