"""The ``--json`` schema of docs/json.md, read from the doc itself, and a small validator for it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"
_TYPES = {"object": dict, "string": str, "boolean": bool, "null": type(None), "array": list,
          "integer": int, "number": (int, float)}


def load_schema() -> dict[str, Any]:
    """The fenced ```json block under docs/json.md's "## Schema"."""
    text = DOC.read_text()
    block = re.search(r"## Schema.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/json.md has no ```json schema block under ## Schema"
    return json.loads(block.group(1))


def _check(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    errors = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if isinstance(value, bool) and "boolean" not in kinds or \
                not any(isinstance(value, _TYPES[k]) for k in kinds):
            errors.append(f"{where}: {value!r} is not {'/'.join(kinds)}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errors += _check(value[k], sub, f"{where}.{k}")
    return errors


def validate_output(stdout: str, command: str, *, ok: bool) -> dict[str, Any]:
    """Check a ``--json`` run's stdout: JSON lines only, events first, exactly one result
    object last, valid for ``command``; returns the result object."""
    schema = load_schema()
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines, "no JSON on stdout"
    *events, result = lines
    for ev in events:
        assert not _check(ev, schema["event"], "event"), ev
        assert ev["event"] != "result", "more than one result object"
    errors = _check(result, schema["result"], "result")
    assert not errors, errors
    assert result["command"] == command and result["ok"] is ok, result
    assert result["ok"] == (result["exit_code"] == 0)
    if ok:
        keys = schema["dry_run" if result.get("dry_run") else "success"][command]
        missing = [k for k in keys if k not in result]
        assert not missing, f"{command} result lacks {missing}"
    else:
        assert isinstance(result["error"], str) and result["error"]
    return result
