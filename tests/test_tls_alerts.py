"""What the TLS port says to a client it refuses: the suites it offers, and a fatal alert before every close."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from OpenSSL import SSL

from quay_dispatch.transport.tls_context import DEFAULT_CIPHERS, MAX_HANDSHAKE_BYTES, build_context
from testkit.service import wait_for_log
from testkit.tls import (
    alert_in,
    client_context,
    last_word,
    padded_client_hello,
    read_responses,
    send_record,
    tls_connect,
    tlslite_client,
)

TLS12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
CBC_SUITES = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384"
AEAD_SUITES = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
               "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"}
FATAL_UNEXPECTED = "fatal unexpected_message"


@pytest.fixture(scope="session")
def backend() -> str:
    """The transport does not depend on the outbox: SQLite is enough here."""
    return "sqlite"


def test_tls_1_2_offers_mozillas_intermediate_suites_only(test_pki):
    cert, key = test_pki.pair("server")
    offered = set(SSL.Connection(build_context(cert, key, ssl.CERT_REQUIRED), None).get_cipher_list())

    assert {suite for suite in offered if not suite.startswith("TLS_")} == AEAD_SUITES  # TLS 1.3's are all AEAD
    assert set(DEFAULT_CIPHERS.split(":")) == AEAD_SUITES


def test_a_tls_1_2_client_with_cbc_suites_only_is_refused_in_the_handshake(start_service, test_pki):
    service = start_service(args=["--workers", "1"])
    cbc_only = client_context(test_pki, **TLS12)
    cbc_only.set_ciphers(CBC_SUITES)

    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        tls_connect(service, cbc_only)


@pytest.mark.parametrize("limits", [TLS12, {}], ids=["tls1.2-aead-only", "python-default"])
def test_aead_clients_and_pythons_default_client_are_served(start_service, test_pki, limits):
    service = start_service(args=["--workers", "1"])
    ctx = client_context(test_pki, **limits)
    if limits:
        ctx.set_ciphers(":".join(sorted(AEAD_SUITES)))

    with tls_connect(service, ctx) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        responses = read_responses(conn, 1, timeout=5.0)

    assert [r.split(b"\r\n")[0] for r in responses] == [b"HTTP/1.1 200 OK"]


CCS = 20
ALERT = 21


def bad_record_after_the_handshake(conn, case: str) -> None:
    """What tlsfuzzer sends once the handshake is done, and OpenSSL must answer with a fatal alert."""
    if case == "content type 0":
        send_record(conn, 0, b"\x00")
    elif case == "empty alert":
        send_record(conn, ALERT, b"")
    else:  # a ChangeCipherSpec after Finished: in TLS 1.3 it is never encrypted
        conn.sock.sendall(b"\x14\x03\x03\x00\x01\x01")


def alerted_and_logged_once(service, conn) -> None:
    assert last_word(conn) == FATAL_UNEXPECTED
    assert wait_for_log(service, "TLS error from 127.0.0.1 after the handshake: ")
    assert service.log().count("TLS error from 127.0.0.1") == 1


@pytest.mark.parametrize("case", ["content type 0", "empty alert", "ChangeCipherSpec after Finished"])
def test_a_bad_record_after_the_tls_1_3_handshake_gets_its_fatal_alert_before_the_close(start_service, test_pki,
                                                                                     case):
    service = start_service(args=["--workers", "1"])
    conn = tlslite_client(service, test_pki)

    bad_record_after_the_handshake(conn, case)

    alerted_and_logged_once(service, conn)
    assert "TLS handshake with 127.0.0.1 failed" not in service.log()


def test_a_bad_record_after_tls_1_2_gets_its_fatal_alert(start_service, test_pki):
    service = start_service(args=["--workers", "1"])
    conn = tlslite_client(service, test_pki, tls_version=(3, 3))

    send_record(conn, 0, b"\x00")

    assert last_word(conn) == FATAL_UNEXPECTED


def test_a_bad_record_while_the_loop_reads_the_body_gets_its_alert_and_one_log_line(start_service, test_pki):
    service = start_service(args=["--workers", "1"])
    conn = tlslite_client(service, test_pki)
    conn.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\n\r\n")
    conn.write(b"x" * 1000)
    time.sleep(0.2)

    send_record(conn, 0, b"\x00")

    alerted_and_logged_once(service, conn)
    assert "Traceback" not in service.log()


def test_a_client_hello_over_the_handshake_limit_gets_record_overflow(start_service, test_pki):
    service = start_service(args=["--workers", "1"])
    hello = padded_client_hello(40_000)

    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as raw:
        raw.sendall(hello)
        answer = raw.recv(100)

    assert alert_in(answer) == (2, 22)  # fatal record_overflow, sent in the clear as the server never spoke
    assert wait_for_log(service, f"the client sent more than {MAX_HANDSHAKE_BYTES} bytes without finishing")


def test_a_bare_lf_request_is_answered_at_once(start_service, test_pki):
    service = start_service(args=["--workers", "1"])

    with tls_connect(service, client_context(test_pki)) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.0\n\n")
        responses = read_responses(conn, 1, timeout=3.0)
        elapsed = time.monotonic() - started

    assert [r.split(b"\r\n")[0] for r in responses] == [b"HTTP/1.1 400 Bad Request"]
    assert b"Content-Type: application/json" in responses[0]
    assert elapsed < 1.0
