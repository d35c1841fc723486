"""Benchmark: Quay notifications per second over a new mutual-TLS connection each, and time to the 202.

Runs a real gunicorn (the project's configuration and TLS worker) on
127.0.0.1 with a loopback GitHub, and measures in the same run:

- baseline: GET /healthz, a new mTLS connection per request (the transport's floor);
- relay: POST /incoming as Quay sends it (new connection, its certificate,
  identity check, parse, route, durable commit to SQLite, 202).

Every loop is bounded in count and in time. Usage:
    .venv/bin/python -m bench.relay_bench [--requests 400] [--concurrency 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.compare import make_keys
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.github import FakeGitHub
from testkit.service import Service, base_env

MAX_SECONDS_PER_PHASE = 120.0


def run_phase(name: str, count: int, concurrency: int, call) -> dict:
    """Call `call()` `count` times from `concurrency` threads, within MAX_SECONDS_PER_PHASE."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + MAX_SECONDS_PER_PHASE

    def one(_):
        if time.monotonic() > deadline:
            return
        started = time.perf_counter()
        status = call()
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "name": name,
        "done": len(latencies),
        "statuses": statuses,
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="quay-bench-"))
    keys = make_keys(workdir, "ecdsa")
    github = FakeGitHub()
    env = base_env(keys, github, f"sqlite:///{workdir / 'outbox.sqlite3'}")
    service = Service(env, ["--workers", str(args.workers)], workdir)
    try:
        service.wait_ready(keys.pair("server"), keys.ca_file)

        def healthz():
            return requests.get(service.url + "/healthz", cert=keys.pair("quay"), verify=keys.ca_file,
                                timeout=10).status_code

        def incoming():
            body = sample_body("build_success", "acme/widget", build_id=str(uuid.uuid4()))
            return send_like_quay(service.url + "/incoming", body, keys.pair("quay"), verify=keys.ca_file).status_code

        run_phase("warm-up", 20, args.concurrency, healthz)
        results = [run_phase("baseline GET /healthz", args.requests, args.concurrency, healthz),
                   run_phase("relay POST /incoming", args.requests, args.concurrency, incoming)]
        delivered = len(github.wait_for(results[1]["statuses"].get(202, 0), timeout=60))
    finally:
        service.stop()
        github.close()

    print(f"workers={args.workers} concurrency={args.concurrency} requests={args.requests} "
          "(a new mutual-TLS connection per request)")
    for r in results:
        print(f"  {r['name']:<24} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
              f"statuses {r['statuses']}")
    base, relay = results
    print(f"  relay/baseline: throughput {relay['rps'] / base['rps']:.2f}x, "
          f"p50 {relay['p50_ms'] / base['p50_ms']:.2f}x, p99 {relay['p99_ms'] / base['p99_ms']:.2f}x")
    print(f"  dispatches GitHub received: {delivered} of {relay['statuses'].get(202, 0)} accepted")


if __name__ == "__main__":
    main()
