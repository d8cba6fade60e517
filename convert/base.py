"""The interface every conversion target implements, and the options they all share.

A target (``gguf``, ``safetensors``, ``jax``) is a :class:`Target` subclass registered by name::

    class SafetensorsTarget(Target, name="safetensors"):
        def plan(self) -> list[OutputFile]: ...
        def write_file(self, ofile, sink, source, progress) -> None: ...

The shared driver (:func:`grokfetch.convert.run.convert`, ``convert(ckpt_dir, out, options)``) does
everything that is not format-specific, in this order:

1. opens the checkpoint, parses ``--layers``/``--experts`` (:meth:`ConvertOptions.normalized`),
   selects the specs, checks that every selected checkpoint file exists with its exact size and
   header (``CheckpointError`` otherwise; skipped under ``--wait``), finds the tokenizer, builds
   ``target = cls(ckpt, specs, options)`` (``target.tokenizer_path`` is set) and calls
   :meth:`Target.validate` (bad option values → ``UsageError``, before anything is written);
2. calls :meth:`Target.plan` once: the list of :class:`OutputFile` (relative path, the ordered
   :class:`OutputItem` units it holds, exact or estimated bytes). The plan must be a pure function
   of the checkpoint config and the options, so a rerun computes the same plan (that is how
   resume knows it may continue: the fingerprint is :meth:`Target.fingerprint` plus every file's
   items and sizes);
3. refuses an existing OUT (unless ``--force`` or a resumable state of the *same* plan) and checks
   free disk space for the bytes still to write (``fsutil.check_free_space``);
4. for each output file not yet complete calls :meth:`Target.write_file` with a sink
   (:class:`grokfetch.convert.output.FileSink`). The target writes through the sink only:

   - ``sink.begin(header_bytes)``: writes the header, or on resume checks that the
     partial file starts with exactly these bytes;
   - for each item in plan order: ``if sink.done(item.key): continue`` (finished by an earlier
     run), then ``sink.write(bytes_or_array)`` any number of times, then
     ``sink.commit(item.key)`` (records the end offset; made durable — data fsync, then the
     resume state — every 16 MiB / 2 s; ``commit(key, durable=True)`` forces it);
   - the sink writes ``NAME.partial``; the driver renames it to ``NAME`` when ``write_file``
     returns. A rerun after ``kill -9`` truncates the partial to the last committed item and
     continues, so the final bytes are identical to an uninterrupted run;

   Progress: per item the target calls ``progress.task(TENSOR_TASK, item.in_bytes, desc)``
   (one bar, reused) and ``progress.advance(TENSOR_TASK, n)`` per chunk, in checkpoint input
   bytes; the driver adds every advance to the overall ``"convert"`` task (and credits items
   skipped on resume itself).

   ``source.open(spec)`` hands out a :class:`grokfetch.convert.source.SourceTensor` (memory-mapped,
   header-checked, waits for the file under ``--wait``) with dequantized row chunks in JAX or
   transposed (PyTorch/GGUF) orientation, already restricted to ``--experts``;
5. writes ``model-config.json`` (the config of the *output*: ``num_layers``/``num_experts`` of a
   subset) and copies ``tokenizer.model`` into OUT, then writes the output manifest **last** (via
   ``grokfetch.integrity.manifest.write_manifest``) and removes the resume state.

Library code never prints: progress goes to the ``progress`` argument and errors are raised.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from grokfetch.errors import UsageError
from grokfetch.progress import Progress
from grokfetch.spec import ModelConfig, TableSubset, TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from grokfetch.checkpoint.reader import Checkpoint
    from grokfetch.convert.output import FileSink
    from grokfetch.convert.source import SourceProvider

T = TypeVar("T")
#: Default row-chunk size: how many bytes of float32 rows one worker materialises at a time.
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
DEFAULT_SHARD_SIZE = 5_000_000_000
#: The progress key of the per-tensor bar (reused for every tensor).
TENSOR_TASK = "tensor"
#: What an output base name (``--name``, or one made from the config's ``name``) may look like:
#: one plain file name, never a path.
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def default_jobs() -> int:
    """The default number of conversion threads: the CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_output_name(name: str, what: str = "--name") -> str:
    """``name`` when it is a safe single file name (:data:`SAFE_NAME`, not ``.`` or ``..``);
    else :class:`UsageError`."""
    if not SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"bad {what} {name!r}: use letters, digits, '.', '_' and '-' only "
                         "(a file name, not a path)")
    return name


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``grokfetch convert`` was asked to do. Targets read only their own fields."""

    target: str = "gguf"
    # gguf
    bits: int | None = None
    quant: str | None = None
    split_size: int | None = None
    # safetensors / jax
    layout: str = "hf"
    dtype: str = "bf16"
    shard_size: int = DEFAULT_SHARD_SIZE
    mesh: tuple[int, int] = (1, 8)
    # common
    # None = all; the driver turns "0-3"/"0,2" strings into sorted tuples (see normalized())
    layers: tuple[int, ...] | str | None = None
    experts: tuple[int, ...] | str | None = None
    workers: int | None = None  # threads quantizing row chunks; None = one per core (default_jobs())
    force: bool = False  # replace an existing output
    space_check: bool = True  # refuse to start without the free disk space for the output
    tokenizer: Path | None = None
    wait: bool = False
    wait_timeout: float | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    name: str | None = None  # output base name; default from the config and type

    @property
    def threads(self) -> int:
        """The worker threads to run: ``workers``, or one per core (:func:`default_jobs`) if None."""
        return default_jobs() if self.workers is None else self.workers

    def replace(self, **changes: Any) -> ConvertOptions:
        return dataclasses.replace(self, **changes)

    def normalized(self, config: ModelConfig) -> ConvertOptions:
        """Layer/expert strings parsed and range-checked against ``config``."""
        from grokfetch.spec import parse_layers

        layers, experts = self.layers, self.experts
        if isinstance(layers, str):
            sel = parse_layers(layers, config.num_layers)
            layers = tuple(sel) if sel is not None else None
        elif layers is not None:
            layers = tuple(sorted(set(layers)))
        if layers is not None and not layers:
            raise UsageError("--layers selects no layer")
        if isinstance(experts, str):
            experts = parse_experts(experts, config.num_experts)
        elif experts is not None:
            experts = tuple(sorted(set(experts)))
            bad = [e for e in experts if not 0 <= e < config.num_experts]
            if bad or not experts:
                raise UsageError(f"experts {bad} do not exist; {config.name} has experts "
                                 f"0-{config.num_experts - 1}")
        if layers is not None and any(not 0 <= x < config.num_layers for x in layers):
            raise UsageError(f"layers out of range 0-{config.num_layers - 1}")
        if self.name is not None:
            check_output_name(self.name)
        return self.replace(layers=layers, experts=experts,
                            chunk_bytes=self.chunk_bytes or DEFAULT_CHUNK_BYTES)


@dataclass(frozen=True)
class OutputItem:
    """One resumable unit of an output file (usually one tensor), written in plan order."""

    key: str  # unique within its file, e.g. the GGUF tensor name
    specs: tuple[TensorSpec, ...]  # checkpoint tensors it is made from
    nbytes: int  # bytes it occupies in the output (data, without alignment padding)
    in_bytes: int = 0  # checkpoint payload bytes it consumes (for progress and MB/s)
    meta: dict[str, Any] = field(default_factory=dict)  # target-private (type, shape, ...)


@dataclass
class OutputFile:
    """One file of the output, relative to OUT."""

    relpath: str
    items: list[OutputItem]
    nbytes: int  # expected size on disk (header + data + padding); used by the disk check
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def specs(self) -> list[TensorSpec]:
        """The checkpoint tensors this file reads, in first-use order, without duplicates."""
        seen: dict[int, TensorSpec] = {}
        for item in self.items:
            for s in item.specs:
                seen.setdefault(s.index, s)
        return list(seen.values())

    def fingerprint(self) -> dict[str, Any]:
        return {"relpath": self.relpath, "nbytes": self.nbytes,
                "items": [[i.key, i.nbytes] for i in self.items]}


class Target:
    """Base class of a conversion target; subclasses register with ``name=``.

    Attributes set by ``__init__``: ``ckpt`` (the open checkpoint), ``specs`` (the selected
    specs in file order, ``--layers`` applied), ``options``, ``config`` (the checkpoint config),
    ``subset`` (the checkpoint table cut to ``--layers``/``--experts``: its ``out`` table names
    and shapes the output) and ``out_config`` (the config the output describes).
    """

    name: ClassVar[str] = ""
    #: Globs of files of this target's kind that ``--force`` may delete from OUT.
    stale_patterns: ClassVar[tuple[str, ...]] = ()
    #: The tokenizer file the driver found (set before :meth:`validate`).
    tokenizer_path: Path | None = None
    registry: ClassVar[dict[str, type[Target]]] = {}
    #: Option fields that change the output bytes (part of the resume fingerprint).
    option_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            cls.name = name
            Target.registry[name] = cls

    def __init__(self, ckpt: Checkpoint, specs: list[TensorSpec], options: ConvertOptions):
        self.ckpt, self.specs, self.options = ckpt, specs, options
        self.config: ModelConfig = ckpt.config
        self.subset: TableSubset = ckpt.table.subset(options.layers, options.experts)
        self.out_config: ModelConfig = self.subset.out.config

    # -- to implement ---------------------------------------------------------------------
    def validate(self) -> None:
        """Check target-specific options; raise :class:`UsageError`. Called before planning."""

    def plan(self) -> list[OutputFile]:
        """The output files, their items in write order and their expected sizes."""
        raise NotImplementedError

    def write_file(self, ofile: OutputFile, sink: FileSink, source: SourceProvider,
                   progress: Progress) -> None:
        """Write one planned file through ``sink`` (see the module docstring)."""
        raise NotImplementedError

    # -- optional -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Target-specific facts for the final report (e.g. the GGUF type per tensor)."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a rerun to resume a partial output."""
        opts = {f: _jsonable(getattr(self.options, f)) for f in self.option_fields}
        return {"target": self.name, "options": opts, "layers": _jsonable(self.options.layers),
                "experts": _jsonable(self.options.experts), "config": self.config.to_json()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return list(v)
    return v


#: The built-in ``--to`` targets and the module that registers each (imported on first use).
TARGET_MODULES = {"gguf": "grokfetch.convert.gguf", "safetensors": "grokfetch.convert.safetensors",
                  "jax": "grokfetch.convert.jaxstore"}
TARGETS = tuple(TARGET_MODULES)


def get_target(name: str) -> type[Target]:
    """The registered target class (imports the built-in target modules on first use)."""
    _load_builtin_targets()
    try:
        return Target.registry[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; choose one of: "
                         f"{', '.join(sorted(Target.registry)) or 'none installed'}") from None


def _load_builtin_targets() -> None:
    import importlib

    for mod in TARGET_MODULES.values():
        importlib.import_module(mod)


def parse_experts(text: str | None, num_experts: int) -> tuple[int, ...] | None:
    """Parse ``"0,3"`` / ``"0-3"`` / ``"all"`` into a sorted expert tuple (None = all)."""
    from grokfetch.spec import parse_layers

    if text is None or text.strip().lower() == "all":
        return None
    try:
        sel = parse_layers(text, num_experts)
    except UsageError:
        raise UsageError(f"bad expert list {text!r}; use e.g. 0,1 or 0-3 with experts in "
                         f"0-{num_experts - 1}") from None
    if not sel:
        raise UsageError("--experts selects no expert")
    return tuple(sel)


def pack_by_size(items: list[T], size: Callable[[T], int], limit: int) -> list[list[T]]:
    """``items`` cut into consecutive runs, in order: a new run starts when the next item would
    take the current one past ``limit`` (an item larger than ``limit`` gets a run of its own)."""
    runs: list[list[T]] = [[]]
    total = 0
    for item in items:
        n = size(item)
        if runs[-1] and total + n > limit:
            runs.append([])
            total = 0
        runs[-1].append(item)
        total += n
    return runs
