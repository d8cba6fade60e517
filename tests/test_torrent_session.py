"""Helpers in ``grokfetch.torrent.session`` shared by the downloader and the seeder."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from grokfetch.torrent.session import NetOptions, StopSignals, close_session, listen_port, make_session

LOCAL = NetOptions(listen="127.0.0.1:0", dht=False, lsd=False, upnp=False, utp=False)


def test_stop_signals_sets_the_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_signals_is_inert_off_the_main_thread_or_disabled():
    seen = []

    def body():
        with StopSignals() as stop:
            seen.append((stop.enabled, signal.getsignal(signal.SIGINT)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [(False, signal.getsignal(signal.SIGINT))]
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before


def test_close_session_frees_the_port_while_the_session_object_lives():
    pytest.importorskip("libtorrent")
    ses = make_session(LOCAL)
    port = listen_port(ses)
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", port))
        s.listen()
    close_session(ses)
    with socket.socket() as s:   # no SO_REUSEADDR: this fails while anything listens there
        s.bind(("127.0.0.1", port))
        s.listen()
    assert ses.is_paused() and not ses.is_listening()
