"""Flood resistance: junk on the port does not stop genuine Quay notifications. Loopback only, bounded."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from quay_dispatch.base.limits import QUEUE_TIMEOUT, REQUEST_TIMEOUT
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.faults import store_locked
from testkit.service import wait_until
from testkit.tls import client_context, read_responses, tls_connect

pytestmark = pytest.mark.serial  # each asserts answer times under a flood it makes: alone on the machine
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


# Heads that announce what never comes: a thread that took one would wait for it (issue 31).
STALLING_HEADS = {
    "100-continue in the query": b"GET /healthz?100-continue HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n",
    "a real Expect": b"POST /incoming HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n",
    "a body over the limit": b"POST /incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 70000\r\n\r\n",
}
STALLERS_EACH, BURST = 30, 100


def expect_continue_like_a_client(service, test_pki, body: bytes) -> tuple[bytes, bytes]:
    """POST `body` with Quay's certificate the way a careful client does: `Expect: 100-continue`, and the body
    only once the server said `100 Continue`. The interim answer's status line, and the final one's."""
    with tls_connect(service, client_context(test_pki)) as conn:
        conn.sendall(b"POST /incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        conn.settimeout(5)
        interim = b""
        while not interim.endswith(b"\r\n\r\n") and len(interim) < 200:
            interim += conn.recv(1)
        conn.sendall(body)
        final = read_responses(conn, 1, timeout=5)
    return interim.split(b"\r\n")[0], final[0].split(b"\r\n")[0] if final else b""


def test_heads_announcing_what_never_comes_hold_no_thread(start_service, test_pki, github):
    """With 1 worker of 8 threads: 30 connections of each stalling head, and a burst of 100 left open, all from
    a self-signed certificate, while Quay calls every 300 ms, half of them waiting for `100 Continue`."""
    service = start_service(args=["--workers", "1"])
    stop = threading.Event()
    deadline = time.monotonic() + ATTACK_SECONDS
    stranger = client_context(test_pki, cert="self_signed")
    sent = {name: 0 for name in STALLING_HEADS}
    lock = threading.Lock()

    def running() -> bool:
        return not stop.is_set() and time.monotonic() < deadline

    def stall(name: str):
        while running():
            try:
                with tls_connect(service, stranger) as conn:
                    conn.sendall(STALLING_HEADS[name])
                    with lock:
                        sent[name] += 1
                    conn.settimeout(0.5)
                    while running():  # holds it open until the service closes it
                        try:
                            if not conn.recv(4096):
                                break
                        except TimeoutError:
                            pass
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.3)  # a connection a stall, not a flood of handshakes

    burst = []
    for i in range(BURST):
        conn = tls_connect(service, stranger)
        conn.sendall(list(STALLING_HEADS.values())[i % len(STALLING_HEADS)])
        burst.append(conn)
    attackers = [threading.Thread(target=stall, args=(name,)) for name in STALLING_HEADS for _ in range(STALLERS_EACH)]
    for thread in attackers:
        thread.start()
    answers, latencies, genuine_builds = [], [], []
    try:
        time.sleep(1.0)
        while time.monotonic() < deadline - 2.0:
            body = sample_body("build_success", "acme/widget")
            genuine_builds.append(body["build_id"])
            started = time.monotonic()
            if len(genuine_builds) % 2:
                response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"),
                                          verify=test_pki.ca_file)
                answers.append(response.status_code)
            else:
                interim, final = expect_continue_like_a_client(service, test_pki, json.dumps(body).encode())
                answers.append((interim, final))
            latencies.append(time.monotonic() - started)
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(10)
        for conn in burst:
            conn.close()

    assert min(sent.values()) >= STALLERS_EACH, sent
    assert len(answers) >= 20
    assert set(answers[0::2]) == {202}
    assert set(answers[1::2]) == {(b"HTTP/1.1 100 Continue", b"HTTP/1.1 202 ACCEPTED")}
    assert max(latencies) < 2.0, sorted(latencies)[-3:]
    assert wait_until(lambda: len(github.dispatches()) >= len(genuine_builds), timeout=30)
    assert sorted(github.dispatched_builds()) == sorted(genuine_builds)


def test_a_request_that_waited_past_quays_timeout_for_a_thread_is_answered_503_unserved(
        start_service, test_pki, database_url):
    # One thread, and a locked store that holds it STORE_TIMEOUT per /readyz: the fourth waits 12 s.
    service = start_service({"STORE_TIMEOUT": "4"}, args=["--workers", "1", "--threads", "1"])
    calls = 4

    def readyz(_):
        time.sleep(_ * 0.05)  # in this order
        response = requests.get(service.url + "/readyz", cert=test_pki.pair("quay"), verify=test_pki.ca_file,
                                timeout=20)
        return response.status_code, response.headers.get("Retry-After"), response.json()

    with store_locked(database_url), ThreadPoolExecutor(calls) as pool:
        answers = list(pool.map(readyz, range(calls)))

    assert [status for status, _, _ in answers] == [503] * calls
    assert all("every thread was busy" not in body.get("error", "") for _, _, body in answers[:3])
    assert answers[3][1] == "30"
    busy = f"every thread was busy for {QUEUE_TIMEOUT:.0f} s; try again later"
    assert answers[3][2] == {"status": "error",
                             "error": f"the request was refused before it reached the service: {busy}"}
