"""The transport: the pyOpenSSL gunicorn worker, with real handshakes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import threading
import time

import pytest
import requests
from cryptography import x509
from gunicorn import sock as gunicorn_sock
from gunicorn.config import Config

from quay_dispatch.base.limits import MAX_BODY, REQUEST_TIMEOUT
from quay_dispatch.tools import pki
from quay_dispatch.tools.sample import sample_body, send_like_quay
from quay_dispatch.transport.framing import CONTINUE, WHOLE, Refusal, buffered_request
from quay_dispatch.transport.tls_context import MAX_CHAIN_CERTIFICATES, MAX_HANDSHAKE_BYTES
from testkit.client import timed_notification
from testkit.service import wait_for_log, wait_until
from testkit.tls import client_context, read_responses, tls_connect


def test_stock_gunicorn_tls_rejects_quay_chain_that_our_worker_accepts(start_service, test_pki):
    # gunicorn's own TLS context, built by gunicorn's own code, verifying client certificates.
    cfg = Config()
    cfg.set("certfile", test_pki.pair("server")[0])
    cfg.set("keyfile", test_pki.pair("server")[1])
    cfg.set("ca_certs", test_pki.ca_file)
    cfg.set("cert_reqs", ssl.CERT_REQUIRED)
    stock = gunicorn_sock.ssl_context(cfg)
    listener = socket.create_server(("127.0.0.1", 0))
    server_error: list[Exception] = []

    def serve_once():
        conn, _ = listener.accept()
        try:
            stock.wrap_socket(conn, server_side=True).close()
        except ssl.SSLError as exc:
            server_error.append(exc)
            conn.close()

    thread = threading.Thread(target=serve_once)
    thread.start()
    raw = socket.create_connection(listener.getsockname(), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with client_context(test_pki).wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(1)
    thread.join(5)
    listener.close()
    assert "unsuitable certificate purpose" in str(server_error[0])

    service = start_service()
    response = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                              test_pki.pair("quay"), verify=test_pki.ca_file)
    assert response.status_code == 202


def test_client_without_certificate_fails_the_handshake_with_cert_reqs_2(start_service, test_pki):
    service = start_service()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(service, client_context(test_pki, cert=None)) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(1)
    assert wait_for_log(service, "failed: peer did not return a certificate")


def test_silent_clients_hold_no_thread(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--threads", "1"])
    silent = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(5)]
    try:
        response, elapsed = timed_notification(service, test_pki)
    finally:
        for s in silent:
            s.close()
    assert response.status_code == 202
    assert elapsed < 1.0


def test_a_stalled_handshake_is_cut_at_its_deadline(start_service, test_pki):
    service = start_service()
    stalled = socket.create_connection(("127.0.0.1", service.port))
    stalled.sendall(b"\x16\x03\x01\x02\x00")  # the header of a ClientHello record, then nothing
    stalled.settimeout(REQUEST_TIMEOUT + 5)
    started = time.monotonic()
    try:
        closed = stalled.recv(1) == b""
    except ConnectionResetError:
        closed = True
    elapsed = time.monotonic() - started
    stalled.close()
    assert closed
    assert REQUEST_TIMEOUT - 1 < elapsed < REQUEST_TIMEOUT + 1.5
    assert wait_for_log(service, f"no handshake within {REQUEST_TIMEOUT:.0f} s")


def test_failed_handshakes_are_closed_at_once(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--threads", "1"])
    # In TLS 1.3 the client finishes its side before the server refuses it; these
    # clients then neither read nor close, as a careless or hostile one would.
    refused = [tls_connect(service, client_context(test_pki, cert=None)) for _ in range(3)]
    response, elapsed = timed_notification(service, test_pki)
    for conn in refused:
        conn.close()

    assert response.status_code == 202
    # gunicorn's graceful close would linger up to 2 s for each of them, on the worker's main loop.
    assert elapsed < 1.0
    assert wait_for_log(service, "peer did not return a certificate", count=3)


def long_chain(directory, intermediates: int) -> tuple[str, str]:
    """A leaf under `intermediates` CAs, each issued by the one before: a chain as long as one likes."""
    issuer, chain = pki.issue("Chain root", ca=True), []
    for i in range(intermediates):
        issuer = pki.issue(f"Chain intermediate {i}", issuer=issuer, ca=True)
        chain.insert(0, issuer)
    cert, key = directory / f"chain-{intermediates}.pem", directory / f"chain-{intermediates}.key"
    pki.write_pair(pki.issue("quay.io", issuer=issuer, names=["quay.io"]), cert, key, *chain)
    return str(cert), str(key)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("intermediates, alert, words", [
    (190, "RECORD_OVERFLOW", f"the client sent more than {MAX_HANDSHAKE_BYTES} bytes without finishing its handshake"),
    (MAX_CHAIN_CERTIFICATES, "BAD_CERTIFICATE", "the client presented a certificate chain longer than "
                                                f"{MAX_CHAIN_CERTIFICATES} certificates"),
], ids=["bytes", "certificates"])
def test_a_chain_over_the_limits_is_refused_in_the_handshake_with_its_alert(start_service, test_pki, tmp_path,
                                                                           version, intermediates, alert, words):
    service = start_service(args=["--workers", "1"])
    ctx = client_context(test_pki, cert=None, maximum_version=version)
    ctx.load_cert_chain(*long_chain(tmp_path, intermediates))

    # In TLS 1.3 the client is done before the server decides: the alert is what it reads next.
    with pytest.raises(ssl.SSLError, match=alert), tls_connect(service, ctx) as conn:
        conn.recv(1)

    assert wait_for_log(service, words)
    assert service.log().count("TLS handshake with 127.0.0.1 failed") == 1


def test_a_big_request_sent_with_the_last_handshake_bytes_is_not_counted_as_handshake(start_service, test_pki):
    service = start_service(args=["--workers", "1"])
    body = b"x" * (MAX_HANDSHAKE_BYTES + 20000)
    with tls_connect(service, client_context(test_pki)) as conn:
        conn.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        responses = read_responses(conn, 1, timeout=5.0)

    assert [r.split(b"\r\n")[0] for r in responses] == [b"HTTP/1.1 405 METHOD NOT ALLOWED"]


def test_a_request_already_decrypted_inside_openssl_is_served_without_waiting(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--threads", "1"])
    # The end of the first request's body and the whole second request share the
    # last TLS record. gunicorn reads that body to the exact byte, so the second
    # request sits decrypted inside OpenSSL while the socket has nothing to read.
    first = (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 30000\r\n\r\n"
             + b"x" * 30000)
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with tls_connect(service, client_context(test_pki, maximum_version=ssl.TLSVersion.TLSv1_2)) as conn:
        started = time.monotonic()
        conn.sendall(first + second)
        responses = read_responses(conn, 2, timeout=4.0)
        elapsed = time.monotonic() - started

    assert [r.split(b"\r\n")[0] for r in responses] == [b"HTTP/1.1 405 METHOD NOT ALLOWED", b"HTTP/1.1 200 OK"]
    assert elapsed < 1.0


def test_a_request_followed_at_once_by_the_clients_half_close_is_answered(start_service, test_pki):
    # The client's last handshake bytes, its request and its FIN arrive together: the loop reads the
    # end of the stream right after the request, and the request is still served (the client reads on).
    service = start_service(args=["--workers", "1"])
    ctx = client_context(test_pki)
    answers = []
    for _ in range(10):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as raw:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            tls.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.sendall(outgoing.read())  # the client's Finished and the request
            raw.shutdown(socket.SHUT_WR)
            answer = b""
            while data := raw.recv(65536):
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    answer += tls.read(65536)
        answers.append(answer.split(b"\r\n")[0])

    assert answers == [b"HTTP/1.1 200 OK"] * 10


def test_gunicorn_ciphers_setting_is_applied(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"])
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}

    allowed = client_context(test_pki, **tls12)
    allowed.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    with tls_connect(service, allowed) as conn:
        assert conn.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"

    other = client_context(test_pki, **tls12)
    other.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
    with pytest.raises(ssl.SSLError):
        tls_connect(service, other)


def test_tls_below_1_2_is_refused(start_service, test_pki):
    service = start_service()
    old = client_context(test_pki, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_connect(service, old)
    assert wait_for_log(service, "unsupported protocol")


def test_the_tls_context_is_built_once_per_worker(start_service, test_pki):
    service = start_service(args=["--workers", "2"])
    for _ in range(20):
        send_like_quay(service.url + "/incoming/repo_push", sample_body("repo_push", "acme/widget"),
                       test_pki.pair("quay"), verify=test_pki.ca_file)
    assert service.log().count("TLS context built") == 2


def test_the_workers_threads_run_under_sched_batch(start_service):
    service = start_service(args=["--workers", "2"])

    def workers() -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", service.log())]

    def threads(pid: int) -> list[int]:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]

    # The first worker may answer before the second has booted: wait for both, and for their threads.
    assert wait_until(lambda: len(workers()) == 2 and all(len(threads(pid)) > 8 for pid in workers()), timeout=10)
    for pid in workers():  # the loop, the request threads, the deliverer
        assert {os.sched_getscheduler(tid) for tid in threads(pid)} == {os.SCHED_BATCH}


@pytest.fixture(scope="session")
def backend() -> str:
    """The transport does not depend on the outbox: SQLite is enough here."""
    return "sqlite"


def served_certificate(service, test_pki) -> str:
    with tls_connect(service, client_context(test_pki)) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).subject.rfc4514_string()


def test_a_renewed_certificate_is_served_without_restart_or_dropped_connections(start_service, test_pki, tmp_path):
    cert_file, key_file = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(test_pki.pair("server")[0], cert_file)
    shutil.copy(test_pki.pair("server")[1], key_file)
    service = start_service({"TLS_CERT_FILE": str(cert_file), "TLS_KEY_FILE": str(key_file)})
    assert served_certificate(service, test_pki) == "CN=localhost"
    kept = tls_connect(service, client_context(test_pki))
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_responses(kept, 1, timeout=5)

    # What certbot does: a new certificate, then its key; for a moment they do not match.
    renewed = pki.issue("renewed.localhost", issuer=test_pki.intermediate, names=["renewed.localhost", "127.0.0.1"])
    cert_file.write_bytes(renewed.cert_pem + test_pki.intermediate.cert_pem)
    time.sleep(1.5)
    assert served_certificate(service, test_pki) == "CN=localhost"
    key_file.write_bytes(renewed.key_pem)
    assert wait_until(lambda: served_certificate(service, test_pki) == "CN=renewed.localhost", timeout=5)

    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.split(b"\r\n")[0] for r in read_responses(kept, 1, timeout=5)] == [b"HTTP/1.1 200 OK"]
    kept.close()
    assert wait_for_log(service, "do not load as a pair, keeping the current ones")
    assert wait_for_log(service, "TLS certificate reloaded")


def test_gunicorn_certfile_and_keyfile_flags_win_over_the_environment(start_service, test_pki, tmp_path):
    flagged = pki.issue("flagged.localhost", issuer=test_pki.intermediate, names=["flagged.localhost", "127.0.0.1"])
    cert_file, key_file = tmp_path / "flagged.pem", tmp_path / "flagged.key"
    pki.write_pair(flagged, cert_file, key_file, test_pki.intermediate)

    service = start_service(args=["--workers", "1", "--certfile", str(cert_file), "--keyfile", str(key_file)])

    assert served_certificate(service, test_pki) == "CN=flagged.localhost"


def test_a_chunked_body_still_arriving_holds_no_thread(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--threads", "1"])
    # The event loop buffers chunked bodies too: this stalled one never reaches the only thread.
    stalled = tls_connect(service, client_context(test_pki))
    stalled.sendall(b"POST /incoming/build_success HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":")
    time.sleep(0.3)
    try:
        response, elapsed = timed_notification(service, test_pki)
    finally:
        stalled.close()
    assert response.status_code == 202
    assert elapsed < REQUEST_TIMEOUT - 1  # not queued behind the stalled body's deadline


def test_a_chunked_body_is_served_once_whole(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--threads", "1"])
    body = json.dumps(sample_body("build_success", "acme/widget")).encode()
    with tls_connect(service, client_context(test_pki)) as conn:
        conn.sendall(b"POST /incoming HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 100):
            piece = body[i:i + 100]
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")
        [head] = read_responses(conn, 1, timeout=5)
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 202 ACCEPTED"


PIPELINED = 2500  # each response is about 1.5 kB: more than the loopback buffers take (about 3 MB)


def test_a_client_that_does_not_read_its_answers_holds_no_thread(start_service, test_pki):
    service = start_service(args=["--workers", "1", "--threads", "1"])
    slow = tls_connect(service, client_context(test_pki))
    deaf = tls_connect(service, client_context(test_pki))
    for conn in (slow, deaf):
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINED)
    try:
        time.sleep(1.0)  # both have filled their buffers by now, and wait for room
        started = time.monotonic()
        health = requests.get(service.url + "/healthz", cert=test_pki.pair("quay"), verify=test_pki.ca_file,
                              timeout=5)
        health_seconds = time.monotonic() - started
        response, _ = timed_notification(service, test_pki)
        # The client that reads, late, gets every answer: the loop resumes its requests as room comes.
        responses = read_responses(slow, PIPELINED, timeout=30.0)
    finally:
        slow.close()
    assert health.status_code == 200
    assert health_seconds < 1.0
    assert response.status_code == 202
    assert len(responses) == PIPELINED
    assert {r.split(b"\r\n")[0] for r in responses} == {b"HTTP/1.1 200 OK"}
    # The one that never reads is closed at the request deadline.
    assert wait_for_log(service, "answers to 127.0.0.1 not read within 5 s: closed", timeout=REQUEST_TIMEOUT + 3)
    deaf.close()


@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", WHOLE),
    (b"GET /?100-continue HTTP/1.1\r\nX-Expect: 100-continue\r\nX: transfer-encoding\r\n\r\n", WHOLE),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", None),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde", WHOLE),
    (b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh \t: 5\r\n\r\nabc", None),
    (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", CONTINUE),
    (b"POST / HTTP/1.1\r\nEXPECT: 100-Continue\r\nContent-Length: 5\r\n\r\nabcde", WHOLE),
    (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", None),
    (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nabcde\r\n0\r\n\r\n", WHOLE),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: t\r\n\r\n", WHOLE),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", WHOLE),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n", CONTINUE),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY + 1), 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5" + b";" * 80, 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * 300, 431),
    (b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n", 400),
], ids=["headers incomplete", "no body", "the words in other places", "body incomplete", "body whole",
        "any case, blanks", "body too large", "two lengths", "length not a number", "100-continue",
        "100-continue with its body", "100-continue from HTTP/1.0", "100-continue too large", "chunk incomplete",
        "last chunk without the empty line", "chunked whole", "trailers", "codings then chunked",
        "chunked 100-continue", "chunk too large", "not chunk framing", "chunk line too long",
        "chunked not last", "length and chunked", "headers over the limit", "bare LF"])
def test_the_loop_knows_when_a_request_is_whole(data, expected):
    """Only a whole request goes to a thread; the loop refuses, with its status, one that never will be."""
    buffered = buffered_request(data, head_limit=256)
    assert (buffered.status if isinstance(buffered, Refusal) else buffered) == expected
