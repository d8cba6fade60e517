"""A tiny HTTP BitTorrent tracker on 127.0.0.1 for tests: it records every announce.

``with LocalTracker() as t: t.url`` serves ``/announce`` (compact peer lists, BEP 23) and keeps
each request as an :class:`Announce`; ``fail="reason"`` answers every announce with a BEP 3
``failure reason``. It stops itself after ``lifetime`` seconds even if a test forgets to.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


def bencode(x) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(map(bencode, x)) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(x.items())) + b"e"


@dataclass(frozen=True)
class Announce:
    infohash: str        # hex
    peer_id: bytes
    port: int
    event: str           # "", "started", "stopped", "completed"
    left: int
    at: float            # time.monotonic()


class LocalTracker:
    """An HTTP tracker on 127.0.0.1 that counts announces (see the module docstring)."""

    def __init__(self, fail: str | None = None, lifetime: float = 300.0, interval: int = 30):
        self.fail, self.lifetime, self.interval = fail, lifetime, interval
        self.announces: list[Announce] = []
        self.lock = threading.Lock()
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = tracker.handle(self.path)
                self.send_response(200 if body is not None else 404)
                body = body or b""
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):   # a client closing at exit
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/announce"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.close)
        self.timer.daemon = True

    def handle(self, path: str) -> bytes | None:
        parts = urlsplit(path)
        if parts.path != "/announce":
            return None
        q = parse_qs(parts.query, keep_blank_values=True, encoding="latin-1")
        ih = q.get("info_hash", [""])[0].encode("latin-1").hex()
        pid = q.get("peer_id", [""])[0].encode("latin-1")
        ann = Announce(ih, pid, int(q.get("port", ["0"])[0]), q.get("event", [""])[0],
                       int(q.get("left", ["0"])[0] or 0), time.monotonic())
        with self.lock:
            self.announces.append(ann)
            latest: dict[bytes, Announce] = {}
            for a in self.announces:
                if a.infohash == ih:
                    latest[a.peer_id] = a
        if self.fail is not None:
            return bencode({"failure reason": self.fail})
        peers = b"".join(socket.inet_aton("127.0.0.1") + struct.pack(">H", a.port)
                         for a in latest.values() if a.peer_id != pid and a.event != "stopped")
        return bencode({"interval": self.interval, "peers": peers})

    def seen(self, infohash: str | None = None, event: str | None = None) -> list[Announce]:
        with self.lock:
            return [a for a in self.announces if (infohash is None or a.infohash == infohash)
                    and (event is None or a.event == event)]

    def wait_for(self, infohash: str, event: str | None = None, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen(infohash, event):
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> LocalTracker:
        self.thread.start()
        self.timer.start()
        return self

    def close(self) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __exit__(self, *exc) -> None:
        self.close()
