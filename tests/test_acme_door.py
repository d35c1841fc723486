"""The challenge door: a tls-alpn-01 validator gets the challenge certificate, everyone else the real one.

Real handshakes on loopback against TLSStream, TLS 1.2 and 1.3, with an RSA and an ECDSA serving key
(the challenge key is always ECDSA: the context is chosen before OpenSSL sees the hello, so the two
need not match).
"""

from __future__ import annotations

import hashlib
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from quay_dispatch.acme.challenge import ACME_IDENTIFIER
from quay_dispatch.acme.hello import Hello, read_hello
from quay_dispatch.acme.router import ChallengeRouter
from quay_dispatch.transport.tls_context import MAX_HANDSHAKE_BYTES, build_context
from testkit.door import DoorServer, constant
from testkit.pki import make_pki
from testkit.service import wait_until
from testkit.tls import alert_in, client_context

DOMAIN = "relay.example.test"
KEY_AUTHORIZATION = "token-123.thumbprint-456"
VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module", params=["ecdsa", "rsa"])
def pki(request, tmp_path_factory):
    new_key = (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)) if request.param == "rsa" \
        else None
    return make_pki(tmp_path_factory.mktemp(f"door-{request.param}"), new_key)


@pytest.fixture
def server(pki):
    cert, key = pki.pair("server")
    door_server = DoorServer(ChallengeRouter([DOMAIN], constant(build_context(cert, key, ssl.CERT_REQUIRED))))
    yield door_server
    door_server.close()


def validator_context(version) -> ssl.SSLContext:
    """What an ACME validator offers: acme-tls/1 alone, no client certificate, any server certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["acme-tls/1"])
    return ctx


def connect(server, ctx, name=DOMAIN):
    thread = server.serve(1)
    conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5), server_hostname=name)
    return conn, thread


@pytest.mark.parametrize("version", VERSIONS.values(), ids=VERSIONS.keys())
def test_a_validator_gets_the_challenge_certificate_without_being_asked_for_one(server, version):
    server.router.expect({DOMAIN: KEY_AUTHORIZATION})

    conn, thread = connect(server, validator_context(version))
    with conn:
        certificate = x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))
        negotiated = conn.selected_alpn_protocol()
        after = conn.recv(10)  # the server closes once the handshake is done
    thread.join(5)

    extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(KEY_AUTHORIZATION.encode()).digest()
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [DOMAIN]
    assert negotiated == "acme-tls/1"
    assert after == b""
    assert server.outcomes == [f"challenge answered for {DOMAIN}"]


@pytest.mark.parametrize("version", VERSIONS.values(), ids=VERSIONS.keys())
def test_an_ordinary_client_gets_the_real_certificate_while_a_challenge_is_pending(server, pki, version):
    server.router.expect({DOMAIN: KEY_AUTHORIZATION})
    ctx = client_context(pki, minimum_version=version, maximum_version=version)
    ctx.check_hostname = False

    conn, thread = connect(server, ctx)
    with conn:
        certificate = x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))
        answer = conn.recv(10)
    thread.join(5)

    assert certificate.subject.rfc4514_string() == "CN=localhost"
    assert answer == b"served"
    assert server.outcomes == ["served"]


@pytest.mark.parametrize("name, expected", [
    ("other.example.test", "refused: an acme-tls/1 connection for 'other.example.test', which is not one of "
                           "ACME_DOMAINS"),
    (DOMAIN, f"refused: an acme-tls/1 connection for {DOMAIN}, which has no pending challenge"),
])
def test_an_acme_tls_1_connection_nobody_expects_is_refused(server, name, expected):
    server.router.expect({"other.example.test": KEY_AUTHORIZATION})  # not configured: never answered

    with pytest.raises(ssl.SSLError, match="alert no application protocol"):
        connect(server, validator_context(ssl.TLSVersion.TLSv1_3), name=name)

    assert wait_until(lambda: server.outcomes == [expected], timeout=5), server.outcomes


@pytest.mark.parametrize("data, expected", [
    (b"", None),
    (b"\x16\x03\x01\x02", None),
    (b"GET / HTTP/1.1\r\n\r\n", Hello(None, ())),
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x99\x03", Hello(None, ())),  # a hello longer than its record
])
def test_the_hello_reader_waits_for_the_first_record_and_reads_junk_as_no_hello(data, expected):
    assert read_hello(data) == expected


def test_a_first_record_over_the_handshake_limit_gets_record_overflow_before_any_context(server):
    thread = server.serve(1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\xff\xff")  # a record of 64 KiB announced, before the door could read a hello
        answer = raw.recv(100)
    thread.join(5)

    assert alert_in(answer) == (2, 22)
    assert server.outcomes == [f"refused: the client sent more than {MAX_HANDSHAKE_BYTES} bytes without finishing "
                               "its handshake (a ClientHello or a certificate chain far larger than Quay's)"]
