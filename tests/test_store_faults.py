"""The request path under store faults: a locked SQLite, a frozen PostgreSQL, a full disk, GitHub down too.

Quay disables a notification after 3 failed calls: whatever the relay can handle must
reach Quay as a 2xx within its 10 s (8 s here, the contract), every event must reach
GitHub exactly once, and the health check must answer within 1 s throughout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from testkit.client import timed_notification
from testkit.faults import FreezableProxy, HealthProbe, assert_healthy, fill_disk, hold_sqlite_lock, small_tmpfs
from testkit.service import deliveries, wait_until

ANSWER_WITHIN = 8.0  # seconds: what DESIGN.md promises Quay


def notify_all(service, test_pki, build_ids: list[str]) -> list[tuple[requests.Response, float]]:
    """Concurrent notifications, as Quay's workers send them."""
    with ThreadPoolExecutor(len(build_ids)) as pool:
        return list(pool.map(lambda b: timed_notification(service, test_pki, b), build_ids))


def delivered_builds(service) -> set[str]:
    return {json.loads(d["body"])["client_payload"]["build_id"] for d in deliveries(service, "--limit", "100")
            if d["status"] == "delivered"}


def sent_builds(github) -> list[str]:
    return [r.json()["client_payload"]["build_id"] for r in github.dispatches()]


def assert_answered_in_time(answers, status: str) -> None:
    for response, seconds in answers:
        assert response.status_code == 202, response.text
        assert response.json()["status"] == status, response.text
        assert seconds < ANSWER_WITHIN


def test_a_locked_sqlite_outbox_neither_stalls_the_service_nor_fails_quay(start_service, test_pki, github, backend,
                                                                          database_url):
    if backend != "sqlite":
        pytest.skip("SQLite's write lock")
    service = start_service()
    builds = [str(uuid.uuid4()) for _ in range(3)]

    with HealthProbe(service, test_pki) as probe, hold_sqlite_lock(urlsplit(database_url).path[1:], seconds=8):
        answers = notify_all(service, test_pki, builds)
        scrape = requests.get(service.url + "/metrics", cert=test_pki.pair("quay"), verify=test_pki.ca_file,
                              timeout=10)
    assert_answered_in_time(answers, "dispatched")
    # The metrics that show the outage answer during it, and read the outbox beside the lock (a read takes none).
    assert scrape.status_code == 200
    assert "quay_dispatch_outbox_readable 1.0" in scrape.text
    assert 'quay_dispatch_store_bypass_total{result="dispatched"} 3.0' in scrape.text
    assert 'quay_dispatch_deliveries{status="pending"}' in scrape.text
    assert "database is locked" in answers[0][0].json()["reason"]
    assert_healthy(probe)

    # Once the lock is gone, the direct dispatches are recorded: Quay's retry is a duplicate.
    assert wait_until(lambda: delivered_builds(service) >= set(builds), timeout=15)
    retry, _ = timed_notification(service, test_pki, builds[0])
    assert retry.status_code == 200 and retry.json()["status"] == "duplicate"
    assert sorted(sent_builds(github)) == sorted(builds)
    assert "the outbox cannot take it (database is locked" in service.log()
    assert "Traceback" not in service.log()


def test_a_frozen_postgresql_neither_stalls_the_service_nor_fails_quay(start_service, test_pki, github, backend,
                                                                        database_url):
    if backend != "postgresql":
        pytest.skip("a PostgreSQL server that stops answering")
    address = urlsplit(database_url)
    with FreezableProxy(address.hostname, address.port) as proxy:
        service = start_service({"DATABASE_URL": proxy.url_for(database_url)})
        builds = [str(uuid.uuid4()) for _ in range(3)]
        with HealthProbe(service, test_pki) as probe:
            proxy.freeze()
            try:
                answers = notify_all(service, test_pki, builds)
                time.sleep(15 - sum(seconds for _, seconds in answers) / len(answers))
            finally:
                proxy.thaw()
            later = str(uuid.uuid4())
            after, seconds = timed_notification(service, test_pki, later)
        assert_answered_in_time(answers, "dispatched")
        assert_healthy(probe)
        assert after.status_code == 202 and after.json()["status"] == "accepted", after.text
        assert seconds < ANSWER_WITHIN

        assert wait_until(lambda: delivered_builds(service) >= {*builds, later}, timeout=20)
        assert sorted(sent_builds(github)) == sorted([*builds, later])
        assert "Traceback" not in service.log()


def test_a_full_disk_is_answered_by_dispatching_directly(start_service, test_pki, github, backend):
    if backend != "sqlite":
        pytest.skip("SQLite on a full disk")
    with small_tmpfs(2048) as disk:
        service = start_service({"DATABASE_URL": f"sqlite:///{disk / 'outbox.sqlite3'}"})
        first, _ = timed_notification(service, test_pki, str(uuid.uuid4()))
        assert first.json()["status"] == "accepted"
        filler = fill_disk(disk)
        full = [str(uuid.uuid4()) for _ in range(3)]
        answers = [timed_notification(service, test_pki, build) for build in full]
        ready = requests.get(service.url + "/readyz", cert=test_pki.pair("quay"), verify=test_pki.ca_file, timeout=10)
        filler.unlink()
        freed, _ = timed_notification(service, test_pki, str(uuid.uuid4()))

        for response, seconds in answers:
            assert response.status_code == 202, response.text
            assert seconds < ANSWER_WITHIN
        assert "dispatched" in {response.json()["status"] for response, _ in answers}
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["the outbox cannot commit a write right now"]
        assert freed.status_code == 202 and freed.json()["status"] == "accepted"
        assert wait_until(lambda: set(full) <= set(sent_builds(github)), timeout=10)
        assert "database or disk is full" in service.log()
        assert "Traceback" not in service.log()
        service.stop()


def test_with_the_store_and_github_both_down_quay_is_told_to_retry_and_nothing_is_lost(
        start_service, test_pki, github, backend, database_url):
    if backend != "sqlite":
        pytest.skip("SQLite's write lock")
    service = start_service()
    builds = [str(uuid.uuid4()) for _ in range(2)]
    github.answer(503, {"message": "Service Unavailable"}, times=2)

    with hold_sqlite_lock(urlsplit(database_url).path[1:], seconds=15):  # released once answered
        answers = notify_all(service, test_pki, builds)
    for response, seconds in answers:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "30"
        assert seconds < ANSWER_WITHIN
    assert not sent_builds(github) or set(sent_builds(github)) <= set(builds)
    assert [r.status for r in github.dispatches()] == [503, 503]

    # Quay retries once both are back: each event then reaches GitHub once.
    retries = notify_all(service, test_pki, builds)
    assert_answered_in_time(retries, "accepted")
    assert wait_until(lambda: sorted(b for b, r in zip(sent_builds(github), github.dispatches(), strict=True)
                                     if r.status == 204) == sorted(builds), timeout=10)
    assert "Traceback" not in service.log()


def test_a_missing_or_replaced_outbox_file_is_answered_by_dispatching_directly(start_service, test_pki, github,
                                                                                  backend):
    if backend != "sqlite":
        pytest.skip("SQLite's file")
    with small_tmpfs(4096) as disk:
        database = disk / "outbox.sqlite3"
        service = start_service({"DATABASE_URL": f"sqlite:///{database}"})
        assert timed_notification(service, test_pki, str(uuid.uuid4()))[0].json()["status"] == "accepted"

        database.rename(disk / "aside.sqlite3")  # deleted by mistake: SQLite would write on into the lost file
        missing, _ = timed_notification(service, test_pki, str(uuid.uuid4()))
        database.write_bytes(b"not a database, " * 512)  # a restore gone wrong: another file at the path
        replaced, _ = timed_notification(service, test_pki, str(uuid.uuid4()))
        (disk / "aside.sqlite3").replace(database)
        back, _ = timed_notification(service, test_pki, str(uuid.uuid4()))

        assert missing.status_code == 202 and missing.json()["status"] == "dispatched", missing.text
        assert "is missing" in missing.json()["reason"]
        assert replaced.status_code == 202 and replaced.json()["status"] == "dispatched", replaced.text
        assert "not a database" in replaced.json()["reason"]
        assert back.json()["status"] == "accepted"
        assert wait_until(lambda: len(github.dispatches()) == 4, timeout=10)
        assert "Traceback" not in service.log()
        service.stop()


def test_a_worker_that_starts_while_the_store_is_locked_serves_and_the_service_stays_up(start_service, test_pki,
                                                                                       backend, database_url):
    if backend != "sqlite":
        pytest.skip("SQLite's write lock")
    service = start_service(args=["--workers", "2"])
    workers = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", service.log())]

    with hold_sqlite_lock(urlsplit(database_url).path[1:], seconds=5):
        os.kill(workers[0], signal.SIGKILL)  # gunicorn's master starts another, which finds the store locked
        assert wait_until(lambda: "cannot be reached as this worker starts (database is locked" in service.log(),
                          timeout=10), service.log()

    assert service.exited() is None, service.log()
    assert wait_until(lambda: requests.get(service.url + "/readyz", cert=test_pki.pair("quay"),
                                           verify=test_pki.ca_file, timeout=5).status_code == 200, timeout=10)
