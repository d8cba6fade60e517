"""Small helpers the hostile-input and hostile-output tests share: stderr's error line, a tree's bytes."""

from __future__ import annotations

from pathlib import Path


def error_line(err: str) -> str:
    """The one ``error:`` line (progress lines may precede it when stderr is not a terminal)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}
