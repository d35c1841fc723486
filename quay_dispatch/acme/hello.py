"""What a client asks for in its ClientHello (the server name, the ALPN protocols), read from the raw bytes before
OpenSSL sees them: so that a tls-alpn-01 validator gets the challenge context from the start (RFC 8737).

OpenSSL calls its servername callback before the ALPN callback, and swapping the context inside the ALPN
callback crashes on TLS 1.2: the choice is made here instead, before the connection exists.
"""

from __future__ import annotations

from dataclasses import dataclass

ACME_TLS_1 = b"acme-tls/1"
_HEADER = 5  # a TLS record's header
_HANDSHAKE, _CLIENT_HELLO = 22, 1
_SERVER_NAME, _ALPN = 0, 16


@dataclass(frozen=True)
class Hello:
    """The part of a ClientHello that chooses the context."""

    server_name: str | None
    protocols: tuple[bytes, ...]

    @property
    def wants_challenge(self) -> bool:
        return ACME_TLS_1 in self.protocols


NOT_A_HELLO = Hello(None, ())


def read_hello(data: bytes) -> Hello | None:
    """The Hello at the start of `data`, None while its first record is not whole yet.

    Anything that is not a ClientHello within its first record (junk, SSLv2, a hello split
    across records) reads as NOT_A_HELLO: it goes to the ordinary context, which refuses
    or serves it as OpenSSL sees fit.
    """
    if len(data) < _HEADER:
        return None
    if data[0] != _HANDSHAKE:
        return NOT_A_HELLO
    end = _HEADER + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return None if end - _HEADER <= 16384 else NOT_A_HELLO
    try:
        return _parse(memoryview(data)[_HEADER:end])
    except (IndexError, ValueError, UnicodeDecodeError):
        return NOT_A_HELLO


class _Reader:
    """A cursor on a ClientHello's bytes; running past the end raises IndexError."""

    def __init__(self, data: memoryview):
        self.data, self.at = data, 0

    def take(self, size: int) -> memoryview:
        if self.at + size > len(self.data):
            raise IndexError("past the end")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.number(length_size)))

    def done(self) -> bool:
        return self.at >= len(self.data)


def _parse(record: memoryview) -> Hello:
    reader = _Reader(record)
    if reader.number(1) != _CLIENT_HELLO:
        return NOT_A_HELLO
    hello = reader.vector(3)  # a hello longer than its record raises IndexError: not read
    hello.take(2 + 32)  # legacy version, random
    hello.vector(1)  # session id
    hello.vector(2)  # cipher suites
    hello.vector(1)  # compression methods
    server_name, protocols = None, ()
    extensions = hello.vector(2) if not hello.done() else _Reader(memoryview(b""))
    while not extensions.done():
        kind, body = extensions.number(2), extensions.vector(2)
        if kind == _SERVER_NAME:
            server_name = _server_name(body)
        elif kind == _ALPN:
            protocols = _protocols(body)
    return Hello(server_name, protocols)


def _protocols(body: _Reader) -> tuple[bytes, ...]:
    names, found = body.vector(2), []
    while not names.done():
        found.append(bytes(names.vector(1).data))
    return tuple(found)


def _server_name(body: _Reader) -> str | None:
    names = body.vector(2)
    while not names.done():
        kind, name = names.number(1), names.vector(2)
        if kind == 0:  # host_name
            return bytes(name.data).decode("ascii").lower().rstrip(".")
    return None
