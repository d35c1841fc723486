"""A connection as the worker's event loop buffers it (handshake, then a request until it is whole), and the
threads a whole request is handed to."""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

from gunicorn import http
from gunicorn.workers.gthread import TConn
from OpenSSL import SSL

from .limits import MAX_BODY, REQUEST_TIMEOUT
from .stream import PlainStream, Stream, WouldBlock
from .tls_stream import TLSStream

_HEADERS_END = b"\r\n\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
# The fields that frame a body, matched as gunicorn's parser could take them: any case, blanks around the name.
_FRAMING_FIELD = re.compile(rb"\r\n[ \t]*(content-length|transfer-encoding|expect)[ \t]*:([^\r\n]*)")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,8})[ \t]*(;[^\r\n]*)?")
READ_SIZE = 65536
WHOLE, CONTINUE = "whole", "continue"
CONTINUE_ANSWER = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class Refusal:
    """A request the loop answers itself, then closes: it will never be whole, or never within the limits."""

    status: int
    reason: str  # the status line's
    message: str


def max_head(cfg) -> int:
    """The most bytes of request line and headers gunicorn's limits let through (0 means its maximum, as there)."""
    line = cfg.limit_request_line if 0 < cfg.limit_request_line < 8190 else 8190
    fields = cfg.limit_request_fields if 0 < cfg.limit_request_fields < 32768 else 32768
    field_size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 8190
    return line + 2 + fields * (field_size + 2) + 4


def buffered_request(data: bytes | bytearray, head_limit: int) -> str | Refusal | None:
    """How much of a request `data` holds: None while the loop should read on, CONTINUE to read on once the
    client has its `100 Continue`, WHOLE for a whole request, or the Refusal to answer.

    Only a whole request ever reaches a thread, so that no client can hold one by
    announcing what it never sends. Bodies, by Content-Length or chunked, are
    buffered up to MAX_BODY; a larger one, a head over gunicorn's limits or one
    whose framing gunicorn's parser would not take is refused here, at once.
    """
    end = data.find(_HEADERS_END)
    if end < 0:
        if len(data) > head_limit:
            return Refusal(431, "Request Header Fields Too Large",
                           f"the request's headers are over {head_limit} bytes")
        if _BARE_LF.search(data):  # such a head never ends where the loop looks for its end
            return Refusal(400, "Bad Request", "a line of the request's head ends with a bare LF instead of CRLF")
        return None
    head = bytes(data[:end + 2])
    framing = _framing(head)
    if isinstance(framing, Refusal):
        return framing
    length, expects_continue = framing
    body_start = end + len(_HEADERS_END)
    if length is None:
        buffered = _chunked_body(data, body_start)
    else:
        buffered = WHOLE if len(data) >= body_start + length else None
    return CONTINUE if buffered is None and expects_continue else buffered


def _framing(head: bytes) -> tuple[int | None, bool] | Refusal:
    """The body the head announces: its length (None: chunked), and whether the client waits for
    `100 Continue` before it sends it. A Refusal for what gunicorn's parser would refuse too."""
    lengths, codings, expects_continue = [], [], False
    for name, value in _FRAMING_FIELD.findall(head.lower()):
        value = value.strip(b" \t")
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        else:
            # gunicorn, as RFC 9110 asks, ignores it from an HTTP/1.0 client (one empty line may come first).
            expects_continue = value == b"100-continue" and head.lstrip(b"\r\n").split(b"\r\n", 1)[0].endswith(
                b"HTTP/1.1")
    if codings:
        if lengths:
            return Refusal(400, "Bad Request", "the request has both Content-Length and Transfer-Encoding")
        if codings[-1].rsplit(b",", 1)[-1].strip(b" \t") != b"chunked":
            return Refusal(400, "Bad Request", "the request's Transfer-Encoding does not end with chunked")
        return None, expects_continue
    if len(lengths) > 1:
        return Refusal(400, "Bad Request", "the request has more than one Content-Length")
    if not lengths:
        return 0, False
    if not lengths[0].isdigit():
        return Refusal(400, "Bad Request", "the request's Content-Length is not a number")
    length = int(lengths[0])
    if length > MAX_BODY:
        return _too_large(f"the body is {length} bytes; the limit is {MAX_BODY}")
    return length, expects_continue


def _too_large(message: str) -> Refusal:
    return Refusal(413, "Content Too Large", message)


def _chunked_body(data: bytes | bytearray, start: int) -> str | Refusal | None:
    """Whether a chunked body starting at `start` is whole (WHOLE), incomplete (None), or refused."""
    at, size = start, 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            if len(data) - at <= 64:
                return None
            return Refusal(400, "Bad Request", "a chunk size line of the request's body is over 64 bytes")
        size_text = _CHUNK_SIZE.fullmatch(bytes(data[at:line_end]))
        if size_text is None:
            return Refusal(400, "Bad Request", "the request's body is not chunk framing")
        chunk = int(size_text[1], 16)
        size += chunk
        if size > MAX_BODY:
            return _too_large(f"the chunked body is over {MAX_BODY} bytes, the limit")
        if chunk == 0:  # then any trailers, and an empty line
            return WHOLE if data.find(_HEADERS_END, line_end) >= 0 else None
        at = line_end + 2 + chunk + 2
        if at > len(data):
            return None


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
            return _too_large(f"the request's body and its framing are over {limit} bytes")
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
