"""The three ways Quay can be authenticated: TLS (elsewhere), a trusted proxy's header, a token."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.client import PLAIN, pem_blocks, post_from
from testkit.credentials import INCOMING_TOKEN
from testkit.service import run_gunicorn

TOKEN = INCOMING_TOKEN


def test_token_mode_on_plain_http_behind_a_router(start_service, github):
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": TOKEN, "DEBUG": "true"})
    host = f"127.0.0.1:{service.port}"
    body = sample_body("build_success", "acme/widget")

    as_password = send_like_quay(f"http://quay:{TOKEN}@{host}/incoming", body, None)
    in_query = send_like_quay(f"http://{host}/incoming?token={TOKEN}", sample_body("build_success", "acme/widget"),
                              None)
    as_user_only = send_like_quay(f"http://{TOKEN}@{host}/incoming", body, None)
    missing = send_like_quay(f"http://{host}/incoming", body, None)

    assert (as_password.status_code, in_query.status_code) == (202, 202)
    # requests sends no credentials for a URL with a user name and no password.
    assert as_user_only.status_code == 401 and missing.status_code == 401
    assert TOKEN not in service.log()


def test_header_mode_believes_the_trusted_proxy_only(start_service, test_pki):
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.1"})
    chain = pem_blocks(test_pki.pair("quay")[0])
    forged = pem_blocks(test_pki.pair("self_signed")[0])
    nginx_style = {"X-SSL-Client-Cert": quote(b"".join(chain).decode())}

    proxied = post_from(service, "127.0.0.1", sample_body("build_success", "acme/widget"), nginx_style)
    from_elsewhere = post_from(service, "127.0.0.2", sample_body("build_success", "acme/widget"), nginx_style)
    forged_by_proxy = post_from(service, "127.0.0.1", sample_body("build_success", "acme/widget"),
                                {"X-SSL-Client-Cert": quote(forged[0].decode())})
    without_header = post_from(service, "127.0.0.1", sample_body("build_success", "acme/widget"), {})

    assert proxied[0] == 202
    assert from_elsewhere == (403, {"status": "error", "error": "127.0.0.2 is not a trusted proxy "
                                    "(FORWARDED_ALLOW_IPS): its X-SSL-Client-Cert header is not believed"})
    assert forged_by_proxy[0] == 403 and "self-signed" in forged_by_proxy[1]["error"]
    assert without_header[0] == 403 and "sent no X-SSL-Client-Cert header" in without_header[1]["error"]


@pytest.mark.parametrize("env", [{}, {"FORWARDED_ALLOW_IPS": "127.0.0.2"}], ids=["flag alone", "flag wins"])
def test_header_mode_trusts_the_proxy_named_by_gunicorns_flag(start_service, test_pki, env):
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": None} | env,
                            args=["--workers", "1", "--forwarded-allow-ips", "127.0.0.1"])
    proxied = {"X-SSL-Client-Cert": quote(b"".join(pem_blocks(test_pki.pair("quay")[0])).decode())}

    from_proxy = post_from(service, "127.0.0.1", sample_body("build_success", "acme/widget"), proxied)
    from_elsewhere = post_from(service, "127.0.0.2", sample_body("build_success", "acme/widget"), proxied)

    assert from_proxy[0] == 202
    assert from_elsewhere[0] == 403 and "127.0.0.2 is not a trusted proxy" in from_elsewhere[1]["error"]


def test_header_mode_with_a_leaf_alone_in_base64_der_and_intermediates_from_a_file(start_service, test_pki,
                                                                                  tmp_path):
    leaf, intermediate = pem_blocks(test_pki.pair("quay")[0])
    intermediates = tmp_path / "intermediates.pem"
    intermediates.write_bytes(intermediate)
    der = x509.load_pem_x509_certificate(leaf).public_bytes(Encoding.DER)
    haproxy_style = {"X-Client-Cert": base64.b64encode(der).decode()}
    overrides = PLAIN | {"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.0/8",
                         "CLIENT_CERT_HEADER": "X-Client-Cert"}

    without_file = start_service(overrides)
    refused = post_from(without_file, "127.0.0.1", sample_body("build_success", "acme/widget"), haproxy_style)
    without_file.stop()
    with_file = start_service(overrides | {"QUAY_INTERMEDIATES_FILE": str(intermediates)})
    accepted = post_from(with_file, "127.0.0.1", sample_body("build_success", "acme/widget"), haproxy_style)

    assert refused[0] == 403 and "does not chain to a trusted root" in refused[1]["error"]
    assert accepted[0] == 202


@pytest.mark.parametrize("env, args, words", [
    ({"CLIENT_CERT_SOURCE": "header"}, [], "CLIENT_CERT_SOURCE=header needs FORWARDED_ALLOW_IPS"),
    ({"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "*"}, [], "FORWARDED_ALLOW_IPS=* would accept"),
    ({"CLIENT_CERT_SOURCE": "header"}, ["--forwarded-allow-ips", "*"],
     "--forwarded-allow-ips=* would accept a forged client certificate header from anyone"),
    ({"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "10.0.0.7"}, ["--forwarded-allow-ips", "*"],
     "--forwarded-allow-ips=* would accept a forged client certificate header from anyone"),
    ({"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "127.0.0.1"}, ["--header-map", "dangerous"],
     "CLIENT_CERT_SOURCE=header needs gunicorn's --header-map drop or refuse, not dangerous: a client's own "
     "X_SSL_Client_Cert header would pass the proxy"),
    # gunicorn itself reads FORWARDED_ALLOW_IPS first, and says so.
    ({"CLIENT_CERT_SOURCE": "header", "FORWARDED_ALLOW_IPS": "proxy.local"}, [],
     "'proxy.local' does not appear to be an IPv4 or IPv6 network"),
])
def test_header_mode_refuses_to_start_without_a_named_proxy(env, args, words):
    result = run_gunicorn(env, *args)

    assert result.returncode != 0
    assert words in result.stderr
    if "=*" in words:  # the refused value is the one problem, not also "no proxy named"
        assert "needs FORWARDED_ALLOW_IPS" not in result.stderr


def test_health_needs_no_token_in_token_mode(start_service):
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": TOKEN})

    assert requests.get(service.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(service.url + "/readyz", timeout=5).json()["status"] == "ready"


@pytest.fixture(scope="session")
def backend() -> str:
    """What this module tests does not depend on the outbox's database: SQLite is enough."""
    return "sqlite"
