"""Durable delivery end to end: a loopback GitHub failing on a script, real gunicorn, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.faults import hold_sqlite_lock
from testkit.service import deliveries, outbox_command, wait_until


def accept(service, test_pki, count, repository="acme/widget"):
    """Send `count` build_success notifications as Quay does; return their bodies (all answered 202)."""
    bodies = [sample_body("build_success", repository) for _ in range(count)]
    for body in bodies:
        response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)
        assert response.status_code == 202, response.text
    return bodies


def delivered_builds(github) -> Counter:
    """How many times GitHub answered 2xx for each build id."""
    return Counter(r.json()["client_payload"]["build_id"] for r in github.requests if 200 <= r.status < 300)


def test_an_outage_of_503s_is_ridden_out_and_each_event_delivered_once(start_service, test_pki, github):
    github.answer(503, {"message": "Service Unavailable"}, times=6)
    service = start_service()

    bodies = accept(service, test_pki, 3)

    assert wait_until(lambda: len(delivered_builds(github)) == 3, timeout=30)
    assert delivered_builds(github) == Counter({b["build_id"]: 1 for b in bodies})
    assert github.max_in_flight == 1


def test_a_rate_limit_window_holds_every_delivery_to_the_host_until_it_opens(start_service, test_pki, github):
    reset = int(time.time()) + 3
    github.answer(403, {"message": "API rate limit exceeded"},
                  headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
    service = start_service()

    accept(service, test_pki, 1)
    assert wait_until(lambda: len(github.requests) == 1, timeout=10)
    accept(service, test_pki, 2)  # new events while the window is closed wait too
    time.sleep(max(0.0, reset - time.time() - 0.3))
    assert len(github.requests) == 1  # nothing was sent while the window was closed

    assert wait_until(lambda: len(delivered_builds(github)) == 3, timeout=15)
    assert [r.status for r in github.requests] == [403, 204, 204, 204]
    assert github.requests[1].at >= reset
    assert github.max_in_flight == 1


def test_a_github_slower_than_the_timeout_is_retried(start_service, test_pki, github):
    github.delay = 2.0
    service = start_service({"GITHUB_TIMEOUT": "1"})

    [body] = accept(service, test_pki, 1)
    assert wait_until(lambda: len(github.requests) >= 1, timeout=10)
    github.delay = 0.0

    # GitHub did get the slow request: a timeout is retried, at least once.
    assert wait_until(lambda: deliveries(service, "--status", "delivered"), timeout=20, interval=0.3)
    [row] = deliveries(service)
    assert row["attempts"] == 2
    assert [r.json()["client_payload"]["build_id"] for r in github.requests] == [body["build_id"]] * 2
    assert "GitHub did not answer within 1 s" in service.log()


def test_a_404_fails_at_once_stays_visible_and_can_be_redelivered(start_service, test_pki, github):
    github.answer(404, {"message": "Not Found"})
    service = start_service()

    [body] = accept(service, test_pki, 1)
    assert wait_until(lambda: deliveries(service, "--status", "failed"), timeout=10)
    [failed] = deliveries(service, "--status", "failed")
    assert failed["last_error"] == "GitHub answered 404: Not Found"
    table = outbox_command(service, "deliveries").stdout
    assert "acme/widget" in table and "failed" in table and "GitHub answered 404: Not Found" in table

    result = outbox_command(service, "redeliver", str(failed["id"]))

    assert result.returncode == 0 and f"queued again: {failed['id']}" in result.stdout
    assert wait_until(lambda: delivered_builds(github) == Counter({body["build_id"]: 1}), timeout=10)
    assert deliveries(service)[0]["status"] == "delivered"


def test_a_delivery_past_its_max_age_expires_and_all_failed_can_be_sent_again(start_service, test_pki, github):
    github.answer(502, {"message": "Bad Gateway"}, times=50)
    service = start_service({"DELIVERY_MAX_AGE": "2"})

    [body] = accept(service, test_pki, 1)
    assert wait_until(lambda: deliveries(service, "--status", "expired"), timeout=15, interval=0.3)
    github.reset()

    result = outbox_command(service, "redeliver", "--all-failed")

    assert result.returncode == 0
    assert wait_until(lambda: delivered_builds(github) == Counter({body["build_id"]: 1}), timeout=10)


def test_redeliver_explains_what_it_did_not_queue(start_service, test_pki, github):
    service = start_service()
    accept(service, test_pki, 1)
    assert wait_until(lambda: deliveries(service, "--status", "delivered"), timeout=10)

    missing = outbox_command(service, "redeliver", "424242")
    usage = outbox_command(service, "redeliver")

    assert missing.returncode == 1 and "not queued: 424242: no such delivery" in missing.stderr
    assert usage.returncode == 2 and "give delivery IDs, or --all-failed" in usage.stderr


def test_kill_9_of_the_whole_server_loses_nothing_and_sends_nothing_twice(start_service, test_pki, github):
    # A lease outlives the longest GitHub call; a shorter timeout keeps this test short.
    fast_lease = {"GITHUB_TIMEOUT": "2"}
    github.answer(503, {"message": "down"}, times=10_000)
    service = start_service(fast_lease, args=["--workers", "2"])
    bodies = accept(service, test_pki, 20)
    assert wait_until(lambda: len(github.requests) >= 3, timeout=15)

    os.killpg(service.proc.pid, signal.SIGKILL)  # the master and every worker, mid-whatever
    service.proc.wait()
    github.script.clear()  # GitHub recovers while the service is down
    recovered_at = time.monotonic()
    restarted = start_service(fast_lease, args=["--workers", "2"])

    # Quay retries some calls whose answers it missed: they are recognised.
    for body in bodies[:5]:
        again = send_like_quay(restarted.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"

    assert wait_until(lambda: len(delivered_builds(github)) == 20, timeout=60)
    recovery = time.monotonic() - recovered_at
    assert delivered_builds(github) == Counter({b["build_id"]: 1 for b in bodies})
    time.sleep(1.5)
    assert max(delivered_builds(github).values()) == 1
    assert recovery < 30


def test_non_build_events_are_deduplicated_by_body_within_the_window(start_service, test_pki, github, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nquay = "acme/*"\nevents = ["repo_push"]\n')
    service = start_service({"ROUTES": None, "ROUTES_FILE": str(routes)})
    push = sample_body("repo_push", "acme/widget", tags=("v1",))
    other_push = sample_body("repo_push", "acme/widget", tags=("v2",))
    url = service.url + "/incoming/repo_push"

    answers = [send_like_quay(url, body, test_pki.pair("quay"), verify=test_pki.ca_file)
               for body in (push, push, other_push)]

    assert [a.status_code for a in answers] == [202, 200, 202]
    assert answers[1].json()["status"] == "duplicate"
    assert wait_until(lambda: len(github.requests) == 2, timeout=10)
    assert sorted(r.json()["client_payload"]["tags"][0] for r in github.requests) == ["v1", "v2"]


def test_a_result_the_outbox_cannot_record_is_logged_kept_and_recorded_without_a_second_send(
        start_service, test_pki, github, backend, database_url):
    if backend != "sqlite":
        pytest.skip("SQLite's write lock, taken while GitHub answers")
    github.delay = 1.0
    service = start_service()
    [body] = accept(service, test_pki, 1)
    assert wait_until(lambda: github.in_flight == 1, timeout=10)

    with hold_sqlite_lock(urlsplit(database_url).path[1:], seconds=4):  # over STORE_TIMEOUT
        assert wait_until(lambda: "but the outbox cannot record it" in service.log(), timeout=10)

    assert wait_until(lambda: [d["status"] for d in deliveries(service)] == ["delivered"], timeout=15)
    assert delivered_builds(github) == Counter({body["build_id"]: 1})
    assert "GitHub accepted it (204), but the outbox cannot record it (database is locked" in service.log()
    assert "its result is recorded now that the outbox is back" in service.log()
