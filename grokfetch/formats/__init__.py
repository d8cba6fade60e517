"""Readers of the converted formats (GGUF, safetensors, JAX store), below the tools.

The writers in ``grokfetch.convert`` import the names and constants they share with a reader
from here; ``grokfetch.smoke`` and the tests read outputs back through these modules. Nothing
here imports ``convert`` or ``smoke``.
"""
