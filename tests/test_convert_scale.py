"""Convert at Grok-1 scale: the thread default, and one real-shaped layer to Q4_K_M in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

from grokfetch.checkpoint.reader import BF16, open_checkpoint
from grokfetch.checkpoint.realshape import write_real_layers
from grokfetch.convert.base import ConvertOptions, default_jobs
from grokfetch.convert.kquants import KQUANTS
from grokfetch.spec import GROK_1, PRESETS


def test_jobs_default_to_the_cores():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_jobs() == cores
    cfg = PRESETS["tiny"]
    assert ConvertOptions().threads == ConvertOptions().normalized(cfg).threads == cores
    assert ConvertOptions(workers=3).normalized(cfg).threads == 3


def _reference_rows(ckpt, spec, rows: slice, expert: int | None = None) -> np.ndarray:
    """GGUF rows (output channels) of a transposed int8 tensor: the release's effective weight
    ``bf16(int8 * scale)`` (the product in float64, exact; then rounded to bf16), as float32."""
    with ckpt.open(spec) as tf:
        w = tf.weight if expert is None else tf.weight[expert]
        s = tf.scales if expert is None else tf.scales[expert]
        cols = w[:, rows].astype(np.float64)  # (in, k): output channels are columns
        blocks = s.shape[-2]
        sc = np.repeat(s[:, rows].astype(np.float64), cols.shape[0] // blocks, axis=0)
        return (cols * sc).T.astype(np.float32).astype(BF16).astype(np.float32)


@pytest.mark.slow
def test_one_real_layer_to_q4_k_m_in_bounded_memory(tmp_path):
    """``convert --to gguf --bits 4`` of Grok-1's layer 0 (real shapes, one expert filled) in a
    fresh process: peak RSS under 1 GiB; rows of the K-quant tensors (per-channel and row-block
    scales, first and last output channels) equal to quantizing the independently dequantized
    source rows; their decoded error that of Q4_K / Q6_K."""
    ckpt_dir = tmp_path / "grok-1-layer0"
    specs = write_real_layers(ckpt_dir, 1, experts=1)
    out = tmp_path / "gguf"
    cmd = [sys.executable, "-m", "grokfetch", "convert", str(ckpt_dir), "--out", str(out), "--to", "gguf",
           "--bits", "4", "--layers", "0", "--experts", "0", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    report = report.get("result", report)
    assert report["peak_rss_bytes"] < 2**30, report["peak_rss_bytes"]

    ck = open_checkpoint(ckpt_dir)
    assert ck.config == GROK_1
    by_slot = {s.slot.key: s for s in specs if s.layer == 0}
    tensors = {t.name: t for t in GGUFReader(out / report["files"][0]["path"]).tensors}
    gate, q = tensors["blk.0.ffn_gate_exps.weight"], tensors["blk.0.attn_q.weight"]
    down = tensors["blk.0.ffn_down_exps.weight"]
    assert (gate.tensor_type, q.tensor_type, down.tensor_type) == (T.Q4_K, T.Q4_K, T.Q6_K)
    assert tensors["token_embd.weight"].tensor_type == T.Q6_K
    assert [int(d) for d in gate.shape] == [6144, 32768, 1]  # ne0, ne1, experts
    bound = {T.Q4_K: 0.075, T.Q6_K: 0.019}  # docs/kquants.md, N(0,1) round trip
    for t, spec, expert in ((gate, by_slot["moe_gate"], 0), (q, by_slot["attn_q"], None),
                            (down, by_slot["moe_down"], 0)):  # per-channel and row-block scales
        data = t.data.reshape(-1, t.data.shape[-1])
        for rows in (slice(0, 4), slice(4093, 4096)):
            ref = _reference_rows(ck, spec, rows, expert)
            assert np.array_equal(data[rows], KQUANTS[t.tensor_type](ref)), (t.name, rows)
            got = dequantize(data[rows], t.tensor_type)
            err = np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref**2))
            assert err < bound[t.tensor_type], (t.name, err)
