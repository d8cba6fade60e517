"""An independent float64 numpy forward pass of Grok-1, written from docs/grok1-format.md §2-§3.

It shares nothing with ``grokfetch.smoke``: no cache, no sharding, every head and expert in a
plain loop, the whole sequence at once. File indices come from the format doc's own formula
(``base(L) = 2 + 12 · rank(str(L))`` with the 12 slots in sorted Haiku-key order), not from the
tensor table, so a layer-mapping bug in the table or the loader cannot hide here. The int8 ×
scale product is its own too (:func:`dequantize`, from §2.4); only the pickle decoding (the
reader's views of the stored int8 weight, bf16 scales and float32 arrays) is shared.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from grokfetch.checkpoint.reader import open_checkpoint

# Per-layer slot offsets: sorted Haiku keys (grok1-format.md §2.3).
OFFSETS = {"gate": 0, "down": 1, "up": 2, "k": 3, "o": 4, "q": 5, "v": 6,
           "n0": 7, "n1": 8, "n2": 9, "n3": 10, "router": 11}


def file_index(layer: int, slot: str, num_layers: int) -> int:
    rank = sorted(str(k) for k in range(num_layers)).index(str(layer))
    return 2 + 12 * rank + OFFSETS[slot]


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """bf16(q × scale) for int8 weights in the stored (in, out) layout (experts leading), §2.4:
    input row ``i`` of a matrix whose scales hold ``blocks`` rows takes scale row
    ``i // (in / blocks)`` (1 block: one scale per output channel). The product is formed in
    float64 and rounded once to bf16, as the reference's bf16 multiply of two bf16 values does."""
    rows, blocks = q.shape[-2], scales.shape[-2]
    s = np.repeat(np.asarray(scales, np.float64), rows // blocks, axis=-2)
    return (np.asarray(q, np.float64) * s).astype(ml_dtypes.bfloat16)


def load(path, layers: int | None = None) -> tuple[dict, object]:
    """float64 parameters of the first ``layers`` layers, read by the doc's file indices."""
    ck = open_checkpoint(path)
    cfg = ck.config
    n = cfg.num_layers if layers is None else layers

    def read(index: int) -> np.ndarray:
        with ck.open(ck.table[index]) as tf:
            if tf.scales is None:
                return np.array(tf.weight, np.float64)
            return dequantize(tf.weight, tf.scales).astype(np.float64)

    params = {"embed": read(0), "final_norm": read(1), "layers": []}
    for layer in range(n):
        params["layers"].append({slot: read(file_index(layer, slot, cfg.num_layers))
                                 for slot in OFFSETS})
    return params, cfg


def rms(x, scale, eps):
    return scale * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rotary(x, positions, base):
    """NeoX rotate-half over the full head dim; x is (T, d)."""
    d = x.shape[-1]
    inv = 1.0 / base ** (np.arange(0, d, 2) / d)
    ang = positions[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    x1, x2 = x[:, : d // 2], x[:, d // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def attention(a: np.ndarray, p: dict, cfg, tokens: np.ndarray) -> np.ndarray:
    """The attention sublayer's output projection ``o`` (T, D) for the normed input ``a``."""
    t = len(tokens)
    d, hq, hkv = cfg.key_size, cfg.num_q_heads, cfg.num_kv_heads
    group = hq // hkv
    pos = np.arange(t, dtype=np.float64)
    allowed = np.tril(np.ones((t, t), bool)) & (tokens != cfg.pad_token_id)[None, :]
    q, k, v = a @ p["q"], a @ p["k"], a @ p["v"]
    heads = []
    for i in range(hq):
        j = i // group  # query head i reads kv head i // group
        qi = rotary(q[:, i * d:(i + 1) * d], pos, cfg.rope_base)
        kj = rotary(k[:, j * d:(j + 1) * d], pos, cfg.rope_base)
        s = (qi @ kj.T) * cfg.attn_output_multiplier
        s = cfg.attn_logit_softcap * np.tanh(s / cfg.attn_logit_softcap)
        s = np.where(allowed, s, -1e30)
        heads.append(softmax(s) @ v[:, j * d:(j + 1) * d])
    return np.concatenate(heads, -1) @ p["o"]


def forward(params: dict, cfg, tokens: list[int]) -> np.ndarray:
    """Logits ``[T, vocab]`` (float64) for the whole token sequence."""
    tokens = np.asarray(tokens)
    t = len(tokens)
    eps = cfg.rms_norm_eps
    h = params["embed"][tokens] * cfg.embedding_multiplier_scale
    for p in params["layers"]:
        h = h + rms(attention(rms(h, p["n0"], eps), p, cfg, tokens), p["n1"], eps)
        m = rms(h, p["n2"], eps)
        probs = softmax(m @ p["router"])
        moe = np.zeros_like(m)
        for row in range(t):
            top = np.argsort(-probs[row], kind="stable")[: cfg.num_selected_experts]
            for e in top:  # gates are the raw softmax probabilities (no renormalisation)
                x = m[row]
                y = (gelu_tanh(x @ p["gate"][e]) * (x @ p["up"][e])) @ p["down"][e]
                moe[row] += probs[row, e] * y
        h = h + rms(moe, p["n3"], eps)
    z = rms(h, params["final_norm"], eps)
    return (z @ params["embed"].T) * cfg.output_multiplier_scale


# --- the reference's bf16 rounding sequence of the MoE ----------------------------------------


def to_bf16(x) -> np.ndarray:
    """Round to the nearest bf16 (ties to even); float32 values."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def to_f32(x) -> np.ndarray:
    """Round float64 values to float32, as float64 (one f32 operation's result)."""
    return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def moe_bf16(m: np.ndarray, router: np.ndarray, gate: np.ndarray, up: np.ndarray,
             down: np.ndarray, k: int) -> np.ndarray:
    """The official MoE in bf16 mode, one rounding at a time, for bf16 input rows ``m`` (T, D).

    Written from the official ``model.py`` (``MoELayer``, ``Router``, ``Linear``), see
    grok1-format.md §3.2 step 10: the router in f32; ``a = m·W_gate``, ``b = m·W_up`` rounded to
    bf16; the f32 one-hot selection promotes them to f32, so ``gelu(a)·b``, the down projection
    and its sum are f32; the gates are rounded to bf16, each product and the sum over the top-k
    (in top-k order) are f32, and the output is rounded to bf16 once. Each f32 operation is
    computed in float64 and rounded to f32 (exact for a product or a sum of two f32 values; a
    dot product is rounded once, so its f32 summation order is not modelled). Weights are the
    effective (bf16-valued) weights; returns float32 values of bf16 numbers.
    """
    m64 = np.asarray(m, np.float64)
    probs = to_f32(softmax(to_f32(m64 @ np.asarray(router, np.float64))))
    out = np.empty(m64.shape, np.float32)
    for row in range(len(m64)):
        top = np.argsort(-probs[row], kind="stable")[:k]
        acc = None
        for e in top:
            a = to_bf16(to_f32(m64[row] @ gate[e])).astype(np.float64)
            b = to_bf16(to_f32(m64[row] @ up[e])).astype(np.float64)
            x = to_f32(to_f32(gelu_tanh(a)) * b)
            y = to_f32(x @ np.asarray(down[e], np.float64))
            term = to_f32(to_bf16(probs[row, e]).astype(np.float64) * y)
            acc = term if acc is None else to_f32(acc + term)
        out[row] = to_bf16(acc)
    return out


def rms_f32(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm of bf16 values in f32, rounded to bf16 (the reference casts back)."""
    return to_bf16(to_f32(rms(np.asarray(x, np.float64), scale, eps))).astype(np.float64)


def forward_bf16(params: dict, cfg, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[T, vocab]`` of the official bf16 rounding sequence (grok1-format §3.2).

    Every activation the reference holds in bf16 is rounded to bf16 here (embedding, q/k/v,
    RoPE output, the bf16 attention logits and weights, each head's output, ``o``, each
    residual add, the norms' outputs, the MoE by :func:`moe_bf16`). Returns two sets of
    logits: the output head in f32 with the exact multiplier, as the engine does (its
    documented deviation, so a comparison measures the layers), and the reference's head:
    ``z·Eᵀ`` rounded to bf16, times ``bf16(output_multiplier_scale)`` in bf16.
    """
    tokens = np.asarray(tokens)
    t = len(tokens)
    d, hq, hkv = cfg.key_size, cfg.num_q_heads, cfg.num_kv_heads
    group, eps, cap = hq // hkv, cfg.rms_norm_eps, cfg.attn_logit_softcap
    pos = np.arange(t, dtype=np.float64)
    allowed = np.tril(np.ones((t, t), bool)) & (tokens != cfg.pad_token_id)[None, :]

    def bdot(x, w):  # bf16 inputs, f32 accumulation, bf16 result
        return to_bf16(to_f32(x @ w)).astype(np.float64)

    h = to_bf16(to_bf16(params["embed"][tokens]) * to_bf16(cfg.embedding_multiplier_scale))
    h = h.astype(np.float64)
    for p in params["layers"]:
        a = rms_f32(h, p["n0"], eps)
        q, k, v = bdot(a, p["q"]), bdot(a, p["k"]), bdot(a, p["v"])
        heads = []
        for i in range(hq):
            j = i // group
            qi = to_bf16(to_f32(rotary(q[:, i * d:(i + 1) * d], pos, cfg.rope_base)))
            kj = to_bf16(to_f32(rotary(k[:, j * d:(j + 1) * d], pos, cfg.rope_base)))
            s = to_f32(bdot(qi, kj.T) * np.float32(cfg.attn_output_multiplier))
            s = np.where(allowed, to_f32(cap * np.tanh(s / cap)), -1e30)
            w = to_bf16(to_f32(softmax(s))).astype(np.float64)
            heads.append(bdot(w, v[:, j * d:(j + 1) * d]))
        o = bdot(np.concatenate(heads, -1), p["o"])
        h = to_bf16(h + rms_f32(o, p["n1"], eps)).astype(np.float64)
        m = rms_f32(h, p["n2"], eps)
        y = moe_bf16(m, p["router"], p["gate"], p["up"], p["down"], cfg.num_selected_experts)
        h = to_bf16(h + rms_f32(y, p["n3"], eps)).astype(np.float64)
    z = rms_f32(h, params["final_norm"], eps)
    zet = to_f32(z @ to_bf16(params["embed"]).astype(np.float64).T)
    return zet * cfg.output_multiplier_scale, to_bf16(to_bf16(zet) * to_bf16(cfg.output_multiplier_scale))
