"""Flood resistance: junk on the port does not stop genuine Quay notifications. Loopback only, bounded."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import requests

from quay_dispatch.limits import REQUEST_TIMEOUT
from quay_dispatch.sample import sample_body, send_like_quay
from testkit.service import wait_until
from testkit.tls import client_context, read_responses, tls_connect

ATTACK_SECONDS = 14.0  # the hard limit of every attacker loop
GENUINE_COUNT, GENUINE_INTERVAL = 20, 0.5  # 2 notifications a second for 10 s


@pytest.fixture(scope="session")
def backend() -> str:
    """The outbox is not what is attacked here: SQLite is enough."""
    return "sqlite"


def test_genuine_notifications_get_through_forged_certificates_no_certificates_and_slowloris(
        start_service, test_pki, github):
    service = start_service(args=["--workers", "2"])
    stop = threading.Event()
    deadline = time.monotonic() + ATTACK_SECONDS
    counts = {"forged": 0, "no certificate": 0, "slowloris": 0}
    lock = threading.Lock()

    def running() -> bool:
        return not stop.is_set() and time.monotonic() < deadline

    def count(kind):
        with lock:
            counts[kind] += 1

    def forged():
        while running():
            try:
                send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                               test_pki.pair("self_signed"), verify=test_pki.ca_file)
            except requests.RequestException:
                pass
            count("forged")

    def no_certificate():
        context = client_context(test_pki, cert=None)
        while running():
            try:
                with tls_connect(service, context) as conn:
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    conn.recv(1)
            except (OSError, ssl.SSLError):
                pass
            count("no certificate")

    def slowloris(style: int):
        # Says nothing; or dribbles a ClientHello; or finishes the handshake and dribbles headers.
        while running():
            try:
                if style == 2:
                    conn = tls_connect(service, client_context(test_pki))
                    dribble = b"POST /incoming HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                else:
                    conn = socket.create_connection(("127.0.0.1", service.port), timeout=5)
                    dribble = b"" if style == 0 else b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
                count("slowloris")
                with conn:
                    for byte in dribble or b"\x00" * 1000:
                        if not running():
                            break
                        if dribble:
                            conn.send(bytes([byte]))
                        time.sleep(0.5)
            except (OSError, ssl.SSLError):
                time.sleep(0.1)

    attackers = [threading.Thread(target=forged) for _ in range(8)]
    attackers += [threading.Thread(target=no_certificate) for _ in range(8)]
    attackers += [threading.Thread(target=slowloris, args=(i % 3,)) for i in range(50)]
    for thread in attackers:
        thread.start()
    latencies, statuses, genuine_builds = [], [], []
    try:
        time.sleep(1.0)  # the flood is on
        for _ in range(GENUINE_COUNT):
            started = time.monotonic()
            body = sample_body("build_success", "acme/widget")
            genuine_builds.append(body["build_id"])
            response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)
            latencies.append(time.monotonic() - started)
            statuses.append(response.status_code)
            time.sleep(max(0.0, GENUINE_INTERVAL - latencies[-1]))
    finally:
        stop.set()
        for thread in attackers:
            thread.join(10)

    assert statuses == [202] * GENUINE_COUNT
    assert max(latencies) < 1.0, sorted(latencies)[-3:]
    assert counts["forged"] > 50 and counts["no certificate"] > 50 and counts["slowloris"] >= 50
    # Every genuine notification reaches GitHub once, and nothing else does: no forged one got through.
    assert wait_until(lambda: len(github.dispatches()) >= GENUINE_COUNT, timeout=30)
    assert sorted(github.dispatched_builds()) == sorted(genuine_builds)


def test_request_line_header_count_and_size_are_bounded(start_service, test_pki):
    service = start_service()
    cases = {
        "request line": b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "header count": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(120))
                        + b"\r\n",
        "header size": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n",
    }
    for name, request in cases.items():
        with tls_connect(service, client_context(test_pki)) as conn:
            conn.sendall(request)
            responses = read_responses(conn, 1, timeout=5)
        assert responses and responses[0].split(b" ")[1].startswith(b"4"), name

    # Headers that never end: handed to the thread past 16 KiB, dropped at the request's deadline.
    with tls_connect(service, client_context(test_pki)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\n" + b"X-Long: y\r\n" * 2000)
        started = time.monotonic()
        conn.settimeout(REQUEST_TIMEOUT + 3)
        try:
            while conn.recv(4096):
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert time.monotonic() - started < REQUEST_TIMEOUT + 1.5
