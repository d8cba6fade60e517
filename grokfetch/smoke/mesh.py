"""Devices, the (data, model) mesh, partition specs, and the memory preflight from shapes.

The partition rules are :data:`grokfetch.sharding.SMOKE_RULES` (the official ones with the data
axis of size 1 left out) applied to each slot's logical axes: q/k/v column-parallel, the
attention output and the expert down projection row-parallel (their row-block scales split with
their rows), gate/up split along the FFN columns for every expert, the embedding split along
``emb_size``, norms and routers replicated; the KV cache splits its kv heads. Weights and scales
share a spec.

A tensor's *form* says how it sits on the devices: ``"int8"`` (int8 + bf16 scales), ``"dense"``
(an array in the compute dtype; f32 for the embedding, norms and routers) or a GGML block type
name such as ``"Q4_K"`` (the GGUF's stored bytes, ``(..., rows, blocks, type_size)`` uint8 in
the GGUF layout, split like the weight they encode). :func:`placed_struct` gives each form's
arrays; the engine's abstract arguments and the preflight's bytes both come from it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from grokfetch.errors import GrokfetchError, UsageError
from grokfetch.sharding import (  # noqa: F401  (CACHE_AXES re-exported for the engine)
    CACHE_AXES,
    DATA,
    MODEL,
    SMOKE_RULES,
    MeshAxes,
    partition,
)
from grokfetch.spec import SLOTS, ModelConfig, TensorSpec, TensorTable

#: Where the smoke test runs (``--platform``): real GPUs, or simulated CPU devices.
PLATFORMS = ("gpu", "cpu")

#: Mesh axis per dimension, for the weight (and its scales) of each slot; None = replicated.
WEIGHT_AXES: dict[str, tuple[MeshAxes, ...]] = {
    key: partition(slot, SMOKE_RULES) for key, slot in SLOTS.items()}


#: Forms that are not a GGML block type.
ARRAY_FORMS = ("int8", "dense")
FormFn = Callable[[TensorSpec], str]


def placed_axes(slot: str, form: str) -> tuple[str | None, ...]:
    """Mesh axis per dimension of a slot's placed arrays. Block forms are in the GGUF layout
    ``(..., out, blocks, bytes)``: the JAX ``(..., in, out)`` split moves with the axes."""
    axes = WEIGHT_AXES[slot]
    if form in ARRAY_FORMS:
        return axes
    return axes[:-2] + (axes[-1], axes[-2], None)


def pspec(slot: str, form: str = "int8"):
    """The ``PartitionSpec`` of a slot's weight and scales (or stored blocks)."""
    from jax.sharding import PartitionSpec as P

    return P(*placed_axes(slot, form))


def placed_struct(spec: TensorSpec, n: int, form: str,
                  compute_dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Global ``{leaf: (shape, dtype name)}`` of a tensor placed in ``form`` on ``n`` devices.

    ``{"w"}`` dense (f32 for unquantized slots), ``{"w", "s"}`` int8 + bf16 scales (row-block
    scales re-blocked for ``n``), ``{TYPE: uint8 blocks}`` for a GGML block type.
    """
    if not spec.quantized:
        return {"w": (spec.shape, "float32")}
    if form == "dense":
        return {"w": (spec.shape, compute_dtype)}
    if form == "int8":
        assert spec.scales_shape is not None
        sshape = list(spec.scales_shape)
        sshape[-2] = scale_blocks_for(spec, n)
        return {"w": (spec.shape, "int8"), "s": (tuple(sshape), "bfloat16")}
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[form]]
    g = spec.gguf_shape
    return {form: (g[:-1] + (g[-1] // bs, ts), "uint8")}


def gguf_form(spec: TensorSpec, qtype: Any, n: int) -> str:
    """How a GGUF tensor of GGML type ``qtype`` is placed on ``n`` devices: its block type when
    each device's share holds whole blocks, else ``"dense"`` (float types are always dense)."""
    from grokfetch.smoke.ggml import BLOCK_TYPES

    if not spec.quantized or qtype not in BLOCK_TYPES:
        return "dense"
    blocks_axis = placed_axes(spec.slot.key, qtype.name)[-2]
    (shape, _), = placed_struct(spec, n, qtype.name, "int8").values()
    return qtype.name if blocks_axis is None or shape[-2] % n == 0 else "dense"


def _split_dims(cfg: ModelConfig) -> dict[str, int]:
    return {"kv heads": cfg.num_kv_heads, "query heads": cfg.num_q_heads,
            "ffn_size": cfg.ffn_size, "emb_size": cfg.emb_size}


def device_counts(cfg: ModelConfig, upto: int = 64) -> list[int]:
    """The mesh sizes (powers of two up to ``upto``) that :func:`check_devices` accepts."""
    dims = _split_dims(cfg).values()
    return [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= upto and all(v % d == 0 for v in dims)]


def check_devices(cfg: ModelConfig, n: int) -> None:
    """Raise :class:`UsageError` unless every sharded dimension splits evenly over ``n``."""
    if n < 1:
        raise UsageError(f"--gpus must be at least 1, not {n}")
    bad = [f"{k} {v}" for k, v in _split_dims(cfg).items() if v % n]
    if bad:
        ok = device_counts(cfg)
        raise UsageError(f"{cfg.name} cannot be split over {n} devices ({', '.join(bad)} not "
                         f"divisible); use one of --gpus {', '.join(map(str, ok))}")


def scale_blocks_for(spec: TensorSpec, n: int) -> int:
    """Row blocks of a scale tensor once re-blocked for ``n`` devices (``lcm(B, n)`` when
    ``n`` does not divide ``B``; the scales are then repeated, the weight is unchanged)."""
    assert spec.scales_shape is not None
    b = spec.scales_shape[-2]
    if spec.scale_layout != "row_blocks" or b % n == 0:
        return b
    return math.lcm(b, n)


# --- devices ----------------------------------------------------------------------------------


def setup_jax(platform: str, n: int, coordinator: str | None = None, num_processes: int = 1,
              process_id: int = 0):
    """Import JAX for ``platform`` with enough devices and return ``n`` of them.

    On ``cpu`` this asks for ``n / num_processes`` simulated devices *before* the backend
    starts (``XLA_FLAGS`` and ``jax_num_cpu_devices``); on ``gpu`` it turns on XLA's
    deterministic ops unless ``XLA_FLAGS`` already says otherwise. If JAX already runs in this
    process (tests), its existing devices are used when there are enough.
    """
    if platform not in PLATFORMS:
        raise UsageError(f"--platform must be one of {', '.join(PLATFORMS)}, not {platform!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id {process_id} must be in 0..{num_processes - 1}")
    if n % num_processes:
        raise UsageError(f"--gpus {n} must be a multiple of --num-processes {num_processes}")
    local = n // num_processes
    fresh = "jax" not in sys.modules
    if platform == "cpu" and fresh:
        flag = f"--xla_force_host_platform_device_count={local}"
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join(flags + [flag])
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif platform == "gpu" and fresh:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            # Bit-identical reruns are one of the checks: ask XLA for deterministic GPU kernels.
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
    import jax

    if platform == "cpu":
        try:
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", local)
        except RuntimeError:
            pass  # the backend already started: use the devices it has
    if coordinator:
        try:
            jax.distributed.initialize(coordinator_address=coordinator,
                                       num_processes=num_processes, process_id=process_id)
        except RuntimeError as exc:
            if "already" not in str(exc):
                raise GrokfetchError(
                    f"jax.distributed.initialize({coordinator}) failed: {exc}") from None
    elif num_processes > 1:
        raise UsageError("--num-processes > 1 needs --coordinator HOST:PORT")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise UsageError(f"no {platform} devices found",
                         hint="install the gpu extra of grokfetch (JAX with CUDA 12), "
                              "or use --platform cpu") from None
    if len(devices) < n:
        raise UsageError(f"--gpus {n} asked for, but only {len(devices)} {platform} devices exist"
                         + ("" if platform == "gpu" or fresh else
                            " (JAX was already started in this process with fewer devices)"))
    return devices[:n]


# --- preflight ----------------------------------------------------------------------------------


DTYPE_BYTES = {"int8": 1, "bfloat16": 2, "float32": 4}
_PLACED_BYTES = {**DTYPE_BYTES, "uint8": 1}


def _bytes_of(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def shard_bytes(spec: TensorSpec, n: int, form: str, compute_dtype: str) -> int:
    """Bytes one device holds of ``spec`` once placed in ``form`` (see :func:`placed_struct`)."""
    div = n ** sum(a is not None for a in placed_axes(spec.slot.key, form))
    return sum(math.prod(shape) * _PLACED_BYTES[dt] // div
               for shape, dt in placed_struct(spec, n, form, compute_dtype).values())


def uniform_forms(kind: str) -> FormFn:
    """Every quantized tensor in one form (``"int8"`` or ``"dense"``), the others dense."""
    return lambda spec: kind if spec.quantized else "dense"


@dataclass
class Preflight:
    """Per-device memory plan of a smoke run, from shapes alone."""

    devices: int
    layers: int
    weights: int
    kv_cache: int
    temporaries: int
    device_bytes: int | None
    measured_temporaries: bool = False
    margin: float = 0.08
    #: Weight bytes per device by form (``int8``, ``dense``, ``Q4_K``, ...): what is held how.
    held_as: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.temporaries

    @property
    def fits(self) -> bool:
        return self.device_bytes is None or self.total * (1 + self.margin) <= self.device_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "fits": self.fits}


def estimate_temporaries(cfg: ModelConfig, n: int, tokens: int, cache_len: int,
                         compute_dtype: str, blocks: bool = False, dense_experts: bool = False) -> int:
    """A generous analytic bound on the largest live temporaries of one program (per device).

    The layer program materialises one expert's three dequantized matrices (scan over experts;
    a backend may also widen them to f32 for the matmul; GGML ``blocks`` add one matrix's f32
    values; with ``dense_experts`` XLA's CPU backend widens the whole expert stack to f32 before
    the loop), the FFN activations and the attention probabilities,
    and the MoE's f32 stack of per-expert outputs ``(E, T, D)`` with its all-reduced copy; the
    output head casts (and may transpose) the embedding shard and returns replicated f32 logits.
    """
    b = _bytes_of(compute_dtype)
    d, f, v = cfg.emb_size, cfg.ffn_size // n, cfg.vocab_size
    expert = 3 * d * f * (b + 4) + (d * f * (4 + b) if blocks else 0)
    if dense_experts:
        expert += cfg.num_experts * 3 * d * f * 4
    ffn_act = tokens * f * (3 * b + 4) + 2 * tokens * d * 4 + 2 * cfg.num_experts * tokens * d * 4
    attn_w = (2 * d * cfg.q_size + 2 * d * cfg.kv_size) * (b + 4) // n
    probs = (cfg.num_q_heads // n) * tokens * cache_len * 4 * 3
    layer = expert + ffn_act + attn_w + probs
    head = v * d * (b + 4) // n + tokens * v * 4 * 2 + tokens * d * 4
    return max(layer, head)


def preflight(table: TensorTable, n: int, device_bytes: int | None, *, layers: int,
              tokens: int, cache_len: int, forms: str | FormFn = "int8",
              compute_dtype: str = "bfloat16", temporaries: int | None = None) -> Preflight:
    """Bytes per device for weights (the first ``layers`` layers plus globals, each tensor in
    its form: ``forms(spec)``, or one kind for all quantized tensors), KV cache and temporaries
    (``temporaries`` when measured by XLA, else :func:`estimate_temporaries`)."""
    cfg = table.config
    form_of = uniform_forms(forms) if isinstance(forms, str) else forms
    held: dict[str, int] = {}
    dense_experts = False
    for s in table.select(range(layers)):
        form = form_of(s)
        held[form] = held.get(form, 0) + shard_bytes(s, n, form, compute_dtype)
        dense_experts |= s.per_expert and form == "dense"
    kv = layers * 2 * cache_len * (cfg.num_kv_heads // n) * cfg.key_size * _bytes_of(compute_dtype)
    measured = temporaries is not None
    blocks = any(f not in ARRAY_FORMS for f in held)
    temps = temporaries if measured else estimate_temporaries(cfg, n, tokens, cache_len,
                                                              compute_dtype, blocks, dense_experts)
    return Preflight(n, layers, sum(held.values()), kv, int(temps), device_bytes, measured,
                     held_as=held)


def fitting_layers(table: TensorTable, n: int, device_bytes: int, **kw: Any) -> int:
    """The largest K for which ``--layers K`` fits (0 when not even the globals fit)."""
    best = 0
    for k in range(1, table.config.num_layers + 1):
        if preflight(table, n, device_bytes, layers=k, **kw).fits:
            best = k
        else:
            break
    return best


def devices_that_fit(table: TensorTable, n: int, device_bytes: int, *, layers: int,
                     forms_for: Callable[[int], str | FormFn] = lambda m: "int8",
                     **kw: Any) -> int | None:
    """The smallest mesh larger than ``n`` that :func:`check_devices` accepts and that holds
    ``layers`` layers in ``device_bytes`` per device (None if none up to 64); ``forms_for(m)``
    gives the tensors' forms on ``m`` devices (a GGUF's block types depend on the split)."""
    return next((m for m in device_counts(table.config) if m > n and preflight(
        table, m, device_bytes, layers=layers, forms=forms_for(m), **kw).fits), None)


def device_memory(devices, platform: str) -> int | None:
    """Usable bytes per device: the accelerator's ``bytes_limit``; on CPU, available RAM
    shared by the simulated devices (so a per-device share)."""
    if platform != "cpu":
        try:
            stats = devices[0].memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"])
        except Exception:  # noqa: BLE001 - backends without stats
            return None
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available) // max(1, len(devices))
    except Exception:  # noqa: BLE001
        return None


def peak_memory(devices) -> dict[str, int]:
    """``peak:<device>`` → peak bytes in use, where the backend reports it (GPUs)."""
    out = {}
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - CPU and remote devices report nothing
            continue
        if "peak_bytes_in_use" in stats:
            out[f"peak:{d}"] = int(stats["peak_bytes_in_use"])
    return out


def gib(n: int | float) -> str:
    return f"{n / 2**30:.2f} GiB"
