"""The test PKI: a root and an intermediate like a public CA's, Quay's genuine chain, and forgeries of it."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from quay_dispatch.tools import pki


@dataclass
class PKI:
    """Certificates made for the tests, written under `dir`."""

    dir: Path
    paths: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (chain file, key file)
    issued: dict[str, pki.Issued] = field(default_factory=dict)  # name -> the leaf, to issue another with its key
    ca_file: str = ""
    intermediate: pki.Issued | None = None  # to issue more certificates in a test

    def add(self, name: str, leaf: pki.Issued, *chain: pki.Issued) -> None:
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        pki.write_pair(leaf, cert, key, *chain)
        self.paths[name] = (str(cert), str(key))
        self.issued[name] = leaf

    def pair(self, name: str) -> tuple[str, str]:
        return self.paths[name]


def make_pki(directory: Path, new_key: Callable[[], object] | None = None) -> PKI:
    """The test PKI in `directory`; every key of the genuine chain from `new_key` (default: P-256).

    server: the service's own certificate (localhost, 127.0.0.1, 127.0.0.2). quay: what Quay presents
    today, serverAuth only, issued through the intermediate. The rest are what a forger or
    a mistake presents: the leaf alone, self-signed, another root, expired, another host,
    a wildcard only, clientAuth only.
    """
    def issue(*args, **kwargs) -> pki.Issued:
        return pki.issue(*args, **kwargs, key=new_key() if new_key else None)

    store = PKI(directory)
    root = issue("Test Root CA", ca=True, days=3650)
    intermediate = issue("Test Intermediate CA", issuer=root, ca=True, days=3650)
    other_root = pki.issue("Other Root CA", ca=True, days=3650)
    store.intermediate = intermediate
    store.ca_file = str(directory / "ca.pem")
    Path(store.ca_file).write_bytes(root.cert_pem)
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    # 127.0.0.2: the relay as a loopback Quay calls it (Quay refuses a webhook to localhost or 127.0.0.1)
    server_names = ["localhost", "127.0.0.1", "127.0.0.2"]
    store.add("server", issue("localhost", issuer=intermediate, names=server_names), intermediate)
    store.add("quay", issue("quay.io", issuer=intermediate, names=["quay.io", "*.quay.io"]), intermediate)
    store.add("quay_leaf_only", pki.issue("quay.io", issuer=intermediate, names=["quay.io"]))
    store.add("self_signed", pki.issue("quay.io", names=["quay.io", "*.quay.io"]))
    store.add("other_root", pki.issue("quay.io", issuer=other_root, names=["quay.io"]), other_root)
    store.add("expired", pki.issue("quay.io", issuer=intermediate, names=["quay.io"], not_before=long_ago, days=90),
              intermediate)
    store.add("other_host", pki.issue("evil.example", issuer=intermediate, names=["evil.example"]), intermediate)
    store.add("wildcard_only", pki.issue("*.quay.io", issuer=intermediate, names=["*.quay.io"]), intermediate)
    store.add("client_auth_only", pki.issue("quay.io", issuer=intermediate, names=["quay.io"],
                                            eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), intermediate)
    return store
