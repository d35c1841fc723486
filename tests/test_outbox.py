"""The outbox on SQLite and on a real PostgreSQL: deduplication, claims, leases, pauses, pacing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from quay_dispatch.delivery.github import host_of
from quay_dispatch.domain.dispatch_request import DELIVERED, DRY_RUN, FAILED, PENDING, canonical_json
from quay_dispatch.domain.plan import plan_dispatches
from quay_dispatch.domain.policy import WRITES_PER_MINUTE
from quay_dispatch.domain.quay import QuayEvent
from quay_dispatch.domain.routes import parse_inline_routes
from quay_dispatch.outbox import Notification, StoreUnavailable, open_outbox, schema, store
from testkit.faults import hold_sqlite_lock

HOST = "api.github.test"
PACE = WRITES_PER_MINUTE


def event(build_id: str, event_name: str = "build_success") -> QuayEvent:
    return QuayEvent(event=event_name, repository="acme/api", namespace="acme", name="api", build_id=build_id)


def add(box, build_id: str, dry_run: bool = False, routes: str = "acme/*"):
    requests = plan_dispatches(event(build_id), parse_inline_routes(routes), build_id.encode())
    return box.add(requests, Notification("build_success", "acme/api", build_id, HOST, dry_run))


def add_as_release_before(box, build_id: str, host: str = HOST) -> None:
    """A pending delivery as the releases before schema version 4 stored it, with their columns only."""
    [request] = plan_dispatches(event(build_id), parse_inline_routes("acme/*"), build_id.encode())
    now = time.time()
    with box._transaction() as run:
        run("""INSERT INTO deliveries (created_at, queued_at, updated_at, event, quay_repository, build_id, host,
                   target, kind, event_type, path, body, dedup_key, dedup_until, status, next_attempt_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            now, now, now, "build_success", "acme/api", build_id, host, request.target, request.kind,
            request.event_type, request.path, canonical_json(request.body), request.dedup_key, None, PENDING, now)


def test_migrate_is_idempotent_and_safe_from_many_workers_at_once(database_url):
    stores = [open_outbox(database_url) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda s: s.migrate(), stores))
    stores[0].migrate()

    assert add(stores[0], "b1")[0][0].id >= 1


def test_concurrent_retries_of_one_build_store_it_once(database_url):
    stores = [open_outbox(database_url) for _ in range(8)]
    stores[0].migrate()
    barrier = threading.Barrier(8)

    def race(store):
        barrier.wait()
        return add(store, "same-build")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(race, stores))

    assert sum(len(accepted) for accepted, _ in results) == 1
    assert sum(len(duplicates) for _, duplicates in results) == 7


def test_one_lease_per_host_at_a_time_and_an_expired_lease_is_taken_up_again(box, database_url):
    add(box, "b1")
    add(box, "b2")
    other_worker = open_outbox(database_url)

    first = box.claim(HOST, 0.5, PACE)
    assert first is not None
    assert other_worker.claim(HOST, 0.5, PACE) is None  # b2 waits: one write at a time
    time.sleep(0.6)  # the first worker died holding its lease
    again = other_worker.claim(HOST, 30, PACE)

    assert again is not None and again.id == first.id


def test_concurrent_claimers_never_hold_two_leases(database_url, box):
    for i in range(5):
        add(box, f"b{i}")
    stores = [open_outbox(database_url) for _ in range(8)]
    barrier = threading.Barrier(8)

    def claim(store):
        barrier.wait()
        return store.claim(HOST, 30, PACE)

    with ThreadPoolExecutor(8) as pool:
        claimed = [d for d in pool.map(claim, stores) if d is not None]

    assert len(claimed) == 1


def test_record_releases_the_lease_and_keeps_each_attempt(box):
    [accepted], _ = add(box, "b1")
    delivery = box.claim(HOST, 30, PACE)
    box.record(delivery, status=PENDING, http_status=502, request_id="R1", error="GitHub answered 502: x",
               next_attempt_at=time.time() - 1, duration_ms=812)
    delivery = box.claim(HOST, 30, PACE)
    box.record(delivery, status=DELIVERED, http_status=204, request_id="R2", error=None, duration_ms=95,
               run_id=1520, run_url="https://github.com/acme/api/actions/runs/1520")

    [row] = box.list()
    assert (row.id, row.status, row.attempts, row.last_status, row.last_request_id, row.run_url) == (
        accepted.id, DELIVERED, 2, 204, "R2", "https://github.com/acme/api/actions/runs/1520")
    assert [(a["result"], a["http_status"], a["request_id"], a["error"], a["duration_ms"])
            for a in box.attempts(row.id)] == [("retry", 502, "R1", "GitHub answered 502: x", 812),
                                               ("delivered", 204, "R2", None, 95)]


def test_a_delivery_keeps_the_build_and_notification_it_came_from_and_counts_duplicates(box):
    notification = Notification("build_success", "acme/api", "b1", HOST, False, "main", ("v2", "latest"),
                                "42d4a62c53350993ea41069e9f2cfdefb0df097d", '{"build_id": "b1"}')
    requests = plan_dispatches(event("b1"), parse_inline_routes("acme/*"), b"b1")
    [accepted], _ = box.add(requests, notification)

    assert box.add(requests, notification) == ([], ["acme/api"])
    assert box.add(requests, notification) == ([], ["acme/api"])
    with box._transaction() as run:
        row = run("SELECT branch, tags, commit_sha, notification, duplicates FROM deliveries WHERE id = ?",
                  accepted.id).fetchone()
    assert tuple(dict(row).values()) == ("main", "v2 latest", "42d4a62c53350993ea41069e9f2cfdefb0df097d",
                                         '{"build_id": "b1"}', 2)


def test_a_rate_limit_pauses_every_delivery_to_the_host(box):
    add(box, "b1")
    add(box, "b2")
    delivery = box.claim(HOST, 30, PACE)
    box.record(delivery, status=PENDING, http_status=403, request_id=None, error="rate limited",
               next_attempt_at=time.time() + 0.8, pause_host_until=time.time() + 0.8)

    assert box.claim(HOST, 30, PACE) is None  # b2 is due, but the host is paused
    time.sleep(0.9)
    assert box.claim(HOST, 30, PACE) is not None


def test_a_success_brings_forward_retries_waiting_out_a_backoff(box):
    add(box, "b1")
    add(box, "b2")
    first = box.claim(HOST, 30, PACE)
    box.record(first, status=PENDING, http_status=503, request_id=None, error="x", next_attempt_at=time.time() + 600)
    second = box.claim(HOST, 30, PACE)
    box.record(second, status=DELIVERED, http_status=204, request_id=None, error=None)

    again = box.claim(HOST, 30, PACE)
    assert again is not None and again.id == first.id


def test_writes_to_a_host_are_paced_under_githubs_limit(box):
    for i in range(4):
        add(box, f"b{i}")
    for _ in range(3):
        box.record(box.claim(HOST, 30, writes_per_minute=3), status=DELIVERED, http_status=204, request_id=None,
                   error=None)

    assert box.claim(HOST, 30, writes_per_minute=3) is None


def test_redeliver_by_id_or_all_failed(box):
    ids = [add(box, f"b{i}")[0][0].id for i in range(3)]
    [dry] = add(box, "dry", dry_run=True)[0]
    for _ in ids[:2]:
        box.record(box.claim(HOST, 30, PACE), status=FAILED, http_status=404, request_id=None,
                   error="GitHub answered 404")

    queued, refused = box.redeliver([ids[0], ids[2], dry.id, 999])
    assert queued == [ids[0]]
    assert refused == {ids[2]: "already pending", dry.id: "recorded in dry-run mode; it was never meant to be sent",
                       999: "no such delivery"}
    assert box.redeliver(None) == ([ids[1]], {})
    assert {d.id: d.status for d in box.list()}[ids[1]] == PENDING


def test_prune_removes_old_delivered_rows_and_keeps_failed_ones(box):
    add(box, "b1")
    add(box, "b2")
    add(box, "dry", dry_run=True)
    box.record(box.claim(HOST, 30, PACE), status=DELIVERED, http_status=204, request_id=None, error=None)
    box.record(box.claim(HOST, 30, PACE), status=FAILED, http_status=404, request_id=None, error="x")

    assert box.prune(older_than=time.time() - 60) == 0
    assert box.prune(older_than=time.time() + 1) == 2
    assert [d.status for d in box.list()] == [FAILED]


def test_dry_run_deliveries_are_never_claimed(box):
    add(box, "b1", dry_run=True)

    assert box.claim(HOST, 30, PACE) is None
    assert box.list()[0].status == DRY_RUN


@pytest.mark.parametrize("version", range(1, len(schema.MIGRATIONS)))
def test_a_database_of_an_older_version_is_migrated(database_url, monkeypatch, version):
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
    old = open_outbox(database_url)
    old.migrate()
    add_as_release_before(old, "before-upgrade")
    monkeypatch.undo()

    store = open_outbox(database_url)
    store.migrate()
    with store._transaction() as run:
        version = run("SELECT MAX(version) AS version FROM schema_version").fetchone()["version"]
    assert version == len(schema.MIGRATIONS)
    assert store.counts()[PENDING] == 1


def test_the_look_for_a_lease_in_flight_does_not_read_the_backlog(box, database_url):
    for i in range(300):
        add(box, f"backlog-{i}")
    explain = "EXPLAIN QUERY PLAN " if database_url.startswith("sqlite") else "EXPLAIN "
    with box._transaction() as run:
        if not database_url.startswith("sqlite"):
            run("ANALYZE deliveries")
        rows = run(explain + store.LEASE_IN_FLIGHT, HOST, PENDING, time.time()).fetchall()
    plan = " ".join(str(value) for row in rows for value in dict(row).values())
    assert "deliveries_leased" in plan


def test_concurrent_adds_to_one_store_are_each_committed_once(box):
    barrier = threading.Barrier(16)

    def one(i):
        barrier.wait()
        return add(box, f"concurrent-{i}")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))

    ids = [accepted.id for stored, _ in results for accepted in stored]
    assert len(ids) == len(set(ids)) == 16
    assert box.counts()[PENDING] == 16


def test_adds_that_come_while_another_process_holds_the_write_lock_share_one_commit(tmp_path, monkeypatch):
    path = tmp_path / "outbox.sqlite3"
    box = open_outbox(f"sqlite:///{path}")
    box.migrate()
    transaction = box._transaction
    commits = []

    def counted(*args, **kwargs):
        commits.append(1)
        return transaction(*args, **kwargs)

    monkeypatch.setattr(box, "_transaction", counted)
    with hold_sqlite_lock(path, seconds=1.0), ThreadPoolExecutor(4) as pool:
        first = pool.submit(add, box, "first")  # leads, and waits for the lock
        time.sleep(0.2)
        others = [pool.submit(add, box, f"meanwhile-{i}") for i in range(3)]
        assert all(f.result(5)[0] for f in [first, *others])
    assert len(commits) == 1  # the three that came during the wait joined the leader's commit
    assert box.counts()[PENDING] == 4


def test_a_failed_group_commit_fails_its_requests_and_the_next_ones_go_on(tmp_path, monkeypatch):
    box = open_outbox(f"sqlite:///{tmp_path / 'outbox.sqlite3'}")
    box.migrate()
    insert = box._insert
    leading, release = threading.Event(), threading.Event()

    def insert_or_fail(run, requests, notification):
        if notification.build_id == "first":
            leading.set()
            release.wait(5)  # holds the commit while the others queue behind it
        if notification.build_id.startswith("doomed"):
            raise StoreUnavailable("disk I/O error")
        return insert(run, requests, notification)

    monkeypatch.setattr(box, "_insert", insert_or_fail)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(add, box, "first")
        assert leading.wait(5)
        doomed = [pool.submit(add, box, f"doomed-{i}") for i in range(3)]
        time.sleep(0.2)
        release.set()
        assert first.result(5)[0]
        for future in doomed:
            with pytest.raises(StoreUnavailable, match="disk I/O error"):
                future.result(5)
    # The lead was handed on: nobody is left waiting for a commit that never comes.
    assert add(box, "after")[0]
    assert box.counts()[PENDING] == 2


def test_pending_deliveries_of_the_release_before_are_each_delivered_once_by_this_one(database_url, monkeypatch,
                                                                                     start_service, github):
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])  # the schema before the operator's page
    old = open_outbox(database_url)
    old.migrate()
    add_as_release_before(old, "b-1", host_of(github.url))
    monkeypatch.undo()
    github.reset()

    start_service(args=["--workers", "2"])

    assert [r.path for r in github.wait_for(1)] == ["/repos/acme/api/dispatches"]
    time.sleep(1)  # a second delivery would come at once
    assert len(github.requests) == 1


def test_a_push_is_known_by_repository_and_tag_the_tag_matched_as_written(box):
    pushed = QuayEvent(event="repo_push", repository="acme/api", namespace="acme", name="api", tags=("v1x2", "latest"))
    requests = plan_dispatches(pushed, parse_inline_routes("acme/*"), b"push")
    box.add(requests, Notification("repo_push", "acme/api", None, HOST, False, tags=pushed.tags))
    now = time.time()

    assert box.received_push("acme/api", "latest", now - 60) and box.received_push("acme/api", "v1x2", now - 60)
    assert not box.received_push("acme/api", "v1_2", now - 60)  # `_` is no wildcard
    assert not box.received_push("acme/api", "v1", now - 60) and not box.received_push("acme/web", "latest", now - 60)
    assert not box.received_push("acme/api", "latest", now + 60)
