"""What the swarm says back: tracker replies and errors, web seed errors, DHT nodes, peers tried,
bytes received per source.

:class:`SwarmWatch` is fed libtorrent alerts by the download and seed loops. It reports each new
tracker or web seed problem once (a ``warning`` event naming the URL and the reason), builds the
diagnosis line shown when nothing has happened for a while, and on shutdown waits briefly for
every tracker that was told ``started`` to be told ``stopped``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from grokfetch.progress import NULL_PROGRESS, Progress

STOP_TIMEOUT = 3.0   # seconds to wait for ``event=stopped`` announces at shutdown


def announcing(h) -> bool:
    """An announce of torrent ``h`` is on its way. Pausing now would lose the ``stopped`` one:
    libtorrent skips a tracker whose last announce has not been answered (seen with the
    ``completed`` announce that goes out as a download finishes)."""
    return any(ih.get("updating") for t in h.trackers() for ep in t.get("endpoints", ())
               for ih in ep.get("info_hashes", ()))


@dataclass
class TrackerState:
    """What one tracker URL has said so far."""

    url: str
    replies: int = 0
    peers: int = 0
    last_reply: float | None = None      # time.monotonic()
    error: str | None = None             # the last error, cleared by a reply
    owes_stop: bool = False              # told "started" (and answered): owes a "stopped"
    stopping: bool = False               # the "stopped" announce went out


@dataclass
class SwarmWatch:
    """Tracker, web seed, DHT and peer facts gathered from alerts (see the module docstring)."""

    progress: Progress = NULL_PROGRESS
    trackers: dict[str, TrackerState] = field(default_factory=dict)
    webseed_errors: dict[str, str] = field(default_factory=dict)
    peers_tried: set[str] = field(default_factory=set)
    incoming: int = 0
    dht_nodes: int | None = None
    said: set[tuple[str, str]] = field(default_factory=set)
    webseed_at: dict[tuple[str, int], str] = field(default_factory=dict)   # (ip, port) -> URL
    by_peer: dict[str, tuple[bool, int]] = field(default_factory=dict)  # -> (web seed?, bytes in)

    @property
    def received(self) -> dict[str, int]:
        """Payload bytes received from BitTorrent peers and from web seeds, as sampled while
        connected (the last moments of a connection that closed in between are not seen)."""
        web = sum(n for is_web, n in self.by_peer.values() if is_web)
        return {"peers": sum(n for _, n in self.by_peer.values()) - web, "web_seeds": web}

    def count_sources(self, lt, h) -> None:
        """Fold the connected peers' byte counters into :attr:`received`."""
        web_kinds = (lt.peer_info.web_seed, lt.peer_info.http_seed)
        for p in h.get_peer_info():
            key = f"{p.ip[0]}:{p.ip[1]}"
            self.by_peer[key] = (p.connection_type in web_kinds,
                                 max(p.total_download, self.by_peer.get(key, (False, 0))[1]))

    def add_webseeds(self, urls: list[str]) -> None:
        """Know the web seeds' addresses: a refused or timed-out connection to one arrives as
        a peer disconnect, not as a web seed alert."""
        for url in urls:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                ips = {ai[4][0] for ai in socket.getaddrinfo(parts.hostname or "", port)}
            except (OSError, UnicodeError):
                ips = set()
            for ip in ips:
                self.webseed_at[(ip, port)] = url

    def _warn(self, what: str, url: str, reason: str) -> None:
        if (url, reason) not in self.said:
            self.said.add((url, reason))
            self.progress.event("warning", message=f"{what} {url}: {reason}", url=url,
                                source=what, reason=reason)

    def tracker(self, url: str) -> TrackerState:
        return self.trackers.setdefault(url, TrackerState(url))

    def on_alert(self, lt, a) -> bool:
        """Record ``a`` if it is about trackers, web seeds, DHT or outgoing peers."""
        if isinstance(a, lt.tracker_announce_alert):
            t = self.tracker(a.tracker_url())
            if a.event == lt.event_t.stopped:
                t.stopping = True
        elif isinstance(a, lt.tracker_reply_alert):
            t = self.tracker(a.tracker_url())
            t.replies, t.peers, t.last_reply, t.error = t.replies + 1, a.num_peers, time.monotonic(), None
            t.owes_stop = not t.stopping
        elif isinstance(a, lt.tracker_error_alert):
            t = self.tracker(a.tracker_url())
            reason = a.failure_reason() or a.error.message() or "error"
            if a.status_code > 0:
                reason = f"HTTP {a.status_code}: {reason}"
            t.error = reason
            if t.stopping:
                t.owes_stop = False
            self._warn("tracker", t.url, reason)
        elif isinstance(a, lt.url_seed_alert):
            url = a.server_url()
            reason = a.error_message() or a.error.message() or "error"
            self.webseed_errors[url] = reason
            self._warn("web seed", url, reason)
        elif isinstance(a, lt.dht_stats_alert):
            self.dht_nodes = sum(b["num_nodes"] for b in a.routing_table)
        elif isinstance(a, lt.incoming_connection_alert):
            self.incoming += 1
        elif isinstance(a, lt.peer_connect_alert | lt.peer_disconnected_alert):
            ep = (str(a.ip[0]), int(a.ip[1])) if isinstance(a.ip, tuple) else (str(a.ip), 0)
            url = self.webseed_at.get(ep)
            if url is None:
                self.peers_tried.add(f"{ep[0]}:{ep[1]}")
            elif isinstance(a, lt.peer_disconnected_alert) and a.error.value():
                self.webseed_errors[url] = a.error.message()
                self._warn("web seed", url, a.error.message())
        else:
            return False
        return True

    def owing(self) -> list[str]:
        return [t.url for t in self.trackers.values() if t.owes_stop]

    def settle(self, lt, ses, timeout: float = STOP_TIMEOUT) -> None:
        """Read alerts until no torrent of ``ses`` has an announce in flight (at most
        ``timeout`` s); for callers that do not need the other alerts any more."""
        deadline = time.monotonic() + timeout
        for a in ses.pop_alerts():
            self.on_alert(lt, a)
        while any(map(announcing, ses.get_torrents())) and time.monotonic() < deadline:
            ses.wait_for_alert(50)
            for a in ses.pop_alerts():
                self.on_alert(lt, a)

    def wait_stopped(self, lt, ses, timeout: float = STOP_TIMEOUT) -> None:
        """After the torrents were paused: let every tracker that was told ``started`` hear
        ``stopped`` (its reply or its error), for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.owing() and time.monotonic() < deadline:
            ses.wait_for_alert(50)
            for a in ses.pop_alerts():
                self.on_alert(lt, a)

    def diagnosis(self, *, dht: bool, peers: int, seeds: int, listen_port: int) -> str:
        """One line that tells "offline" from "thin swarm": trackers, DHT, peers, listen port."""
        now = time.monotonic()
        parts = []
        for t in self.trackers.values():
            if t.error is not None:
                parts.append(f"tracker {t.url}: {t.error}")
            elif t.last_reply is not None:
                parts.append(f"tracker {t.url}: {t.peers} peers {now - t.last_reply:.0f} s ago")
            else:
                parts.append(f"tracker {t.url}: no reply yet")
        if not self.trackers:
            parts.append("no trackers")
        for url, reason in self.webseed_errors.items():
            parts.append(f"web seed {url}: {reason}")
        if dht:
            parts.append("DHT: no nodes (offline?)" if not self.dht_nodes
                         else f"DHT: {self.dht_nodes} nodes")
        parts.append(f"peers: {len(self.peers_tried)} tried, {peers} connected ({seeds} seeds)")
        parts.append(f"listening on port {listen_port}"
                     + ("; peers have reached us" if self.incoming else "; no incoming connection yet"))
        return "; ".join(parts)
