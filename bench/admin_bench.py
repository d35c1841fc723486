"""What the operator's page costs with a full store: 100 000 deliveries and 300 000 attempts, on SQLite and on
PostgreSQL, each page's server time beside /healthz on the same listener (the baseline of the same run).

    .venv/bin/python -m bench.admin_bench [--deliveries 100000] [--requests 30]

Server time is what the service logs for the request (from the first byte of the request to the answer);
each figure is the median of --requests requests, with the 95th percentile. Loopback only, bounded in count.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack, closing
from pathlib import Path

import requests

from bench.compare import make_keys
from quay_dispatch.outbox import open_outbox
from testkit.github import FakeGitHub
from testkit.postgres import create_database, find_initdb, private_postgresql
from testkit.service import Service, base_env, free_port, wait_until

STATUSES = ["delivered"] * 90 + ["failed"] * 5 + ["expired"] * 3 + ["pending"] * 2
DELIVERY = """INSERT INTO deliveries (created_at, queued_at, updated_at, event, quay_repository, build_id, host, target,
    kind, event_type, path, body, dedup_key, status, attempts, next_attempt_at, last_status, last_error,
    last_request_id, branch, tags, commit_sha, notification) VALUES
    (%s, %s, %s, 'build_success', %s, %s, 'api.github.com', %s, 'repository_dispatch', 'QUAY_BUILD_SUCCESS', %s, %s,
     %s, %s, 3, %s, %s, %s, %s, 'main', 'latest', %s, %s)"""
ATTEMPT = """INSERT INTO attempts (delivery_id, host, at, http_status, request_id, error, result, duration_ms)
    VALUES (%s, 'api.github.com', %s, %s, %s, %s, %s, %s)"""


def rows(count: int, rng: random.Random):
    """The deliveries (over the last 14 days) and their three attempts each."""
    now = time.time()
    deliveries, attempts = [], []
    for i in range(1, count + 1):
        at = now - 14 * 86400 * (count - i) / count
        status = rng.choice(STATUSES)
        delivered = status == "delivered"
        repository, target = f"acme/app-{i % 200}", f"acme-gh/app-{i % 50}"
        body = json.dumps({"event_type": "QUAY_BUILD_SUCCESS", "client_payload": {"repository": repository}})
        deliveries.append((at, at, at + 60, repository, str(uuid.UUID(int=rng.getrandbits(128))), target,
                           f"/repos/{target}/dispatches", body, f"key-{i}", status, at + 120,
                           204 if delivered else 502, None if delivered else "GitHub answered 502",
                           f"REQ-{i}", f"{rng.getrandbits(160):040x}", json.dumps({"build_id": str(i)})))
        for n, result in enumerate(("retry", "retry", "delivered" if status == "delivered" else "failed")):
            attempts.append((i, at + n * 30, 502 if result == "retry" else 204, f"REQ-{i}-{n}",
                             "GitHub answered 502" if result != "delivered" else None, result, 100 + n))
    return deliveries, attempts


def fill(database_url: str, count: int) -> None:
    """The store at `database_url`, migrated, then filled in one transaction per table."""
    open_outbox(database_url).migrate()
    deliveries, attempts = rows(count, random.Random(42))
    if database_url.startswith("sqlite"):
        import sqlite3

        with closing(sqlite3.connect(database_url[len("sqlite:///"):])) as conn, conn:
            conn.executemany(DELIVERY.replace("%s", "?"), deliveries)
            conn.executemany(ATTEMPT.replace("%s", "?"), attempts)
    else:
        import psycopg

        with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
            cursor.executemany(DELIVERY, deliveries)
            cursor.executemany(ATTEMPT, attempts)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # what autovacuum does after a bulk load


def server_times(service: Service, url: str, ca_file: str, path: str, count: int) -> list[float]:
    """The service's own duration (ms) of `count` GETs of `path`, from its log."""
    before = len(service.log())
    for _ in range(count):
        response = requests.get(url + path, timeout=30, verify=ca_file)
        assert response.status_code == 200, (path, response.status_code)
    pattern = re.compile(rf"GET {re.escape(path.split('?')[0])} 200 \S+ ([\d.]+)ms")
    wait_until(lambda: len(pattern.findall(service.log()[before:])) >= count, timeout=5)
    return [float(ms) for ms in pattern.findall(service.log()[before:])][:count]


def measure(name: str, database_url: str, keys, workdir: Path, args) -> None:
    fill(database_url, args.deliveries)
    port = free_port()
    with closing(FakeGitHub()) as github:
        env = base_env(keys, github, database_url) | {"ADMIN_BIND": f"127.0.0.1:{port}", "DRY_RUN": "1"}
        service = Service(env, ["--workers", "2"], workdir)
        try:
            service.wait_ready(keys.pair("server"), keys.ca_file, timeout=60)
            url = f"https://127.0.0.1:{port}"
            commit = re.search(r"<code>([0-9a-f]{40})</code>", requests.get(url + "/deliveries/77", timeout=30,
                                                                             verify=keys.ca_file).text)[1]
            paths = ["/healthz", "/deliveries", "/deliveries?status=failed", "/deliveries?target=acme-gh/app-7",
                     f"/deliveries?q={commit[:7]}", f"/deliveries?before={args.deliveries // 2}",
                     f"/deliveries/{args.deliveries // 3}", "/"]
            base = statistics.median(server_times(service, url, keys.ca_file, "/healthz", args.requests))
            print(f"{name}: {args.deliveries} deliveries, {3 * args.deliveries} attempts")
            for path in paths:
                times = sorted(server_times(service, url, keys.ca_file, path, args.requests))
                p95 = times[int(0.95 * (len(times) - 1))]
                print(f"  {path:45} median {statistics.median(times):6.1f} ms  p95 {p95:6.1f} ms  "
                      f"({statistics.median(times) / base:5.1f}x /healthz)")
        finally:
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="quay-bench-admin-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        keys = make_keys(base, "ecdsa")
        (base / "sqlite").mkdir()
        measure("SQLite", f"sqlite:///{base / 'sqlite' / 'outbox.sqlite3'}", keys, base / "sqlite", args)
        initdb = find_initdb()
        if initdb:
            server = stack.enter_context(private_postgresql(initdb))
            (base / "postgresql").mkdir()
            measure("PostgreSQL", create_database(server), keys, base / "postgresql", args)
        else:
            print("PostgreSQL: not installed, not measured")


if __name__ == "__main__":
    main()
