"""``grokfetch download``, ``grokfetch seed`` and ``grokfetch torrent create``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from grokfetch.cli.options import (
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    LayersOpt,
    NoSpaceCheckOpt,
    PresetOpt,
    QuietOpt,
    VerboseOpt,
    examples,
)
from grokfetch.torrent.options import ORDERS
from grokfetch.units import human_bytes

DL_EPILOG = examples(
    "grokfetch download --dir ./grok-1",
    "grokfetch download --dir ./grok-1 --layers 0-3 --order model",
    "grokfetch download --dir ./grok-1 --seed-ratio 1.0 --tracker udp://tracker.example:6969",
    "grokfetch download 'magnet:?xt=urn:btih:...' --dir ./d --peer 10.0.0.5:6881 --no-dht",
    "grokfetch download ./grok-1.torrent --dir ./d --include 'ckpt-0/*' --max-download-rate 20M",
    "grokfetch download --dir ./grok-1 --layers 0-3 --dry-run",
)
SEED_EPILOG = examples("grokfetch seed ./grok-1", "grokfetch seed ./mini --torrent mini.torrent "
                                                   "--listen 127.0.0.1:6881 --for 600",
                       "grokfetch seed ./grok-1 --peer 10.0.0.5:6881 --no-trackers")
CREATE_EPILOG = examples("grokfetch torrent create ./grok-mini -o mini.torrent",
                         "grokfetch torrent create ./ckpt -o c.torrent --piece-size 4MiB")
SHOW_EPILOG = examples("grokfetch torrent show mini.torrent", "grokfetch torrent show ./grok-1")

Multi = Optional[list[str]]
EncryptionOpt = Annotated[str, typer.Option("--encryption", help="Peer encryption: enabled "
                                            "(either), required (RC4 only), disabled.")]
MaxConnOpt = Annotated[Optional[int], typer.Option("--max-connections", help="At most this many "
                                                   "peer connections. Default: 200.")]
NoPexOpt = Annotated[bool, typer.Option("--no-pex", help="No peer exchange.")]
TrackerOpt = Annotated[Multi, typer.Option("--tracker", help="Also announce to this tracker URL "
                                           "(repeatable).")]


class _SayStart:
    """Prints the first event that names the listening port (tests and users need it), then
    defers to the display."""

    def __init__(self, inner, out, fmt):
        self.inner, self.out, self.fmt, self.said = inner, out, fmt, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def event(self, kind, **data):
        if not self.said and "port" in data:
            self.said = True
            self.out.info(self.fmt(data))
        self.inner.event(kind, **data)


def _rate(text: str | None) -> int | None:
    from grokfetch.fsutil import parse_size

    return parse_size(text) if text else None


def register(app: typer.Typer) -> None:
    @app.command(epilog=DL_EPILOG)
    def download(
        source: Annotated[Optional[str], typer.Argument(
            help="Magnet URI, .torrent file, or preset name. Default: grok-1 (official magnet).",
            show_default=False)] = None,
        dest: Annotated[Path, typer.Option("--dir", "-d", help="Download folder (files go to "
                                           "DIR/<torrent name>/, state to DIR/.grokfetch/).")] = Path("."),
        include: Annotated[Multi, typer.Option("--include", help="Only files matching this glob "
                                               "(repeatable), e.g. 'ckpt-0/*'.")] = None,
        exclude: Annotated[Multi, typer.Option("--exclude", help="Skip files matching this glob "
                                               "(repeatable).")] = None,
        layers: LayersOpt = None,
        preset: PresetOpt = None,
        order: Annotated[Literal[ORDERS], typer.Option("--order",
                                           help="Piece order: rarest (swarm-friendly), "
                                           "sequential, or model (files finish in model order).")] = "rarest",
        peer: Annotated[Multi, typer.Option("--peer", help="Connect to HOST:PORT (repeatable).")] = None,
        webseed: Annotated[Multi, typer.Option("--webseed", help="HTTP web seed base URL (BEP 19, "
                                               "repeatable).")] = None,
        listen: Annotated[Optional[str], typer.Option("--listen", help="Listen on ADDR:PORT "
                                                      "(port 0 = any). Default: all, 6881.")] = None,
        no_dht: Annotated[bool, typer.Option("--no-dht", help="Do not use the DHT.")] = False,
        no_lsd: Annotated[bool, typer.Option("--no-lsd", help="No local service discovery.")] = False,
        no_upnp: Annotated[bool, typer.Option("--no-upnp", help="No UPnP / NAT-PMP port mapping.")] = False,
        no_utp: Annotated[bool, typer.Option("--no-utp", help="TCP only (uTP is slow on fast links).")] = False,
        no_trackers: Annotated[bool, typer.Option("--no-trackers", help="Announce to no tracker "
                                                  "(not even the torrent's own).")] = False,
        tracker: TrackerOpt = None,
        no_pex: NoPexOpt = False,
        encryption: EncryptionOpt = "enabled",
        max_connections: MaxConnOpt = None,
        seed_ratio: Annotated[Optional[float], typer.Option(
            "--seed-ratio", help="When complete, keep seeding until uploaded / size reaches this.")] = None,
        seed_time: Annotated[Optional[float], typer.Option(
            "--seed-time", help="When complete, keep seeding for this many seconds.")] = None,
        max_download_rate: Annotated[Optional[str], typer.Option(
            "--max-download-rate", help="Bytes/s, K/M/G suffixes (also limits LAN peers).")] = None,
        max_upload_rate: Annotated[Optional[str], typer.Option(
            "--max-upload-rate", help="Bytes/s, K/M/G suffixes.")] = None,
        timeout: Annotated[Optional[float], typer.Option(
            "--timeout", help="Give up after this many seconds without progress.")] = None,
        recheck: Annotated[bool, typer.Option("--recheck", help="Ignore resume data and hash-check "
                                              "the files on disk first.")] = False,
        no_space_check: NoSpaceCheckOpt = False,
        dry_run: DryRunOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Download Grok-1 (or any torrent): resume, file selection, hash verification.

        Exit codes: 0 complete, every wanted piece hash-verified; 1 failed (stalled, disk full; resume data saved); 2 bad usage; 130 interrupted (resume data saved)."""  # noqa: E501
        from grokfetch.cli.options import check_preset
        from grokfetch.cli.output import Output
        from grokfetch.torrent.job import DownloadOptions
        from grokfetch.torrent.job import download as run_download

        out = Output("download", json_mode=json_, quiet=quiet, verbose=verbose)
        check_preset(None, preset)
        if dry_run:
            from grokfetch.cli.plan import render_plan
            from grokfetch.plan import download_plan

            plan = download_plan(dest, preset=preset, layers=layers,
                                 max_rate=_rate(max_download_rate))
            out.result(plan.to_json(), lambda c: render_plan(plan, c))
            return 0
        opts = DownloadOptions(
            include=include or [], exclude=exclude or [], layers=layers, preset=preset,
            order=order, peers=peer or [], webseeds=webseed or [], trackers=not no_trackers,
            add_trackers=tracker or [], listen=listen, dht=not no_dht, lsd=not no_lsd,
            upnp=not no_upnp, utp=not no_utp, max_download_rate=_rate(max_download_rate),
            max_upload_rate=_rate(max_upload_rate), encryption=encryption,
            max_connections=max_connections, pex=not no_pex, seed_ratio=seed_ratio,
            seed_time=seed_time, force=no_space_check, timeout=timeout, recheck=recheck)
        with out.progress() as progress:
            r = run_download(source, dest, opts, _SayStart(progress, out, lambda d: (
                f"{d['infohash']} on port {d['port']}: {d['magnet']}")))
        data = {k: v for k, v in r.to_json().items() if k not in ("dest", "content", "elapsed")}

        def human(c) -> None:
            c.print(f"[green]complete[/green]: {r.name} -> {r.content}: {r.files} files, "
                    f"{human_bytes(r.bytes)}, {r.wanted_pieces}/{r.num_pieces} pieces hash-verified "
                    f"({human_bytes(r.downloaded)} fetched in {r.elapsed:.1f} s)")
            if r.from_webseeds:
                c.print(f"received {human_bytes(r.from_peers)} from peers, "
                        f"{human_bytes(r.from_webseeds)} from web seeds")
            if r.seeded:
                c.print(f"seeded {r.seeded:.0f} s: uploaded {human_bytes(r.uploaded)}")
            if r.hash_failures or r.banned_peers:
                c.print(f"[yellow]{r.hash_failures} pieces failed their hash check and were fetched "
                        f"again; banned peers: {', '.join(r.banned_peers) or 'none'}[/yellow]")

        out.result({"dir": str(r.dest), "out": str(r.content), **data}, human)
        return 0

    @app.command(epilog=SEED_EPILOG)
    def seed(
        folder: Annotated[Path, typer.Argument(help="The download folder (or the content folder).",
                                               show_default=False)],
        torrent: Annotated[Optional[Path], typer.Option("--torrent", help="Torrent file. Default: "
                                                        "the one saved in DIR/.grokfetch/.")] = None,
        listen: Annotated[str, typer.Option("--listen", help="Listen on ADDR:PORT.")] = "0.0.0.0:6881",
        for_seconds: Annotated[Optional[float], typer.Option("--for", help="Stop after SECONDS.")] = None,
        until_ratio: Annotated[Optional[float], typer.Option("--until-ratio", help="Stop once "
                                                             "uploaded / size reaches this "
                                                             "(more than 0).")] = None,
        no_dht: Annotated[bool, typer.Option("--no-dht", help="Do not use the DHT.")] = False,
        no_lsd: Annotated[bool, typer.Option("--no-lsd", help="No local service discovery.")] = False,
        no_upnp: Annotated[bool, typer.Option("--no-upnp", help="No UPnP / NAT-PMP.")] = False,
        no_utp: Annotated[bool, typer.Option("--no-utp", help="TCP only.")] = False,
        max_upload_rate: Annotated[Optional[str], typer.Option(
            "--max-upload-rate", help="Bytes/s, K/M/G suffixes.")] = None,
        peer: Annotated[Multi, typer.Option("--peer", help="Dial HOST:PORT (repeatable).")] = None,
        tracker: TrackerOpt = None,
        no_trackers: Annotated[bool, typer.Option("--no-trackers", help="Announce to no "
                                                  "tracker.")] = False,
        webseed: Annotated[Multi, typer.Option("--webseed", help="Web seed URL to add to the "
                                               "torrent (repeatable).")] = None,
        no_pex: NoPexOpt = False,
        encryption: EncryptionOpt = "enabled",
        max_connections: MaxConnOpt = None,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Give back: serve a finished download until Ctrl-C, --for or --until-ratio.

        Pieces are hash-checked before they are served."""
        from grokfetch.cli.output import Output
        from grokfetch.errors import UsageError
        from grokfetch.torrent.seed import seed as run_seed
        from grokfetch.torrent.session import NetOptions

        out = Output("seed", json_mode=json_, quiet=quiet, verbose=verbose)
        if until_ratio is not None and not until_ratio > 0:
            raise UsageError(f"--until-ratio must be more than 0, not {until_ratio}")
        if for_seconds is not None and not for_seconds > 0:
            raise UsageError(f"--for must be more than 0 seconds, not {for_seconds}")
        net = NetOptions(None, not no_dht, not no_lsd, not no_upnp, not no_utp, None,
                         _rate(max_upload_rate), encryption, max_connections, not no_pex)
        net.validate()
        with out.progress() as progress:
            r = run_seed(folder, torrent, listen=listen, net=net, for_seconds=for_seconds,
                         until_ratio=until_ratio, peers=peer or [], trackers=tracker or [],
                         announce=not no_trackers, webseeds=webseed or [],
                         progress=_SayStart(progress, out, lambda d: (
                             f"seeding {d['infohash']} on port {d['port']} (Ctrl-C to stop): "
                             f"{d['magnet']}")))
        data = {k: v for k, v in r.to_json().items() if k != "elapsed"}
        out.result({"input": str(folder), **data}, lambda c: c.print(
            f"seeded {r.infohash}: uploaded {human_bytes(r.uploaded)} (ratio {r.ratio:.2f}) to "
            f"{r.peers_seen} peers in {r.elapsed:.0f} s; stopped by {r.stopped_by}"))
        return 0

    torrent_app = typer.Typer(help="Torrent files: create, show.", no_args_is_help=True)
    app.add_typer(torrent_app, name="torrent")

    @torrent_app.command("create", epilog=CREATE_EPILOG)
    def create(
        folder: Annotated[Path, typer.Argument(help="Checkpoint folder; its name becomes the "
                                               "torrent's name.", show_default=False)],
        output: Annotated[Path, typer.Option("--out", "-o", help="The .torrent to write.")],
        piece_size: Annotated[Optional[str], typer.Option("--piece-size", help="Power of two "
                                                          "≥ 16KiB, e.g. 4MiB. Default: automatic.")] = None,
        tracker: Annotated[Multi, typer.Option("--tracker", help="Announce URL (repeatable).")] = None,
        webseed: Annotated[Multi, typer.Option("--webseed", help="Web seed URL (repeatable).")] = None,
        force: ForceOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Make a deterministic v1 torrent of a folder (same folder, same info-hash).

        Files sorted by path, hidden files left out, no creation date, a fixed creator."""
        from grokfetch.cli.output import Output
        from grokfetch.torrent.create import create_torrent

        out = Output("torrent create", json_mode=json_, quiet=quiet, verbose=verbose)
        with out.progress() as progress:
            r = create_torrent(folder, output, piece_size=_rate(piece_size), trackers=tracker or [],
                               webseeds=webseed or [], force=force, progress=progress)
        data = {k: v for k, v in r.to_json().items() if k != "path"}
        out.result({"input": str(folder), "out": str(r.path), **data}, lambda c: c.print(
            f"wrote {r.path}: {r.files} files, {human_bytes(r.bytes)}, {r.num_pieces} pieces of "
            f"{r.piece_size:,} B\ninfo-hash {r.infohash}\n{r.magnet}"))
        return 0

    @torrent_app.command("show", epilog=SHOW_EPILOG)
    def show(
        path: Annotated[Path, typer.Argument(help="A .torrent file, or a download folder (its "
                                             "saved .grokfetch/<infohash>.torrent).",
                                             show_default=False)],
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> int:
        """Print a torrent's magnet, trackers, piece size and files."""
        from grokfetch.cli.output import Output
        from grokfetch.torrent.create import show_torrent

        out = Output("torrent show", json_mode=json_, quiet=quiet, verbose=verbose)
        t = show_torrent(path)

        def human(c) -> None:
            c.print(f"{t.name}: {len(t.files)} files, {human_bytes(t.bytes)}, {t.num_pieces} "
                    f"pieces of {t.piece_size:,} B\ninfo-hash {t.infohash}\n{t.magnet}", soft_wrap=True)
            for url in t.trackers:
                c.print(f"tracker {url}", soft_wrap=True)
            for url in t.webseeds:
                c.print(f"web seed {url}", soft_wrap=True)
            for f in t.files:
                c.print(f"{f['size']:>16,}  {f['path']}", soft_wrap=True, markup=False)

        out.result({"input": str(path), **t.to_json()}, human)
        return 0
