"""The sharded smoke engine: jitted embed / layer / head programs and greedy generation.

One ``shard_map``'d decoder layer (two all-reduces over ``model``) is compiled per token count
and per distinct *layer signature* (the forms its tensors are placed in: a Q4_K_M GGUF has
Q4_K and Q6_K expert layers, so two), and called in a host loop over the layers ("perlayer"
driver), with the layer's KV cache donated. The embedding and the output head are plain jitted functions on sharded arrays. Only
two token counts are ever compiled: the prefill bucket (the whole cache length; prompts are
right-padded with the pad token, which is masked as a key) and single-token decode.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grokfetch.smoke import model
from grokfetch.smoke.mesh import CACHE_AXES, MODEL, FormFn, placed_axes, placed_struct, uniform_forms
from grokfetch.spec import LAYER_SLOTS, ModelConfig, TensorSpec, TensorTable

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
#: The forms of one layer's tensors, in ``LAYER_SLOTS`` order.
Signature = tuple[str, ...]


def layer_signatures(table: TensorTable, forms: str | FormFn, layers: int | None = None) -> list[Signature]:
    """Each layer's signature for ``layers`` layers (default: all of the table's)."""
    form_of = uniform_forms(forms) if isinstance(forms, str) else forms
    count = table.config.num_layers if layers is None else layers
    return [tuple(form_of(table.get(slot.key, i)) for slot in LAYER_SLOTS) for i in range(count)]


@dataclass
class Engine:
    """Compiled programs for one (config, mesh, dtype, per-layer forms, cache length).

    ``forms``: one kind for every quantized tensor (``"int8"``/``"dense"``), or each layer's
    :data:`Signature` (:func:`layer_signatures`); the engine runs that many layers at most.
    """

    table: TensorTable
    mesh: Any
    dtype_name: str
    forms: str | list[Signature]
    cache_len: int
    compiled: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    compile_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.cfg: ModelConfig = self.table.config
        self.dtype = DTYPES[self.dtype_name]
        self.n = self.mesh.devices.size
        self.cache_shape = (self.cache_len, self.cfg.num_kv_heads, self.cfg.key_size)
        if isinstance(self.forms, str):
            self.forms = layer_signatures(self.table, self.forms)
        self.signatures: list[Signature] = list(dict.fromkeys(self.forms))

    def form(self, spec: TensorSpec) -> str:
        """The form ``spec`` is placed in on this engine's devices."""
        if spec.layer is None or not spec.quantized:
            return "dense"
        return self.forms[spec.layer][[s.key for s in LAYER_SLOTS].index(spec.slot.key)]

    def _layer_key(self, name: str, layer: int) -> str:
        j = self.signatures.index(self.forms[layer])
        return f"{name}/layer" + (f".{j}" if j else "")

    # -- shardings and abstract arguments ------------------------------------------------------

    def sharding(self, axes: tuple) -> NamedSharding:
        return NamedSharding(self.mesh, P(*axes))

    def slot_sharding(self, slot: str, form: str = "dense") -> NamedSharding:
        return self.sharding(placed_axes(slot, form))

    def _struct(self, spec: TensorSpec, form: str) -> dict[str, tuple]:
        return {k: (shape, jnp.dtype(self.dtype if dt == "compute" else dt))
                for k, (shape, dt) in placed_struct(spec, self.n, form, "compute").items()}

    def abstract_layer(self, sig: Signature) -> dict:
        out = {}
        for slot, form in zip(LAYER_SLOTS, sig, strict=True):
            sh = self.slot_sharding(slot.key, form)
            st = self._struct(self.table.get(slot.key, 0), form)
            out[slot.key] = {k: jax.ShapeDtypeStruct(shape, dt, sharding=sh) for k, (shape, dt) in st.items()}
        return out

    def abstract_global(self, slot: str) -> jax.ShapeDtypeStruct:
        (shape, dt), = self._struct(self.table.get(slot), "dense").values()
        return jax.ShapeDtypeStruct(shape, dt, sharding=self.slot_sharding(slot))

    def abstract_cache(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.cache_shape, self.dtype, sharding=self.sharding(CACHE_AXES))

    # -- programs --------------------------------------------------------------------------------

    def _layer_fn(self, sig: Signature):
        cfg, dtype = self.cfg, self.dtype
        layer_specs = {slot.key: {k: P(*placed_axes(slot.key, form))
                                  for k in self._struct(self.table.get(slot.key, 0), form)}
                       for slot, form in zip(LAYER_SLOTS, sig, strict=True)}
        cache_spec = P(*CACHE_AXES)
        body = partial(model.layer, cfg=cfg, dtype=dtype, axis=MODEL)
        return jax.shard_map(body, mesh=self.mesh,
                             in_specs=(P(), layer_specs, cache_spec, cache_spec, P(), P()),
                             out_specs=(P(), cache_spec, cache_spec), check_vma=True)

    def compile(self, kinds: tuple[str, ...] = ("prefill", "decode")) -> dict[str, Any]:
        """Lower and compile the programs (embed, layer, head per kind) from shapes alone;
        returns XLA's per-device memory stats of each."""
        t0 = time.perf_counter()
        cfg, dtype, rep = self.cfg, self.dtype, self.sharding(())
        emb = self.abstract_global("embed")
        norm = self.abstract_global("final_norm")
        cache = self.abstract_cache()
        layer_jits = [jax.jit(self._layer_fn(sig), donate_argnums=(2, 3),
                              out_shardings=(rep, cache.sharding, cache.sharding))
                      for sig in self.signatures]
        embed_jit = jax.jit(partial(model.embed, cfg=cfg, dtype=dtype), out_shardings=rep)
        head_jit = jax.jit(partial(model.unembed, cfg=cfg, dtype=dtype), out_shardings=rep)
        lowered: dict[str, Any] = {}
        for name, t in (("prefill", self.cache_len), ("decode", 1)):
            if name not in kinds:
                continue
            toks = jax.ShapeDtypeStruct((t,), jnp.int32, sharding=rep)
            h = jax.ShapeDtypeStruct((t, cfg.emb_size), dtype, sharding=rep)
            pos = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
            key_ok = jax.ShapeDtypeStruct((self.cache_len,), jnp.bool_, sharding=rep)
            lowered[f"{name}/embed"] = embed_jit.lower(emb, toks)
            lowered[f"{name}/head"] = head_jit.lower(h, norm, emb)
            for j, (sig, layer_jit) in enumerate(zip(self.signatures, layer_jits, strict=True)):
                lowered[f"{name}/layer" + (f".{j}" if j else "")] = layer_jit.lower(
                    h, self.abstract_layer(sig), cache, cache, pos, key_ok)
        # XLA compiles without the GIL: the programs compile side by side on the host's cores
        with ThreadPoolExecutor(max_workers=min(len(lowered), os.cpu_count() or 1)) as pool:
            exes = dict(zip(lowered, pool.map(lambda lo: lo.compile(model.XLA_OPTIONS),
                                              lowered.values()), strict=True))
        self.compiled.update(exes)
        self.compile_seconds = time.perf_counter() - t0
        return {key: _memory(exe) for key, exe in exes.items()}

    def temporaries(self, stats: dict[str, Any]) -> int | None:
        """Largest per-device temporary (plus output) size XLA reported over the programs."""
        vals = [s["temp"] + s["output"] - s["alias"] for s in stats.values() if s]
        return max(vals) if len(vals) == len(stats) and vals else None

    # -- running ---------------------------------------------------------------------------------

    def new_caches(self, layers: int) -> list[tuple[jax.Array, jax.Array]]:
        """Zeroed (k, v) caches per layer, created sharded on the devices."""
        if "zeros" not in self.compiled:
            self.compiled["zeros"] = jax.jit(lambda: jnp.zeros(self.cache_shape, self.dtype),
                                             out_shardings=self.sharding(CACHE_AXES))
        zeros = self.compiled["zeros"]
        return [(zeros(), zeros()) for _ in range(layers)]

    def forward(self, params: dict, caches: list, tokens: np.ndarray, pos: int,
                key_ok: np.ndarray) -> jax.Array:
        """Run ``tokens`` (prefill bucket or one token) at ``pos``; caches are updated in place."""
        name = "decode" if len(tokens) == 1 else "prefill"
        rep = self.sharding(())
        toks = jax.device_put(np.asarray(tokens, np.int32), rep)
        p = jax.device_put(np.int32(pos), rep)
        ok = jax.device_put(np.asarray(key_ok, bool), rep)
        h = self.compiled[f"{name}/embed"](params["embed"], toks)
        for i, lp in enumerate(params["layers"]):
            kc, vc = caches[i]
            h, kc, vc = self.compiled[self._layer_key(name, i)](h, lp, kc, vc, p, ok)
            caches[i] = (kc, vc)
        return self.compiled[f"{name}/head"](h, params["final_norm"], params["embed"])

    def prefill_logits(self, params: dict, tokens: list[int]) -> np.ndarray:
        """Teacher-forced logits ``[len(tokens), vocab]`` of one prefill over ``tokens``."""
        buf = self._bucket(tokens)
        caches = self.new_caches(len(params["layers"]))
        logits = self.forward(params, caches, buf, 0, buf != self.cfg.pad_token_id)
        return to_host(logits)[: len(tokens)]

    def _bucket(self, tokens: list[int]) -> np.ndarray:
        if len(tokens) > self.cache_len:
            raise ValueError(f"{len(tokens)} tokens exceed the cache length {self.cache_len}")
        buf = np.full(self.cache_len, self.cfg.pad_token_id, np.int32)
        buf[: len(tokens)] = tokens
        return buf

    def generate(self, params: dict, prompt: list[int], new_tokens: int) -> Generation:
        """Greedy decoding: one prefill over the prompt, then ``new_tokens - 1`` cached steps."""
        buf = self._bucket(prompt)
        caches = self.new_caches(len(params["layers"]))
        t0 = time.perf_counter()
        logits = to_host(self.forward(params, caches, buf, 0, buf != self.cfg.pad_token_id))
        t_prefill = time.perf_counter() - t0
        prompt_logits = logits[: len(prompt)]
        tokens = [int(np.argmax(prompt_logits[-1]))]
        step_logits = []
        t0 = time.perf_counter()
        for step in range(1, new_tokens):
            pos = len(prompt) + step - 1
            buf[pos] = tokens[-1]
            out = to_host(self.forward(params, caches, buf[pos:pos + 1], pos,
                                       buf != self.cfg.pad_token_id))[0]
            step_logits.append(out)
            tokens.append(int(np.argmax(out)))
        t_decode = time.perf_counter() - t0
        decode = np.stack(step_logits) if step_logits else np.zeros((0, self.cfg.vocab_size), np.float32)
        return Generation(prompt_logits, decode, tokens, t_prefill, t_decode)


@dataclass
class Generation:
    prompt_logits: np.ndarray  # [T, vocab] f32
    decode_logits: np.ndarray  # [K-1, vocab] f32, the cached steps
    tokens: list[int]  # the K greedy tokens
    prefill_seconds: float
    decode_seconds: float


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated array's value (works when other processes hold some of its devices)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)


def _memory(exe) -> dict[str, int] | None:
    try:
        ma = exe.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    if ma is None:
        return None
    return {"argument": int(ma.argument_size_in_bytes), "output": int(ma.output_size_in_bytes),
            "temp": int(ma.temp_size_in_bytes), "alias": int(ma.alias_size_in_bytes)}
