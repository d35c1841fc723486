"""Connections the worker's loop and threads share: the loop reads without waiting (WouldBlock says for what),
a thread uses one like a blocking socket, each operation within its deadline. Stream is the shape; PlainStream
is plain TCP; tls_stream.TLSStream is TLS, with OpenSSL fed from memory buffers."""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

CORK_LIMIT = 64 * 1024  # bytes of a response kept to be sent in one write


class WouldBlock(Exception):
    """The operation needs the socket to be readable (POLLIN) or writable (POLLOUT) first."""

    def __init__(self, events: int):
        self.events = events


class Stream:
    """A non-blocking connection that behaves like the blocking socket gunicorn expects, with bounded waits.

    Each read or write waits at most `io_timeout` for progress, and no read waits
    past `deadline` (set per request by the worker). A peer too slow for either
    gets a ConnectionResetError: to it, the same as a dropped connection.
    """

    def __init__(self, raw: socket.socket, io_timeout: float | None):
        self.raw = raw
        self._io_timeout = io_timeout
        self._timeout = io_timeout
        self.deadline: float | None = None
        self.environ: dict[str, str] = {}  # what the transport adds to the WSGI environ
        self.failure: str | None = None  # a TLS error the peer caused after the handshake (TLSStream)
        self.admin = False  # it came to the operator's page's listener (ADMIN_BIND), not Quay's
        self._corked: bytearray | None = None

    # The two primitives, which raise WouldBlock instead of waiting.
    def recv_nowait(self, size: int) -> bytes:
        raise NotImplementedError

    def send_nowait(self, data) -> int:
        raise NotImplementedError

    def pending(self) -> int:
        """Bytes already received and decrypted that the raw socket no longer signals."""
        return 0

    def _wait(self, events: int, deadline: float | None) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise _too_slow(self._timeout)
        poller = select.poll()
        poller.register(self.raw, events)
        if not poller.poll(None if remaining is None else remaining * 1000):
            raise _too_slow(self._timeout)

    def _op_deadline(self, reading: bool) -> float | None:
        limits = [self.deadline] if reading and self.deadline is not None else []
        if self._timeout is not None:
            limits.append(time.monotonic() + self._timeout)
        return min(limits) if limits else None

    def _until_done(self, operation: Callable, argument, reading: bool):
        """Run a primitive, waiting as it asks between tries, until it is done or the deadline passes."""
        deadline = self._op_deadline(reading)
        while True:
            try:
                return operation(argument)
            except WouldBlock as wait:
                self._wait(wait.events, deadline)

    def recv(self, size: int) -> bytes:
        return self._until_done(self.recv_nowait, size, reading=True)

    def send(self, data) -> int:
        return self._until_done(self.send_nowait, data, reading=False)

    def sendall(self, data) -> None:
        if self._corked is not None and len(self._corked) + len(data) <= CORK_LIMIT:
            self._corked += data
            return
        self.uncork()
        self._send_all(data)

    def _send_all(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def cork(self) -> None:
        """Keep what sendall() is given until uncork(): a response's headers and body then go in one
        write (one TLS record, one segment) instead of one each."""
        self._corked = bytearray()

    def uncork(self) -> None:
        """Send what was kept since cork()."""
        corked, self._corked = self._corked, None
        if corked:
            self._send_all(corked)

    def writable(self) -> bool:
        """Whether the socket's send buffer has room now."""
        poller = select.poll()
        poller.register(self.raw, select.POLLOUT)
        return bool(poller.poll(0))

    def setblocking(self, flag: bool) -> None:
        self._timeout = self._io_timeout if flag else 0.0

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = self._io_timeout if timeout is None else timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self.raw.fileno()

    def getpeername(self):
        return self.raw.getpeername()

    def getsockname(self):
        return self.raw.getsockname()

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        """Close without lingering: shut the write side, drain what has already arrived, close.

        gunicorn's graceful close lingers up to 2 s on the worker's event loop; a
        client has read its response when it sent its next bytes, so only bytes
        already here can cause a reset.
        """
        try:
            self.shutdown(socket.SHUT_WR)
            self.raw.setblocking(False)
            for _ in range(16):
                if not self.raw.recv(4096):
                    break
        except OSError:
            pass
        finally:
            self.raw.close()


class PlainStream(Stream):
    """A plain TCP connection (behind a proxy or a PaaS router that terminates TLS)."""

    def recv_nowait(self, size: int) -> bytes:
        try:
            return self.raw.recv(size)
        except BlockingIOError:
            raise WouldBlock(select.POLLIN) from None

    def send_nowait(self, data) -> int:
        try:
            return self.raw.send(data)
        except BlockingIOError:
            raise WouldBlock(select.POLLOUT) from None


def _too_slow(timeout: float | None) -> OSError:
    # A reset, not a timeout: gthread logs a reset quietly and a timeout with a
    # traceback, and to the peer it is the same, a dropped connection.
    return ConnectionResetError(errno.ECONNRESET, f"peer made no progress in time ({timeout} s at most per step)")
