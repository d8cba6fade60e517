"""A small, strict bencode decoder (BEP 3) that also reports the raw bytes of the info dict.

Strings stay ``bytes``; dict keys are ``bytes``. Anything malformed raises :class:`BencodeError`
(a :class:`~grokfetch.errors.UsageError`: a bad ``.torrent`` is bad input).
"""

from __future__ import annotations

from typing import Any

from grokfetch.errors import UsageError

MAX_DEPTH = 64


class BencodeError(UsageError):
    """The bytes are not valid bencode."""


def decode(data: bytes) -> Any:
    """Decode one complete bencoded value."""
    value, end, _ = _decode(data, 0, 0, want_span=None)
    if end != len(data):
        raise BencodeError(f"bad torrent: {len(data) - end} trailing bytes after the value")
    return value


def decode_torrent(data: bytes) -> tuple[dict[bytes, Any], bytes]:
    """Decode a ``.torrent`` file; returns ``(top-level dict, raw bytes of the info dict)``
    (the info-hash is the SHA-1 / SHA-256 of those raw bytes)."""
    value, end, span = _decode(data, 0, 0, want_span=b"info")
    if end != len(data):
        raise BencodeError(f"bad torrent: {len(data) - end} trailing bytes after the value")
    if not isinstance(value, dict) or b"info" not in value or span is None:
        raise BencodeError("bad torrent: no info dictionary")
    return value, data[span[0]:span[1]]


def _decode(data: bytes, i: int, depth: int,
            want_span: bytes | None) -> tuple[Any, int, tuple[int, int] | None]:
    if depth > MAX_DEPTH:
        raise BencodeError("bad torrent: nested too deeply")
    if i >= len(data):
        raise BencodeError("bad torrent: truncated")
    c = data[i]
    if c == ord("i"):
        end = data.find(b"e", i)
        if end < 0:
            raise BencodeError("bad torrent: unterminated integer")
        text = data[i + 1:end]
        if not text or text == b"-0" or (text.lstrip(b"-").startswith(b"0") and text not in (b"0",)):
            raise BencodeError(f"bad torrent: bad integer {text[:20]!r}")
        try:
            return int(text), end + 1, None
        except ValueError:
            raise BencodeError(f"bad torrent: bad integer {text[:20]!r}") from None
    if c == ord("l"):
        i += 1
        out = []
        while True:
            if i >= len(data):
                raise BencodeError("bad torrent: unterminated list")
            if data[i] == ord("e"):
                return out, i + 1, None
            v, i, _ = _decode(data, i, depth + 1, None)
            out.append(v)
    if c == ord("d"):
        i += 1
        d: dict[bytes, Any] = {}
        span = None
        while True:
            if i >= len(data):
                raise BencodeError("bad torrent: unterminated dictionary")
            if data[i] == ord("e"):
                return d, i + 1, span
            k, i, _ = _decode(data, i, depth + 1, None)
            if not isinstance(k, bytes):
                raise BencodeError("bad torrent: dictionary key is not a string")
            start = i
            v, i, _ = _decode(data, i, depth + 1, None)
            if want_span is not None and k == want_span:
                span = (start, i)
            d[k] = v
    if ord("0") <= c <= ord("9"):
        colon = data.find(b":", i)
        if colon < 0 or not data[i:colon].isdigit():
            raise BencodeError("bad torrent: bad string length")
        n = int(data[i:colon])
        end = colon + 1 + n
        if end > len(data):
            raise BencodeError("bad torrent: truncated string")
        return data[colon + 1:end], end, None
    raise BencodeError(f"bad torrent: unexpected byte {bytes([c])!r} at {i}")
