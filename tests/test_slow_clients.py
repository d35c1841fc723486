"""Slow clients on every door: dribbled headers or bodies hold no thread, on plain HTTP as on TLS.

The event loop buffers each request until it is whole, with one deadline
(REQUEST_TIMEOUT) from accept() for the handshake and the request together; a
connection that misses it is closed by the loop, never handed to a thread. Loopback
only, every loop bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from quay_dispatch.base.limits import REQUEST_TIMEOUT
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.client import PLAIN, pem_blocks, post_from
from testkit.credentials import INCOMING_TOKEN as TOKEN
from testkit.faults import HealthProbe, assert_healthy
from testkit.service import wait_for_log
from testkit.tls import client_context, tls_connect

SLOW_EACH = 8  # connections of each kind: as many as the worker has threads
DRIBBLE_INTERVAL = 0.5  # seconds between two dribbled pieces
CLOSED_BY = REQUEST_TIMEOUT + 5.0  # seconds after opening: the deadline, and the event loop's margin
MAX_DRIBBLES = int(CLOSED_BY / DRIBBLE_INTERVAL) + 1
HEADERS_DRIBBLE = (b"POST /incoming HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n")
BODY_DRIBBLE = (b"POST /incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n", b" ")
MODES = {
    "token": PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": TOKEN},
    "header": PLAIN | {"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.1"},
    "tls": {},
}


@pytest.fixture(scope="session")
def backend() -> str:
    """The outbox is not what is attacked here: SQLite is enough."""
    return "sqlite"


@dataclass
class SlowClient:
    """One connection that never finishes its request, and when the server closed it."""

    kind: str
    opened: float = 0.0
    closed_after: float | None = None  # seconds from opening to the server's close; None: still open
    answer: bytes = b""  # whatever the server sent before closing
    problem: str = ""  # why the client itself gave up

    def dribble(self, connect, start: bytes, piece: bytes) -> None:
        """Send `start`, then `piece` every DRIBBLE_INTERVAL, until the server closes the connection."""
        self.opened = time.monotonic()
        try:
            conn = connect()
        except OSError as exc:
            self.problem = f"could not connect: {exc!r}"
            return
        with conn:
            conn.settimeout(DRIBBLE_INTERVAL)
            try:
                conn.sendall(start)
                for _ in range(MAX_DRIBBLES):
                    if time.monotonic() - self.opened > CLOSED_BY:
                        return
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        conn.sendall(piece)
                        continue
                    if not data:
                        break
                    self.answer += data
                else:
                    return
            except OSError:  # a reset, a broken pipe, TLS's unexpected EOF: closed all the same
                pass
            self.closed_after = time.monotonic() - self.opened


def genuine_notification(mode: str, service, test_pki) -> int:
    """The status a real notification gets, authenticated as `mode` expects it."""
    body = sample_body("build_success", "acme/widget")
    if mode == "token":
        return send_like_quay(f"http://quay:{TOKEN}@127.0.0.1:{service.port}/incoming", body, None).status_code
    if mode == "header":
        chain = quote(b"".join(pem_blocks(test_pki.pair("quay")[0])).decode())
        return post_from(service, "127.0.0.1", body, {"X-SSL-Client-Cert": chain})[0]
    return send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file).status_code


@pytest.mark.parametrize("mode", MODES)
def test_clients_dribbling_headers_or_a_body_hold_no_thread_and_are_closed_at_their_deadline(
        mode, start_service, test_pki):
    service = start_service(MODES[mode])
    if mode == "tls":
        def connect():  # the handshake is done, with a valid certificate, before the dribbling
            return tls_connect(service, client_context(test_pki))
    else:
        def connect():
            return socket.create_connection(("127.0.0.1", service.port), timeout=10)
    slow = [SlowClient("headers") for _ in range(SLOW_EACH)] + [SlowClient("body") for _ in range(SLOW_EACH)]
    threads = [threading.Thread(target=client.dribble,
                                args=(connect, *(HEADERS_DRIBBLE if client.kind == "headers" else BODY_DRIBBLE)))
               for client in slow]

    with HealthProbe(service, test_pki) as probe:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLOSED_BY + 2)
    status = genuine_notification(mode, service, test_pki)

    assert not any(thread.is_alive() for thread in threads)
    assert [c.problem for c in slow if c.problem] == []
    assert_healthy(probe)
    assert len(probe.times) >= REQUEST_TIMEOUT / 0.25 / 2, probe.times  # probed throughout the attack
    closed = sorted(c.closed_after for c in slow if c.closed_after is not None)
    assert len(closed) == len(slow), [(c.kind, c.closed_after) for c in slow]
    assert closed[-1] < CLOSED_BY
    assert closed[0] > REQUEST_TIMEOUT - 1  # the deadline, not an earlier refusal
    assert status == 202
    closed_line = f"not whole within {REQUEST_TIMEOUT:.0f} s: closed"
    assert wait_for_log(service, closed_line, count=len(slow)), service.log()[-3000:]
    assert "Traceback" not in service.log()
