"""``grokfetch convert --to jax``: a re-sharded tensorstore checkpoint that orbax restores.

The output folder *is* an orbax-checkpoint 0.12 checkpoint, laid out the way orbax itself
writes one (zarr3 arrays in OCDBT, one database per process and a root database over it)::

    OUT/ocdbt.process_0/d/<32 hex>  the chunks of the arrays, in plan order (data files 0..n-1)
    OUT/ocdbt.process_0/d/<n>       the b-tree index (every key, each array's zarr.json inline)
    OUT/ocdbt.process_0/manifest.ocdbt, OUT/manifest.ocdbt   the per-process and root manifests
    OUT/_sharding                 NamedSharding of every array for the --mesh (device ids 0..N-1)
    OUT/array_metadatas/process_0 write/chunk shapes
    OUT/_CHECKPOINT_METADATA      orbax's step metadata
    OUT/_METADATA                 the tree (written last: orbax's commit marker)
    OUT/model-config.json, tokenizer.model, grokfetch-manifest.json   (the shared driver)

The OCDBT files are encoded by :mod:`grokfetch.convert.ocdbt`, not by tensorstore: file names,
offsets, uuids and the (zero) commit time all follow from the plan, so the same input and options
give the same bytes, and a run resumed after ``kill -9`` (every file is ``NAME.partial`` +
rename, continued at the last committed array) ends byte-identical to a clean one.

Array names, partition rules and chunk shapes are in :mod:`grokfetch.convert.jax_layout`. int8 weights
and bf16 scales are stored as they are (no dequantization), float tensors as float32.

Loading (see :func:`restore`)::

    ocp.StandardCheckpointer().restore(OUT)            # needs the --mesh's device count
    restore(OUT, mesh)                                 # any ("data", "model") mesh
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.checkpoint.reader import BF16
from grokfetch.convert.base import TENSOR_TASK, OutputFile, OutputItem, Target, pack_by_size
from grokfetch.convert.jax_layout import (
    AXES,
    ArrayPlan,
    fit_pspec,
    parse_mesh,
    plan_arrays,
    slot_rule,
    source_region,
)
from grokfetch.convert.ocdbt import Config, Ref, encode_tree, manifest
from grokfetch.convert.source import OpenSources
from grokfetch.errors import UsageError
from grokfetch.formats.jaxstore import ROOT_KEY, open_array, param_key, tree_names
from grokfetch.progress import Progress
from grokfetch.spec import TensorTable

DATA_DIR = "ocdbt.process_0"
HANDLER = "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler"
#: The OCDBT limits orbax 0.12 writes with (see :mod:`grokfetch.convert.ocdbt` for the rest).
MAX_INLINE_VALUE_BYTES = 1024
MAX_DECODED_NODE_BYTES = 100_000_000
#: A new data file starts when the next array would take the current one past this size
#: (arrays in plan order; a larger array gets a file of its own).
TARGET_DATA_FILE_SIZE = 2 * 1024**3
#: Input bytes after which mapped checkpoint pages are released while writing one array.
RELEASE_BYTES = 64 * 1024 * 1024


def zarr_json(a: ArrayPlan) -> bytes:
    """The array's ``zarr.json`` as tensorstore writes it (sorted keys, no spaces)."""
    fill = 0.0 if a.dtype.kind == "f" or a.dtype == BF16 else 0
    codec: dict[str, Any] = {"name": "bytes"}
    if a.dtype.itemsize > 1:  # single bytes have no byte order
        codec["configuration"] = {"endian": "little"}
    meta = {"chunk_grid": {"configuration": {"chunk_shape": list(a.chunk)}, "name": "regular"},
            "chunk_key_encoding": {"name": "default"}, "codecs": [codec],
            "data_type": a.dtype.name,  # int8, bfloat16 (ml_dtypes) or float32
            "fill_value": fill, "node_type": "array", "shape": list(a.shape), "zarr_format": 3}
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _chunk_nbytes(a: ArrayPlan) -> int:
    return math.prod(a.chunk) * a.dtype.itemsize


def _file_id(i: int) -> str:
    """The path of data file ``i`` in the database: ``d/`` and 32 hex digits, like tensorstore's
    names but counted, not random."""
    return f"d/{i:032x}"


def tree_entries(files: list[list[ArrayPlan]]) -> dict[bytes, bytes | Ref]:
    """Every key of the database: each array's ``zarr.json`` and its chunks (``c/i/j/...``) at
    their offsets in the data files, which the plan fixes (chunks tile an array exactly, see
    :mod:`grokfetch.convert.jax_layout`, and are stored in C order of the chunk grid)."""
    entries: dict[bytes, bytes | Ref] = {}
    for i, arrays in enumerate(files):
        offset = 0
        for a in arrays:
            entries[f"{a.name}/zarr.json".encode()] = zarr_json(a)
            step = _chunk_nbytes(a)
            grid = [range(n // c) for n, c in zip(a.shape, a.chunk, strict=True)]
            for idx in itertools.product(*grid):  # C order, as a.chunk_regions()
                key = "/".join([a.name, "c", *map(str, idx)]).encode()
                entries[key] = Ref(_file_id(i), offset, step)
                offset += step
    return entries


def _uuid(arrays: list[ArrayPlan], role: str) -> bytes:
    """A database uuid derived from the plan (same plan, same uuid; no randomness)."""
    text = json.dumps([role] + [[a.name, a.dtype.name, list(a.shape), list(a.chunk)]
                                for a in arrays])
    return hashlib.sha256(text.encode()).digest()[:16]


def ocdbt_files(arrays: list[ArrayPlan]) -> tuple[list[list[ArrayPlan]], dict[str, bytes]]:
    """The data files' arrays and the other OCDBT files (relative to OUT) with their bytes: the
    index (b-tree nodes) and the per-process manifest in ``ocdbt.process_0/``, and the root
    ``manifest.ocdbt`` whose tree is the per-process one (what orbax's merge step makes)."""
    files = pack_by_size(arrays, lambda a: a.nbytes, TARGET_DATA_FILE_SIZE)
    index = _file_id(len(files))
    configs = [Config(_uuid(arrays, role), MAX_INLINE_VALUE_BYTES, MAX_DECODED_NODE_BYTES)
               for role in (DATA_DIR, "root")]
    tree = encode_tree(tree_entries(files), index, configs[0])
    return files, {f"{DATA_DIR}/{index}": tree.index,
                   f"{DATA_DIR}/manifest.ocdbt": manifest(configs[0], tree),
                   "manifest.ocdbt": manifest(configs[1], tree, base_path=f"{DATA_DIR}/")}


def _pspec_json(pspec: tuple) -> list:
    return [list(e) if isinstance(e, tuple) else e for e in pspec]


def sharding_json(a: ArrayPlan, mesh: tuple[int, int]) -> str:
    """orbax's serialized NamedSharding for one array (devices 0..D*M-1 in mesh order)."""
    ids = np.arange(mesh[0] * mesh[1]).reshape(mesh)
    return json.dumps({
        "sharding_type": "NamedSharding", "shape": list(mesh), "axis_names": list(AXES),
        "axis_types": ["AxisType.Auto"] * len(AXES), "partition_spec": _pspec_json(a.pspec),
        "device_mesh": {"mesh": [[{"id": int(i)} for i in row] for row in ids]},
    })


def metadata_files(arrays: list[ArrayPlan], mesh: tuple[int, int], custom: dict[str, Any]
                   ) -> dict[str, bytes]:
    """The orbax metadata files, in the order they are written (``_METADATA`` last). Their
    timestamps are 0, so they are a pure function of the plan."""
    tree = {str(a.key): {"key_metadata": [{"key": k, "key_type": 2} for k in a.key],
                         "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False,
                                            "write_shape": list(a.chunk)}} for a in arrays}
    docs: dict[str, Any] = {
        "_sharding": {base64.b64encode(a.name.encode()).decode(): sharding_json(a, mesh)
                      for a in arrays},
        "array_metadatas/process_0": {"array_metadatas": [
            {"array_metadata": {"param_name": a.name, "write_shape": list(a.chunk),
                                "chunk_shape": list(a.chunk), "ext_metadata": None}}
            for a in arrays]},
        "_CHECKPOINT_METADATA": {"item_handlers": HANDLER, "metrics": {}, "performance_metrics": {},
                                 "init_timestamp_nsecs": 0, "commit_timestamp_nsecs": 0,
                                 "custom_metadata": custom},
        "_METADATA": {"tree_metadata": tree, "use_ocdbt": True, "use_zarr3": True,
                      "store_array_data_equal_to_fill_value": True, "custom_metadata": None},
    }
    return {k: json.dumps(v).encode() for k, v in docs.items()}


class JaxTarget(Target, name="jax"):
    """A tensorstore (zarr3 + OCDBT) checkpoint chunked for ``--mesh DxM`` (default 1x8)."""

    option_fields = ("mesh",)
    stale_patterns = ("manifest.ocdbt", "d", "ocdbt.process_*", "_METADATA*", "_sharding*",
                      "_CHECKPOINT_METADATA*", "array_metadatas", "commit_success.txt")

    @property
    def mesh(self) -> tuple[int, int]:
        return parse_mesh(self.options.mesh)

    def validate(self) -> None:
        self.mesh  # noqa: B018 - parses --mesh, raising UsageError

    def arrays(self) -> list[ArrayPlan]:
        # chunk shapes are a storage property: fixed, not --chunk-size (which only sizes work)
        return plan_arrays(self.specs, self.subset, self.mesh)

    def plan(self) -> list[OutputFile]:
        """Data files (chunks in plan order), then the OCDBT index and manifests, then orbax's
        metadata with ``_METADATA`` last: every byte is fixed by the plan."""
        arrays = self.arrays()
        groups, ocdbt = ocdbt_files(arrays)
        files = [OutputFile(f"{DATA_DIR}/{_file_id(i)}",
                            [OutputItem(key=a.name, specs=(a.spec,), nbytes=a.nbytes,
                                        in_bytes=a.nbytes, meta={"array": a}) for a in group],
                            sum(a.nbytes for a in group))
                 for i, group in enumerate(groups)]
        custom = {"producer": "grokfetch", "mesh": list(self.mesh), "axes": list(AXES),
                  "model": self.out_config.name}
        bodies = {**ocdbt, **metadata_files(arrays, self.mesh, custom)}
        files += [OutputFile(relpath, [], len(body), meta={"body": body})
                  for relpath, body in bodies.items()]
        return files

    def write_file(self, ofile: OutputFile, sink, source, progress: Progress) -> None:
        if "body" in ofile.meta:
            sink.begin(ofile.meta["body"])
            return
        with OpenSources(source) as sources:
            for item, src in sources.pending(ofile.items, sink, lambda it: it.meta["array"].spec):
                a: ArrayPlan = item.meta["array"]
                progress.task(TENSOR_TASK, a.nbytes, item.key)
                mapped = 0
                for region in a.chunk_regions():
                    data = source_region(src, a, region)
                    sink.write(data)
                    progress.advance(TENSOR_TASK, data.nbytes)
                    mapped += data.nbytes
                    if mapped >= RELEASE_BYTES:
                        src.release()  # keep mapped input pages out of RSS
                        mapped = 0
                sink.commit(item.key)
                src.release()
            progress.done(TENSOR_TASK)

    def summary(self) -> dict[str, Any]:
        return {"mesh": list(self.mesh), "arrays": len(self.arrays())}


# --- loading an output into JAX (reading is grokfetch.formats.jaxstore) ---------------------


def abstract_tree(out: Path, mesh, table: TensorTable | None = None) -> dict[str, Any]:
    """The restore target for ``mesh``: ``jax.ShapeDtypeStruct``s with the official partition
    rules fitted to the mesh (``table`` defaults to the output's ``model-config.json``)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from grokfetch.spec import load_config

    out = Path(out)
    table = table or TensorTable(load_config(out))
    missing = set(AXES) - set(mesh.axis_names)
    if missing:
        raise UsageError(f"the mesh needs axes {AXES}, it has {tuple(mesh.axis_names)}")
    sizes = {n: mesh.shape[n] for n in AXES}
    by_key = {f"{ROOT_KEY}.{param_key(s)}": s for s in table}
    tree: dict[str, Any] = {}
    for name in tree_names(out):
        arr = open_array(out, name)
        base, _, part = name.rpartition(".")
        spec = by_key.get(name) or by_key[base]
        pspec = fit_pspec(slot_rule(spec.slot), tuple(arr.shape), sizes)
        leaf = jax.ShapeDtypeStruct(tuple(arr.shape), arr.dtype.numpy_dtype,
                                    sharding=NamedSharding(mesh, PartitionSpec(*pspec)))
        key = param_key(spec)
        node = tree.setdefault(ROOT_KEY, {})
        if name in by_key:
            node[key] = leaf
        else:
            node.setdefault(key, {})[part] = leaf
    return tree


def restore(out: Path, mesh=None, table: TensorTable | None = None) -> dict[str, Any]:
    """Restore a JAX output into sharded ``jax.Array``s with orbax.

    ``mesh=None`` restores with the shardings recorded at conversion time (``_sharding``), which
    needs that mesh's device count; any other ``("data", "model")`` mesh re-shards on load.
    Returns ``{"params": {dotted path: {"weight", "scales"} | array}}``.
    """
    import orbax.checkpoint as ocp

    target = None if mesh is None else abstract_tree(Path(out), mesh, table)
    return ocp.StandardCheckpointer().restore(Path(out).absolute(), target)
