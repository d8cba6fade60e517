"""Human-readable sizes: one formatting rule for every message and table (core, imports nothing).

Decimal units (``4.35 MB``, powers of 1000) by default, binary (``4.06 MiB``) on request; the
parsing side, :func:`grokfetch.fsutil.parse_size`, reads both.
"""

from __future__ import annotations


def human_bytes(n: float, binary: bool = False) -> str:
    """``4.35 MB``-style sizes (powers of 1000), or ``4.06 MiB`` with ``binary``."""
    units = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if binary else \
        (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    for unit, div in units:
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"
