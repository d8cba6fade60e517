"""Readers of every checkpoint format (the pickles, GGUF, safetensors, JAX store), below the tools.

One signature for all of them: ``iter_tensors(path, table, specs=None)`` yields
``(spec, array, scales)`` for the specs of ``table`` (or ``specs``) that the files hold, in model
order, in JAX layout ((in, out); experts (E, in, out); the embedding (vocab, d)). What comes out:

=============== ============================================ ================================
module          quantized slots (``spec.quantized``)         float slots (embed, norms, router)
=============== ============================================ ================================
``pickles``     int8 + bf16 scales (zero-copy mmap views)     float32 (zero-copy)
``gguf``        bf16 for BF16-stored tensors, float32 for every other type (gguf-py dequantizes
                the blocks); scales None
``safetensors`` int8 + bf16 scales (``--dtype int8``) or      float32
                the bf16 effective weight, scales None
``jaxstore``    int8 + bf16 scales                            float32
=============== ============================================ ================================

:func:`detect_format` tells the format from the files alone and :func:`iter_tensors` here reads
any of them. The writers in ``grokfetch.convert`` import the names and constants they share with
a reader from these modules; ``grokfetch.smoke`` and the tests read checkpoints through them.
Nothing here imports ``convert`` or ``smoke``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grokfetch.checkpoint.reader import CheckpointLayout, find_layout
from grokfetch.errors import CheckpointError, NotFoundError
from grokfetch.fsutil import read_json
from grokfetch.spec import TensorSpec, TensorTable, load_config

#: Files (at most two folders down) that mark an orbax / tensorstore OCDBT store.
JAXSTORE_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA", "_sharding")

#: Largest metadata file a reader parses (Grok-1's index and ``_METADATA`` are well under 1 MB).
MAX_METADATA_BYTES = 64 << 20


def read_metadata(path: Path, what: str) -> object:
    """The parsed JSON metadata file of a ``what`` output, read with a size bound; missing, too
    large or not JSON is one :class:`CheckpointError`."""
    try:
        return read_json(path, MAX_METADATA_BYTES)
    except FileNotFoundError:
        raise CheckpointError(path, f"not a grokfetch {what} output (no {path.name})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(path, f"unreadable: {exc}") from None


def _holds_tensor_files(layout: CheckpointLayout, preset: str | None) -> bool:
    """Whether the layout's tensor folder holds at least one of the table's tensor files."""
    if not layout.tensor_dir.is_dir():
        return False
    table = TensorTable(load_config(layout.root, preset))
    return any(table.by_file(p.name) is not None for p in layout.tensor_dir.iterdir())


def _has_jaxstore_marker(path: Path) -> bool:
    return any((path / m).exists() or any(path.glob(f"*/{m}")) or any(path.glob(f"*/*/{m}"))
               for m in JAXSTORE_MARKERS)


def detect_format(path: Path | str, preset: str | None = None) -> tuple[str, Path]:
    """``("pickle" | "gguf" | "safetensors" | "jaxstore", root)`` of a checkpoint path, from the files it holds (``preset``: the
    config of a pickle checkpoint without ``model-config.json``). Nothing is parsed but names
    (and, for pickles, the config).

    Raises:
        NotFoundError: nothing that looks like a checkpoint.
    """
    from grokfetch.formats.safetensors import INDEX_NAME

    path = Path(path)
    if not path.exists():
        raise NotFoundError(path, "checkpoint")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path.parent
        if path.suffix == ".safetensors" or path.name == INDEX_NAME:
            return "safetensors", path.parent
        raise NotFoundError(path, "checkpoint folder", hint="give the folder the checkpoint is in")
    if any(path.glob("*.gguf")):
        return "gguf", path
    if (path / INDEX_NAME).is_file() or any(path.glob("*.safetensors")):
        return "safetensors", path
    try:
        layout: CheckpointLayout | None = find_layout(path)
    except NotFoundError:
        layout = None
    # Real tensor files win over stray orbax markers; an empty ckpt-0/ is still the pickle
    # format (the shapes-only preflight runs before anything is downloaded).
    if layout is not None and _holds_tensor_files(layout, preset):
        return "pickle", layout.root
    if _has_jaxstore_marker(path):
        return "jaxstore", path
    if layout is not None:
        return "pickle", layout.root
    raise NotFoundError(path, "checkpoint (ckpt-0/ pickles, *.gguf, *.safetensors or an "
                              "orbax store)")


def iter_tensors(path: Path | str, table: TensorTable, specs: list[TensorSpec] | None = None
                 ) -> Iterator[tuple[TensorSpec, Any, Any]]:
    """``(spec, array, scales)`` of any checkpoint or output (see the module docstring for
    what each format yields): :func:`detect_format`, then that format's ``iter_tensors``.
    ``table`` describes what the files hold (``TensorTable(load_config(path))``)."""
    # The readers are imported when used: gguf-py, safetensors and tensorstore load only for
    # the format at hand.
    fmt, root = detect_format(path)
    if fmt == "pickle":
        from grokfetch.formats.pickles import iter_tensors as read
    elif fmt == "gguf":
        from grokfetch.formats.gguf import iter_tensors as read
    elif fmt == "safetensors":
        from grokfetch.formats.safetensors import iter_tensors as read
    else:
        from grokfetch.formats.jaxstore import iter_tensors as read
    return read(path if fmt == "gguf" and Path(path).is_file() else root, table, specs)
