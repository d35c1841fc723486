"""Benchmark: durable acceptance under concurrency, and recovery after a GitHub outage.

Runs a real gunicorn (2 workers, the project's TLS worker) on 127.0.0.1 and a
loopback GitHub, on SQLite or on a private PostgreSQL server, and measures in
the same run:

- baseline: GET /healthz from 8 concurrent senders, a new mTLS connection each;
- accept: 200 build_success notifications from 8 concurrent senders while
  GitHub answers 503 — the time to the 202 includes the durable commit;
- recovery: GitHub comes back; the time until its last successful dispatch,
  and whether any build was dispatched twice.

Delivery is paced under GitHub's 80 writes a minute (attempts during the
outage count), so the recovery of a 200-event backlog takes minutes by design.
Every loop is bounded in count and in time. Usage:
    .venv/bin/python -m bench.delivery_bench [--database sqlite|postgresql] [--events 200]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

from bench.compare import make_keys
from bench.relay_bench import run_phase
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.github import FakeGitHub
from testkit.postgres import create_database, find_initdb, private_postgresql
from testkit.service import Service, base_env

RECOVERY_LIMIT = 600.0  # seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="quay-bench-"))
    keys = make_keys(workdir, "ecdsa")
    github = FakeGitHub()
    with contextlib.ExitStack() as stack:
        if args.database == "postgresql":
            database_url = create_database(stack.enter_context(private_postgresql(find_initdb())))
        else:
            database_url = f"sqlite:///{workdir / 'outbox.sqlite3'}"
        service = Service(base_env(keys, github, database_url), ["--workers", "2"], workdir)
        stack.callback(service.stop)
        service.wait_ready(keys.pair("server"), keys.ca_file)
        build_ids = []

        def healthz():
            return requests.get(service.url + "/healthz", cert=keys.pair("quay"), verify=keys.ca_file,
                                timeout=10).status_code

        def incoming():
            build_id = str(uuid.uuid4())
            build_ids.append(build_id)
            body = sample_body("build_success", "acme/widget", build_id=build_id)
            return send_like_quay(service.url + "/incoming", body, keys.pair("quay"), verify=keys.ca_file).status_code

        run_phase("warm-up", 20, args.concurrency, healthz)
        baseline = run_phase("baseline GET /healthz", args.events, args.concurrency, healthz)
        github.answer(503, {"message": "outage"}, times=1_000_000)
        accepted = run_phase("accept during outage", args.events, args.concurrency, incoming)
        time.sleep(2)
        github.script.clear()
        recovered = time.monotonic()
        deadline = recovered + RECOVERY_LIMIT

        def successes() -> Counter:
            return Counter(r.json()["client_payload"]["build_id"] for r in list(github.requests) if r.status == 204)

        while len(successes()) < len(build_ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        recovery = time.monotonic() - recovered
        sent = successes()

    github.close()
    print(f"database={args.database} events={args.events} concurrency={args.concurrency} workers=2")
    for r in (baseline, accepted):
        print(f"  {r['name']:<24} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
              f"statuses {r['statuses']}")
    print(f"  accept/baseline: p50 {accepted['p50_ms'] / baseline['p50_ms']:.2f}x, "
          f"p99 {accepted['p99_ms'] / baseline['p99_ms']:.2f}x")
    print(f"  recovery: {len(sent)} of {len(build_ids)} delivered {recovery:.1f} s after GitHub came back; "
          f"dispatched twice: {sum(1 for n in sent.values() if n > 1)}")


if __name__ == "__main__":
    main()
