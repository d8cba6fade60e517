"""The one conversion driver shared by every target (see :mod:`grokfetch.convert.base` for the contract).

``convert(ckpt_dir, out, options, progress=...)`` checks everything it can before writing a
byte (options, tokenizer, checkpoint files, an existing OUT, free disk space), then streams the
planned files through :mod:`grokfetch.convert.output` sinks, adds ``model-config.json`` and
``tokenizer.model``, writes the output manifest last and returns a :class:`ConvertReport`.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.checkpoint.reader import TOKENIZER_FILENAME, Checkpoint, open_checkpoint
from grokfetch.convert.base import ConvertOptions, OutputFile, Target, get_target
from grokfetch.convert.output import STATE_FILENAME, ConvertState, FileSink
from grokfetch.convert.source import SourceProvider
from grokfetch.errors import CheckpointError, NotFoundError, OutputExistsError, UsageError
from grokfetch.fsutil import (
    LOCK_NAME,
    atomic_file,
    check_free_space,
    check_relpath,
    disk_full_as_error,
    folder_lock,
    partial_path,
    remove_tree,
    safe_join,
)
from grokfetch.integrity.manifest import MANIFEST_NAME, StreamHasher, build_manifest, write_manifest
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.spec import CONFIG_FILENAME, TensorSpec

TOTAL_KEY = "convert"


@dataclass
class ConvertReport:
    """What a conversion did; ``to_json()`` is the CLI's ``--json`` result."""

    target: str
    out: str
    files: list[dict[str, Any]]
    bytes_in: int
    bytes_out: int
    seconds: float
    peak_rss_bytes: int
    resumed: bool
    layers: list[int] | None
    experts: list[int] | None
    manifest: str | None
    checked_by: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    already_complete: bool = False  # an earlier run had finished this output: nothing was done

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mb_per_s"] = round(self.mb_per_s, 2)
        d["seconds"] = round(self.seconds, 3)
        return d


class _TotalProgress:
    """Forwards to ``inner`` and adds every per-item advance to the overall task."""

    def __init__(self, inner: Progress):
        self.inner = inner
        self.bytes_in = 0

    def task(self, key, total, description):
        self.inner.task(key, total, description)

    def advance(self, key, amount):
        self.inner.advance(key, amount)
        if key != TOTAL_KEY:
            self.bytes_in += amount
            self.inner.advance(TOTAL_KEY, amount)

    def update(self, key, completed=None, total=None, description=None):
        self.inner.update(key, completed, total, description)

    def done(self, key):
        self.inner.done(key)

    def event(self, kind, **data):
        self.inner.event(kind, **data)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    Linux: ``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` survives ``exec`` and would
    report a big parent's RSS for a child); elsewhere ``resource.getrusage``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def _find_tokenizer(ckpt: Checkpoint, options: ConvertOptions, poll: float = 1.0) -> Path:
    """``--tokenizer`` or the checkpoint's ``tokenizer.model`` (waited for under ``--wait``)."""
    if options.tokenizer is not None:
        if not Path(options.tokenizer).is_file():
            raise NotFoundError(options.tokenizer, "tokenizer file")
        return Path(options.tokenizer)
    deadline = None if options.wait_timeout is None else time.monotonic() + options.wait_timeout
    while True:
        tok = ckpt.layout.tokenizer
        if tok is not None:
            return tok
        if not options.wait or (deadline is not None and time.monotonic() > deadline):
            raise NotFoundError(ckpt.layout.root / TOKENIZER_FILENAME, "tokenizer",
                                hint="pass --tokenizer FILE (the release's tokenizer.model)")
        time.sleep(poll)


def _check_inputs(ckpt: Checkpoint, specs: list[TensorSpec]) -> None:
    """Every selected checkpoint file exists, has the predicted size and a good header."""
    for spec in specs:
        st = ckpt.status(spec)
        if st.status != "ok":
            detail = {"missing": "missing", "size": f"wrong size: {st.detail}",
                      "format": f"bad header: {st.detail}"}[st.status]
            raise CheckpointError(ckpt.file_path(spec), f"{detail} ({spec.path})",
                                  hint="verify the download (`grokfetch verify`), or convert "
                                       "while downloading with --wait")


def _owned_names(target: Target, files: list[OutputFile]) -> list[str]:
    names = [f.relpath for f in files] + [CONFIG_FILENAME, TOKENIZER_FILENAME, MANIFEST_NAME,
                                          STATE_FILENAME]
    return names + [partial_path(Path(n)).as_posix() for n in names]


def _clear_outputs(out: Path, target: Target, files: list[OutputFile]) -> None:
    """``--force``: remove what this conversion would write, plus stale outputs of its kind."""
    victims = {safe_join(out, n, keep_link=True) for n in _owned_names(target, files)}
    for pattern in getattr(target, "stale_patterns", ()):
        # a glob match is a direct child of OUT; a symlink is unlinked, never followed
        victims.update(p for p in out.glob(pattern) if p.parent == out)
    for p in victims:
        remove_tree(p)


def _prepare_out(out: Path, target: Target, files: list[OutputFile], fingerprint: dict,
                 force: bool, created: bool) -> tuple[ConvertState, bool]:
    """Returns (state, resumed); OUT exists (and is locked) by now."""
    if created:
        return ConvertState(out, fingerprint), False
    old = ConvertState.load(out)
    if old is not None and old.fingerprint == fingerprint and not force:
        return old, True
    if not force:
        if old is not None:
            exc = OutputExistsError(out)
            exc.hint = ("it holds an unfinished conversion with other options: rerun with the same "
                        "options to resume it, or pass --force to start over")
            raise exc
        if any(p.name != LOCK_NAME for p in out.iterdir()):
            raise OutputExistsError(out)
        return ConvertState(out, fingerprint), False
    _clear_outputs(out, target, files)
    return ConvertState(out, fingerprint), False


def _refuse_overlap(ckpt: Checkpoint, out: Path, tokenizer: Path) -> None:
    """OUT must not be, or hold, the checkpoint root, its tensor folder or the tokenizer, nor lie
    inside the tensor folder: ``--force`` would delete inputs before a byte is read."""
    o = out.resolve()
    tensors = ckpt.layout.tensor_dir.resolve()
    for p in (ckpt.layout.root.resolve(), tensors, tokenizer.resolve()):
        if o == p or o in p.parents or tensors in o.parents:
            raise UsageError(f"--out {out} overlaps the input {p}",
                             hint="choose an output folder outside the checkpoint")


def _remove_if_empty(out: Path) -> None:
    """Remove an OUT this run created when nothing but its lock is in it."""
    with contextlib.suppress(OSError):
        if all(p.name == LOCK_NAME for p in out.iterdir()):
            shutil.rmtree(out)


def _finished_output(out: Path, files: list[OutputFile]) -> Path | None:
    """The manifest of a finished output of exactly this plan, else None.

    Finished: no resume state, a manifest naming exactly the planned files (plus config and
    tokenizer), each planned file of its planned size and starting with its planned header.
    A cheap check (no re-hashing); ``grokfetch verify OUT`` checks every byte.
    """
    manifest = out / MANIFEST_NAME
    if not manifest.is_file() or (out / STATE_FILENAME).exists():
        return None
    try:
        listed = {e["path"] for e in json.loads(manifest.read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    planned = {f.relpath for f in files}
    if not planned <= listed or not {CONFIG_FILENAME, TOKENIZER_FILENAME} <= listed:
        return None
    for f in files:
        p = safe_join(out, f.relpath)
        header = f.meta.get("header", b"")
        if not p.is_file() or p.stat().st_size != f.nbytes:
            return None
        with open(p, "rb") as fh:
            if fh.read(len(header)) != header:
                return None
    return manifest


def convert(ckpt_dir: Path | str, out: Path | str, options: ConvertOptions, *,
            preset: str | None = None, progress: Progress = NULL_PROGRESS) -> ConvertReport:
    """Convert the checkpoint in ``ckpt_dir`` into ``out`` as ``options.target``.

    Raises :class:`UsageError` (bad options), :class:`NotFoundError` (tokenizer),
    :class:`CheckpointError` (missing/corrupt inputs), :class:`OutputExistsError`,
    :class:`InsufficientSpaceError` — all before anything is written.
    """
    t0 = time.monotonic()
    out = Path(out)
    ckpt = open_checkpoint(ckpt_dir, preset)
    cls = get_target(options.target)
    options = options.normalized(ckpt.config)
    specs = ckpt.table.select(list(options.layers) if options.layers is not None else None)
    if not options.wait:
        _check_inputs(ckpt, specs)
    tokenizer = _find_tokenizer(ckpt, options)
    target = cls(ckpt, specs, options)
    target.tokenizer_path = tokenizer
    target.validate()
    files = target.plan()
    for f in files:  # nothing planned may leave OUT (names can come from model-config.json)
        check_relpath(f.relpath, out)
    fingerprint = {"target": target.fingerprint(), "files": [f.fingerprint() for f in files]}
    _refuse_overlap(ckpt, out, tokenizer)
    done = None if options.force else _finished_output(out, files)
    if done is not None:
        return ConvertReport(
            target=options.target, out=str(out),
            files=[{"path": f.relpath, "bytes": f.nbytes, "tensors": len(f.items)} for f in files],
            bytes_in=0, bytes_out=sum(f.nbytes for f in files), seconds=time.monotonic() - t0,
            peak_rss_bytes=peak_rss_bytes(), resumed=False,
            layers=list(options.layers) if options.layers is not None else None,
            experts=list(options.experts) if options.experts is not None else None,
            manifest=str(done), details=target.summary(), already_complete=True)
    source = SourceProvider(ckpt, options.experts, wait=options.wait,
                            wait_timeout=options.wait_timeout, progress=progress)
    if not source.hashes_pieces:
        progress.event("warning", message="no saved torrent (.grokfetch/*.torrent) next to "
                       "the checkpoint: inputs were checked by size and header only, not "
                       "hashed; run `grokfetch verify` to be sure of them")
    if out.exists() and not out.is_dir():
        if not options.force:
            raise OutputExistsError(out)
        remove_tree(out)
    created = not out.exists()
    with contextlib.ExitStack() as held:
        held.enter_context(folder_lock(out, f"convert to {options.target}"))
        if created:
            held.callback(_remove_if_empty, out)
        held.enter_context(disk_full_as_error(out, f"conversion to {options.target}"))
        state, resumed = _prepare_out(out, target, files, fingerprint, options.force, created)

        todo = [f for f in files
                if not (state.is_complete(f.relpath) and safe_join(out, f.relpath).exists())]
        have = sum(state.files.get(f.relpath, {}).get("offset", 0) for f in todo)
        needed = sum(f.nbytes for f in todo) - have + tokenizer.stat().st_size + (1 << 20)
        check_free_space(out, needed, force=not options.space_check)
        state.save()
        prog = _TotalProgress(progress)
        total_in = sum(i.in_bytes for f in files for i in f.items)
        progress.task(TOTAL_KEY, total_in, f"{options.target} → {out.name}")
        hashed: dict[str, dict[str, Any]] = {}  # manifest entries of the files written in this run
        try:
            for f in files:
                if f not in todo:
                    progress.advance(TOTAL_KEY, sum(i.in_bytes for i in f.items))
                    continue
                sink = FileSink(out, f.relpath, state)
                skipped = sum(i.in_bytes for i in f.items if sink.done(i.key))
                if skipped:
                    progress.advance(TOTAL_KEY, skipped)
                try:
                    target.write_file(f, sink, source, prog)
                    sink.finish()
                finally:
                    sink.close()
                entry = sink.manifest_entry()
                if entry is not None:
                    hashed[f.relpath] = entry
                progress.event("file", path=f.relpath, bytes=sink.final.stat().st_size)
        except (CheckpointError, UsageError):
            if created:
                # the input is at fault and OUT is ours: leave nothing half-written behind
                with contextlib.suppress(OSError):
                    shutil.rmtree(out)
            raise

        body = (json.dumps(target.out_config.to_json(), indent=2) + "\n").encode()
        hashed[CONFIG_FILENAME] = _write_hashed(out, CONFIG_FILENAME, [body])
        with open(tokenizer, "rb") as src:
            hashed[TOKENIZER_FILENAME] = _write_hashed(out, TOKENIZER_FILENAME,
                                                       iter(lambda: src.read(1 << 20), b""))
        manifest_path = _write_manifest(out, _manifest_files(out, files), hashed, progress)
        state.remove()
        progress.done(TOTAL_KEY)

        out_files = []
        for f in files:
            p = safe_join(out, f.relpath)
            size = p.stat().st_size if p.is_file() else sum(
                q.stat().st_size for q in p.rglob("*") if q.is_file())
            out_files.append({"path": f.relpath, "bytes": size, "tensors": len(f.items)})
        checked: dict[str, int] = {}
        for how in source.checked_by.values():
            checked[how] = checked.get(how, 0) + 1
        return ConvertReport(
            target=options.target, out=str(out), files=out_files, bytes_in=prog.bytes_in,
            bytes_out=sum(f["bytes"] for f in out_files), seconds=time.monotonic() - t0,
            peak_rss_bytes=peak_rss_bytes(), resumed=resumed,
            layers=list(options.layers) if options.layers is not None else None,
            experts=list(options.experts) if options.experts is not None else None,
            manifest=str(manifest_path) if manifest_path else None, checked_by=checked,
            details=target.summary())


def _manifest_files(out: Path, files: list[OutputFile]) -> list[str]:
    """The planned outputs (directories expanded into their files), config and tokenizer."""
    rels: list[str] = []
    for f in files:
        p = safe_join(out, f.relpath)
        if p.is_dir():
            rels += sorted(q.relative_to(out).as_posix() for q in p.rglob("*") if q.is_file())
        else:
            rels.append(f.relpath)
    return rels + [CONFIG_FILENAME, TOKENIZER_FILENAME]


def _write_hashed(out: Path, relpath: str, blocks) -> dict[str, Any]:
    """Write ``blocks`` to ``out/relpath`` atomically; return the file's manifest entry."""
    hasher = StreamHasher()
    with atomic_file(safe_join(out, relpath)) as fh:
        for block in blocks:
            fh.write(block)
            hasher.update(block)
    return hasher.entry(relpath)


def _write_manifest(out: Path, files: list[str], hashed: dict[str, dict[str, Any]],
                    progress: Progress) -> Path:
    """The output manifest of ``files``: entries hashed while writing where this run wrote the
    file, the rest (outputs finished by an earlier run, files a target writes itself) read from
    disk once."""
    rest = [rel for rel in files if rel not in hashed]
    entries = [hashed[rel] for rel in files if rel in hashed]
    if rest:
        entries += build_manifest(out, rest, progress=progress)["files"]
    return write_manifest(out, entries=entries, progress=progress)
