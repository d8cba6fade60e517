"""Readers of the converted formats (GGUF, safetensors, JAX store), below the tools.

The writers in ``grokfetch.convert`` import the names and constants they share with a reader
from here; ``grokfetch.smoke`` and the tests read outputs back through these modules. Nothing
here imports ``convert`` or ``smoke``.
"""

from __future__ import annotations

from pathlib import Path

from grokfetch.errors import CheckpointError
from grokfetch.fsutil import read_json

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
