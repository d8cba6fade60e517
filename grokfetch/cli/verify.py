"""``grokfetch verify`` and ``grokfetch manifest create``: prove a folder holds the right bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from grokfetch.cli.options import ForceOpt, JobsOpt, JsonOpt, PresetOpt, QuietOpt, VerboseOpt, examples
from grokfetch.integrity.pieces import HASH_SCHEMES
from grokfetch.units import human_bytes

VERIFY_EPILOG = examples(
    "grokfetch verify ./grok-1",
    "grokfetch verify ./grok-1 --torrent grok-1.torrent --json",
    "grokfetch verify ./out --manifest ./out/grokfetch-manifest.json",
    "grokfetch verify ./grok-1 --repair --peer 10.0.0.5:6881",
)
MANIFEST_EPILOG = examples("grokfetch manifest create ./grok-1 -o grok-1.manifest.json",
                           "grokfetch manifest create ./out --algo sha256")


def _pieces(ps: list[int], limit: int = 6) -> str:
    if not ps:
        return "–"
    head = ", ".join(map(str, ps[:limit]))
    return head + (f", … ({len(ps)})" if len(ps) > limit else "")


def _ranges(rs: list[tuple[int, int]], limit: int = 3) -> str:
    if not rs:
        return "–"
    head = ", ".join(f"{a:,}–{b:,}" for a, b in rs[:limit])
    return head + (f", … ({len(rs)})" if len(rs) > limit else "")


def summary_line(report) -> str:
    counts = report.counts()
    what = ", ".join(report.checks) or "nothing"
    if report.ok:
        extra = f"; {len(report.warnings)} warning(s)" if report.warnings else ""
        return (f"OK: {report.files_checked} files, {human_bytes(report.bytes_hashed)} hashed "
                f"({what}) in {report.seconds:.1f} s{extra}")
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"FAILED ({what}): {parts}"


def render(report, console) -> None:
    """The rich summary: one row per finding, then one line."""
    from rich.table import Table

    if report.findings:
        t = Table(title=f"verify {report.root}", show_lines=False)
        for col in ("kind", "path", "detail", "pieces", "byte ranges"):
            t.add_column(col)
        for f in report.findings:
            color = "red" if f.severity == "error" else "yellow"
            t.add_row(f"[{color}]{f.kind}[/{color}]", f.path, f.detail, _pieces(f.pieces),
                      _ranges(f.ranges))
        console.print(t)
    if report.pieces_total is not None:
        console.print(f"pieces: {report.pieces_total - (report.pieces_bad or 0):,} of "
                      f"{report.pieces_total:,} good")
    for k, v in report.sources.items():
        console.print(f"[dim]{k}: {v}[/dim]")
    if report.repaired:
        console.print(f"repaired: {', '.join(report.repaired)}")
    color = "green" if report.ok else "red"
    console.print(f"[bold {color}]{summary_line(report)}[/bold {color}]")


def register(app: typer.Typer) -> None:
    @app.command(epilog=VERIFY_EPILOG)
    def verify(
        directory: Annotated[Path, typer.Argument(help="The download folder (as given to download "
                                                       "--dir) or the torrent's top folder.",
                                                  show_default=False)],
        torrent: Annotated[Optional[Path], typer.Option(
            "--torrent", help="Check piece hashes of this .torrent (default: the one the "
                              "download saved in DIR/.grokfetch/).")] = None,
        manifest: Annotated[Optional[Path], typer.Option(
            "--manifest", help="Check against this grokfetch manifest (default: "
                               "DIR/grokfetch-manifest.json when there is one).")] = None,
        structure: Annotated[Optional[bool], typer.Option(
            "--structure/--no-structure", help="Check tensor files against the tensor table "
                                               "(default: when DIR holds a checkpoint).",
            show_default=False)] = None,
        preset: PresetOpt = None,
        repair: Annotated[bool, typer.Option("--repair", help="Re-download only the bad pieces "
                                             "(needs a torrent), then verify again.")] = False,
        peer: Annotated[Optional[list[str]], typer.Option(
            "--peer", help="With --repair: connect to HOST:PORT (repeatable).")] = None,
        jobs: JobsOpt = None,
        hashes: Annotated[Literal[HASH_SCHEMES], typer.Option("--hashes",
                                            help="For hybrid torrents: which hashes to check "
                                                 "(auto: v2).")] = "auto",
        all_files: Annotated[bool, typer.Option("--all-files", help="Check every file of the "
                                                "torrent, even those a selective download "
                                                "(--include/--layers) skipped.")] = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Check every byte against the torrent's hashes (or a manifest) and the tensor table.

        Exit code 0 when everything is good, 1 when something is bad, 2 for usage errors. Missing, truncated, oversized, corrupted, unsafe and extra files are distinct findings.
        """
        from grokfetch.cli.options import check_jobs, check_preset
        from grokfetch.cli.output import Output
        from grokfetch.errors import CheckFailed, UsageError

        out = Output("verify", json_mode=json_, quiet=quiet, verbose=verbose)
        check_jobs(jobs)
        check_preset(directory, preset)
        if peer and not repair:
            raise UsageError("--peer only makes sense with --repair")
        with out.progress() as progress:
            if repair:
                from grokfetch.repair import verify_and_repair

                report = verify_and_repair(directory, torrent=torrent, structure=structure,
                                           preset=preset, jobs=jobs, scheme=hashes,
                                           peers=peer or [], manifest=manifest,
                                           all_files=all_files, progress=progress)
            else:
                from grokfetch.verify.run import verify as run_verify

                report = run_verify(directory, torrent=torrent, manifest=manifest,
                                    structure=structure, preset=preset, jobs=jobs, scheme=hashes,
                                    all_files=all_files, progress=progress)
        data = {k: v for k, v in report.to_json().items() if k not in ("ok", "root", "seconds")}
        data["input"] = str(report.root)
        if not report.ok:
            exc = CheckFailed(summary_line(report), report.findings)
            exc.hint = ("grokfetch verify DIR --repair re-downloads only the bad pieces"
                        if report.pieces_total is not None and not repair
                        else "see docs/verify.md, 'A corrupted shard'")
            raise out.failed(exc, data, lambda c: render(report, c))
        out.result(data, lambda c: render(report, c))
        return 0

    manifest_app = typer.Typer(help="Create grokfetch manifests (whole-file and chunk hashes).",
                               no_args_is_help=True)
    app.add_typer(manifest_app, name="manifest")

    @manifest_app.command("create", epilog=MANIFEST_EPILOG)
    def manifest_create(
        directory: Annotated[Path, typer.Argument(help="Folder to hash (every regular file "
                                                       "under it).", show_default=False)],
        out_file: Annotated[Optional[Path], typer.Option(
            "--out", "-o", help="Manifest to write (default: DIR/grokfetch-manifest.json).")] = None,
        algo: Annotated[str, typer.Option("--algo", help="xxh3_128 (fast), blake3 or sha256 "
                                          "(cross-checkable with sha256sum).")] = "xxh3_128",
        chunk: Annotated[str, typer.Option("--chunk-size", help="Chunk hashed separately, so "
                                           "damage is localised.")] = "64MiB",
        jobs: JobsOpt = None,
        force: ForceOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Hash every file under DIR (whole file + 64 MiB chunks) into a JSON manifest.

        `grokfetch verify DIR --manifest FILE` checks it later.
        """
        from grokfetch.cli.options import check_jobs, positive_size
        from grokfetch.cli.output import Output
        from grokfetch.errors import NotFoundError, OutputExistsError
        from grokfetch.integrity.hashio import hasher_factory
        from grokfetch.integrity.manifest import MANIFEST_NAME, list_files, write_manifest

        out = Output("manifest create", json_mode=json_, quiet=quiet, verbose=verbose)
        check_jobs(jobs)
        if not directory.is_dir():
            raise NotFoundError(directory, "folder to hash")
        hasher_factory(algo)
        chunk_size = positive_size(chunk, "--chunk-size") or 0
        target = out_file if out_file is not None else directory / MANIFEST_NAME
        if target.exists() and not force:
            raise OutputExistsError(target)
        files = [f for f in list_files(directory)
                 if (directory / f).resolve() != target.resolve()]
        with out.progress() as progress:
            path = write_manifest(directory, target, files, algo=algo, chunk_size=chunk_size,
                                  jobs=jobs, progress=progress)
        import json

        doc = json.loads(path.read_text())
        total = sum(f["size"] for f in doc["files"])
        out.result({"input": str(directory), "out": str(path), "algo": algo, "files": len(doc["files"]),
                    "bytes": total, "chunk_size": chunk_size},
                   lambda c: c.print(f"wrote {path}: {len(doc['files'])} files, {human_bytes(total)}, "
                                     f"{algo}"))
        return 0
