"""`make bench`, part two: what a refused client costs the server, per connection.

A plain forged certificate (self-signed, a fresh one each time) against a chain of a
fresh leaf under 190 intermediates (about 80 kB, under OpenSSL's own 100 kB limit),
both sent by 4 clients to the service on 127.0.0.1 with 1 worker. Server CPU
milliseconds per connection, from /proc; the ratio is the figure (DESIGN.md: a chain
over the cap costs about what a forged certificate costs, at most 3x).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

from bench.compare import cpu_seconds, make_keys, process_tree
from quay_dispatch.tools import pki
from testkit.github import FakeGitHub
from testkit.service import Service, base_env

CLIENTS = 4
INTERMEDIATES = 190


def forged_pairs(directory: Path, count: int, intermediates: int) -> list[tuple[str, str]]:
    """`count` certificate files: a fresh leaf each, self-signed or under the same long chain."""
    chain, issuer = [], pki.issue("Bench chain root", ca=True)
    for i in range(intermediates):
        issuer = pki.issue(f"Bench intermediate {i}", issuer=issuer, ca=True)
        chain.insert(0, issuer)
    pairs = []
    for n in range(count):
        leaf = pki.issue("quay.io", issuer=issuer if intermediates else None, names=["quay.io"])
        cert, key = directory / f"{intermediates}-{n}.pem", directory / f"{intermediates}-{n}.key"
        pki.write_pair(leaf, cert, key, *chain)
        pairs.append((str(cert), str(key)))
    return pairs


def attempt(port: int, ca_file: str, pair: tuple[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.load_cert_chain(*pair)
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(1024)
    except (OSError, ssl.SSLError):
        pass


def cost(service: Service, ca_file: str, pairs: list[tuple[str, str]]) -> float:
    """Server CPU ms per connection for `pairs`, sent by CLIENTS threads, each pair once."""
    pids = process_tree(service.proc.pid)
    queue, lock = list(pairs), threading.Lock()

    def client():
        while True:
            with lock:
                if not queue:
                    return
                pair = queue.pop()
            attempt(service.port, ca_file, pair)

    before = cpu_seconds(pids)
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return (cpu_seconds(pids) - before) * 1000 / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=150, help="connections of each kind, per run")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="quay-bench-chain-"))
    keys = make_keys(base, "ecdsa")
    plain = forged_pairs(base, args.connections * 2, 0)
    chained = forged_pairs(base, args.connections * 2, INTERMEDIATES)
    github = FakeGitHub()
    service = Service(base_env(keys, github, f"sqlite:///{base / 'outbox.sqlite3'}"), ["--workers", "1"], base)
    try:
        service.wait_ready(keys.pair("server"), keys.ca_file)
        time.sleep(0.5)
        half = args.connections
        # Twice each, interleaved; the better of the two runs of each is kept (the VM's steal swings).
        forged = min(cost(service, keys.ca_file, plain[:half]), cost(service, keys.ca_file, plain[half:]))
        long = min(cost(service, keys.ca_file, chained[:half]), cost(service, keys.ca_file, chained[half:]))
        size = len(Path(chained[0][0]).read_bytes())
    finally:
        service.stop()
        github.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n== refused clients, 1 worker, {CLIENTS} clients, {args.connections} connections each, twice ==")
    print(f"plain forged certificate:           {forged:6.2f} ms server CPU per connection")
    print(f"leaf + {INTERMEDIATES} intermediates ({size // 1024} kB PEM): {long:6.2f} ms server CPU per connection")
    print(f"ratio: {long / forged:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
