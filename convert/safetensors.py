"""``grokfetch convert --to safetensors``: sharded PyTorch-layout safetensors, streamed.

Output (``--layout hf``, the keyfan ``GrokForCausalLM`` names llama.cpp's
``convert_hf_to_gguf.py`` accepts; ``--layout sglang``, sglang's ``Grok1ForCausalLM`` names)::

    OUT/model-00001-of-0000N.safetensors ...   {"format": "pt"} metadata, <= --shard-size each
    OUT/model.safetensors.index.json           metadata.total_size + weight_map (+ layout, dtype)
    OUT/config.json                            the true Grok-1 hyperparameters (see hf_config)
    OUT/model-config.json, tokenizer.model     (added by the shared driver)

Each shard's header is computed from the tensor table before any data is read (every size is
known), written first, and then each tensor's bytes follow in row chunks taken from the
memory-mapped checkpoint; a shard is never held in memory. The tensors, names and the int8
scale convention are described in :mod:`grokfetch.convert.st_tensors`.

Reading an output back is :mod:`grokfetch.formats.safetensors`.
"""

from __future__ import annotations

import json
from typing import Any

from grokfetch.convert.base import TENSOR_TASK, OutputFile, OutputItem, Target
from grokfetch.convert.safetensors_header import encode_header, plan_shards, shard_names
from grokfetch.convert.source import OpenSources
from grokfetch.convert.st_tensors import (
    DTYPES,
    LAYOUTS,
    StEntry,
    entry_chunks,
    plan_entries,
)
from grokfetch.errors import CheckpointError, UsageError
from grokfetch.formats.safetensors import INDEX_NAME
from grokfetch.progress import Progress
from grokfetch.spec import ModelConfig

HF_CONFIG_NAME = "config.json"
ST_METADATA = {"format": "pt"}
#: Drop the memory-mapped input pages from the process after this many output bytes (they stay
#: in the page cache; this only keeps the RSS bounded on the 3.2 GB embedding and the experts).
RELEASE_EVERY = 256 * 1024 * 1024


def hf_config(cfg: ModelConfig, layout: str, dtype: str) -> dict[str, Any]:
    """``config.json`` with Grok-1's true values (the HF class defaults are wrong for Grok-1:
    silu, rope 1e5, 4096 positions), for keyfan's ``GrokForCausalLM`` or sglang."""
    data: dict[str, Any] = {
        "architectures": ["GrokForCausalLM" if layout == "hf" else "Grok1ForCausalLM"],
        "model_type": "grok",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_size,
        "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_q_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.key_size,
        "hidden_act": "gelu",
        "max_position_embeddings": cfg.sequence_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_base,
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_selected_experts,
        "embedding_multiplier_scale": cfg.embedding_multiplier_scale,
        "output_multiplier_scale": cfg.output_multiplier_scale,
        "attn_output_multiplier": cfg.attn_output_multiplier,
        "attn_logit_softcapping": cfg.attn_logit_softcap,
        "max_attn_value": cfg.attn_logit_softcap,
        "tie_word_embeddings": layout == "hf",
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "bfloat16",
    }
    if layout == "sglang":
        # sglang defaults these to True under tensor parallelism and then looks for
        # *-TP-{rank}.safetensors files; a plain export must switch them off.
        data.update({"load_presharded_moe": False, "load_presharded_attn": False,
                     "load_presharded_mlp": False, "load_presharded_embedding": False,
                     "residual_moe": False})
    if dtype == "int8":
        data["quantization_config"] = {
            "quant_method": "grokfetch-int8",
            "weights": "int8 NAME.weight (out, in)",
            "scales": "bf16 NAME.weight_scale (out, blocks); "
                      "W[o, i] = weight[o, i] * weight_scale[o, i // (in / blocks)]",
        }
    return data


class SafetensorsTarget(Target, name="safetensors"):
    """Sharded safetensors in ``--layout hf|sglang`` and ``--dtype bf16|int8``."""

    option_fields = ("layout", "dtype", "shard_size")
    stale_patterns = ("model-*-of-*.safetensors", "model-*-of-*.safetensors.partial")

    def validate(self) -> None:
        o = self.options
        if o.layout not in LAYOUTS:
            raise UsageError(f"unknown --layout {o.layout!r}; choose one of: {', '.join(LAYOUTS)}")
        if o.dtype not in DTYPES:
            raise UsageError(f"unknown --dtype {o.dtype!r} for safetensors; choose one of: "
                             f"{', '.join(DTYPES)}")
        if not o.shard_size or o.shard_size <= 0:
            raise UsageError("--shard-size must be positive, e.g. 5GB")

    def entries(self) -> list[StEntry]:
        return plan_entries(self.specs, self.subset, self.options.layout, self.options.dtype)

    def plan(self) -> list[OutputFile]:
        by_name = {e.name: e for e in self.entries()}
        shards = plan_shards([e.tensor for e in by_name.values()], self.options.shard_size)
        names = shard_names(len(shards))
        files: list[OutputFile] = []
        weight_map: dict[str, str] = {}
        for fname, tensors in zip(names, shards, strict=True):
            header = encode_header(tensors, ST_METADATA)
            items = []
            for t in tensors:
                e = by_name[t.name]
                items.append(OutputItem(key=t.name, specs=(e.spec,), nbytes=t.nbytes,
                                        in_bytes=_in_bytes(e), meta={"entry": e}))
                weight_map[t.name] = fname
            files.append(OutputFile(fname, items, len(header) + sum(t.nbytes for t in tensors),
                                    meta={"header": header}))
        index = {"metadata": {"total_size": sum(t.nbytes for s in shards for t in s),
                              "format": "pt", "layout": self.options.layout,
                              "dtype": self.options.dtype, "producer": "grokfetch"},
                 "weight_map": dict(sorted(weight_map.items()))}
        config = hf_config(self.out_config, self.options.layout, self.options.dtype)
        for relpath, doc in ((INDEX_NAME, index), (HF_CONFIG_NAME, config)):
            body = (json.dumps(doc, indent=2) + "\n").encode()
            files.append(OutputFile(relpath, [], len(body), meta={"header": body}))
        return files

    def write_file(self, ofile: OutputFile, sink, source, progress: Progress) -> None:
        sink.begin(ofile.meta["header"])
        with OpenSources(source) as sources:
            for item, src in sources.pending(ofile.items, sink, lambda it: it.meta["entry"].spec):
                entry: StEntry = item.meta["entry"]
                progress.task(TENSOR_TASK, item.in_bytes, item.key)
                written = since_release = 0
                for chunk in entry_chunks(entry, src, self.options.chunk_bytes, self.options.threads):
                    sink.write(chunk)
                    written += chunk.nbytes
                    since_release += chunk.nbytes
                    progress.advance(TENSOR_TASK, chunk.nbytes * item.in_bytes // item.nbytes)
                    if since_release >= RELEASE_EVERY:  # keep mapped input pages out of RSS
                        src.release()
                        since_release = 0
                if written != item.nbytes:  # a planning bug, never a user error
                    raise CheckpointError(src.path, f"{item.key}: wrote {written} bytes",
                                          expected=item.nbytes, actual=written)
                sink.commit(item.key)
                progress.done(TENSOR_TASK)
                src.release()

    def summary(self) -> dict[str, Any]:
        return {"layout": self.options.layout, "dtype": self.options.dtype,
                "tensors": len(self.entries())}


def _in_bytes(e: StEntry) -> int:
    """Checkpoint bytes one entry consumes (int8 weight, bf16 scales or float32)."""
    n = 1
    for d in e.tensor.shape:
        n *= d
    return n * {"weight": 1, "scale": 2, "float": 4}[e.part]

