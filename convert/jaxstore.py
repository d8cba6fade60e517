"""``grokfetch convert --to jax``: a re-sharded tensorstore checkpoint that orbax restores.

The output folder *is* an orbax-checkpoint 0.12 checkpoint, laid out the way orbax itself
writes one (zarr3 arrays in OCDBT, one database per process merged into a root database)::

    OUT/ocdbt.process_0/          the arrays (zarr3, raw bytes codec), written as *.partial/
    OUT/manifest.ocdbt, OUT/d/    the root OCDBT database referencing them (merged at the end)
    OUT/_sharding                 NamedSharding of every array for the --mesh (device ids 0..N-1)
    OUT/array_metadatas/process_0 write/chunk shapes
    OUT/_CHECKPOINT_METADATA      orbax's step metadata
    OUT/_METADATA                 the tree (written last: orbax's commit marker)
    OUT/model-config.json, tokenizer.model, grokfetch-manifest.json   (the shared driver)

Array names, partition rules and chunk shapes are in :mod:`grokfetch.convert.jax_layout`. int8 weights
and bf16 scales are stored as they are (no dequantization), float tensors as float32.

Loading (see :func:`restore`)::

    ocp.StandardCheckpointer().restore(OUT)            # needs the --mesh's device count
    restore(OUT, mesh)                                 # any ("data", "model") mesh
"""

from __future__ import annotations

import base64
import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from grokfetch.convert.base import TENSOR_TASK, OutputFile, OutputItem, Target
from grokfetch.convert.jax_layout import (
    AXES,
    ROOT_KEY,
    RULES,
    ArrayPlan,
    fit_pspec,
    param_key,
    parse_mesh,
    plan_arrays,
    source_region,
)
from grokfetch.convert.source import OpenSources

from grokfetch.errors import CheckpointError, UsageError
from grokfetch.progress import Progress
from grokfetch.spec import TensorSpec, TensorTable

DATA_DIR = "ocdbt.process_0"
HANDLER = "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler"
#: The OCDBT settings orbax 0.12 writes with.
OCDBT_CONFIG = {"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100_000_000,
                "manifest_kind": "single"}
TARGET_DATA_FILE_SIZE = 2 * 1024**3
#: Chunk bytes buffered in one OCDBT transaction before it is committed.
MAX_BATCH_BYTES = 64 * 1024 * 1024


def _kvstore(base: Path, path: str | None = None, write: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"driver": "ocdbt", "base": f"file://{Path(base).absolute()}/"}
    if path is not None:
        spec["path"] = path
    if write:
        spec["config"] = dict(OCDBT_CONFIG)
        spec["target_data_file_size"] = TARGET_DATA_FILE_SIZE
    return spec


def _array_spec(base: Path, a: ArrayPlan) -> dict[str, Any]:
    return {
        "driver": "zarr3",
        "kvstore": _kvstore(base, a.name + "/", write=True),
        "metadata": {
            "shape": list(a.shape),
            "data_type": a.dtype.name,  # int8, bfloat16 (ml_dtypes) or float32
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(a.chunk)}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "fill_value": 0,
        },
        # A rerun opens an array cut short and rewrites every chunk (``delete_existing`` would
        # force a separate OCDBT commit per array).
        "create": True,
        "open": True,
        "store_data_equal_to_fill_value": True,
    }


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
    """The orbax metadata files, in the order they are written (``_METADATA`` last)."""
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


def _commit(txn) -> None:
    """Commit a tensorstore transaction; a full disk becomes ``OSError(ENOSPC)`` (tensorstore
    reports it as a ``ValueError``) so the driver's disk-full handling applies."""
    try:
        txn.commit_async().result()
    except ValueError as exc:
        text = str(exc)
        if "os_error_code='28'" in text or "No space left" in text:
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise


def _reopen(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec that opens an array created earlier (same metadata, nothing deleted)."""
    return {k: v for k, v in spec.items() if k != "create"}


class _Batch:
    """Chunk writes grouped into one OCDBT transaction per ~``MAX_BATCH_BYTES``.

    Every OCDBT commit rewrites the b-tree path it touches (and never frees the old nodes), so
    committing per chunk would cost time and disk; committing per batch keeps both small while
    bounding the memory the transaction buffers. An array is recorded as done in the resume
    state only after the commit that made its last chunk durable.
    """

    def __init__(self, sink, progress: Progress):
        import tensorstore as ts

        self._ts, self.sink, self.progress = ts, sink, progress
        self.txn = ts.Transaction()
        self.bytes = 0
        self.pending: list[tuple[str, int]] = []  # arrays complete in the open transaction

    @property
    def full(self) -> bool:
        return self.bytes >= MAX_BATCH_BYTES

    def add(self, nbytes: int) -> None:
        # Progress counts bytes staged in the transaction; durability is what the resume
        # state records (at commit).
        self.bytes += nbytes
        self.progress.advance(TENSOR_TASK, nbytes)

    def finished(self, key: str, nbytes: int) -> None:
        self.pending.append((key, nbytes))

    def commit(self) -> None:
        _commit(self.txn)
        for key, n in self.pending:
            self.sink.commit(key, n)
        self.txn = self._ts.Transaction()
        self.bytes, self.pending = 0, []


def merge_root(out: Path) -> None:
    """Reference the per-process database from the root one (what orbax's merge step does);
    only b-tree nodes are written, the array data stays in ``ocdbt.process_0/d``."""
    import tensorstore as ts

    ctx = ts.Context()
    child = ts.KvStore.open(_kvstore(out / DATA_DIR), context=ctx).result()
    parent = ts.KvStore.open(_kvstore(out, write=True), context=ctx).result()
    txn = ts.Transaction(atomic=True)
    child.experimental_copy_range_to(parent.with_transaction(txn)).result()
    _commit(txn)


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
        out_table = TensorTable(self.out_config)
        layers = self.layer_map()
        out_specs = {s.index: out_table.get(s.slot.key, None if s.layer is None
                                             else layers.index(s.layer)) for s in self.specs}
        # chunk shapes are a storage property: fixed, not --chunk-size (which only sizes work)
        return plan_arrays(self.specs, out_specs, len(self.expert_map()), self.mesh)

    def plan(self) -> list[OutputFile]:
        arrays = self.arrays()
        items = [OutputItem(key=a.name, specs=(a.spec,), nbytes=a.nbytes, in_bytes=a.nbytes,
                            meta={"array": a}) for a in arrays]
        files = [OutputFile(DATA_DIR, items, sum(a.nbytes for a in arrays) + (1 << 20), kind="dir")]
        custom = {"producer": "grokfetch", "mesh": list(self.mesh), "axes": list(AXES),
                  "model": self.out_config.name}
        for relpath, body in metadata_files(arrays, self.mesh, custom).items():
            files.append(OutputFile(relpath, [], len(body),
                                    meta={"body": body, "merge": relpath == "_METADATA"}))
        return files

    def write_file(self, ofile: OutputFile, sink, source, progress: Progress) -> None:
        if ofile.kind == "dir":
            self._write_arrays(ofile, sink, source, progress)
            return
        if ofile.meta["merge"]:
            merge_root(sink.root)
        sink.begin(ofile.meta["body"])

    def _write_arrays(self, ofile: OutputFile, sink, source, progress: Progress) -> None:
        import tensorstore as ts

        ctx = ts.Context()
        batch = _Batch(sink, progress)
        with OpenSources(source) as sources:
            for item, src in sources.pending(ofile.items, sink, lambda it: it.meta["array"].spec):
                a: ArrayPlan = item.meta["array"]
                progress.task(TENSOR_TASK, a.nbytes, item.key)
                spec = _array_spec(sink.path, a)
                store = ts.open(spec, context=ctx, transaction=batch.txn).result()
                for region in a.chunk_regions():
                    if batch.full:
                        batch.commit()
                        src.release()  # keep mapped input pages out of RSS (page cache keeps them)
                        store = ts.open(_reopen(spec), context=ctx, transaction=batch.txn).result()
                    data = source_region(src, a, region)
                    store[region].write(data).result()  # copied into the transaction
                    batch.add(data.nbytes)
                batch.finished(item.key, a.nbytes)
                src.release()
            batch.commit()
            progress.done(TENSOR_TASK)

    def extra_files(self, out: Path) -> list[str]:
        """Files written outside the planned ones (the root OCDBT database), for the manifest."""
        out = Path(out)
        extra = ["manifest.ocdbt"] if (out / "manifest.ocdbt").is_file() else []
        return extra + sorted(p.relative_to(out).as_posix() for p in (out / "d").rglob("*")
                              if p.is_file())

    def summary(self) -> dict[str, Any]:
        return {"mesh": list(self.mesh), "arrays": len(self.arrays())}


# --- reading an output back ----------------------------------------------------------------


def _open_array(out: Path, name: str):
    import tensorstore as ts

    return ts.open({"driver": "zarr3", "kvstore": _kvstore(Path(out), name + "/"), "open": True},
                   read=True).result()


def iter_params(out: Path, table: TensorTable
                ) -> Iterator[tuple[TensorSpec, np.ndarray, np.ndarray | None]]:
    """Every checkpoint tensor present in a JAX output, read with tensorstore (JAX layout).

    ``table`` describes the output (``TensorTable(load_config(out))``). Yields
    ``(spec, int8 weight, bf16 scales)`` for quantized tensors and ``(spec, float32, None)``.
    """
    out = Path(out)
    names = set(_tree_names(out))
    for spec in table.model_order():
        base = f"{ROOT_KEY}.{param_key(spec)}"
        if spec.quantized:
            if f"{base}.weight" not in names:
                continue
            w = _open_array(out, f"{base}.weight").read().result()
            s = _open_array(out, f"{base}.scales").read().result()
            yield spec, w, s
        elif base in names:
            yield spec, _open_array(out, base).read().result(), None


def _tree_names(out: Path) -> list[str]:
    path = Path(out) / "_METADATA"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "not a grokfetch JAX output (no _METADATA)") from None
    except ValueError as exc:
        raise CheckpointError(path, f"unreadable: {exc}") from None
    return [".".join(k["key"] for k in v["key_metadata"]) for v in doc["tree_metadata"].values()]


def make_mesh(data: int = 1, model: int = 8, devices: list | None = None):
    """A ``("data", "model")`` mesh over the first ``data × model`` devices."""
    import jax
    from jax.sharding import Mesh

    devs = list(devices) if devices is not None else jax.devices()
    if len(devs) < data * model:
        raise UsageError(f"a {data}x{model} mesh needs {data * model} devices, "
                         f"{len(devs)} available")
    return Mesh(np.array(devs[:data * model]).reshape(data, model), AXES)


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
    for name in _tree_names(out):
        arr = _open_array(out, name)
        base, _, part = name.rpartition(".")
        spec = by_key.get(name) or by_key[base]
        pspec = fit_pspec(RULES.get(spec.slot.key, ()), tuple(arr.shape), sizes)
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
