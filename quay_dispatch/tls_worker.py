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
- accept, on_client_socket_readable: the handshake and the reading of each
  request happen in the worker's event loop, never waiting. A client that says
  nothing, or dribbles its handshake or its headers, holds nothing but a place
  in the poller; murder_pending() closes it at its deadline, and says so in the
  log. At most once a second, accept also looks whether certfile or keyfile
  changed (a renewal) and, if the new pair loads, serves it to new
  connections; open connections keep theirs.
- A request whose body is all buffered (every request Quay sends) is served
  right there, in the event loop: a trip through the thread pool and back
  cost more than the application itself. Its reads and writes never wait: a
  read past the buffer drops the connection, and the response is kept whole,
  then sent in one go; what the socket cannot take at once is sent as the
  client reads, until the request's deadline.
  A request with a chunked or larger body, or that expects 100-continue, goes
  to a thread, which may read the rest until the request's deadline.
- handle: hands the buffered request to gunicorn's parser, bounds what a
  thread may still read by the request's deadline, and serves requests that
  OpenSSL has already decrypted, which would otherwise wait for a raw-socket
  readiness that never comes.
- load_wsgi: wraps the application to add SSL_CLIENT_CERT and
  SSL_CLIENT_CERT_CHAIN_n to the environ.

Without certfile, it is gunicorn's plain gthread worker (a PaaS router
terminates TLS).
"""

from __future__ import annotations

import errno
import os
import re
import select
import selectors
import socket
import ssl
import time
from concurrent.futures import Future
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker
from OpenSSL import SSL, crypto

HANDSHAKE_TIMEOUT = 5.0  # seconds from accept() to a finished handshake and a whole first request
REQUEST_TIMEOUT = 5.0  # seconds from a kept-alive connection's next bytes to its whole request
MAX_HEADER_BYTES = 16 * 1024  # more before the end of the headers: handed to gunicorn's parser to refuse
MAX_BUFFERED = MAX_HEADER_BYTES + 64 * 1024  # headers and the largest body the service accepts
RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files


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
        self.request_deadline: float | None = None  # set by the worker for each request it serves
        self.environ: dict[str, str] = {}
        self.in_event_loop = False  # then reads never wait, and writes are kept in `unsent` (see send and recv)
        self.unsent = b""  # what the event loop has still to send of its response

    def read_peer_chain(self) -> None:
        """After the handshake: the presented chain, under mod_ssl's environ names."""
        leaf = self._tls.get_peer_certificate()
        if leaf is not None:
            # On the server side, get_peer_cert_chain() omits the leaf.
            rest = self._tls.get_peer_cert_chain() or []
            self.environ["SSL_CLIENT_CERT"] = _pem(leaf)
            for i, cert in enumerate(rest):
                self.environ[f"SSL_CLIENT_CERT_CHAIN_{i}"] = _pem(cert)

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
        """When the current read or write must be done: its timeout, and the request's deadline."""
        limits = [d for d in (self.request_deadline,) if d is not None]
        if self._timeout is not None:
            limits.append(time.monotonic() + self._timeout)
        return min(limits) if limits else None

    def recv(self, size: int) -> bytes:
        try:
            deadline = time.monotonic() if self.in_event_loop else self._deadline()
            return self._until(deadline, self._tls.recv, size)
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
        if self.in_event_loop:
            # Kept whole and sent in one go once the response is complete (send_unsent):
            # one TLS record and one segment instead of one for the headers and one for the body.
            self.unsent += bytes(data)
            return len(data)
        try:
            return self._until(self._deadline(), self._tls.send, data)
        except TimeoutError:
            raise _too_slow(self._timeout) from None
        except SSL.Error as exc:
            raise BrokenPipeError(errno.EPIPE, f"TLS error: {exc}") from exc

    def send_unsent(self) -> bool:
        """Send more of `unsent` without waiting; True once it is all sent.

        OpenSSL may hold the start of a write it asked to retry: bytes are only ever
        appended to `unsent`, never put in front (pyOpenSSL allows a moving write buffer).
        """
        while self.unsent:
            try:
                sent = self._tls.send(self.unsent)
            except (SSL.WantReadError, SSL.WantWriteError):
                return False
            except SSL.Error as exc:
                raise BrokenPipeError(errno.EPIPE, f"TLS error: {exc}") from exc
            self.unsent = self.unsent[sent:]
        return True

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
    """A gthread connection that handshakes and buffers its request in the worker's event loop.

    Nothing here ever waits: advance() does what the bytes already received allow,
    so a client that dribbles its handshake or its request holds no thread, only a
    place in the poller until its deadline.
    """

    def __init__(self, cfg, sock, client, server, context: SSL.Context):
        super().__init__(cfg, sock, client, server)  # leaves the socket non-blocking
        self.tls = SSL.Connection(context, sock)
        self.tls.set_accept_state()
        self.handshaken = False
        self.received = bytearray()
        self.awaiting = False  # the event loop is reading its next request

    def advance(self) -> str | None:
        """Handshake, then read what has arrived; how much of the request is buffered (see buffered_request).

        Raises SSL.Error or OSError when the connection is to be dropped.
        """
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except (SSL.WantReadError, SSL.WantWriteError):
                # WantWrite would mean the socket's send buffer cannot take our
                # handshake flight (a few kB): waiting for the next read is enough.
                return None
            self.handshaken = True
            self.sock = TLSSocket(self.sock, self.tls, io_timeout=float(self.cfg.timeout) or None)
            self.sock.read_peer_chain()
        while len(self.received) <= MAX_BUFFERED:
            try:
                data = self.tls.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                data = b""
            except SSL.SysCallError as exc:
                raise ConnectionResetError(errno.ECONNRESET, str(exc)) from exc
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed by the peer")
            self.received += data
        return buffered_request(self.received)

    def init(self):
        if self.initialized:
            return
        self.initialized = True
        self.parser = http.get_parser(self.cfg, self.sock, self.client)

    def hand_over(self) -> None:
        """Give the bytes buffered in the event loop to the HTTP parser (in a worker thread)."""
        self.init()
        if self.received:
            self.parser.unreader.unread(bytes(self.received))
            self.received.clear()

    def close(self, graceful=False):
        if isinstance(self.sock, TLSSocket):
            self.sock.close_now()
        else:
            super().close(graceful=False)  # no response is owed to a failed handshake


_HEADERS_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)")


WHOLE, HEADERS = "whole", "headers"


def buffered_request(data: bytes | bytearray) -> str | None:
    """How much of a request `data` holds: None while the event loop should read on,
    WHOLE for a whole request, HEADERS for as much as the event loop buffers of it.

    A request with a chunked body, one that asks for 100-continue, or one with a body
    larger than the service takes is handed on once its headers are in: a thread reads
    the rest (or gunicorn's parser refuses it) within the request's deadline.
    """
    end = data.find(_HEADERS_END)
    if end < 0:
        return HEADERS if len(data) > MAX_HEADER_BYTES else None  # the HTTP parser will refuse it
    head = bytes(data[:end]).lower()
    if b"transfer-encoding" in head or b"100-continue" in head:
        return HEADERS
    match = _CONTENT_LENGTH.search(head)
    length = int(match[1]) if match else 0
    if len(data) >= end + len(_HEADERS_END) + length:
        return WHOLE
    return HEADERS if length > MAX_BUFFERED else None


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
        self._await_request(conn, HANDSHAKE_TIMEOUT)

    def _await_request(self, conn: TLSConn, deadline: float) -> None:
        """Let the event loop handshake and read the request; murder_pending() ends it at the deadline."""
        conn.timeout = time.monotonic() + deadline
        self.pending_conns.append(conn)  # every entry has the same deadline length: the deque stays sorted
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        conn.awaiting = True

    def _stop_awaiting(self, conn: TLSConn) -> None:
        """Out of the poller and the deadline queue (it was waiting to be read or written)."""
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        conn.awaiting = False

    def _on_readable(self, conn: TLSConn, _fileobj=None) -> None:
        handshaken = conn.handshaken
        try:
            buffered = conn.advance()
        except (SSL.Error, OSError) as exc:
            if not handshaken:
                self.log.info("TLS handshake with %s failed: %s", _peer(conn.client), _handshake_reason(exc))
            self._drop(conn)
            return
        if buffered is None:
            return
        self._stop_awaiting(conn)
        conn.data_ready = True
        if buffered == WHOLE:
            self._serve_in_loop(conn)
        else:
            self.enqueue_req(conn)

    def _serve_in_loop(self, conn: TLSConn) -> None:
        """Serve a whole buffered request here, in the event loop."""
        done = Future()
        conn.sock.in_event_loop = True
        try:
            done.set_result(self._handle_one(conn))
        except BaseException as exc:  # finish_request() closes the connection, as for a thread's error
            done.set_exception(exc)
        finally:
            conn.sock.in_event_loop = False
        try:
            sent = conn.sock.send_unsent()
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        if sent:
            self._after_response(conn, done)
        else:
            # The client reads its response slowly: send the rest as it reads, by the request's deadline.
            conn.timeout = time.monotonic() + REQUEST_TIMEOUT
            self.pending_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, conn, done))

    def _on_writable(self, conn: TLSConn, done: Future, _fileobj=None) -> None:
        try:
            if not conn.sock.send_unsent():
                return
        except OSError:
            self._drop(conn)
            return
        self._stop_awaiting(conn)
        self._after_response(conn, done)

    def _after_response(self, conn: TLSConn, done: Future) -> None:
        """The response is sent: on to a request pipelined behind it, else gunicorn keeps or closes the connection."""
        if done.exception() is None and done.result() is True and self.alive:
            # What the parser read past this request, or what OpenSSL already
            # decrypted: the poller would not wake for either.
            conn.received += conn.parser.unreader.take_buffered()
            if conn.received or conn.sock.pending():
                # Served on the loop's next turn, after the other connections' events.
                self._await_request(conn, REQUEST_TIMEOUT)
                self.method_queue.defer(self._on_pipelined, conn)
                return
        self.finish_request(conn, done)

    def _on_pipelined(self, conn: TLSConn) -> None:
        if conn.awaiting:  # not closed or served meanwhile
            self._on_readable(conn)

    def _drop(self, conn: TLSConn) -> None:
        self._stop_awaiting(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        now = time.monotonic()
        for conn in self.pending_conns:
            if conn.timeout > now:
                break
            conn.awaiting = False
            if isinstance(conn, TLSConn) and conn.handshaken and conn.sock.unsent:
                self.log.info("response to %s not read within %.0f s: closed", _peer(conn.client), REQUEST_TIMEOUT)
            elif isinstance(conn, TLSConn) and conn.handshaken:
                self.log.info("request from %s not whole within %.0f s: closed", _peer(conn.client), REQUEST_TIMEOUT)
            elif isinstance(conn, TLSConn):
                self.log.info("TLS handshake with %s failed: no handshake within %.0f s", _peer(conn.client),
                              HANDSHAKE_TIMEOUT)
        super().murder_pending()

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has a new request coming: buffer it in the event loop too."""
        if not isinstance(conn, TLSConn):
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_request(conn, REQUEST_TIMEOUT)
        self._on_readable(conn)

    def _handle_one(self, conn: TLSConn):
        """gunicorn's handling of the request buffered in `conn`."""
        conn.hand_over()
        # Whatever a thread still has to read of this request, it reads by then.
        conn.sock.request_deadline = time.monotonic() + REQUEST_TIMEOUT
        return super().handle(conn)

    def handle(self, conn):
        """In a thread: a request the event loop could not buffer whole, and those pipelined behind it."""
        if not isinstance(conn, TLSConn):
            return super().handle(conn)
        keepalive = True
        while keepalive is True:
            keepalive = self._handle_one(conn)
            # A pipelined request already decrypted inside OpenSSL leaves the raw
            # socket unreadable: the poller would never wake for it.
            if not (self.alive and conn.sock.pending()):
                break
        return keepalive


def _pem(cert: crypto.X509) -> str:
    return crypto.dump_certificate(crypto.FILETYPE_PEM, cert).decode("ascii")


def _too_slow(timeout: float | None) -> OSError:
    # A reset, not a timeout: gthread logs a reset quietly and a timeout with a
    # traceback, and to the peer it is the same, a dropped connection.
    return ConnectionResetError(errno.ECONNRESET, f"TLS peer made no progress within {timeout} s")


def _peer(client) -> str:
    return client[0] if isinstance(client, tuple) else str(client)


def _handshake_reason(exc: Exception) -> str:
    """OpenSSL's reasons for a failure, such as "peer did not return a certificate"."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [entry[2] for entry in exc.args[0] if len(entry) == 3]
        if reasons:
            return ", ".join(reasons)
    return str(exc) or type(exc).__name__
