"""TLS clients for the tests: a context with a test PKI's certificate, a raw connection, responses read off it."""

from __future__ import annotations

import socket
import ssl
import time


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
