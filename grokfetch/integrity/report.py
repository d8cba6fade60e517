"""What a verification found: one :class:`Finding` per problem, gathered in a :class:`Report`.

Kinds are distinct so a script can act on them: ``missing``, ``truncated``, ``oversized``,
``corrupted`` (hash mismatch), ``unsafe`` (a path that would leave the folder; never opened),
``structure`` (the file is not what the tensor table says), ``unreadable`` (an I/O error),
``unverified`` (selected bytes in a piece whose other bytes cannot be read) and
``extra`` (a file nobody asked for). ``extra`` outside the tensor folder is a warning: it does not
fail the run. Byte ranges are half-open ``[start, end)`` offsets inside the named file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("missing", "truncated", "oversized", "corrupted", "unsafe", "structure", "unreadable",
         "unverified", "extra")
ERROR, WARNING = "error", "warning"


@dataclass
class Finding:
    """One problem with one path.

    Attributes:
        kind: one of :data:`KINDS`.
        path: the path relative to the checked folder ('/'-separated).
        detail: one human sentence (expected vs found).
        pieces: torrent piece indices (or manifest chunk indices) that failed because of it.
        ranges: merged ``(start, end)`` byte ranges of this file covered by those pieces.
        severity: ``"error"`` (fails the run) or ``"warning"``.
    """

    kind: str
    path: str
    detail: str = ""
    pieces: list[int] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    severity: str = ERROR

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "severity": self.severity, "pieces": list(self.pieces),
                "ranges": [list(r) for r in self.ranges]}


@dataclass
class Report:
    """The result of one ``verify`` run over a folder."""

    root: Path
    checks: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    pieces_total: int | None = None
    pieces_bad: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != ERROR]

    def add(self, finding: Finding) -> None:
        """Add a finding unless one of the same kind for the same path is already there."""
        for f in self.findings:
            if f.kind == finding.kind and f.path == finding.path:
                if finding.detail and finding.detail not in f.detail:
                    f.detail = f"{f.detail}; {finding.detail}" if f.detail else finding.detail
                if finding.severity == ERROR:
                    f.severity = ERROR
                f.pieces = sorted(set(f.pieces) | set(finding.pieces))
                f.ranges = merge_ranges(f.ranges + finding.ranges)
                return
        self.findings.append(finding)

    def merge(self, other: Report) -> None:
        """Fold another check's report into this one (findings deduplicated by kind+path)."""
        for name in other.checks:
            if name not in self.checks:
                self.checks.append(name)
        for f in other.findings:
            self.add(f)
        self.files_checked = max(self.files_checked, other.files_checked)
        self.bytes_hashed += other.bytes_hashed
        if other.pieces_total is not None:
            self.pieces_total = other.pieces_total
            self.pieces_bad = other.pieces_bad
        self.sources.update(other.sources)

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for f in self.findings:
            out[f.kind] += 1
        return {k: v for k, v in out.items() if v}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "root": str(self.root), "checks": self.checks,
                "files_checked": self.files_checked, "bytes_hashed": self.bytes_hashed,
                "seconds": round(self.seconds, 3), "pieces_total": self.pieces_total,
                "pieces_bad": self.pieces_bad, "sources": self.sources,
                "counts": self.counts(), "repaired": self.repaired,
                "findings": [f.to_json() for f in self.findings]}


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join touching or overlapping ``[start, end)`` ranges."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
