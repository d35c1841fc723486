"""Identity: the chain check, without sockets."""

import warnings
from pathlib import Path

import pytest

from quay_dispatch.tools import pki
from quay_dispatch.transport.identity import IdentityError, QuayVerifier, load_roots


def chain_of(test_pki, name):
    pem = Path(test_pki.pair(name)[0]).read_text()
    return [block + "-----END CERTIFICATE-----\n" for block in pem.split("-----END CERTIFICATE-----\n") if block]


def test_genuine_chain_passes_for_any_configured_hostname(test_pki):
    verifier = QuayVerifier(("quay.example.com", "quay.io"), load_roots(test_pki.ca_file))

    assert verifier.verify(chain_of(test_pki, "quay")).hostname == "quay.io"


def test_leaf_for_another_host_names_its_names_and_the_expected_ones(test_pki):
    verifier = QuayVerifier(("quay.io",), load_roots(test_pki.ca_file))

    with pytest.raises(IdentityError) as raised:
        verifier.verify(chain_of(test_pki, "other_host"))

    assert str(raised.value) == (
        "client certificate CN=evil.example (DNS names: evil.example) is not a valid certificate for quay.io: "
        "none of its names matches"
    )


@pytest.mark.parametrize("hostname, name, names_quay", [
    ("quay.io", "other_root", True),  # Quay's certificate from a CA QUAY_CA_FILE does not hold: worth an alert
    ("quay.io", "expired", True),
    ("quay.io", "self_signed", True),
    ("registry.quay.io", "self_signed", True),  # as *.quay.io
    ("quay.io", "wildcard_only", False),  # *.quay.io does not cover quay.io itself
    ("quay.io", "other_host", False),  # somebody else on the internet: not worth one
])
def test_a_refusal_says_whether_the_certificate_names_quay(test_pki, hostname, name, names_quay):
    verifier = QuayVerifier((hostname,), load_roots(test_pki.ca_file))

    for _ in range(2):  # the second verdict comes from the cache, and says the same
        with pytest.raises(IdentityError) as raised:
            verifier.verify(chain_of(test_pki, name))
        assert raised.value.names_quay is names_quay


def test_garbage_is_refused_not_crashed_on(test_pki):
    verifier = QuayVerifier(("quay.io",), load_roots(test_pki.ca_file))

    for chain in ([], ["not a certificate"], ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]):
        with pytest.raises(IdentityError):
            verifier.verify(chain)


def test_mozilla_bundle_loads_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roots = load_roots(None)

    assert len(roots) > 100
    # GoDaddy's and Starfield's G2 roots (serial number 0) are kept: much of the web chains to them.
    assert any("Starfield Services Root Certificate Authority - G2" in r.subject.rfc4514_string() for r in roots)


def test_verdicts_are_cached_per_chain(test_pki, monkeypatch):
    verifier = QuayVerifier(("quay.io",), load_roots(test_pki.ca_file))
    calls = []
    original = verifier._verify
    monkeypatch.setattr(verifier, "_verify", lambda chain: calls.append(1) or original(chain))
    genuine, forged = chain_of(test_pki, "quay"), chain_of(test_pki, "self_signed")

    for _ in range(3):
        assert verifier.verify(genuine).hostname == "quay.io"
        with pytest.raises(IdentityError, match="self-signed"):
            verifier.verify(forged)

    assert len(calls) == 2


def test_names_a_forger_chose_cannot_start_a_line_or_reach_a_terminal(test_pki):
    forged_line = "x\n2026-12-02 00:43:00,000 INFO [quay_dispatch.delivery] delivery 1 delivered, GitHub 204"
    forged = pki.issue("evil\x1b[2J.example", names=[forged_line])
    verifier = QuayVerifier(("quay.io",), load_roots(test_pki.ca_file))

    with pytest.raises(IdentityError) as raised:
        verifier.verify([forged.cert_pem])

    message = str(raised.value)
    assert "\n" not in message and "\x1b" not in message
    assert "x\\n2026-12-02" in message and "evil\\x1b[2J.example" in message


def test_a_host_name_cryptography_cannot_check_stops_the_start(test_pki):
    with pytest.raises(ValueError):
        QuayVerifier(("*.quay.io",), load_roots(test_pki.ca_file))


def test_whatever_the_verification_raises_is_a_refusal(test_pki, monkeypatch):
    verifier = QuayVerifier(("quay.io",), load_roots(test_pki.ca_file))

    def broken(hostname, now):
        raise ValueError("invalid domain name")
    monkeypatch.setattr(verifier, "_verifier", broken)

    with pytest.raises(IdentityError, match=r"could not be verified \(ValueError: invalid domain name\)"):
        verifier.verify(chain_of(test_pki, "quay"))
