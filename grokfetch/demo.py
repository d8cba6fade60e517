"""``grokfetch demo``: the whole path on a miniature checkpoint, through the real code paths.

fixture → torrent → seeder on 127.0.0.1 → download by magnet → verify (torrent, structure,
manifest) → convert (GGUF 4-bit, safetensors, JAX) → smoke on 8 simulated CPU devices, the
original and each converted output compared with it. Every step is the same library function
the corresponding command calls; nothing is mocked. Nothing leaves the loopback interface.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import CheckFailed, GrokfetchError
from grokfetch.progress import NULL_PROGRESS, Progress

#: (step name, output subfolder, convert options) for the conversion steps.
CONVERSIONS = (
    ("convert gguf --bits 4", "gguf-q4", {"target": "gguf", "bits": 4}),
    ("convert safetensors", "safetensors", {"target": "safetensors"}),
    ("convert jax", "jax", {"target": "jax"}),
)


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.name, "ok": self.ok, "seconds": round(self.seconds, 2),
                "detail": self.detail, "bytes": self.bytes}


@dataclass
class DemoReport:
    workdir: Path
    kept: bool
    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "workdir": str(self.workdir) if self.kept else None,
                "seconds": round(sum(s.seconds for s in self.steps), 2),
                "steps": [s.to_json() for s in self.steps]}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _Runner:
    def __init__(self, report: DemoReport, progress: Progress,
                 on_step: Callable[[Step], None] | None):
        self.report, self.progress, self.on_step = report, progress, on_step

    def run(self, name: str, fn: Callable[[], tuple[str, Path | None]]) -> bool:
        t0 = time.monotonic()
        self.progress.event("step", name=name, state="start")
        try:
            detail, out = fn()
            step = Step(name, True, time.monotonic() - t0, detail, _size(out) if out else None)
        except GrokfetchError as exc:
            step = Step(name, False, time.monotonic() - t0, str(exc).splitlines()[0])
        self.report.steps.append(step)
        self.progress.event("step", **step.to_json())
        if self.on_step:
            self.on_step(step)
        return step.ok


def run_demo(workdir: Path | str | None = None, *, keep: bool = False, preset: str = "mini",
             devices: int = 8, progress: Progress = NULL_PROGRESS,
             on_step: Callable[[Step], None] | None = None) -> DemoReport:
    """Run every step; stops at the first failure. Returns the report (check ``.passed``).

    JAX must be configured for ``devices`` CPU devices before this is called (the CLI does it;
    see :func:`grokfetch.smoke.mesh.setup_jax`).
    """
    from grokfetch.checkpoint.fixture import write_fixture
    from grokfetch.convert.base import ConvertOptions
    from grokfetch.convert.run import convert
    from grokfetch.integrity.manifest import check_manifest, write_manifest
    from grokfetch.smoke.run import SmokeOptions, smoke
    from grokfetch.torrent.create import create_torrent
    from grokfetch.torrent.job import DownloadOptions, download
    from grokfetch.torrent.seed import Seeder
    from grokfetch.verify.run import verify

    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="grokfetch-demo-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    report = DemoReport(work, keep or not own_tmp)
    r = _Runner(report, progress, on_step)
    name = f"grok-{preset}"
    seed_root = work / "seed" / name
    torrent = work / f"{name}.torrent"
    dl_dir = work / "download"
    state: dict[str, Any] = {}

    def fixture() -> tuple[str, Path]:
        table = write_fixture(seed_root, preset, force=True, progress=progress)
        return f"{len(table)} tensor files, preset {preset}", seed_root

    def make_torrent() -> tuple[str, Path]:
        created = create_torrent(seed_root, torrent, force=True, progress=progress)
        state["infohash"], state["magnet"] = created.infohash, created.magnet
        return f"infohash {created.infohash[:12]}…", torrent

    def fetch() -> tuple[str, Path]:
        opts = DownloadOptions(peers=[f"127.0.0.1:{state['port']}"], trackers=False, dht=False,
                               lsd=False, upnp=False, utp=False, listen="127.0.0.1:0", timeout=60,
                               handle_signals=False, force=True)
        res = download(state["magnet"], dl_dir, opts, progress=progress)
        state["content"] = res.content
        return (f"{res.wanted_pieces} pieces by magnet from 127.0.0.1:{state['port']}, "
                f"{res.hash_failures} hash failures"), res.content

    def check() -> tuple[str, Path]:
        rep = verify(dl_dir, progress=progress)
        if not rep.ok:
            raise CheckFailed(f"verify found {len(rep.findings)} problems")
        manifest = write_manifest(state["content"], progress=progress)
        mrep = check_manifest(state["content"], manifest, progress=progress)
        if not mrep.ok:
            raise CheckFailed(f"manifest check found {len(mrep.findings)} problems")
        return "piece hashes, tensor structure and xxh3 manifest all good", None  # type: ignore[return-value]

    def converter(target_dir: Path, options: dict[str, Any]) -> Callable[[], tuple[str, Path]]:
        def run() -> tuple[str, Path]:
            rep = convert(state["content"], target_dir, ConvertOptions(force=True, **options),
                          progress=progress)
            mbps = getattr(rep, "mb_per_s", None)
            return (f"{mbps:.0f} MB/s" if isinstance(mbps, (int, float)) else "done"), target_dir
        return run

    def smoker(path: Path, compare: Path | None) -> Callable[[], tuple[str, None]]:
        def run() -> tuple[str, None]:
            opts = SmokeOptions(gpus=devices, platform="cpu", max_new_tokens=4, compare=compare)
            rep = smoke(path, opts, progress=progress)
            rep.raise_for_failures()
            cmp = getattr(rep, "compare", None) or {}
            extra = ""
            if isinstance(cmp, dict) and "top1_agreement" in cmp:
                kind = "lossless, identical" if cmp.get("lossless") else "lossy"
                extra = (f"; vs original ({kind}): top-1 {cmp['top1_agreement']:.0%}, "
                         f"mean KL {cmp['mean_kl']:.2g}, max|Δlogit| {cmp['max_abs_diff']:.3g}")
            return f"{len(rep.checks)} checks passed{extra}", None
        return run

    try:
        ok = r.run("fixture", fixture) and r.run("torrent create", make_torrent)
        if ok:
            with Seeder(seed_root, torrent, listen=("127.0.0.1", 0)) as seeder:
                state["port"] = seeder.port
                ok = r.run("download (magnet)", fetch)
        ok = ok and r.run("verify", check)
        outputs = []
        for step_name, sub, options in CONVERSIONS:
            if not ok:
                break
            out = work / "out" / sub
            ok = r.run(step_name, converter(out, options))
            outputs.append((sub, out))
        if ok:
            ok = r.run(f"smoke original ({devices} devices)", smoker(state["content"], None))
        for sub, out in outputs:
            if not ok:
                break
            ok = r.run(f"smoke {sub} --compare", smoker(out, state["content"]))
    finally:
        if not report.kept:
            shutil.rmtree(work, ignore_errors=True)
    return report
