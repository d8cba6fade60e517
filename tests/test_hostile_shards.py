"""Hostile and broken tensor files against every command that reads shards.

The corpus (``hostile_corpus.py``, 100+ kinds) goes through the reader in-process, then through
``verify``, ``inspect``, ``convert --to gguf|safetensors|jax`` and ``smoke`` (in-process CLI,
so JAX is imported and the smoke graph compiled once; a persistent compilation cache makes each
later smoke run cheap). A handful of the kinds that used to crash or hang the old scanner also run
in real subprocesses, where a segfault or a hang would show as an exit code. Each run must
refuse the file with exit 1 or 2, one ``error:`` line and no traceback, execute nothing (a marker
file), and stay under 2 s of CPU and 200 MB of peak memory growth (hang and blowup guards, not
speed measurements: the old scanner needed minutes or gigabytes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_corpus import corpus

from grokfetch.checkpoint.pickle_format import scan
from grokfetch.checkpoint.pickle_nodes import MAX_STACK
from grokfetch.checkpoint.reader import open_checkpoint
from grokfetch.errors import CheckpointError, brief

VICTIM = 5  # the tiny preset's first attention key: a QuantizedWeight8bit file
CPU_LIMIT_S = 2.0
MEM_LIMIT = 200 * 1024 * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Budget:
    """CPU seconds and peak RSS growth of one block (peak reset through /proc/self/clear_refs)."""

    def __enter__(self) -> Budget:
        self.rss = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.can_peak = True
        except OSError:
            self.can_peak = False
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = time.process_time() - self.cpu
        self.grew = (_status_kb("VmHWM") - self.rss) * 1024 if self.can_peak else 0

    def problems(self) -> list[str]:
        out = []
        if self.cpu_s > CPU_LIMIT_S:
            out.append(f"{self.cpu_s:.2f} s CPU")
        if self.grew > MEM_LIMIT:
            out.append(f"{self.grew / 2**20:.0f} MiB peak growth")
        return out


@pytest.fixture(scope="module")
def hostile_ckpt(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("hostile")
    ck_dir = root / "ck"
    shutil.copytree(tiny_ckpt, ck_dir)
    ck = open_checkpoint(ck_dir)
    marker = root / "pwned-marker"
    kinds = corpus(ck.file_path(ck.table[VICTIM]).read_bytes(), marker)
    return ck_dir, ck, kinds, marker


@pytest.fixture(scope="module")
def jax_compile_cache(tmp_path_factory):
    """A persistent compilation cache, so each smoke run after the first skips XLA compiles."""
    import jax

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path_factory.mktemp("xla-cache")), 0, 0), strict=True):
        jax.config.update(k, v)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


class Planted:
    """Put ``blob`` in place of a tensor file (the one it fits), restore the original after."""

    def __init__(self, ck, blob: bytes, *, pad: bool):
        fits = [s for s in ck.table if s.file_bytes >= len(blob)]
        assert fits, "corpus blob larger than every tensor file of the preset"
        spec = ck.table[VICTIM] if ck.table[VICTIM] in fits else min(fits, key=lambda s: s.file_bytes)
        self.spec, self.path = spec, ck.file_path(spec)
        self.original = self.path.read_bytes()
        # 0xFF is no opcode: padding to the predicted size makes convert's size check pass and
        # reach the scanner, and can never complete a truncated file into a valid one.
        self.blob = blob.ljust(spec.file_bytes, b"\xff") if pad else blob

    def __enter__(self) -> Planted:
        self.path.write_bytes(self.blob)
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.write_bytes(self.original)


def test_corpus_is_large_and_distinct(hostile_ckpt):
    _, _, kinds, _ = hostile_ckpt
    assert len(kinds) >= 70
    assert len(set(kinds.values())) == len(kinds)


def test_reader_refuses_every_kind(hostile_ckpt):
    _, ck, kinds, marker = hostile_ckpt
    failures = {}
    for name, blob in kinds.items():
        with Planted(ck, blob, pad=False) as planted, Budget() as budget:
            try:
                with ck.open(planted.spec):
                    failures[name] = "accepted"
            except CheckpointError as exc:
                text = str(exc)
                if len(text) > 400 or "\n" in text or str(planted.path) not in text:
                    failures[name] = f"message: {text[:200]!r}"
            except Exception as exc:  # noqa: BLE001 - any other exception is the failure
                failures[name] = f"{type(exc).__name__}: {brief(str(exc))}"
        if budget.problems():
            failures[name] = ", ".join(budget.problems())
    assert not marker.exists()
    assert failures == {}


COMMANDS = ("verify", "inspect", "convert-gguf", "convert-safetensors", "convert-jax", "smoke")


def _argv(command: str, ck_dir: Path, out: Path) -> list[str]:
    if command.startswith("convert-"):
        return ["convert", str(ck_dir), "--to", command.split("-", 1)[1], "--out", str(out)]
    if command == "smoke":
        return ["smoke", str(ck_dir), "--platform", "cpu", "--max-new-tokens", "1"]
    return [command, str(ck_dir)]


def _judge(command: str, code: int, out: str, err: str, planted: Planted) -> str | None:
    if code not in (1, 2):
        return f"exit {code}"
    if "Traceback" in out + err:
        return "traceback"
    # progress lines (timestamped, when stderr is not a terminal) may come before the error
    lines = [line for line in err.strip().splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
    errors = [line for line in lines if line.startswith("error:")]
    if command == "inspect" and not lines:
        pass  # a report: the bad file's row says what is wrong
    elif len(errors) != 1 or any(not line.startswith(("error:", "hint:")) for line in lines):
        return f"stderr not one error line: {err[:300]!r}"
    if planted.path.name not in out + err:
        return "the bad file is not named"
    return None


def test_every_command_refuses_every_kind(hostile_ckpt, run_cli, tmp_path, jax_compile_cache):
    ck_dir, ck, kinds, marker = hostile_ckpt
    out = tmp_path / "out"
    with Planted(ck, kinds["dict_stack_global"], pad=True):
        run_cli(_argv("smoke", ck_dir, out))  # warm-up: imports JAX, fills the compile cache
    failures: dict[str, str] = {}
    for name, blob in kinds.items():
        with Planted(ck, blob, pad=True) as planted:
            for command in COMMANDS:
                with Budget() as budget:
                    code, stdout, stderr = run_cli(_argv(command, ck_dir, out))
                problem = _judge(command, code, stdout, stderr, planted) or ", ".join(budget.problems())
                if out.exists():
                    problem = problem or "left an output folder"
                    shutil.rmtree(out)
                if problem:
                    failures[f"{name} × {command}"] = problem
    assert not marker.exists()
    assert failures == {}


@pytest.mark.parametrize("kind", ["deep_tuple_dict_key", "dag_64", "huge_shape_dims",
                                  "dict_stack_global", "one_byte_pushes", "reduce_os_system_p4"])
def test_old_crashers_in_a_real_process(hostile_ckpt, tmp_path, kind):
    """A segfault (exit 139) or hang would kill pytest in-process; here it is an exit code."""
    ck_dir, ck, kinds, marker = hostile_ckpt
    env = {**os.environ, "GROKFETCH_DEBUG": ""}
    env.pop("GROKFETCH_DEBUG")
    with Planted(ck, kinds[kind], pad=True) as planted:
        proc = subprocess.run([sys.executable, "-m", "grokfetch", "verify", str(ck_dir)],
                              capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert planted.path.name in proc.stdout
    assert not marker.exists()


def test_scanner_work_is_bounded_by_the_header():
    """A file of nothing but one-byte pushes is refused after at most MAX_STACK opcodes,
    however long it is: the refusal offset does not grow with the file."""
    offsets = []
    for size in (1 << 10, 1 << 24):
        with pytest.raises(CheckpointError, match="stack deeper") as info:
            scan(b"\x80\x04" + b"\x88" * size + b".", "pushes")
        offsets.append(info.value.problem)
    assert offsets[0] == offsets[1] == f"pickle stack deeper than {MAX_STACK} at byte {MAX_STACK + 2}"


def test_error_messages_never_format_huge_values():
    assert brief(2**100_000) == "<100001-bit integer>"
    assert brief("x" * 10_000).endswith("...") and len(brief("x" * 10_000)) <= 83
    assert brief(["\x1b[31m"] * 100) .startswith("[\\x1b[31m, ")
    err = CheckpointError("f", "p", expected=10**5000, actual=(1, 2**70))
    assert "expected <16610-bit integer>" in str(err) and len(str(err)) < 200
