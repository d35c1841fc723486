"""An idle service is idle: nothing looks at the store, or wakes to look at nothing, while no event comes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg

from quay_dispatch.outbox.watchdog import Watchdog
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.faults import hold_sqlite_lock
from testkit.postgres import create_database
from testkit.service import Service, ServiceStarter, scrape, wait_until


def test_the_store_watchdog_parks_while_no_transaction_is_in_flight():
    watchdog = Watchdog()
    with watchdog.guard(time.monotonic() + 5, lambda: None):
        assert wait_until(lambda: watchdog.looks >= 2, timeout=5)  # it looks while one is in flight
    assert wait_until(lambda: watchdog._parked, timeout=5)
    looks = watchdog.looks
    time.sleep(0.5)  # five ticks' worth
    assert watchdog.looks == looks


def test_a_transaction_after_a_long_park_is_still_interrupted_at_its_deadline():
    watchdog, interrupted = Watchdog(), threading.Event()
    with watchdog.guard(time.monotonic() + 5, lambda: None):
        pass
    assert wait_until(lambda: watchdog._parked, timeout=5)
    time.sleep(0.3)
    with watchdog.guard(time.monotonic() + 0.2, interrupted.set):
        assert interrupted.wait(5)  # the guard woke it: the deadline was kept


def _delivered_and_idle(services, test_pki, github) -> Service:
    """A service of 2 workers that delivered one event, then had a moment to settle."""
    service = services(args=["--workers", "2"])
    body = sample_body("build_success", "acme/widget")
    assert send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file
                          ).status_code == 202
    assert github.wait_for(1)
    time.sleep(1.5)  # each deliverer's look after it: nothing is due
    return service


def test_an_idle_service_takes_no_write_lock_and_still_delivers_at_once(tmp_path, test_pki, github):
    """An operator's long command holds SQLite's write lock: an idle service never notices (a claim would wait
    STORE_TIMEOUT and say so); its deliverers' heartbeats go on in memory, and /metrics reads the outbox beside
    the lock. The next event is delivered at once."""
    github.reset()
    database = tmp_path / "outbox.sqlite3"
    services = ServiceStarter(tmp_path, test_pki, github, f"sqlite:///{database}")
    try:
        service = _delivered_and_idle(services, test_pki, github)
        with hold_sqlite_lock(database, 15):
            time.sleep(6)
            metrics = scrape(service, test_pki)
        beats = [value for (name, _), value in metrics.items()
                 if name == "quay_dispatch_deliverer_heartbeat_timestamp_seconds"]
        assert beats and time.time() - min(beats) < 3, beats
        assert metrics[("quay_dispatch_outbox_readable", ())] == 1
        assert "outbox unavailable" not in service.log() and "write lock" not in service.log()
        accept_one = sample_body("build_success", "acme/widget")
        assert send_like_quay(service.url + "/incoming", accept_one, test_pki.pair("quay"), verify=test_pki.ca_file
                              ).status_code == 202
        assert len(github.wait_for(2, timeout=5)) == 2
    finally:
        services.stop_all()


def test_an_idle_service_leaves_postgresql_alone(tmp_path, test_pki, github, postgresql_server):
    """Transactions in the outbox's database while nothing happens, as PostgreSQL counts them: a claim a second
    per worker before; now a sweep's read every 30 s, and LISTEN's notifications read without a query."""
    github.reset()
    database_url = create_database(postgresql_server)
    services = ServiceStarter(tmp_path, test_pki, github, database_url)
    try:
        _delivered_and_idle(services, test_pki, github)
        name = database_url.rsplit("/", 1)[1]

        def committed() -> int:
            with psycopg.connect(postgresql_server, autocommit=True) as conn:  # another database's session
                return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
                                    ).fetchone()[0]

        time.sleep(11)  # an idle session reports its counts within 10 s: the first delivery's are in by now
        before = committed()
        time.sleep(15)
        assert committed() - before <= 4  # 2 workers: at most a sweep each (30 s apart); a claim a second was 30
    finally:
        services.stop_all()


def test_a_stopped_watchdog_ends_its_thread_and_the_next_transaction_starts_one():
    watchdog, interrupted = Watchdog(), threading.Event()
    with watchdog.guard(time.monotonic() + 5, lambda: None):
        thread = watchdog._thread
    watchdog.stop()
    thread.join(5)
    assert not thread.is_alive() and watchdog._thread is None
    with watchdog.guard(time.monotonic() + 0.2, interrupted.set):
        assert interrupted.wait(5)


def test_the_master_forks_its_workers_with_no_thread_and_no_store_connection(tmp_path, test_pki, github):
    """gunicorn's master opens the outbox to check it and imports the application for the workers to share: it
    keeps neither a thread nor a connection, so that each worker's are made after the fork, in the worker."""
    github.reset()
    database = tmp_path / "outbox.sqlite3"
    services = ServiceStarter(tmp_path, test_pki, github, f"sqlite:///{database}")
    try:
        service = _delivered_and_idle(services, test_pki, github)
        master = service.proc.pid
        workers = [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]

        def outbox_files(pid: int) -> list[str]:
            paths = [os.path.realpath(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            return [p for p in paths if p.startswith(str(database))]

        assert len(os.listdir(f"/proc/{master}/task")) == 1
        assert outbox_files(master) == []
        assert len(workers) == 2 and all(outbox_files(pid) for pid in workers)  # their own, then
    finally:
        services.stop_all()
