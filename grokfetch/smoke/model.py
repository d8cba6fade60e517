"""The Grok-1 forward pass as pure JAX functions (``docs/grok1-format.md`` §3).

Every function works on what one device holds: inside the ``shard_map`` of
:mod:`grokfetch.smoke.engine` the attention heads, the expert FFN columns and the row blocks of
the row-parallel weights are the local shard; with one device they are the whole tensor. The
``axis`` argument names the mesh axis to reduce over (``psum``); the same code runs for N = 1.

Precisions follow the official code (``dtype=bfloat16``, grok1-format §3.2): a bf16 residual
stream and KV cache; norms, RoPE, attention logits/softmax and the router in f32; matmuls with
bf16 inputs and f32 accumulation, rounded to bf16. The MoE goes to f32 after the bf16 gate/up
projections (the reference's f32 one-hot selection promotes them): ``gelu(a)·b``, the down
projection and its all-reduce, ``bf16(g_e)·y_e`` and the sum over the top-k are f32, with one
bf16 rounding of the MoE output. Every program is compiled with :data:`XLA_OPTIONS`, so XLA
performs each bf16 rounding written here. With ``dtype=float32`` every activation is f32. The
weights are always the reference's effective weights ``bf16(int8 × scale)`` (widened to f32 in
f32 mode), so every lossless format feeds the same values. Deliberate deviations
(``docs/smoke.md``, "Deviations from the official precisions"): the attention output's
tensor-parallel partial sums are added in f32 before rounding, and the logits are returned in
f32, multiplied by the exact ``output_multiplier_scale`` (the reference rounds ``z·Eᵀ`` to bf16
and multiplies in bf16).

A weight is a dict ``{"w": array}`` (dense), ``{"w": int8, "s": bf16 scales}`` (quantized) or
``{"Q4_K": uint8 blocks}`` (a GGUF tensor as stored, see :mod:`grokfetch.smoke.ggml`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from grokfetch.smoke import ggml
from grokfetch.spec import ModelConfig

F32 = jnp.float32
BF16 = jnp.bfloat16
Params = dict[str, Any]

#: XLA options every program of this model is compiled with. With the default
#: ``xla_allow_excess_precision=true`` XLA may drop a bf16 rounding the code writes (a
#: ``convert`` to bf16 and back, e.g. between the residual add and the next norm, or after the
#: expert projections) and keep the f32 value instead; the reference's roundings then differ.
XLA_OPTIONS: dict[str, Any] = {"xla_allow_excess_precision": False}


def dequant(wd: dict, dtype: Any) -> jax.Array:
    """The effective weight ``bf16(q × s)`` of a (local shard of an) int8 or dense weight, ``(in,
    out)`` in ``dtype``.

    Scales are ``(..., B, out)``: ``B == 1`` is one scale per output channel; ``B > 1`` is the
    row-block layout, where the local rows split into ``B`` equal blocks (the shard carries the
    scale blocks of its own rows, so this holds for any N that divides the blocks). GGML blocks
    go through :func:`product` instead.
    """
    w = wd["w"]
    if "s" not in wd:
        out = w.astype(dtype)
    else:
        s = wd["s"].astype(F32)
        blocks = s.shape[-2]
        if blocks == 1:
            prod = w.astype(F32) * s
        else:
            rows, cols = w.shape[-2], w.shape[-1]
            wb = w.reshape(w.shape[:-2] + (blocks, rows // blocks, cols)).astype(F32)
            prod = (wb * s[..., :, None, :]).reshape(w.shape)
        # The int8 × bf16 product is exact in f32; one explicit rounding to bf16 gives the
        # reference weight bit for bit (a bf16 multiply could keep excess f32 precision in XLA).
        out = prod.astype(BF16).astype(dtype)
    # Materialise the weight before the matmul, so quantized and dense formats feed the dot
    # the same array and compile to the same matmul (lossless formats: identical logits).
    return lax.optimization_barrier(out)


def product(x: jax.Array, wd: dict, dtype: Any) -> jax.Array:
    """``x @ W`` in f32 (f32 accumulation) for a weight dict; ``x`` is already in the input
    precision the product wants (``dtype``, or f32 for the MoE down projection).

    GGML blocks give gguf-py's values (:mod:`grokfetch.smoke.ggml`) rounded to ``dtype``, as a
    dense GGUF read on the host would, in their stored ``(out, in)`` layout; they are contracted
    on their ``in`` axis directly, in the forms XLA's CPU backend runs as matrix products: bf16
    ``W · xᵀ`` (its bf16 matmul; ``x · Wᵀ`` would widen the weight to f32 first), and for f32
    inputs ``x · Wᵀ``, or ``W · xᵀ`` for one token (else the dequantization fuses into a scalar
    reduction loop). The bf16 products are exact in f32, so the form changes no product.
    """
    if "w" in wd:
        return jnp.matmul(x, dequant(wd, dtype).astype(x.dtype), preferred_element_type=F32)
    (qtype, blocks), = wd.items()
    w = ggml.dequantize(blocks, qtype).astype(dtype)
    contract = (((1,), (1,)), ((), ()))
    if x.dtype != F32:
        w = lax.optimization_barrier(w)
        return lax.dot_general(w, x, contract, preferred_element_type=F32).T
    w = lax.optimization_barrier(w.astype(F32))
    if x.shape[0] == 1:
        return lax.dot_general(w, x, contract).T
    return lax.dot_general(x, w, contract)


def matmul(x: jax.Array, wd: dict, dtype: Any) -> jax.Array:
    """``x @ W`` with ``dtype`` inputs and f32 accumulation, rounded to ``dtype``."""
    return product(x.astype(dtype), wd, dtype).astype(dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """``scale · x / sqrt(mean(x²) + eps)`` in f32, cast back to ``x.dtype`` (no ``1 + scale``)."""
    x32 = x.astype(F32)
    ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (scale.astype(F32) * (x32 * lax.rsqrt(ms + eps))).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotate-half RoPE over the full head dim; ``x`` is ``(T, heads, d)``, math in f32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(0, d, 2, dtype=F32) / d))
    phase = positions.astype(F32)[:, None] * inv_freq[None, :]
    phase = jnp.concatenate([phase, phase], axis=-1)[:, None, :]
    x32 = x.astype(F32)
    half = d // 2
    rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(phase) + rot * jnp.sin(phase)).astype(x.dtype)


def embed(embedding: jax.Array, tokens: jax.Array, cfg: ModelConfig, dtype: Any) -> jax.Array:
    """``E[tokens]`` cast to the stream dtype, times the embedding multiplier (in that dtype)."""
    return embedding[tokens].astype(dtype) * cfg.embedding_multiplier_scale


def unembed(h: jax.Array, final_norm: jax.Array, embedding: jax.Array, cfg: ModelConfig,
            dtype: Any) -> jax.Array:
    """Final RMSNorm, the tied output head ``z · Eᵀ`` and the output multiplier; f32 logits.

    Deviation (documented): the reference rounds ``z · Eᵀ`` to bf16 and multiplies by
    ``bf16(0.5773…) = 0.578125`` in bf16; here the product stays f32 and the multiplier is the
    f32 constant, so dumps and ``--compare`` metrics carry no bf16 quantisation of their own.
    """
    z = rms_norm(h, final_norm, cfg.rms_norm_eps)
    logits = jnp.matmul(z.astype(dtype), embedding.astype(dtype).T, preferred_element_type=F32)
    return logits * cfg.output_multiplier_scale


def attention(h: jax.Array, p: Params, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array,
              key_ok: jax.Array, cfg: ModelConfig, dtype: Any, axis: str | None):
    """Attention sublayer on the local heads; returns (partial o-projection in f32, caches).

    ``h`` (T, D) is already normed; ``k_cache``/``v_cache`` are (S, kv_local, d); ``pos`` is the
    position of ``h[0]``; ``key_ok`` (S,) marks cache slots holding a non-padding token.
    """
    t, d = h.shape[0], cfg.key_size
    q = matmul(h, p["attn_q"], dtype)
    k = matmul(h, p["attn_k"], dtype)
    v = matmul(h, p["attn_v"], dtype)
    kv_local = k.shape[-1] // d
    group = cfg.num_q_heads // cfg.num_kv_heads
    positions = pos + jnp.arange(t, dtype=jnp.int32)
    q = rope(q.reshape(t, kv_local * group, d), positions, cfg.rope_base)
    k = rope(k.reshape(t, kv_local, d), positions, cfg.rope_base)
    v = v.reshape(t, kv_local, d)
    k_cache = lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (pos, 0, 0))
    v_cache = lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (pos, 0, 0))
    # Query head h uses kv head h // group (consecutive grouping).
    qg = q.reshape(t, kv_local, group, d)
    logits = jnp.einsum("tkgd,skd->kgts", qg, k_cache.astype(dtype), preferred_element_type=F32)
    logits = logits.astype(dtype).astype(F32) * cfg.attn_output_multiplier
    cap = cfg.attn_logit_softcap
    logits = cap * jnp.tanh(logits / cap)
    s = k_cache.shape[0]
    mask = (jnp.arange(s)[None, :] <= positions[:, None]) & key_ok[None, :]
    logits = jnp.where(mask[None, None], logits, -1e30)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("kgts,skd->tkgd", weights, v_cache.astype(dtype),
                     preferred_element_type=F32).astype(dtype)
    o = product(out.reshape(t, -1), p["attn_o"], dtype)
    return o, k_cache, v_cache


def round_bf16(x: jax.Array) -> jax.Array:
    """Round f32 values to the nearest bf16 (ties to even), keeping the f32 dtype.

    ``lax.reduce_precision`` is never elided, unlike an ``astype(bf16)`` round trip that XLA may
    fold away when it allows excess precision; every result is bf16-representable.
    """
    return lax.reduce_precision(x.astype(F32), exponent_bits=8, mantissa_bits=7)


def router_topk(h: jax.Array, router: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """The f32 softmax router's top-k: ``(T, k)`` f32 gates (no renormalisation) and indices."""
    probs = jax.nn.softmax(jnp.matmul(h.astype(F32), router.astype(F32)), axis=-1)
    return lax.top_k(probs, cfg.num_selected_experts)


def moe(h: jax.Array, p: Params, cfg: ModelConfig, dtype: Any, axis: str | None) -> jax.Array:
    """The MoE output, already reduced over ``axis``, in ``dtype``.

    ``lax.scan`` over the experts keeps one expert's dequantized weights live at a time. With
    several tokens every expert runs on every token (as in the reference) and only the top-k
    outputs are used; for one token (decode) the scan runs over its k selected experts only.
    Each ``y_e`` is computed by the same code either way, so the values are the same.

    Precisions are the reference's (grok1-format §3.2 step 10) in both modes: the projections
    ``a = h·W_gate`` and ``b = h·W_up`` are rounded to ``dtype``; from there everything is f32:
    ``gelu(a) ⊙ b``, the down projection (f32 input, f32 output, f32 ``psum`` of the row-block
    partials), the gate products ``bf16(g)·y_e`` (the gate rounded to bf16 in bf16 mode) and
    their sum over the top-k; one rounding to ``dtype`` at the end.
    """
    gates, idx = router_topk(h, p["router"]["w"], cfg)
    if jnp.dtype(dtype) == jnp.dtype(BF16):
        gates = round_bf16(gates)
    weights = (p["moe_gate"], p["moe_up"], p["moe_down"])

    def one_expert(gate_w, up_w, down_w):
        a = matmul(h, gate_w, dtype).astype(F32)
        b = matmul(h, up_w, dtype).astype(F32)
        return product(jax.nn.gelu(a, approximate=True) * b, down_w, dtype)

    decode = h.shape[0] == 1
    if decode:  # the k selected experts' weights, indexed in the stacks
        _, ys = lax.scan(lambda c, e: (c, one_expert(*jax.tree.map(lambda w: w[e], weights))),
                         None, idx[0])
    else:
        _, ys = lax.scan(lambda c, ws: (c, one_expert(*ws)), None, weights)
    if axis is not None:
        ys = lax.psum(ys, axis)  # the tensor-parallel sum of (E or k, T, D) partials, in f32
    # (T, k, D): y_e of the selected experts
    chosen = jnp.swapaxes(ys, 0, 1) if decode else ys[idx, jnp.arange(h.shape[0])[:, None]]
    # The same ops as the reference (a product, then a sum over the top-k axis), so XLA fuses
    # them the same way (on CPU the second product goes into a fused multiply-add).
    return jnp.sum(gates[:, :, None] * chosen, axis=1).astype(dtype)


def layer(h: jax.Array, p: Params, k_cache: jax.Array, v_cache: jax.Array, pos: jax.Array,
          key_ok: jax.Array, cfg: ModelConfig, dtype: Any, axis: str | None = None):
    """One decoder layer with the four sandwich RMSNorms; two all-reduces over ``axis`` (the
    attention output, and the MoE's stack of per-expert outputs)."""
    eps = cfg.rms_norm_eps

    def reduce(x):
        return lax.psum(x, axis) if axis is not None else x

    a = rms_norm(h, p["norm_attn_in"]["w"], eps)
    o, k_cache, v_cache = attention(a, p, k_cache, v_cache, pos, key_ok, cfg, dtype, axis)
    h = h + rms_norm(reduce(o).astype(dtype), p["norm_attn_out"]["w"], eps)
    m = rms_norm(h, p["norm_moe_in"]["w"], eps)
    y = moe(m, p, cfg, dtype, axis)  # reduced inside, per expert
    h = h + rms_norm(y, p["norm_moe_out"]["w"], eps)
    return h, k_cache, v_cache
