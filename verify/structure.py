"""Check a checkpoint folder against its tensor table: the right files, sizes, pickle structure,
shapes and dtypes, and sane values where they are cheap to read.

Everything goes through the safe reader (an opcode scan, never ``pickle.load``) over a memory
map: headers, the bf16 scales (finite and nonzero) and the small float32 tensors (norms,
router: finite). Large payloads are left to the hash checks, so no file is read twice.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from grokfetch.checkpoint.reader import open_checkpoint, scales_problem
from grokfetch.errors import CheckpointError
from grokfetch.integrity.report import WARNING, Finding, Report
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.spec import CONFIG_FILENAME, TensorSpec

#: float32 tensors up to this size are read to check they are finite (the norms and routers;
#: not the 3.2 GB embedding, which only the hashes cover).
SMALL_F32_BYTES = 64 * 1024 * 1024
_TENSOR_NAME = re.compile(r"^tensor\d{5}_\d{3}$")


def _values_problem(tf, spec: TensorSpec) -> str | None:
    """A sentence when the scales or a small float32 tensor hold impossible values."""
    scales = tf.scales
    if scales is not None:
        return scales_problem(scales)
    if spec.payload_bytes <= SMALL_F32_BYTES:
        w = np.asarray(tf.weight)
        if not np.isfinite(w).all():
            return f"{int((~np.isfinite(w)).sum())} non-finite values"
    return None


def check_structure(path: Path, *, preset: str | None = None, values: bool = True,
                    rel_to: Path | None = None, only: set[str] | None = None,
                    progress: Progress = NULL_PROGRESS) -> Report:
    """Check every tensor file of the checkpoint at ``path`` against the tensor table.

    Args:
        path: the checkpoint root, its ``ckpt-0``, or the download folder above it.
        preset: config when the checkpoint has no ``model-config.json`` (default grok-1).
        values: also check scales (finite, nonzero) and small float32 tensors (finite).
        rel_to: the folder finding paths are relative to (default: the checkpoint root).
        only: check just these paths (relative to ``rel_to``), e.g. a selective download's;
            unknown tensor files are still reported.

    Raises:
        NotFoundError: no checkpoint folder there.
    """
    t0 = time.monotonic()
    ck = open_checkpoint(path, preset)
    base = Path(rel_to) if rel_to is not None else ck.layout.root
    has_config = (ck.layout.root / CONFIG_FILENAME).is_file()
    report = Report(root=base, checks=["structure"],
                    sources={"config": CONFIG_FILENAME if has_config
                             else f"preset {ck.config.name}"})

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, base)).as_posix()

    progress.task("structure", len(ck.table), f"checking {len(ck.table)} tensor headers")
    for spec in ck.table:
        name = rel(ck.file_path(spec))
        if only is not None and name not in only:
            progress.advance("structure", 1)
            continue
        st = ck.status(spec)
        if st.status == "missing":
            report.add(Finding("missing", name, f"{spec.path}: expected {spec.file_bytes:,} bytes",
                               ranges=[(0, spec.file_bytes)]))
        elif st.status == "size":
            size = st.size or 0
            kind = "truncated" if size < spec.file_bytes else "oversized"
            report.add(Finding(kind, name, f"{size:,} bytes, expected {spec.file_bytes:,}",
                               ranges=[(min(size, spec.file_bytes), max(size, spec.file_bytes))]))
        elif st.status == "format":
            report.add(Finding("structure", name, st.detail))
        else:
            report.files_checked += 1
            if values:
                try:
                    with ck.open(spec) as tf:
                        problem = _values_problem(tf, spec)
                except CheckpointError as exc:
                    problem = exc.problem
                if problem:
                    report.add(Finding("structure", name, f"{spec.path}: {problem}"))
        progress.advance("structure", 1)
    for extra in ck.extra_files():
        fatal = bool(_TENSOR_NAME.match(extra))
        report.add(Finding("extra", rel(ck.layout.tensor_dir / extra),
                           f"not in the {ck.config.name} tensor table"
                           + (" (wrong config or preset?)" if fatal else ""),
                           severity="error" if fatal else WARNING))
    progress.done("structure")
    report.seconds = time.monotonic() - t0
    return report
