"""Identity: the chain check, without sockets."""

import warnings
from pathlib import Path

import pytest

from quay_dispatch.identity import IdentityError, QuayVerifier, load_roots


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
