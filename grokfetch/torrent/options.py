"""What a download is told (:class:`DownloadOptions`) and what it reports (:class:`DownloadResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from grokfetch.errors import UsageError
from grokfetch.torrent.session import NetOptions

ORDERS = ("rarest", "sequential", "model")


@dataclass
class DownloadOptions:
    """Everything ``grokfetch download`` can be told. Defaults suit a real internet download."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    layers: str | None = None            # "0-3", "0,2,5-7"; None = all
    preset: str | None = None            # model preset for --layers / --order model
    order: str = "rarest"                # rarest | sequential | model
    peers: list[str] = field(default_factory=list)      # "HOST:PORT"
    webseeds: list[str] = field(default_factory=list)   # BEP 19 base URLs
    trackers: bool = True                # announce to the source's trackers
    add_trackers: list[str] = field(default_factory=list)   # --tracker URL: announce here too
    listen: str | None = None            # "ADDR:PORT"; None = all interfaces, 6881
    dht: bool = True
    lsd: bool = True
    upnp: bool = True
    utp: bool = True
    max_download_rate: int | None = None
    max_upload_rate: int | None = None
    encryption: str = "enabled"          # enabled | required | disabled
    max_connections: int | None = None
    pex: bool = True
    seed_ratio: float | None = None      # after completion, seed until uploaded / size >= R
    seed_time: float | None = None       # ... or for this many seconds
    force: bool = False                  # skip the free-space preflight
    timeout: float | None = None         # give up after this long without progress
    recheck: bool = False                # ignore resume data: hash-check files on disk first
    resume_interval: float = 30.0        # seconds between periodic resume-data saves
    status_interval: float = 1.0
    handle_signals: bool = True          # SIGINT/SIGTERM -> save resume data, Interrupted
    diagnose_after: float = 60.0         # seconds without progress before a diagnosis line

    @property
    def net(self) -> NetOptions:
        return NetOptions(self.listen, self.dht, self.lsd, self.upnp, self.utp,
                          self.max_download_rate, self.max_upload_rate, self.encryption,
                          self.max_connections, self.pex)

    def validate(self) -> None:
        if self.order not in ORDERS:
            raise UsageError(f"bad --order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError("--timeout must be positive")
        for name, v in (("--seed-ratio", self.seed_ratio), ("--seed-time", self.seed_time)):
            if v is not None and v <= 0:
                raise UsageError(f"{name} must be positive")
        self.net.validate()


@dataclass
class DownloadResult:
    """A finished, hash-verified download."""

    infohash: str
    name: str
    dest: Path
    content: Path                 # DIR/<torrent name>
    torrent_path: Path            # the saved DIR/.grokfetch/<infohash>.torrent
    files: int                    # files selected
    bytes: int                    # bytes of the selected files
    wanted_pieces: int
    num_pieces: int
    downloaded: int               # payload bytes fetched in this run
    hash_failures: int
    banned_peers: list[str]
    checked: bool                 # files were hash-checked at start (no trusted resume data)
    elapsed: float
    from_peers: int = 0           # payload bytes received from BitTorrent peers ...
    from_webseeds: int = 0        # ... and from web seeds
    uploaded: int = 0             # --seed-ratio / --seed-time: payload bytes uploaded
    seeded: float = 0.0           # ... and seconds seeded after completion

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("dest", "content", "torrent_path"):
            d[k] = str(d[k])
        d["elapsed"], d["seeded"] = round(self.elapsed, 3), round(self.seeded, 3)
        return d
