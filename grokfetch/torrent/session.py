"""libtorrent session settings and small helpers shared by the downloader and the seeder.

Settings are built from plain options so tests can run a private swarm on 127.0.0.1 (no DHT,
LSD, UPnP, NAT-PMP, uTP) and real downloads keep libtorrent's internet defaults.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from grokfetch.errors import UsageError
from grokfetch.torrent.swarm import SwarmWatch

USER_AGENT = "grokfetch/0.1"
DEFAULT_LISTEN = "0.0.0.0:6881,[::]:6881"
# DHT bootstrap routers beside libtorrent's single default
DHT_ROUTERS = ("dht.libtorrent.org:25401,router.bittorrent.com:6881,router.utorrent.com:6881,"
               "dht.transmissionbt.com:6881,dht.aelitis.com:6881")
ENCRYPTION = ("enabled", "required", "disabled")   # --encryption: allowed / forced / plaintext only


@dataclass(frozen=True)
class NetOptions:
    """Network switches common to downloading and seeding."""

    listen: str | None = None          # "HOST:PORT" (port 0 = any free port); None = all interfaces
    dht: bool = True
    lsd: bool = True
    upnp: bool = True                  # also switches NAT-PMP
    utp: bool = True
    max_download_rate: int | None = None   # bytes/s, applied to local peers too
    max_upload_rate: int | None = None
    encryption: str = "enabled"        # one of ENCRYPTION
    max_connections: int | None = None  # session connection limit (libtorrent default 200)
    pex: bool = True                   # peer exchange (a torrent flag; see pex_flags)

    def validate(self) -> None:
        if self.encryption not in ENCRYPTION:
            raise UsageError(f"bad --encryption {self.encryption!r}; choose one of "
                             f"{', '.join(ENCRYPTION)}")
        if self.max_connections is not None and self.max_connections < 2:
            raise UsageError("--max-connections must be at least 2")


def parse_hostport(text: str, what: str = "peer") -> tuple[str, int]:
    """``"1.2.3.4:6881"``, ``"[::1]:6881"`` or ``"host:6881"`` -> ``(host, port)``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise UsageError(f"bad {what} {text!r}; use HOST:PORT, e.g. 127.0.0.1:6881")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise UsageError(f"bad {what} {text!r}: port out of range")
    return host, p


def resolve_peer(text: str) -> tuple[str, int]:
    """A ``--peer`` value as a numeric ``(ip, port)`` libtorrent can dial."""
    host, port = parse_hostport(text)
    if port == 0:
        raise UsageError(f"bad peer {text!r}: port 0")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot resolve peer {text!r}: {exc.strerror or exc}") from None
    return infos[0][4][0], port


def listen_interfaces(listen: str | None) -> str:
    if listen is None:
        return DEFAULT_LISTEN
    host, port = parse_hostport(listen, "listen address")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_wanted(net: NetOptions) -> int | None:
    """The port ``--listen`` asks for (6881 by default); None for "any" (port 0)."""
    if net.listen is None:
        return int(DEFAULT_LISTEN.rsplit(":", 1)[1])
    return parse_hostport(net.listen, "listen address")[1] or None


def settings(net: NetOptions, **extra: Any) -> dict[str, Any]:
    """A settings dict for ``lt.session(...)``."""
    import libtorrent as lt

    cat = lt.alert_category
    mask = cat.error | cat.status | cat.storage | cat.file_progress | cat.peer | cat.tracker | cat.connect
    s: dict[str, Any] = {
        "listen_interfaces": listen_interfaces(net.listen),
        "enable_dht": net.dht, "enable_lsd": net.lsd,
        "enable_upnp": net.upnp, "enable_natpmp": net.upnp,
        "enable_outgoing_utp": net.utp, "enable_incoming_utp": net.utp,
        "alert_mask": int(mask),
        "user_agent": USER_AGENT,
        "download_rate_limit": net.max_download_rate or 0,
        "upload_rate_limit": net.max_upload_rate or 0,
        "hashing_threads": 2,
        "alert_queue_size": 10000,
        # a thin public swarm: every tracker and tier is worth asking
        "announce_to_all_trackers": True, "announce_to_all_tiers": True,
        "dht_bootstrap_nodes": DHT_ROUTERS,
    }
    policy = {"enabled": lt.enc_policy.pe_enabled, "required": lt.enc_policy.pe_forced,
              "disabled": lt.enc_policy.pe_disabled}[net.encryption]
    s["out_enc_policy"] = s["in_enc_policy"] = int(policy)
    s["allowed_enc_level"] = int(lt.enc_level.pe_rc4 if net.encryption == "required"
                                 else lt.enc_level.pe_both)
    if net.max_connections:
        s["connections_limit"] = net.max_connections
    if net.listen is not None and net.listen.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "::1", "localhost"):
        # several test peers share one address
        s["allow_multiple_connections_per_ip"] = True
    s.update(extra)
    return s


def make_session(net: NetOptions, **extra: Any):
    """A started ``lt.session``; with rate limits, local peers are limited too."""
    import libtorrent as lt

    try:
        ses = lt.session(settings(net, **extra))
    except (KeyError, TypeError) as exc:  # a bad setting name or type is our bug
        raise RuntimeError(f"bad libtorrent setting: {exc}") from exc
    if net.max_download_rate or net.max_upload_rate:
        # loopback/LAN peers sit in the "local" peer class, which session limits skip
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1 << ses.global_peer_class_id)
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << ses.global_peer_class_id)
        ses.set_peer_class_filter(f)
    return ses


def listen_port(ses, timeout: float = 5.0) -> int:
    """The port the session listens on (waits briefly for the socket to open)."""
    deadline = time.monotonic() + timeout
    while True:
        port = ses.listen_port()
        if port and ses.is_listening():
            return port
        if time.monotonic() > deadline:
            raise UsageError("could not open a listening socket (is the --listen address in use?)")
        time.sleep(0.02)


def pex_flags(atp, net: NetOptions) -> None:
    """Peer exchange is per torrent: ``--no-pex`` sets ``disable_pex`` on ``atp``."""
    import libtorrent as lt

    if not net.pex:
        atp.flags |= lt.torrent_flags.disable_pex


def clear_flags(atp) -> None:
    """Start the torrent now: clear *both* ``paused`` and ``auto_managed`` (see notes)."""
    import libtorrent as lt

    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)


def fetch_params(atp, dest, trackers: list[str], webseeds, net: NetOptions, sequential: bool
                 ) -> None:
    """Set up ``atp`` to fetch into ``dest`` now: exactly ``trackers`` from the first moment
    (the .torrent's own are in the list), the web seeds, ``--no-pex``, sparse storage, started
    (not paused, not auto-managed, not upload/seed mode), sequential or not."""
    import libtorrent as lt

    atp.trackers = list(trackers)
    atp.flags |= lt.torrent_flags.override_trackers
    atp.url_seeds = list(webseeds)
    pex_flags(atp, net)
    atp.save_path = str(dest)
    atp.storage_mode = lt.storage_mode_t.storage_mode_sparse
    clear_flags(atp)
    atp.flags &= ~(lt.torrent_flags.upload_mode | lt.torrent_flags.seed_mode
                   | lt.torrent_flags.stop_when_ready)
    if sequential:
        atp.flags |= lt.torrent_flags.sequential_download
    else:
        atp.flags &= ~lt.torrent_flags.sequential_download


def close_session(ses, timeout: float = 5.0, watch: SwarmWatch | None = None) -> None:
    """Pause ``ses``, let its trackers hear ``event=stopped`` (when ``watch`` saw them told
    ``started``), and close its listening sockets now (waits up to ``timeout`` s).

    The Python binding has no ``session.abort()``: the session only goes when its last
    reference does, and an exception's traceback can keep one alive. Closing the sockets
    frees the port (and stops peers connecting) deterministically either way; it also cuts
    announces still in flight, hence the wait for the ``stopped`` ones first.
    """
    import libtorrent as lt

    if watch is not None:
        with contextlib.suppress(Exception):
            watch.settle(lt, ses)
    with contextlib.suppress(Exception):
        ses.pause()
    if watch is not None:
        with contextlib.suppress(Exception):
            watch.wait_stopped(lt, ses)
    with contextlib.suppress(Exception):
        ses.apply_settings({"listen_interfaces": ""})   # applied on the network thread
        deadline = time.monotonic() + timeout
        while ses.is_listening() and time.monotonic() < deadline:
            time.sleep(0.01)


class StopSignals:
    """SIGINT/SIGTERM -> :attr:`signum`, a flag a polling loop checks; the old handlers come
    back on exit. Handlers can only be installed from the main thread: elsewhere (or with
    ``enabled=False``) this does nothing and :attr:`signum` stays None."""

    def __init__(self, enabled: bool = True):
        self.signum: int | None = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved.clear()
