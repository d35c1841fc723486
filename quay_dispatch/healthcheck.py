"""Docker's HEALTHCHECK: `python -m quay_dispatch.healthcheck` exits 0 when the local /healthz answers 200."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import requests
from urllib3.exceptions import InsecureRequestWarning

from .config import ConfigError, Settings, environment_settings
from .delivery.github import innermost
from .tools import pki

TIMEOUT = 5.0  # seconds; shorter than the HEALTHCHECK's --timeout, so that this one explains itself


def check(settings: Settings) -> str | None:
    """Why the service on 127.0.0.1:$PORT is not healthy, or None when /healthz answers 200."""
    if settings.tls_cert_file:
        # The TLS layer requires a client certificate and any will do for /healthz:
        # the server's own pair is the one certificate sure to be at hand.
        return _get(f"https://127.0.0.1:{settings.port}/healthz",
                    (settings.tls_cert_file, settings.tls_key_file or settings.tls_cert_file))
    if settings.acme_domains:  # no file: a throwaway pair, made for this one call
        with tempfile.TemporaryDirectory(prefix="quay-dispatch-healthcheck-") as directory:
            cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
            pki.write_pair(pki.issue("quay-dispatch healthcheck", names=["localhost"], days=1), cert, key)
            return _get(f"https://127.0.0.1:{settings.port}/healthz", (str(cert), str(key)))
    return _get(f"http://127.0.0.1:{settings.port}/healthz", None)


def _get(url: str, cert: tuple[str, str] | None) -> str | None:
    try:
        with warnings.catch_warnings():
            # Not verifying is safe only because this is loopback to this very process,
            # and nothing secret is sent; its certificate names the public host anyway.
            warnings.simplefilter("ignore", InsecureRequestWarning)
            response = requests.get(url, cert=cert, verify=False, timeout=TIMEOUT)
    except requests.Timeout:
        return f"no answer from {url} within {TIMEOUT:g} s"
    except OSError as exc:  # requests' own errors, and a certificate file that cannot be read
        return f"{url}: {innermost(exc)}"
    if response.status_code != 200:
        return f"{url} answered {response.status_code}"
    return None


def main() -> int:
    """Check once; say why on stderr, in one line, when unhealthy."""
    try:
        problem = check(environment_settings())
    except ConfigError as exc:
        problem = " ".join(line.strip() for line in str(exc).splitlines())
    if problem:
        print(f"quay-dispatch healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
