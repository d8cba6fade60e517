"""The command line as a contract: usage errors, help, one flag vocabulary, plans, reruns."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _malformed(ckpt: str, tmp: str) -> list[list[str]]:
    """Command lines that must be refused as usage errors, across all commands."""
    (Path(tmp) / "with-config").mkdir(exist_ok=True)
    shutil.copy(Path(ckpt) / "model-config.json", Path(tmp) / "with-config" / "model-config.json")
    return [
        ["frobnicate"],
        ["--frob"],
        ["inspect", "--preset"],
        ["inspect", "--preset", "nope"],
        ["inspect", "--bogus"],
        ["inspect", f"{tmp}/with-config", "--preset", "grok-1"],
        ["fixture"],
        ["fixture", f"{tmp}/f", "--seed", "-1"],
        ["fixture", f"{tmp}/f", "--seed", "x"],
        ["fixture", f"{tmp}/f", "--preset", "grok-2"],
        ["download", "--order", "random", "--dir", tmp],
        ["download", "--dir"],
        ["download", "--layers", "3-1", "--dry-run"],
        ["download", "--timeout", "soon"],
        ["download", "--force", "--dir", tmp],
        ["seed"],
        ["seed", tmp, "--until-ratio", "-1"],
        ["seed", tmp, "--for", "-5"],
        ["torrent"  , "create", ckpt],
        ["torrent", "create", ckpt, "--output", f"{tmp}/x.torrent"],
        ["torrent", "nope"],
        ["verify"],
        ["verify", ckpt, "--hashes", "v3"],
        ["verify", ckpt, "--peer", "1.2.3.4:5"],
        ["verify", ckpt, "--jobs", "0"],
        ["manifest", "create", ckpt, "--chunk-size", "0"],
        ["convert", ckpt, "--out", f"{tmp}/o"],
        ["convert", ckpt, "--to", "gguf"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--bits", "four"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--bits", "7"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--chunk-size", "0"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--wait-timeout", "5"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--workers", "2"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "-j", "0"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--preset", "grok-2"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--preset", "grok-1"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--layout", "hf"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "--split-size", "0"],
        ["convert", ckpt, "--to", "gguf", "--out", f"{tmp}/o", "-q", "-v"],
        ["smoke", ckpt, "--gpus", "eight"],
        ["smoke", ckpt, "--platform", "tpu"],
        ["convert", ckpt, "--to", "onnx", "--out", f"{tmp}/o"],
        ["smoke", ckpt, "--dtype", "bfloat17"],
        ["smoke", ckpt, "--layers", "2-5", "--dry-run"],
        ["smoke", ckpt, "--device-memory", "0", "--dry-run"],
        ["smoke", ckpt, "--bogus"],
        ["demo", "--preset", "grok-1"],
        ["demo", "--keep=maybe"],
    ]


def test_malformed_command_lines_are_usage_errors(run_cli, tiny_ckpt, tmp_path):
    lines = _malformed(str(tiny_ckpt), str(tmp_path))
    assert len(lines) >= 30
    for args in lines:
        code, out, err = run_cli(args)
        assert code == 2, (args, code, err)
        assert "Traceback" not in err, (args, err)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and err.startswith("error:"), (args, err)
        assert "GROKFETCH_DEBUG" not in err, (args, err)
    assert not (tmp_path / "f").exists() and not (tmp_path / "o").exists()


def test_parse_errors_show_the_usage_line(run_cli):
    code, _, err = run_cli(["convert", "./x", "--out", "y"])
    assert code == 2
    assert err.splitlines() == ["error: Missing option '--to'. Choose from: gguf, safetensors, jax",
                                "Usage: grokfetch convert [OPTIONS] [CKPT_DIR]",
                                "Try 'grokfetch convert --help' for help."]


def test_bare_grokfetch_prints_help_exit_0():
    proc = subprocess.run([sys.executable, "-m", "grokfetch"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "convert" in proc.stdout and proc.stderr == ""


COMMANDS = [["inspect"], ["fixture"], ["download"], ["seed"], ["torrent", "create"], ["verify"],
            ["manifest", "create"], ["convert"], ["smoke"], ["demo"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_conventional_metavars_and_shared_flags(run_cli, cmd):
    code, out, _ = run_cli([*cmd, "--help"])
    assert code == 0
    assert not re.search(r"<(bool|int|str|float|path|list\[[a-z]+\])>|\{[a-z_]+\}", out), out
    for flag in ("--json", "--quiet", "-q", "--verbose", "-v"):
        assert flag in out, (cmd, flag)


@pytest.mark.parametrize("cmd, flag", [(["convert"], "--to"), (["download"], "--order"),
                                       (["smoke"], "--platform"), (["verify"], "--hashes")])
def test_enum_options_are_choices_declared_by_the_library(run_cli, tiny_ckpt, cmd, flag):
    """The help lists the library's own values, and the parser refuses any other one."""
    from grokfetch.convert.base import TARGETS, get_target
    from grokfetch.integrity.pieces import HASH_SCHEMES
    from grokfetch.smoke.mesh import PLATFORMS
    from grokfetch.torrent.options import ORDERS

    values = {"--to": TARGETS, "--order": ORDERS, "--platform": PLATFORMS, "--hashes": HASH_SCHEMES}[flag]
    if flag == "--to":
        for name in TARGETS:  # every declared target exists
            assert get_target(name).name == name
    from grokfetch.cli import click_command

    param = next(p for p in click_command().commands[cmd[0]].params if flag in p.opts)
    assert param.metavar == "[" + "|".join(values) + "]"  # what --help shows
    args = [*cmd, str(tiny_ckpt)] if cmd != ["download"] else [*cmd, "--dir", str(tiny_ckpt)]
    code, _, err = run_cli([*args, flag, "nonsense"])
    assert code == 2 and err.splitlines()[0].startswith(f"error: Invalid value for '{flag}'"), err
    assert all(repr(v) in err.splitlines()[0] for v in values), err


def test_one_vocabulary(run_cli):
    helps = {" ".join(c): run_cli([*c, "--help"])[1] for c in COMMANDS}
    assert "--out" in helps["torrent create"] and "--output" not in helps["torrent create"]
    assert "--jobs" in helps["convert"] and "--workers" not in helps["convert"]
    assert "--no-space-check" in helps["convert"] and "--no-space-check" in helps["download"]
    for c in ("download", "convert", "smoke"):
        assert "LIST" in helps[c] and "--dry-run" in helps[c], c
    assert "bf16" in helps["smoke"] and "bf16" in helps["convert"]
    assert "--install-completion" in run_cli(["--help"])[1]


def test_exit_code_of_error_classes():
    from grokfetch.cli import exit_code_of
    from grokfetch.errors import CheckFailed, InsufficientSpaceError, NotFoundError

    assert exit_code_of(PermissionError(errno.EACCES, "Permission denied", "/x")) == 2
    assert exit_code_of(OSError(errno.EROFS, "Read-only file system")) == 2
    assert exit_code_of(OSError(errno.ENOSPC, "No space left")) == 1
    assert exit_code_of(NotFoundError("/x", "folder")) == 2
    assert exit_code_of(InsufficientSpaceError("/x", 2, 1)) == 1
    assert exit_code_of(CheckFailed("bad")) == 1
    assert exit_code_of(KeyboardInterrupt()) == 130


def test_fixture_grok1_is_disk_checked(tmp_path):
    from grokfetch.fsutil import free_bytes
    from grokfetch.spec import GROK_1, TensorTable

    if free_bytes(tmp_path) >= TensorTable(GROK_1).file_bytes:
        pytest.skip("this disk could hold Grok-1")
    # in a child that may not write a file over 64 MiB: were the check gone, the 318 GB write
    # would die at its first tensor file instead of filling the disk
    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))

    proc = subprocess.run([sys.executable, "-m", "grokfetch", "fixture", str(tmp_path / "g"),
                           "--preset", "grok-1"], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    err = proc.stderr
    assert proc.returncode == 1 and "not enough free space" in err and "--no-space-check" in err
    assert not (tmp_path / "g").exists()


def test_convert_rerun_is_already_complete(run_cli, tiny_ckpt, tmp_path):
    out = tmp_path / "q"
    args = ["convert", tiny_ckpt, "--to", "gguf", "--bits", "4", "--out", out]
    assert run_cli(args)[0] == 0
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}
    code, stdout, err = run_cli([*args, "--json"])
    assert code == 0, err
    r = json.loads(stdout.splitlines()[-1])
    assert r["ok"] and r["already_complete"] and r["bytes_in"] == 0
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == before
    code, stdout, _ = run_cli(args)
    assert code == 0 and "already complete" in stdout
    # other options: not the same output, so it is refused, never reported as complete
    code, _, err = run_cli(["convert", tiny_ckpt, "--to", "gguf", "--bits", "8", "--out", out])
    assert code == 2 and "--force" in err
    # a damaged output is not complete either
    gguf = next(out.glob("*.gguf"))
    with open(gguf, "r+b") as f:
        f.truncate(gguf.stat().st_size - 1)
    code, _, err = run_cli(args)
    assert code == 2 and "already exists" in err


def test_shell_completion_completes_commands():
    env = {**os.environ, "_GROKFETCH_COMPLETE": "complete_bash", "COMP_WORDS": "grokfetch conv",
           "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-m", "grokfetch"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["convert"], proc
