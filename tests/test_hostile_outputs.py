"""Writers under attack or in a race: planted symlinks, two writers in one folder, an output
folder that overlaps the input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from outputs import error_line, tree

from grokfetch.convert.base import ConvertOptions
from grokfetch.convert.run import convert
from grokfetch.errors import FolderBusyError
from grokfetch.fsutil import LOCK_NAME, folder_lock, write_atomic
from grokfetch.integrity.manifest import MANIFEST_NAME
from grokfetch.progress import NullProgress

# --- no-follow partials -------------------------------------------------------------------------


def test_atomic_write_unlinks_a_planted_partial_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "f.json.partial").symlink_to(victim)
    write_atomic(out / "f.json", b"{}")
    assert victim.read_bytes() == b"precious"
    assert (out / "f.json").read_bytes() == b"{}" and not (out / "f.json").is_symlink()
    assert not os.path.lexists(out / "f.json.partial")


@pytest.mark.parametrize("target", ["gguf", "safetensors", "jax"])
def test_convert_never_writes_through_planted_symlinks(tiny_ckpt, tmp_path, run_cli, target):
    """Symlinks planted at every partial name (and at the lock) of a folder being converted into
    with --force: their targets stay untouched and the output equals a clean run's."""
    clean = tmp_path / "clean"
    assert run_cli(["convert", tiny_ckpt, "--to", target, "--out", clean])[0] == 0
    out = tmp_path / "out"
    out.mkdir()
    victims = []
    names = [p.name for p in clean.iterdir()] + ["model-config.json", "tokenizer.model"]
    for i, name in enumerate(sorted(set(names))):
        victim = tmp_path / f"victim-{i}"
        victim.write_bytes(b"precious %d" % i)
        victims.append(victim)
        (out / f"{name}.partial").symlink_to(victim)
    (tmp_path / "victim-dir").mkdir()
    (out / "stale.partial").symlink_to(tmp_path / "victim-dir")
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", target, "--out", out, "--force"])
    assert code == 0, err
    for i, victim in enumerate(victims):
        assert victim.read_bytes() == b"precious %d" % i
    assert (tmp_path / "victim-dir").is_dir()
    got = {k: v for k, v in tree(out).items() if not k.endswith(".partial")}
    want = tree(clean)
    assert got == want


def test_lock_file_planted_as_symlink_is_refused(tmp_path, tiny_ckpt, run_cli):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--out", out, "--force"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "lock" in errors[0]
    assert victim.read_bytes() == b"precious"


# --- one writer per folder ----------------------------------------------------------------------


def test_folder_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    def other_thread() -> BaseException | None:
        out: list[BaseException | None] = [None]

        def run() -> None:
            try:
                with folder_lock(tmp_path / "f", "convert"):
                    pass
            except FolderBusyError as exc:
                out[0] = exc

        t = threading.Thread(target=run)
        t.start()
        t.join()
        return out[0]

    with folder_lock(tmp_path / "f", "convert"):
        refused = other_thread()
        assert isinstance(refused, FolderBusyError)
        assert f"pid {os.getpid()}: convert" in str(refused)
        with folder_lock(tmp_path / "f", "write a manifest"):  # the holder's thread may nest
            pass
        assert (tmp_path / "f" / LOCK_NAME).exists()
    assert not (tmp_path / "f" / LOCK_NAME).exists()
    assert other_thread() is None


def test_folder_lock_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from grokfetch.fsutil import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}, 'hold'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError):
            with folder_lock(tmp_path, "convert"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by kill -9, but no longer held
    with folder_lock(tmp_path, "convert"):
        pass


class _PauseOnce(NullProgress):
    """Blocks the first per-tensor advance until released (so a second run can try to start)."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def advance(self, key: str, amount: int) -> None:
        if key != "convert" and not self.started.is_set():
            self.started.set()
            assert self.release.wait(60)


def test_two_converts_into_one_folder(tiny_ckpt, tmp_path, run_cli):
    lone = tmp_path / "lone"
    convert(tiny_ckpt, lone, ConvertOptions(target="gguf", bits=8))
    out = tmp_path / "out"
    pause, result = _PauseOnce(), {}

    def first() -> None:
        try:
            result["report"] = convert(tiny_ckpt, out, ConvertOptions(target="gguf", bits=8),
                                       progress=pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    t = threading.Thread(target=first)
    t.start()
    try:
        assert pause.started.wait(60)
        for force in ([], ["--force"]):
            code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--bits", "8",
                                    "--out", out, *force])
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert code == 1 and len(errors) == 1
            assert errors[0].startswith(f"error: {out} is in use by another grokfetch (pid ")
    finally:
        pause.release.set()
        t.join(120)
    assert "error" not in result, result.get("error")
    assert tree(out) == tree(lone)
    assert (out / MANIFEST_NAME).is_file() and not (out / LOCK_NAME).exists()


# --- output overlapping the input -------------------------------------------------------------


@pytest.mark.parametrize("where", ["root", "ckpt-0", "inside-ckpt-0", "parent"])
def test_convert_refuses_output_overlapping_input(tiny_ckpt, tmp_path, run_cli, where):
    ck = tmp_path / "dl" / "ck"
    shutil.copytree(tiny_ckpt, ck)
    before = tree(tmp_path / "dl")
    out = {"root": ck, "ckpt-0": ck / "ckpt-0", "inside-ckpt-0": ck / "ckpt-0" / "gguf",
           "parent": tmp_path / "dl"}[where]
    code, _, err = run_cli(["convert", ck, "--to", "gguf", "--out", out, "--force"])
    assert code == 2 and error_line(err).startswith("error: --out ") and "overlaps the input" in err
    assert tree(tmp_path / "dl") == before
    assert not (ck / "ckpt-0" / "gguf").exists()


# --- a disk that fills up mid-way -------------------------------------------------------------


class _FillDiskOnce(NullProgress):
    """On the first per-tensor advance, fill the output's file system: ``fill()``."""

    def __init__(self, fill):
        self.fill, self.filled = fill, False

    def advance(self, key: str, amount: int) -> None:
        if key != "convert" and not self.filled:
            self.filled = True
            self.fill()


@pytest.mark.parametrize("target", ["gguf", "safetensors", "jax"])
def test_disk_full_mid_conversion_is_one_line_and_resumes(tiny_ckpt, tmp_path, tmpfs, fill_disk,
                                                          run_cli, target):
    from grokfetch.errors import DiskFullError

    lone = tmp_path / "lone"
    convert(tiny_ckpt, lone, ConvertOptions(target=target))
    mnt = tmpfs("24m")
    out, ballast = mnt / "out", mnt / "ballast"
    with pytest.raises(DiskFullError, match="the disk is full"):
        convert(tiny_ckpt, out, ConvertOptions(target=target),
                progress=_FillDiskOnce(lambda: fill_disk(ballast)))
    assert not (out / MANIFEST_NAME).exists()  # nothing looks complete
    assert not (out / LOCK_NAME).exists()
    # the CLI says it in one line while the disk is still full
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", target, "--out", out, "--no-space-check"])
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out}: the disk is full; the conversion to {target} stopped"]
    ballast.unlink()
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", target, "--out", out])
    assert code == 0, err
    got, want = tree(out), tree(lone)
    assert got == want
    code, _, err = run_cli(["verify", out])
    assert code == 0, err
