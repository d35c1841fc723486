"""A connection as the worker's event loop buffers it (handshake, then a request until it is whole), and the
threads a whole request is handed to."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import deque

from gunicorn import http
from gunicorn.workers.gthread import TConn
from OpenSSL import SSL

from ..base.limits import MAX_BODY, REQUEST_TIMEOUT
from .framing import CONTINUE, CONTINUE_ANSWER, Refusal, buffered_request, too_large
from .stream import PlainStream, Stream, WouldBlock
from .tls_stream import TLSStream

READ_SIZE = 65536


class Conn(TConn):
    """A connection the event loop reads: handshake (TLS only), then a request until it is whole."""

    def __init__(self, cfg, sock, client, server, context: SSL.Context | None, admin: bool = False):
        """`admin`: it came to the operator's page's listener, where TLS asks for no client certificate."""
        super().__init__(cfg, sock, client, server)  # leaves the socket non-blocking
        io_timeout = float(cfg.timeout) or None
        self.sock: Stream = (TLSStream(sock, context, io_timeout, client_certificate=not admin) if context
                             else PlainStream(sock, io_timeout))
        self.sock.admin = admin
        self.handshaken = context is None
        self.received = bytearray()
        self.served = 0  # requests answered on this connection
        self.awaiting_room = False  # a pipelined request waits for the client to read earlier answers
        self.awaiting = False  # the loop reads it (in pending_conns and the poller)
        self.waiting_since = 0.0  # when it was queued for a thread
        self.continued = False  # the request being read was answered `100 Continue`

    def advance(self, head_limit: int) -> str | Refusal | None:
        """Handshake, then read what has arrived: None to read on, WHOLE, or the Refusal to answer (see
        buffered_request). A client that waits for `100 Continue` is sent it, once.

        Never waits. Raises SSL.Error or OSError when the connection is to be dropped.
        """
        if not self.handshaken:
            if not self.sock.handshake_nowait():
                return None
            self.handshaken = True
        limit = head_limit + MAX_BODY
        ended = False  # the peer closed its side: a whole request is still answered (it may read on)
        while len(self.received) <= limit:
            try:
                data = self.sock.recv_nowait(READ_SIZE)
            except WouldBlock:  # all read for now
                break
            if not data:
                ended = True
                break
            self.received += data
        buffered = buffered_request(self.received, head_limit)
        if buffered is None and len(self.received) > limit:
            return too_large(f"the request's body and its framing are over {limit} bytes")
        if buffered in (None, CONTINUE) and ended:
            raise ConnectionResetError(errno.ECONNRESET, "closed by the peer")
        if buffered == CONTINUE:
            if not self.continued:
                try:
                    self.sock.send_nowait(CONTINUE_ANSWER)
                except WouldBlock:  # earlier answers are still unread: nothing can be said
                    raise ConnectionResetError(errno.ECONNRESET, "no room to answer 100 Continue") from None
                self.continued = True
            return None
        return buffered

    def init(self):
        """gunicorn's TConn.init (not __init__): the HTTP parser on this connection's stream, made once."""
        if not self.initialized:
            self.initialized = True
            self.parser = http.get_parser(self.cfg, self.sock, self.client)

    def hand_over(self) -> None:
        """Give the bytes buffered in the loop to the HTTP parser; bound what a thread may still read."""
        self.init()
        if self.received:
            self.parser.unreader.unread(bytes(self.received))
            self.received.clear()
        self.continued = False
        self.sock.deadline = time.monotonic() + REQUEST_TIMEOUT

    def take_back(self) -> bool:
        """After a response: keep what the parser read past it; whether a next request is already here."""
        self.received += self.parser.unreader.take_buffered()
        return bool(self.received) or self.sock.pending() > 0

    def close(self, graceful=False):
        self.sock.close()


class Threads:
    """The threads that serve whole requests. A request goes to the thread idle most recently:
    its caches are warm, and under light load one thread serves nearly everything."""

    def __init__(self, count: int, serve):
        self._serve = serve
        self._lock = threading.Lock()
        self._idle: list[Slot] = []  # a stack: the last one idle is woken first
        self._backlog: deque[Conn] = deque()  # when every thread is busy
        self._slots = [Slot() for _ in range(count)]
        for i, slot in enumerate(self._slots):
            threading.Thread(target=self._run, args=(slot,), name=f"request-{i}", daemon=True).start()

    def put(self, conn: Conn | None) -> None:
        with self._lock:
            if not self._idle:
                self._backlog.append(conn)
                return
            slot = self._idle.pop()
        slot.conn = conn
        slot.wake.release()

    def _run(self, slot: Slot) -> None:
        while True:
            with self._lock:
                queued = bool(self._backlog)
                if queued:
                    conn = self._backlog.popleft()
                else:
                    self._idle.append(slot)
            if not queued:
                slot.wake.acquire()
                conn, slot.conn = slot.conn, None
            if conn is None:  # shutdown
                return
            self._serve(conn)

    def shutdown(self, wait: bool = False) -> None:
        for _ in self._slots:
            self.put(None)


class Slot:
    """One thread's mailbox: the connection to serve next, and a lock released to wake it."""

    def __init__(self):
        self.conn: Conn | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


def batch_scheduling(log) -> None:
    """Linux's SCHED_BATCH for the worker and every thread it starts (they inherit it): a thread woken by
    another (a request handed over, a commit's followers) then waits for the waker's turn to end instead
    of preempting it, only to find the GIL still held by it (docs/architecture.md). No privilege needed."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or refused by a seccomp profile
        log.info("SCHED_BATCH is not available (%s): the default scheduling policy stays", exc)
