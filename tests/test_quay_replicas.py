"""Quay's side on two replicas sharing PostgreSQL (issue 33): one watch at a time, one reset, each recovered event
dispatched once. Both replicas are the same relay to Quay (one PUBLIC_URL), as behind a load balancer."""

from __future__ import annotations

import time

import pytest

from testkit.credentials import INCOMING_TOKEN
from testkit.quay_api import RELAY_ADDRESS, Repository, build, start_relay_for
from testkit.service import deliveries, scrape, wait_until

WATCHED = ("quay_dispatch_quay_watch_timestamp_seconds", ())


@pytest.fixture(scope="module")
def backend() -> str:
    return "postgresql"


@pytest.fixture(autouse=True)
def repositories(quay):
    quay.repositories["acme/api"] = Repository()


def _listings(quay) -> int:
    return sum(1 for r in quay.requests if r.method == "GET" and r.path.endswith("/notification/"))


def test_two_replicas_watch_one_at_a_time_reset_once_and_recover_each_event_once(start_service, quay, test_pki,
                                                                                  github):
    overrides = {"ROUTES": "acme/*", "INCOMING_TOKEN": INCOMING_TOKEN, "QUAY_WATCH_INTERVAL": "5",
                 "QUAY_RECOVER_GRACE": "2"}
    first = start_relay_for(start_service, quay, overrides, workers=2)
    second = start_relay_for(start_service, quay, overrides | {"PUBLIC_URL": first.env["PUBLIC_URL"]}, workers=2)
    notification = quay.add_notification("acme/api", "build_success",
                                         f"https://quay:{INCOMING_TOKEN}@{RELAY_ADDRESS}:{first.port}"
                                         "/incoming/build_success")
    assert wait_until(lambda: WATCHED in scrape(second, test_pki), timeout=15)

    now = time.time()  # Quay fails its calls (the relay unreachable for a while), drops two builds, disables it
    dropped = [build("acme/api", "complete", now), build("acme/api", "complete", now)]
    quay.repositories["acme/api"].builds += dropped
    notification["number_of_failures"] = 3
    quay.delay = 0.5  # a slow Quay: a look lasts seconds, and two at once would both reset

    assert wait_until(lambda: len(github.dispatches()) == 2, timeout=20)
    listed = _listings(quay)
    time.sleep(15)  # three more intervals
    resets = [r for r in quay.requests if r.method == "POST" and r.path.endswith(notification["uuid"])]
    assert len(resets) == 1
    assert _listings(quay) - listed <= 4  # one look an interval, not one a replica (or a worker)
    assert sorted(d.json()["client_payload"]["build_id"] for d in github.dispatches()) == sorted(
        b["id"] for b in dropped)
    assert [(d["recovered"], d["status"]) for d in deliveries(first)] == [(True, "delivered")] * 2
    for relay in (first, second):
        assert scrape(relay, test_pki)[("quay_dispatch_quay_recovered_events_total",
                                        (("event", "build_success"),))] == 2
