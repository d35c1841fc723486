"""Does the challenge door cost a new connection anything? The service with its certificate from ACME beside the
same service with the same certificate from files, and nginx, measured as bench.compare measures.

    .venv/bin/python -m bench.acme_bench [--rounds 6] [--seconds 4]

With ACME_DOMAINS, each new connection's ClientHello is read in Python to choose its context
(quay_dispatch.acme.router) before OpenSSL sees it. The ACME service here finds its certificate
already in its store (the same pair the file service serves), so it orders nothing: what
differs is the door alone. Reported: the median of the rounds' acme/file CPU ratio per
new-connection request, with its range.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path

from bench.compare import Server, client_context, make_keys, ratios, rounds, start_baseline, start_ours
from quay_dispatch.acme import state
from quay_dispatch.outbox import open_outbox
from testkit.github import FakeGitHub
from testkit.service import Service, base_env

DOMAIN = "localhost"


def start_acme(keys, workdir: Path, stack: ExitStack) -> Server:
    """The service with ACME_DOMAINS, its store holding the file service's pair as ACME's certificate."""
    database_url = f"sqlite:///{workdir / 'outbox.sqlite3'}"
    outbox = open_outbox(database_url)
    outbox.migrate()
    cert, key = keys.pair("server")
    state.store_certificate(outbox, state.StoredCertificate(Path(cert).read_text(), Path(key).read_text(), (DOMAIN,),
                                                            time.time(), time.time() + 86400 * 365))
    github = stack.enter_context(closing(FakeGitHub()))
    env = base_env(keys, github, database_url) | {"ACME_DOMAINS": DOMAIN, "ACME_DIRECTORY": "https://127.0.0.1:9/dir"}
    del env["TLS_CERT_FILE"], env["TLS_KEY_FILE"]
    service = Service(env, ["--workers", "2"], workdir)
    stack.callback(service.stop)
    service.wait_ready(keys.pair("server"), keys.ca_file)
    return Server("acme", service.proc.pid, service.port, client_context(keys.ca_file, keys.pair("quay")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time of each server in each round")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="quay-bench-acme-"))
    keys = make_keys(base, "ecdsa")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        servers = []
        for name, start in (("file", lambda k, w, s: start_ours(k, w, s, name="file")), ("acme", start_acme),
                            ("nginx", lambda k, w, s: start_baseline("nginx", k, w, s))):
            (base / name).mkdir()
            servers.append(start(keys, base / name, stack))
        figures = {"new connection": rounds(servers, False, args)}
    for i, measured in enumerate(zip(*figures["new connection"].values(), strict=True)):
        print(f"round {i + 1}: " + ", ".join(f"{s.name} {r['cpu_ms']:.2f} ms" for s, r in zip(servers, measured,
                                                                                          strict=True)))
    for top, bottom in (("acme", "file"), ("file", "nginx"), ("acme", "nginx")):
        mid, low, high = ratios(figures, "new connection", top, bottom)
        print(f"CPU per new-connection request, {top}/{bottom}: {mid:.3f}x (rounds {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main()
