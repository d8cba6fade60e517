"""The JAX-store reader: a grokfetch ``--to jax`` output (orbax / tensorstore OCDBT) back as
checkpoint tensors (:func:`iter_tensors`), and the tree keys the writer shares with it.

Loading into sharded ``jax.Array``s with orbax (``restore``) needs the partition rules and stays
with the writer in ``grokfetch.convert.jaxstore``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.errors import CheckpointError
from grokfetch.formats import read_metadata
from grokfetch.spec import TensorSpec, TensorTable

ROOT_KEY = "params"


def param_key(spec: TensorSpec) -> str:
    """The tree key of a spec below ``params``: its Haiku path with dots."""
    return spec.path.replace("/", ".")


def kvstore(base: Path, path: str | None = None) -> dict[str, Any]:
    """tensorstore's OCDBT kvstore spec of the output folder ``base`` (at ``path`` inside it)."""
    spec: dict[str, Any] = {"driver": "ocdbt", "base": f"file://{Path(base).absolute()}/"}
    if path is not None:
        spec["path"] = path
    return spec


def open_array(out: Path, name: str):
    """The tensorstore array ``name`` (a dotted tree key) of a JAX output, opened for reading."""
    import tensorstore as ts

    return ts.open({"driver": "zarr3", "kvstore": kvstore(Path(out), name + "/"), "open": True},
                   read=True).result()


def iter_tensors(path: Path, table: TensorTable, specs: list[TensorSpec] | None = None
                 ) -> Iterator[tuple[TensorSpec, np.ndarray, np.ndarray | None]]:
    """The tensors of ``table`` (or ``specs``) present in a JAX output, in model order, read
    with tensorstore (JAX layout; the signature of every reader in :mod:`grokfetch.formats`).

    ``table`` describes the output (``TensorTable(load_config(path))``). Yields
    ``(spec, int8 weight, bf16 scales)`` for quantized tensors and ``(spec, float32, None)``.
    """
    out = Path(path)
    names = set(tree_names(out))
    for spec in table.model_order(None if specs is None else list(specs)):
        base = f"{ROOT_KEY}.{param_key(spec)}"
        if spec.quantized:
            if f"{base}.weight" not in names:
                continue
            w = open_array(out, f"{base}.weight").read().result()
            s = open_array(out, f"{base}.scales").read().result()
            yield spec, w, s
        elif base in names:
            yield spec, open_array(out, base).read().result(), None


def tree_names(out: Path) -> list[str]:
    """Every array name (dotted tree key) in the output's orbax ``_METADATA``."""
    path = Path(out) / "_METADATA"
    doc: Any = read_metadata(path, "JAX")
    try:
        return [".".join(k["key"] for k in v["key_metadata"]) for v in doc["tree_metadata"].values()]
    except (TypeError, KeyError, AttributeError):
        raise CheckpointError(path, "bad _METADATA: no tree_metadata of key paths") from None
