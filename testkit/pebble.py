"""Let's Encrypt's test CA on loopback: Debian's pebble, with pebble-challtestsrv as its DNS server.

pebble with -dnsserver ignores /etc/hosts: challtestsrv answers every A query with 127.0.0.1
(and no AAAA: its default would be ::1). The validator connects for tls-alpn-01 to the port
pebble's config names (tlsPort): the service's own. pebble makes a new CA at every start; its
root is at the management port's /roots/0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import requests
import requests.adapters

from testkit.service import ROOT, LoggedProcess, free_ports, wait_until

DOMAIN = "relay.quay-dispatch.test"


def pebble_missing() -> str | None:
    """Why pebble cannot run here, or None."""
    if not (shutil.which("pebble") and shutil.which("pebble-challtestsrv")):
        return "pebble is not installed: `make test` installs it (Debian's pebble) when run as root"
    return None


class Pebble:
    """pebble and its DNS server, for one test: orders are counted in its log."""

    def __init__(self, workdir: Path, cert: str, key: str, ca_file: str, tls_port: int, nonce_reject: int = 0,
                 eab: dict[str, str] | None = None):
        """`eab`: the external account binding keys it requires (key id -> base64url HMAC key), if any."""
        self.ca_file = ca_file  # what signs pebble's own HTTPS certificate (ACME_CA_FILE)
        # All different, and none the service's (tls_port): a clash makes pebble or its DNS fail to start.
        self.port, self.management, dns, dns_management, http_port = free_ports(5, taken=(tls_port,))
        config = workdir / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": cert, "privateKey": key, "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": bool(eab), "externalAccountMACKeys": eab or {},
        }}))
        self.dns = LoggedProcess("challtestsrv", [
            "pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{dns_management}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        ], ROOT, workdir / "challtestsrv.log")
        env = {"PATH": os.environ["PATH"], "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0",
               "PEBBLE_WFE_NONCEREJECT": str(nonce_reject)}
        self.process = LoggedProcess("pebble", ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
                                     ROOT, workdir / "pebble.log", env=env)
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        if not wait_until(self._answers, timeout=15):
            self.stop()
            raise AssertionError(f"pebble did not start:\n{self.process.log()}")

    def _answers(self) -> bool:
        try:
            return requests.get(self.directory, verify=self.ca_file, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def root_pem(self) -> str:
        """The root of this run's CA."""
        return requests.get(f"https://127.0.0.1:{self.management}/roots/0", verify=self.ca_file, timeout=5).text

    def orders(self) -> int:
        """Orders placed so far."""
        return self.process.log().count("Added order ")

    def stop(self) -> None:
        self.process.stop()
        self.dns.stop()


class _NamedHost(requests.adapters.HTTPAdapter):
    """Connects to the URL's address, but asks for and verifies `name` (SNI and the certificate), as a client that
    resolved `name` to that address would."""

    def __init__(self, name: str):
        self.name = name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, server_hostname=self.name, **kwargs)


def session_for(name: str) -> requests.Session:
    """A requests session that reaches https://127.0.0.1:PORT as `name`."""
    session = requests.Session()
    session.mount("https://", _NamedHost(name))
    return session
