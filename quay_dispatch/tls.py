"""TLS with pyOpenSSL for a server that verifies its clients' chains itself; usable without gunicorn.

Why not the stdlib's ssl (gunicorn's own TLS): it checks client certificates with
OpenSSL's client-purpose rule, which refuses Quay's serverAuth-only certificate.
Here the certificate is *requested*, any chain is let through the handshake (which
still proves the client holds the key), and quay_dispatch.identity verifies it as
a server certificate for Quay.

- build_context: the server context, TLS 1.2 at least, no resumption.
- ReloadingContext: the context, rebuilt when the certificate files change.
- peer_chain_environ: the presented chain under mod_ssl's environ names.
- A client's handshake is bounded before OpenSSL parses it: OpenSSL works on memory
  buffers that TLSStream fills, and is given MAX_HANDSHAKE_BYTES before the handshake
  is done, no more; then MAX_CHAIN_CERTIFICATES are checked.
- Stream, TLSStream, PlainStream: a non-blocking connection that a thread can use
  like a blocking socket, every wait bounded (what gunicorn's parser and response need).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import time
from collections.abc import Callable

from OpenSSL import SSL, crypto

RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files
CORK_LIMIT = 64 * 1024  # bytes of a response kept to be sent in one write
CLIENT_CERT = "SSL_CLIENT_CERT"  # mod_ssl's environ names: the leaf, then the rest of the chain
CLIENT_CERT_CHAIN_PREFIX = "SSL_CLIENT_CERT_CHAIN_"
# Quay's chain is about 5 kB. OpenSSL would take 100 kB of certificates and spend
# milliseconds parsing them before any callback of ours could refuse the chain.
MAX_HANDSHAKE_BYTES = 32 * 1024  # bytes a client may send before its handshake is done
MAX_CHAIN_CERTIFICATES = 8  # certificates it may present, its own included
_CHUNK = 64 * 1024  # bytes moved between the socket and OpenSSL at a time


def build_context(certfile: str, keyfile: str | None, cert_reqs: int, ciphers: str | None = None) -> SSL.Context:
    """The server TLS context; `cert_reqs` is gunicorn's (ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No resumption: a resumed session carries no peer chain, and every call
    # must present its certificate to be verified again.
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET
                    | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate_chain_file(certfile)
    ctx.use_privatekey_file(keyfile or certfile)
    ctx.check_privatekey()
    if ciphers:
        ctx.set_cipher_list(ciphers.encode("ascii"))
    if cert_reqs != ssl.CERT_NONE:
        mode = SSL.VERIFY_PEER
        if cert_reqs == ssl.CERT_REQUIRED:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _accept_any_chain)
    return ctx


def _accept_any_chain(conn, cert, errnum, depth, ok) -> bool:
    # Deliberately lets every presented chain through, including OpenSSL's
    # "unsuitable certificate purpose": the application verifies the chain.
    return True


class ReloadingContext:
    """A server context that follows its files: a renewal is served to new connections, no restart.

    A pair that does not load (often a renewal half-written: new certificate, old key)
    is reported once through `warn`, and the current pair kept.
    """

    def __init__(self, certfile: str, keyfile: str | None, cert_reqs: int, ciphers: str | None,
                 info: Callable[[str], None], warn: Callable[[str], None]):
        self._args = (certfile, keyfile, cert_reqs, ciphers)
        self._paths = (certfile, keyfile or certfile)
        self._info, self._warn = info, warn
        self._loaded = self._refused = self._signature()
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL
        self.context = build_context(*self._args)

    def _signature(self) -> tuple:
        """What identifies the current files: a renewal changes it."""
        signature = []
        for path in self._paths:
            try:
                st = os.stat(path)
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def current(self) -> SSL.Context:
        """The context for a new connection, rebuilt first if the files changed (looked at once a second)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_CHECK_INTERVAL
            signature = self._signature()
            if signature not in (self._loaded, self._refused):
                try:
                    self.context = build_context(*self._args)
                except (SSL.Error, OSError) as exc:
                    self._refused = signature
                    self._warn("TLS files changed but do not load as a pair, keeping the current ones: "
                               + handshake_reason(exc))
                else:
                    self._loaded = signature
                    self._info(f"TLS certificate reloaded from {self._paths[0]}")
        return self.context


def peer_chain_environ(leaf: crypto.X509 | None, chain: list[crypto.X509]) -> dict[str, str]:
    """After the handshake: the presented chain, leaf first, under mod_ssl's environ names."""
    if leaf is None:
        return {}
    environ = {CLIENT_CERT: _pem(leaf)}
    for i, cert in enumerate(chain):
        environ[f"{CLIENT_CERT_CHAIN_PREFIX}{i}"] = _pem(cert)
    return environ


class HandshakeRefused(SSL.Error):
    """The client's handshake is refused before OpenSSL looks further; the message says why."""


def _pem(cert: crypto.X509) -> str:
    return crypto.dump_certificate(crypto.FILETYPE_PEM, cert).decode("ascii")


def handshake_reason(exc: Exception) -> str:
    """OpenSSL's reasons for a failure, such as "peer did not return a certificate"."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [entry[2] for entry in exc.args[0] if len(entry) == 3]
        if reasons:
            return ", ".join(reasons)
    return str(exc) or type(exc).__name__


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


class TLSStream(Stream):
    """A pyOpenSSL server connection on memory buffers: this class moves the bytes between the
    socket and OpenSSL, so that it can count what a handshake takes. The handshake is done
    (see handshake_nowait) before any read."""

    def __init__(self, raw: socket.socket, context: SSL.Context, io_timeout: float | None):
        super().__init__(raw, io_timeout)
        self.tls = SSL.Connection(context, None)
        self.tls.set_accept_state()
        self._handshake_bytes = 0  # given to OpenSSL before the handshake was done
        self._plain = bytearray()  # decrypted, not yet read: nothing waits unseen inside OpenSSL
        self._cipher = b""  # what OpenSSL wrote that the socket has not taken yet
        self._closed = False  # the peer sent close_notify

    def handshake_nowait(self) -> bool:
        """Advance the handshake as far as the bytes received allow; True once it is done.

        Raises SSL.Error when the client is refused (no certificate, an old protocol, junk,
        a handshake or chain over the limits).
        """
        while True:
            try:
                self.tls.do_handshake()
                break
            except SSL.WantReadError:
                self._flush_nowait()  # our flight: a few kB, which the socket's buffer takes
            except SSL.Error:
                self._flush_nowait()  # the alert that tells the client why
                raise
            room = MAX_HANDSHAKE_BYTES - self._handshake_bytes
            if room <= 0:
                raise HandshakeRefused(f"the client sent more than {MAX_HANDSHAKE_BYTES} bytes without finishing "
                                       "its handshake (a certificate chain far longer than Quay's)")
            try:
                data = self.raw.recv(room)
            except BlockingIOError:
                return False
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed by the peer during the handshake")
            self._handshake_bytes += len(data)
            self.tls.bio_write(data)
        self._flush_nowait()
        chain = self.tls.get_peer_cert_chain() or []  # on the server side, without the leaf
        if len(chain) + 1 > MAX_CHAIN_CERTIFICATES:
            raise HandshakeRefused(f"the client presented {len(chain) + 1} certificates, more than "
                                   f"{MAX_CHAIN_CERTIFICATES}")
        self.environ = peer_chain_environ(self.tls.get_peer_certificate(), chain)
        self._decrypt()  # a request sent with the handshake's last bytes
        return True

    def _decrypt(self) -> None:
        """Take every whole record OpenSSL holds into _plain."""
        while True:
            try:
                self._plain += self.tls.recv(_CHUNK)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:  # close_notify: what came before it is still read
                self._closed = True
                return
            except SSL.Error as exc:
                raise ConnectionAbortedError(errno.ECONNABORTED, f"TLS error: {exc}") from exc

    def recv_nowait(self, size: int) -> bytes:
        while not self._plain and not self._closed:
            try:
                data = self.raw.recv(_CHUNK)
            except BlockingIOError:
                raise WouldBlock(select.POLLIN) from None
            if not data:  # the peer closed, with close_notify or without
                return b""
            self.tls.bio_write(data)
            self._decrypt()
            self._flush_nowait()  # anything OpenSSL must answer (a key update)
        data = bytes(self._plain[:size])
        del self._plain[:size]
        return data

    def send_nowait(self, data) -> int:
        if not self._flush_nowait():
            raise WouldBlock(select.POLLOUT)
        try:
            sent = self.tls.send(data[:_CHUNK])
        except SSL.Error as exc:
            raise BrokenPipeError(errno.EPIPE, f"TLS error: {exc}") from exc
        self._flush_nowait()
        return sent

    def _flush_nowait(self) -> bool:
        """Send what OpenSSL wrote, as far as the socket takes it now; True when all is sent."""
        while True:
            if not self._cipher:
                try:
                    self._cipher = self.tls.bio_read(_CHUNK)
                except SSL.WantReadError:  # nothing more to send
                    return True
            try:
                sent = self.raw.send(self._cipher)
            except BlockingIOError:
                return False
            self._cipher = self._cipher[sent:]

    def _flushed(self, _=None) -> None:
        if not self._flush_nowait():
            raise WouldBlock(select.POLLOUT)

    def _send_all(self, data) -> None:
        super()._send_all(data)
        self._until_done(self._flushed, None, reading=False)  # the response's last bytes too

    def writable(self) -> bool:
        return not self._cipher and super().writable()

    def pending(self) -> int:
        return len(self._plain)

    def shutdown(self, how: int) -> None:
        try:
            self.tls.shutdown()  # close_notify, sent if the socket takes it now; the peer's is not awaited
            self._flush_nowait()
        except (SSL.Error, OSError):
            pass
        self.raw.shutdown(how)


def _too_slow(timeout: float | None) -> OSError:
    # A reset, not a timeout: gthread logs a reset quietly and a timeout with a
    # traceback, and to the peer it is the same, a dropped connection.
    return ConnectionResetError(errno.ECONNRESET, f"peer made no progress in time ({timeout} s at most per step)")
