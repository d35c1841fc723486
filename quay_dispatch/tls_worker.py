"""Transport: gunicorn's gthread worker, TLS by pyOpenSSL, each request buffered whole before a thread serves it.

The event loop does the TLS handshake and reads each request until it is whole, never
waiting (transport/ has the machinery). A client that connects and says nothing, or
dribbles its handshake, headers or body, holds nothing but a place in the poller, until
murder_pending() closes it at its deadline. A whole request is then served by a thread:
the application never runs on the loop, so nothing it waits for (a locked database,
GitHub) delays a handshake or another connection. The thread answers, then hands the
connection back to the loop.

What it overrides of gunicorn 27.0.1's ThreadWorker (pinned in requirements.txt;
tests/test_tls_worker.py starts it for real):

- init_process: SCHED_BATCH for the worker's threads; the TLS context, from gunicorn's
  certfile, keyfile, cert_reqs and ciphers, once per worker; the threads that serve requests.
- accept, on_client_socket_readable: a new or kept-alive connection goes to the
  loop's reading, not to a thread; the loop answers `100 Continue`, and refuses what
  will never be whole (a body over the limit, framing gunicorn refuses) itself.
- enqueue_req, get_thread_pool: a whole request goes to a thread through one queue;
  the thread runs gunicorn's own handle() and hands the connection back, or answers 503
  unserved after QUEUE_TIMEOUT in the queue.
- murder_pending: says in the log why a connection was closed.
- handle_request: the response goes out in one write (one TLS record), never after a
  `100 Continue` of gunicorn's.
- handle_error: gunicorn's own refusals (414, 431, a malformed request's 400) as the
  service's JSON error with X-Request-Id, instead of gunicorn's HTML page.
- load_wsgi: adds the client's chain (SSL_CLIENT_CERT, SSL_CLIENT_CERT_CHAIN_n) to
  the environ; with ACME_DOMAINS, takes its TLS from the application's certificate manager;
  with ADMIN_BIND, serves that listener's requests with the operator's page.

Limits come from gunicorn's settings where it has one: limit_request_line,
limit_request_fields and limit_request_field_size bound the headers buffered,
keepalive the idle time, timeout each read or write of a thread; the rest are in
quay_dispatch.base.limits.
"""

from __future__ import annotations

import errno
import gc
import selectors
import ssl
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker
from OpenSSL import SSL

from .base.limits import QUEUE_TIMEOUT, REQUEST_TIMEOUT
from .transport.connection import Conn, Threads, batch_scheduling
from .transport.framing import Refusal, max_head, parser_refusal, refusal_answer
from .transport.stream import Stream, WouldBlock
from .transport.tls_context import ChallengeAnswered, ReloadingContext, handshake_reason

_TOO_BUSY = Refusal(503, "Service Unavailable", f"every thread was busy for {QUEUE_TIMEOUT:.0f} s; try again later")


class TLSWorker(ThreadWorker):
    """gunicorn's gthread worker: TLS by pyOpenSSL, requests buffered whole in the loop, served by threads."""

    def init_process(self):
        batch_scheduling(self.log)
        self.tls = None
        self.head_limit = max_head(self.cfg)
        if self.cfg.is_ssl:
            self.tls = ReloadingContext(self.cfg.certfile, self.cfg.keyfile, self.cfg.cert_reqs, self.cfg.ciphers,
                                        self.log.info, self.log.warning, _certificate_served)
            wanted = {ssl.CERT_REQUIRED: "required", ssl.CERT_OPTIONAL: "optional"}.get(self.cfg.cert_reqs, "none")
            self.log.info("TLS context built from %s (client certificate: %s)", self.cfg.certfile, wanted)
        super().init_process()

    def get_thread_pool(self):
        return Threads(self.cfg.threads, self._serve)

    def load_wsgi(self):
        super().load_wsgi()
        application = self.wsgi
        from .config.admin import is_admin_listener
        from .runtime.services import services_of  # here: gunicorn's master loads this module, not the application

        services = services_of(application)
        if self.tls is None:  # ACME_DOMAINS (or no TLS): the application's certificate manager, if any, from now on
            self.tls = services.start_certificates(self.cfg.cert_reqs, self.cfg.ciphers)
        admin, self.admin_listeners = None, []
        if services.settings.admin_bind:  # the operator's page, its own application on the same services
            from .admin import create_admin_app

            admin = create_admin_app(services, tls=self.tls is not None)
            self.admin_listeners = [s for s in self.sockets
                                    if is_admin_listener(s.getsockname(), services.settings.admin_bind)]

        def by_door(environ, start_response):
            sock = environ.get("gunicorn.socket")
            if isinstance(sock, Stream):
                environ.update(sock.environ)
                if sock.admin:
                    return admin(environ, start_response)
            return application(environ, start_response)

        self.wsgi = by_door
        # What the application loaded lives as long as the worker: out of the collector's sight,
        # a full collection looks at what requests made instead of every module (about 30 ms each).
        gc.collect()
        gc.freeze()

    # In the event loop ------------------------------------------------------------------

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        context = self.tls.current() if self.tls else None
        conn = Conn(self.cfg, client_sock, client_addr, listener.getsockname(), context,
                    admin=listener in self.admin_listeners)
        self._await_request(conn)

    def _await_request(self, conn: Conn, registered: bool = False) -> None:
        """Let the loop read the request; murder_pending() ends it at its deadline.

        `registered`: the poller already watches the connection for reading (kept alive):
        only the callback changes, without a system call.
        """
        conn.timeout = time.monotonic() + REQUEST_TIMEOUT
        conn.awaiting = True
        self.pending_conns.append(conn)  # every entry has the same deadline length: the deque stays sorted
        watch = self.poller.modify if registered else self.poller.register
        watch(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: Conn, _fileobj=None) -> None:
        handshaken = conn.handshaken
        try:
            buffered = conn.advance(self.head_limit)
        except ChallengeAnswered as answered:
            self.log.info("tls-alpn-01 challenge for %s answered to %s", answered, _peer(conn.client))
            self._drop(conn)
            return
        except (SSL.Error, OSError) as exc:
            if not (handshaken or conn.sock.failure):
                self.log.info("TLS handshake with %s failed: %s", _peer(conn.client), handshake_reason(exc))
            self._log_tls_failure(conn)
            self._drop(conn)
            return
        if buffered is None:
            return
        if isinstance(buffered, Refusal):
            self._refuse(conn, buffered)
            return
        if conn.served and not conn.sock.writable():
            # A pipelined request from a client that does not read its answers: it
            # waits here for room, not in a thread, until its deadline.
            conn.awaiting_room = True
            self.poller.modify(conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, conn))
            return
        self._stop_awaiting(conn)
        self.enqueue_req(conn)

    def _on_writable(self, conn: Conn, _fileobj=None) -> None:
        conn.awaiting_room = False
        self._stop_awaiting(conn)
        self.enqueue_req(conn)

    def _stop_awaiting(self, conn: Conn) -> None:
        conn.awaiting = False
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)

    def _refuse(self, conn: Conn, refusal: Refusal) -> None:
        """Answer a request that will never be whole (or never within the limits) from the loop, and close."""
        answer = memoryview(refusal_answer(refusal, _peer(conn.client)))
        try:
            while answer:  # a few hundred bytes: a socket takes them at once, or the client is not reading
                answer = answer[conn.sock.send_nowait(answer):]
        except (WouldBlock, SSL.Error, OSError):
            pass
        self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        self._stop_awaiting(conn)
        self.nr_conns -= 1
        conn.close()

    def enqueue_req(self, conn: Conn) -> None:
        conn.waiting_since = time.monotonic()
        self.tpool.put(conn)

    def _served(self, conn: Conn, keepalive: bool) -> None:
        """Back from a thread: read a pipelined request, keep the connection alive, or close it."""
        if not keepalive or not self.alive:
            self.nr_conns -= 1
            conn.close()
        elif conn.take_back():
            # Bytes the poller would not wake for (already read, or decrypted inside OpenSSL):
            # read on the loop's next turn, after the other connections' events.
            self._await_request(conn)
            self.method_queue.defer(self._on_pipelined, conn)
        else:
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def _on_pipelined(self, conn: Conn) -> None:
        if conn.awaiting:  # not closed at its deadline meanwhile
            self._on_readable(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has a request coming: the loop reads it too."""
        self.keepalived_conns.remove(conn)
        self._await_request(conn, registered=True)
        self._on_readable(conn)

    def _log_tls_failure(self, conn: Conn) -> None:
        """A TLS error the client caused after the handshake, found by the loop or a thread: logged once."""
        if conn.sock.failure:
            self.log.info("TLS error from %s after the handshake: %s (alert sent, connection closed)",
                          _peer(conn.client), conn.sock.failure)

    def murder_pending(self):
        """gunicorn's, reading the clock once: every connection closed at its deadline is logged, with why."""
        now = time.monotonic()
        while self.pending_conns and self.pending_conns[0].timeout <= now:
            conn = self.pending_conns.popleft()
            conn.awaiting = False
            if not conn.handshaken:
                self.log.info("TLS handshake with %s failed: no handshake within %.0f s", _peer(conn.client),
                              REQUEST_TIMEOUT)
            elif conn.awaiting_room:
                self.log.info("answers to %s not read within %.0f s: closed", _peer(conn.client), REQUEST_TIMEOUT)
            else:
                self.log.info("request from %s not whole within %.0f s: closed", _peer(conn.client),
                              REQUEST_TIMEOUT)
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass
            self.nr_conns -= 1
            conn.close()

    # In a thread -------------------------------------------------------------------------

    def handle_request(self, req, conn):
        """gunicorn's, with the response's headers and body sent in one write, as soon as it is complete
        (before gunicorn drains a body the application did not read), and without `100 Continue`: the
        request is whole, and the loop said it already to a client that waited for it."""
        req._expected_100_continue = False
        conn.sock.cork()
        try:
            return super().handle_request(req, conn)
        finally:
            conn.sock.uncork()

    def handle_error(self, req, client, addr, exc):
        """A request gunicorn's parser refused: answered as every other refusal, a JSON error with X-Request-Id."""
        refusal = parser_refusal(exc)
        if refusal is None:
            return super().handle_error(req, client, addr, exc)
        try:
            client.sendall(refusal_answer(refusal, _peer(addr)))
        except OSError:
            self.log.debug("Failed to send error message.")

    def _serve(self, conn: Conn) -> None:
        """Serve the whole request buffered in `conn` with gunicorn's own handling, then hand it back."""
        waited = time.monotonic() - conn.waiting_since
        if waited > 1.0:
            self.log.warning("request from %s waited %.1f s for a thread (all %d busy): the service is slow, "
                             "not the client", _peer(conn.client), waited, self.cfg.threads)
        if waited > QUEUE_TIMEOUT:  # nobody waits this long for its answer: the thread goes to the next one
            try:
                conn.sock.sendall(refusal_answer(_TOO_BUSY, _peer(conn.client)))
            except OSError:
                pass
            self.method_queue.defer(self._served, conn, False)
            return
        conn.data_ready = True
        conn.hand_over()
        try:
            keepalive = self.handle(conn)
        except BaseException:  # handle() reports its own errors; the connection must still come back
            keepalive = False
        self._log_tls_failure(conn)
        conn.served += 1
        self.method_queue.defer(self._served, conn, keepalive)


def _certificate_served(leaf) -> None:
    """The certificate now served, for its expiry's metric (prometheus-client is imported in the worker, after the
    master set its multiprocess directory)."""
    from .base import metrics

    metrics.certificate_served("file", leaf)


def _peer(client) -> str:
    return client[0] if isinstance(client, tuple) else str(client)

