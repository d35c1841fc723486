"""What a caller sends the service: a notification as Quay sends it (timed, if need be), a POST from a chosen
loopback address."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from quay_dispatch.tools.sample import sample_body, send_like_quay

PLAIN = {"TLS_CERT_FILE": None, "TLS_KEY_FILE": None}  # a service without TLS: behind a proxy or a router


def post(service, test_pki, body, event=None, cert="quay", **kwargs):
    url = service.url + ("/incoming" if event is None else f"/incoming/{event}")
    return send_like_quay(url, body, test_pki.pair(cert) if cert else None, verify=test_pki.ca_file, **kwargs)


def pem_blocks(path: str) -> list[bytes]:
    return [c.public_bytes(Encoding.PEM) for c in x509.load_pem_x509_certificates(Path(path).read_bytes())]


def post_from(service, source: str, body: dict, headers: dict) -> tuple[int, dict]:
    """POST from a chosen loopback source address, as a proxy (or a forger) on that address would."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("POST", "/incoming", body=json.dumps(body),
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def timed_notification(service, test_pki, build_id: str | None = None):
    """A build_success sent as Quay sends it: its response, and the seconds it took."""
    started = time.monotonic()
    response = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget", build_id=build_id),
                              test_pki.pair("quay"), verify=test_pki.ca_file)
    return response, time.monotonic() - started
