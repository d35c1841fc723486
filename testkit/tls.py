"""TLS clients for the tests: a context with a test PKI's certificate, a raw connection, responses read off it;
records no TLS library sends (a padded ClientHello, tlslite-ng's), and the alerts they get."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path


def client_context(test_pki, cert="quay", **kwargs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=test_pki.ca_file)
    for name, value in kwargs.items():
        setattr(ctx, name, value)
    if cert:
        ctx.load_cert_chain(*test_pki.pair(cert))
    return ctx


def tls_connect(service, ctx) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_responses(conn: ssl.SSLSocket, count: int, timeout: float) -> list[bytes]:
    """Read until `count` complete HTTP responses (with Content-Length) arrived, or the timeout."""
    conn.settimeout(timeout)
    data, responses = b"", []
    deadline = time.monotonic() + timeout
    while len(responses) < count and time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            if len(rest) < length:
                break
            responses.append(head)
            data = rest[length:]
    return responses


def padded_client_hello(padding: int) -> bytes:
    """Python's own TLS 1.3 ClientHello with a padding extension of `padding` bytes, as the TLS records a client
    sends: a ClientHello as large as one likes."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        ctx.wrap_bio(ssl.MemoryBIO(), outgoing).do_handshake()
    body = outgoing.read()[5 + 4:]  # past the record's header and the handshake message's
    # version, random, session id, cipher suites, compression methods, then the extensions
    at = 2 + 32
    at += 1 + body[at]
    at += 2 + int.from_bytes(body[at:at + 2], "big")
    at += 1 + body[at]
    extensions = body[at + 2:] + b"\x00\x15" + padding.to_bytes(2, "big") + bytes(padding)
    body = body[:at] + len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    fragments = [message[i:i + 16384] for i in range(0, len(message), 16384)]
    return b"".join(b"\x16\x03\x01" + len(fragment).to_bytes(2, "big") + fragment for fragment in fragments)


def alert_in(data: bytes) -> tuple[int, int] | None:
    """(level, description) of a plaintext alert record at the start of what a server sent, else None."""
    if len(data) >= 7 and data[0] == 0x15 and data[3:5] == b"\x00\x02":
        return data[5], data[6]
    return None


def tlslite_client(service, test_pki, tls_version=(3, 4)):
    """A tlslite-ng connection, handshake done with Quay's certificate: a client that can then send records no
    TLS library would (tlsfuzzer's own)."""
    from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey

    cert, key = test_pki.pair("quay")
    chain = X509CertChain()
    chain.parsePemList(Path(cert).read_text())
    settings = HandshakeSettings()
    settings.maxVersion = tls_version
    settings.certificate_compression_send = settings.certificate_compression_receive = []  # OpenSSL would refuse
    conn = TLSConnection(socket.create_connection(("127.0.0.1", service.port), timeout=5))
    conn.handshakeClientCert(chain, parsePEMKey(Path(key).read_text(), private=True, implementations=["python"]),
                             settings=settings)
    return conn


def send_record(conn, content_type: int, payload: bytes) -> None:
    """One record of `content_type`, encrypted as the connection stands, whatever it holds."""
    from tlslite.messages import Message

    for _ in conn._sendMsg(Message(content_type, bytearray(payload)), randomizeFirstBlock=False):
        pass


def last_word(conn) -> str:
    """How a tlslite connection ended: "fatal <alert>", "warning <alert>", or "closed without an alert"."""
    from tlslite.constants import AlertDescription, AlertLevel
    from tlslite.errors import TLSAbruptCloseError, TLSRemoteAlert

    try:
        while conn.read(max=65536):
            pass
    except TLSRemoteAlert as alert:
        return f"{AlertLevel.toRepr(alert.level)} {AlertDescription.toRepr(alert.description)}"
    except TLSAbruptCloseError:
        pass
    return "closed without an alert"
