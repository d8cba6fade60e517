"""The exceptions grokfetch raises: a small tree whose members carry the data of the failure.

Library code raises these and never prints; the CLI turns them into one line on stderr and an
exit code (``exit_code``): 2 for usage errors, 1 for failed checks, 130 for interruptions.
"""

from __future__ import annotations

from pathlib import Path

from grokfetch.units import human_bytes


class GrokfetchError(Exception):
    """Root of all grokfetch errors. ``hint`` says what to do about it."""

    exit_code = 1
    hint: str | None = None
    #: What the failed command had found (its ``--json`` result keys), set by the CLI.
    result: dict | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(GrokfetchError):
    """Bad arguments or a bad combination of them (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A model config that is inconsistent or cannot be read."""

    def __init__(self, source: str, problem: str):
        self.source, self.problem = source, problem
        super().__init__(f"bad model config {source}: {problem}")


class NotFoundError(UsageError):
    """A path the user named does not exist or is not what it should be."""

    def __init__(self, path: Path | str, what: str, *, hint: str | None = None):
        self.path, self.what = Path(path), what
        super().__init__(f"{what} not found: {path}", hint=hint)


class OutputExistsError(UsageError):
    """An output that already exists would be overwritten."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        super().__init__(f"{path} already exists", hint="pass --force to overwrite it")


class UnsafePathError(GrokfetchError):
    """A path from a torrent or manifest that would leave its target folder."""

    def __init__(self, path: str, root: Path | str, why: str):
        self.path, self.root, self.why = path, Path(root), why
        super().__init__(f"refusing path {path!r} ({why}): it must stay inside {root}")


def brief(value: object, limit: int = 80, _depth: int = 0) -> str:
    """``value`` as short, printable text: a huge integer becomes its bit length, long text and
    lists are cut, so formatting a value read from a hostile file costs no more than ``limit``."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(value) if value.bit_length() <= 64 else f"<{value.bit_length()}-bit integer>"
    elif isinstance(value, (list, tuple)) and _depth < 2:
        inner = ", ".join(brief(v, limit, _depth + 1) for v in value[:8])
        text = f"[{inner}{', ...' if len(value) > 8 else ''}]"
    elif isinstance(value, (str, Path)):
        text = ascii(str(value)[:limit + 1])[1:-1]
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


class CheckpointError(GrokfetchError):
    """A checkpoint file that is not what the tensor table says it must be."""

    def __init__(self, path: Path | str, problem: str, *, expected: object = None,
                 actual: object = None, hint: str | None = None):
        self.path, self.problem = Path(path), problem
        self.expected, self.actual = expected, actual
        detail = f" (expected {brief(expected)}, found {brief(actual)})" \
            if expected is not None else ""
        super().__init__(f"{path}: {problem}{detail}", hint=hint)


class UnsafePickleError(CheckpointError):
    """A pickle that asks for something a Grok-1 tensor file never holds. It was not executed."""

    def __init__(self, path: Path | str, offending: str):
        self.offending = offending
        super().__init__(path, f"refused unsafe pickle content {offending}; nothing was executed",
                         hint="the file is not a Grok-1 tensor file: delete it and download it again")


class FolderBusyError(GrokfetchError):
    """Another grokfetch process is writing into the same folder (its advisory lock is held)."""

    def __init__(self, folder: Path | str, what: str, holder: str):
        self.folder, self.what, self.holder = Path(folder), what, holder
        super().__init__(f"{folder} is in use by another grokfetch ({brief(holder) or 'unknown'}); "
                         f"refusing to {what} into it at the same time",
                         hint="wait for the other run to finish (or stop it), then run again")


class InsufficientSpaceError(GrokfetchError):
    """Not enough free disk space for what is about to be written."""

    def __init__(self, path: Path | str, needed: int, free: int, *, hint: str | None = None):
        self.path, self.needed, self.free = Path(path), needed, free
        super().__init__(
            f"not enough free space in {path}: need {human_bytes(needed)} ({needed:,} bytes), "
            f"{human_bytes(free)} ({free:,} bytes) free",
            hint=hint or "free some space or choose another folder (--no-space-check skips this check)")


class DiskFullError(GrokfetchError):
    """The disk filled up (ENOSPC or a quota) while writing; what was committed is kept."""

    def __init__(self, path: Path | str, what: str):
        self.path, self.what = Path(path), what
        super().__init__(f"{path}: the disk is full; the {what} stopped",
                         hint="free some space, then rerun the same command: it resumes where "
                              "it stopped")


class CheckFailed(GrokfetchError):
    """A verification found problems; ``findings`` lists them."""

    def __init__(self, message: str, findings: list | None = None):
        self.findings = findings or []
        super().__init__(message)


class Interrupted(GrokfetchError):
    """The user interrupted a long job; what can be resumed was saved (exit code 130)."""

    exit_code = 130


class DownloadFailed(GrokfetchError):
    """A download that could not finish (no peers, stalled, a disk error); ``reason`` is a short
    tag (``"stalled"``, ``"disk"``, ``"metadata"``) and resume data was saved where possible."""

    def __init__(self, message: str, *, reason: str = "failed", hint: str | None = None):
        self.reason = reason
        super().__init__(message, hint=hint)


class InsufficientMemoryError(GrokfetchError):
    """A model that will not fit the devices' memory, found from shapes before loading."""

    def __init__(self, message: str, needed: int, available: int, *, hint: str | None = None):
        self.needed, self.available = needed, available
        super().__init__(message, hint=hint)
