"""Transport: a gunicorn gthread worker that terminates TLS with pyOpenSSL.

Why not gunicorn's own TLS: it verifies client certificates with OpenSSL's
client-purpose check, which rejects Quay's certificate (public CAs now issue
serverAuth-only certificates). This worker *requests* the certificate, lets
any chain through the handshake (which still proves the client holds the
key), and hands the chain to the application under mod_ssl's environ names,
where quay_dispatch.identity verifies it as a server certificate for Quay.

What it overrides of gunicorn's ThreadWorker (written against the version
pinned in requirements.txt; tests/test_tls_worker.py starts it for real):

- init_process: builds the TLS context once per worker from gunicorn's own
  settings (certfile, keyfile, cert_reqs, ciphers).
- accept: a new connection waits for its first bytes in the poller, not in a
  thread, so a client that connects and says nothing holds no thread; its
  whole handshake has a deadline. At most once a second, accept also looks
  whether certfile or keyfile changed (a renewal) and, if the new pair loads,
  serves it to new connections; open connections keep theirs.
- handle: serves requests that OpenSSL has already decrypted and buffered,
  which would otherwise wait for a raw-socket readiness that never comes.
- load_wsgi: wraps the application to add SSL_CLIENT_CERT and
  SSL_CLIENT_CERT_CHAIN_n to the environ.

Without certfile, it is gunicorn's plain gthread worker (a PaaS router
terminates TLS).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
import ssl
import time
from functools import partial

from cryptography.hazmat.primitives.serialization import Encoding
from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker
from OpenSSL import SSL

HANDSHAKE_TIMEOUT = 5.0  # seconds from accept() to a finished handshake
RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files
log = logging.getLogger("gunicorn.error")


def build_context(cfg) -> SSL.Context:
    """The server TLS context, from gunicorn's settings; TLS 1.2 at least."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No resumption: a resumed session carries no peer chain, and every call
    # must present its certificate to be verified again.
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET
                    | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate_chain_file(cfg.certfile)
    ctx.use_privatekey_file(cfg.keyfile or cfg.certfile)
    ctx.check_privatekey()
    if cfg.ciphers:
        ctx.set_cipher_list(cfg.ciphers.encode("ascii"))
    if cfg.cert_reqs != ssl.CERT_NONE:
        mode = SSL.VERIFY_PEER
        if cfg.cert_reqs == ssl.CERT_REQUIRED:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _accept_any_chain)
    return ctx


def _accept_any_chain(conn, cert, errnum, depth, ok) -> bool:
    # Deliberately lets every presented chain through, including OpenSSL's
    # "unsuitable certificate purpose": the application verifies the chain.
    return True


class TLSSocket:
    """A pyOpenSSL connection behaving like the blocking socket gunicorn expects, with deadlines."""

    def __init__(self, raw: socket.socket, tls: SSL.Connection, io_timeout: float):
        self._raw = raw
        self._tls = tls
        self._io_timeout = io_timeout
        self._timeout: float | None = io_timeout
        self.environ: dict[str, str] = {}

    def handshake(self, deadline: float) -> None:
        self._until(deadline, self._tls.do_handshake)
        leaf = self._tls.get_peer_certificate(as_cryptography=True)
        if leaf is not None:
            # On the server side, get_peer_cert_chain() omits the leaf.
            rest = self._tls.get_peer_cert_chain(as_cryptography=True) or []
            self.environ["SSL_CLIENT_CERT"] = leaf.public_bytes(Encoding.PEM).decode("ascii")
            for i, cert in enumerate(rest):
                self.environ[f"SSL_CLIENT_CERT_CHAIN_{i}"] = cert.public_bytes(Encoding.PEM).decode("ascii")

    def _until(self, deadline: float | None, operation, *args):
        """Run a pyOpenSSL operation on the non-blocking raw socket, waiting as it asks, until `deadline`."""
        while True:
            try:
                return operation(*args)
            except SSL.WantReadError:
                events = select.POLLIN
            except SSL.WantWriteError:
                events = select.POLLOUT
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("TLS peer too slow")
            poller = select.poll()
            poller.register(self._raw, events)
            if not poller.poll(None if remaining is None else remaining * 1000):
                raise TimeoutError("TLS peer too slow")

    def _deadline(self) -> float | None:
        if self._timeout is None:
            return None
        return time.monotonic() + self._timeout

    def recv(self, size: int) -> bytes:
        try:
            return self._until(self._deadline(), self._tls.recv, size)
        except TimeoutError:
            raise _too_slow(self._timeout) from None
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            if exc.args[0] in (-1, 0):  # the peer closed without close_notify
                return b""
            raise ConnectionResetError(errno.ECONNRESET, str(exc)) from exc
        except SSL.Error as exc:
            raise ConnectionAbortedError(errno.ECONNABORTED, f"TLS error: {exc}") from exc

    def send(self, data) -> int:
        try:
            return self._until(self._deadline(), self._tls.send, data)
        except TimeoutError:
            raise _too_slow(self._timeout) from None
        except SSL.Error as exc:
            raise BrokenPipeError(errno.EPIPE, f"TLS error: {exc}") from exc

    def sendall(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds that the raw socket no longer signals."""
        return self._tls.pending()

    def setblocking(self, flag: bool) -> None:
        self._timeout = self._io_timeout if flag else 0.0

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = self._io_timeout if timeout is None else timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self._raw.fileno()

    def getpeername(self):
        return self._raw.getpeername()

    def getsockname(self):
        return self._raw.getsockname()

    def shutdown(self, how: int) -> None:
        try:
            self._tls.shutdown()  # sends close_notify; does not wait for the peer's
        except SSL.Error:
            pass
        self._raw.shutdown(how)

    def close(self) -> None:
        self._raw.close()

    def close_now(self) -> None:
        """Close without lingering: send close_notify, drain what has already arrived, close.

        gunicorn's graceful close lingers up to 2 s on the worker's main
        loop; a TLS peer has read its response when it sent the request, so
        only bytes already here can cause a reset.
        """
        try:
            self.shutdown(socket.SHUT_WR)
            self._raw.setblocking(False)
            for _ in range(16):
                if not self._raw.recv(4096):
                    break
        except OSError:
            pass
        finally:
            self._raw.close()


class TLSConn(TConn):
    """A gthread connection whose socket becomes a TLSSocket after a bounded handshake."""

    def __init__(self, cfg, sock, client, server, context: SSL.Context):
        super().__init__(cfg, sock, client, server)
        self.context = context
        self.handshake_deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        self.failed = False

    def init(self):
        if self.initialized:
            return
        self.initialized = True
        raw = self.sock
        raw.setblocking(False)
        tls = SSL.Connection(self.context, raw)
        tls.set_accept_state()
        wrapped = TLSSocket(raw, tls, io_timeout=float(self.cfg.timeout) or None)
        try:
            wrapped.handshake(self.handshake_deadline)
        except (SSL.Error, OSError) as exc:
            self.failed = True
            log.info("TLS handshake with %s failed: %s", _peer(self.client), _handshake_reason(exc))
            raw.close()  # at once: no response is owed to a failed handshake
            # ENOTCONN is what gthread treats as a quiet, expected disconnect.
            raise OSError(errno.ENOTCONN, "TLS handshake failed") from None
        self.sock = wrapped
        self.parser = http.get_parser(self.cfg, self.sock, self.client)

    def close(self, graceful=False):
        if self.failed:
            return
        if isinstance(self.sock, TLSSocket):
            self.sock.close_now()
        else:
            super().close(graceful=False)


class TLSWorker(ThreadWorker):
    """gunicorn's gthread worker with pyOpenSSL TLS and the client chain in the environ."""

    def init_process(self):
        self.tls_context = None
        if self.cfg.is_ssl:
            self._files_loaded = self._files_refused = self._tls_files()
            self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL
            self.tls_context = build_context(self.cfg)
            wanted = {ssl.CERT_REQUIRED: "required", ssl.CERT_OPTIONAL: "optional"}.get(self.cfg.cert_reqs, "none")
            self.log.info("TLS context built from %s (client certificate: %s)", self.cfg.certfile, wanted)
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        application = self.wsgi

        def with_client_certificate(environ, start_response):
            sock = environ.get("gunicorn.socket")
            if isinstance(sock, TLSSocket):
                environ.update(sock.environ)
            return application(environ, start_response)

        self.wsgi = with_client_certificate

    def _tls_files(self) -> tuple:
        """What identifies the current certificate and key files: a renewal changes it."""
        signature = []
        for path in (self.cfg.certfile, self.cfg.keyfile or self.cfg.certfile):
            try:
                st = os.stat(path)
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def _reload_if_renewed(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_INTERVAL
        files = self._tls_files()
        if files in (self._files_loaded, self._files_refused):
            return
        try:
            context = build_context(self.cfg)
        except (SSL.Error, OSError) as exc:
            # Often a renewal half-written (new certificate, old key): keep serving the old pair.
            self._files_refused = files
            self.log.warning("TLS files changed but do not load as a pair, keeping the current ones: %s",
                             _handshake_reason(exc))
            return
        self.tls_context, self._files_loaded = context, files
        self.log.info("TLS certificate reloaded from %s", self.cfg.certfile)

    def accept(self, listener):
        if self.tls_context is None:
            return super().accept(listener)
        self._reload_if_renewed()
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TLSConn(self.cfg, client_sock, client_addr, listener.getsockname(), self.tls_context)
        # The ClientHello is awaited in the poller; murder_pending() closes the
        # connection if it has not come by the handshake deadline.
        conn.timeout = conn.handshake_deadline
        self.pending_conns.append(conn)
        self.poller.register(client_sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def handle(self, conn):
        keepalive = super().handle(conn)
        # A pipelined request already decrypted inside OpenSSL leaves the raw
        # socket unreadable: the poller would never wake for it.
        while keepalive is True and self.alive and isinstance(conn.sock, TLSSocket) and conn.sock.pending():
            keepalive = super().handle(conn)
        return keepalive


def _too_slow(timeout: float | None) -> OSError:
    # A reset, not a timeout: gthread logs a reset quietly and a timeout with a
    # traceback, and to the peer it is the same, a dropped connection.
    return ConnectionResetError(errno.ECONNRESET, f"TLS peer made no progress within {timeout} s")


def _peer(client) -> str:
    return client[0] if isinstance(client, tuple) else str(client)


def _handshake_reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:.0f} s"
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [entry[2] for entry in exc.args[0] if len(entry) == 3]
        if reasons:
            return ", ".join(reasons)
    return str(exc) or type(exc).__name__
