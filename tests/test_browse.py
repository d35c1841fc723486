"""What the operator's page reads and does (outbox/browse.py), on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import time

from quay_dispatch.domain.dispatch_request import DELIVERED, FAILED, PENDING
from quay_dispatch.domain.plan import plan_dispatches
from quay_dispatch.domain.policy import WRITES_PER_MINUTE
from quay_dispatch.domain.quay import QuayEvent
from quay_dispatch.domain.routes import parse_inline_routes
from quay_dispatch.outbox import Notification
from quay_dispatch.outbox.browse import KEPT_REFUSALS, Filter, RefusedCall

HOST = "api.github.test"


def add(box, build_id: str, repository: str = "acme/api", commit: str | None = None, event: str = "build_success",
        routes: str = "acme/*; beta/*") -> list[int]:
    namespace, name = repository.split("/")
    quay_event = QuayEvent(event=event, repository=repository, namespace=namespace, name=name, build_id=build_id,
                           commit=commit, ref="refs/heads/main", tags=("latest",))
    requests = plan_dispatches(quay_event, parse_inline_routes(routes), build_id.encode())
    accepted, _ = box.add(requests, Notification(event, repository, build_id, HOST, False, "main", ("latest",),
                                                 commit, json.dumps({"build_id": build_id})))
    return [a.id for a in accepted]


def settle(box, status: str, error: str | None = None) -> int:
    """The oldest due delivery, attempted once with `status`."""
    delivery = box.claim(HOST, 30, WRITES_PER_MINUTE)
    box.record(delivery, status=status, http_status=204 if status == DELIVERED else 404, request_id="R-1",
               error=error, duration_ms=42)
    return delivery.id


def ids(listed) -> list[int]:
    return [row.id for row in listed]


def test_each_filter_narrows_the_list_newest_first(box):
    first = add(box, "b-1", commit="42d4a62c53350993ea41069e9f2cfdefb0df097d")
    second = add(box, "b-2", repository="beta/web", commit="9f0e1d2c53350993ea41069e9f2cfdefb0df097d")
    third = add(box, "b-3", event="build_failure")
    failed = settle(box, FAILED, "GitHub answered 404: Not Found")

    assert ids(box.page(Filter())[0]) == third + second + first
    assert ids(box.page(Filter(status=FAILED))[0]) == [failed]
    assert ids(box.page(Filter(quay_repository="beta/web"))[0]) == second
    assert ids(box.page(Filter(target="acme/api"))[0]) == third + first
    assert ids(box.page(Filter(event="build_failure"))[0]) == third
    assert ids(box.page(Filter(q="b-2"))[0]) == second
    assert ids(box.page(Filter(q="42d4a62"))[0]) == first  # "did 42d4a62 go out?"
    assert ids(box.page(Filter(q="42D4"))[0]) == first
    assert ids(box.page(Filter(q="42d4a62", status=PENDING))[0]) == []
    row = box.page(Filter(q="b-2"))[0][0]
    assert (row.branch, row.tags, row.target, row.kind, row.event) == ("main", "latest", "beta/web",
                                                                       "repository_dispatch", "build_success")


def test_pages_follow_one_another_without_a_gap_or_an_overlap(box):
    added = [i for n in range(7) for i in add(box, f"b-{n}")]

    before, pages = None, []
    while len(pages) < 5:  # bounded: a cursor that does not move must fail, not loop
        listed, before = box.page(Filter(), before, size=3)
        pages.append(ids(listed))
        if before is None:
            break

    assert pages == [added[6:3:-1], added[3:0:-1], added[:1]]


def test_a_delivery_shows_what_was_sent_each_attempt_and_its_notification(box):
    [delivery_id] = add(box, "b-1")
    box.record(box.claim(HOST, 30, WRITES_PER_MINUTE), status=PENDING, http_status=502, request_id="R-1",
               error="GitHub answered 502: x", next_attempt_at=time.time() - 1, duration_ms=812)
    settle(box, DELIVERED)
    add(box, "b-1")  # Quay again: a duplicate

    detail, attempts = box.detail(delivery_id)

    assert (detail.status, detail.attempts, detail.duplicates, detail.notification) == (
        DELIVERED, 2, 1, '{"build_id": "b-1"}')
    assert detail.path == "/repos/acme/api/dispatches" and '"build_id":"b-1"' in detail.body
    assert [(a.result, a.http_status, a.request_id, a.duration_ms) for a in attempts] == [
        ("retry", 502, "R-1", 812), ("delivered", 204, "R-1", 42)]
    assert box.detail(delivery_id + 1000) is None


def test_a_filters_redelivery_takes_what_was_confirmed_and_nothing_that_came_since(box):
    confirmed = [i for n in range(3) for i in add(box, f"b-{n}")]
    for _ in range(3):
        settle(box, FAILED, "no")
    [later] = add(box, "b-3")

    counts, upto = box.redeliverable(Filter())
    assert counts == {FAILED: 3}  # the pending one is not queued again
    settle(box, FAILED, "no")  # b-3 fails after the operator saw the count

    assert box.redeliver_selected(Filter(), upto, confirmed=3) == confirmed
    assert box.detail(later)[0].status == FAILED
    counts, upto = box.redeliverable(Filter(status=FAILED))
    box.redeliver([later])  # somebody else was quicker: the selection is not what the operator confirmed
    assert box.redeliver_selected(Filter(status=FAILED), upto, confirmed=counts[FAILED]) is None


def test_refused_calls_are_kept_newest_first_and_capped(box):
    calls = [RefusedCall(time.time(), "203.0.113.7", 403, "build_success", f"refusal {n}", "evil.example")
             for n in range(KEPT_REFUSALS + 5)]

    box.keep_refusals(calls[:10])
    box.keep_refusals(calls[10:])

    kept = box.refusals(limit=5000)
    assert len(kept) == KEPT_REFUSALS
    assert [call.reason for call in kept[:2]] == [f"refusal {KEPT_REFUSALS + 4}", f"refusal {KEPT_REFUSALS + 3}"]
    assert kept[-1].reason == "refusal 5"


def test_the_last_day_by_the_hour(box):
    add(box, "b-1")
    add(box, "b-2")
    settle(box, DELIVERED)
    settle(box, FAILED, "no")

    hours = box.hourly()

    assert len(hours) == 24 and hours[-1]["hour"] <= time.time() < hours[-1]["hour"] + 3600
    assert {k: hours[-1][k] for k in ("accepted", "delivered", "failed")} == {"accepted": 2, "delivered": 1,
                                                                            "failed": 1}
    assert 0 <= hours[-1]["latency"] < 5
    assert all(hour["accepted"] == 0 and hour["latency"] is None for hour in hours[:-1])
