"""Recovery (issue 33): what Quay dropped while the relay was away is dispatched once, marked recovered, within one
watch of its return; nothing from before the relay first watched a repository is replayed. A real relay, a loopback
Quay whose sender follows Quay's rules, a loopback GitHub."""

from __future__ import annotations

import json
import time

import pytest

from quay_dispatch.domain.plan import plan_dispatches
from quay_dispatch.domain.quay import parse_event
from quay_dispatch.domain.routes import parse_toml_routes
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.credentials import INCOMING_TOKEN
from testkit.quay_api import RELAY_ADDRESS, Repository, build, start_relay_for, webhook_body
from testkit.service import deliveries, run_flask, scrape, wait_until

ROUTES = """
[[routes]]
quay = "acme/*"
events = ["build_success", "build_failure", "repo_push", "vulnerability_found"]
"""
EVENTS = ("build_success", "build_failure", "repo_push")  # what Quay's lists hold; not vulnerability_found
WATCHED = ("quay_dispatch_quay_watch_timestamp_seconds", ())


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture(autouse=True)
def repositories(quay):
    quay.repositories["acme/api"] = Repository()


@pytest.fixture
def overrides(tmp_path) -> dict[str, str]:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    return {"ROUTES": None, "ROUTES_FILE": str(routes), "INCOMING_TOKEN": INCOMING_TOKEN, "QUAY_WATCH_INTERVAL": "5",
            "QUAY_RECOVER_GRACE": "2"}


def _connect(quay, port: int) -> dict[str, dict]:
    return {event: quay.add_notification("acme/api", event, f"https://quay:{INCOMING_TOKEN}@{RELAY_ADDRESS}:{port}"
                                                            f"/incoming/{event}")
            for event in (*EVENTS, "vulnerability_found")}


def _build_ids(github) -> list[str]:
    return sorted(d.json()["client_payload"]["build_id"] for d in github.dispatches()
                  if d.json()["client_payload"]["build_id"])


def test_an_outage_quay_gave_up_on_is_repaired_and_recovered_exactly_once(start_service, quay, overrides, test_pki,
                                                                          github):
    relay = start_relay_for(start_service, quay, overrides)
    notifications = _connect(quay, relay.port)
    assert wait_until(lambda: WATCHED in scrape(relay, test_pki), timeout=15)
    relay.stop()

    now = time.time()  # the relay is away: Quay builds three times and pushes a tag, and gives up on each
    builds = [build("acme/api", "complete", now), build("acme/api", "error", now), build("acme/api", "complete", now)]
    quay.repositories["acme/api"].builds += builds
    for listed, event in zip(builds, ("build_success", "build_failure", "build_success"), strict=True):
        quay.emit("acme/api", event, webhook_body("acme/api", event, listed))
    quay.repositories["acme/api"].tags = [{"name": "v1.2", "manifest_digest": "sha256:" + "ab" * 32,
                                           "start_ts": int(now)}]
    quay.emit("acme/api", "repo_push", sample_body("repo_push", "acme/api", tags=("v1.2",)))
    quay.emit("acme/api", "vulnerability_found", sample_body("vulnerability_found", "acme/api"))
    assert wait_until(quay.idle, timeout=20)
    assert all(n["number_of_failures"] >= 3 for n in notifications.values())
    assert len(quay.dropped) == 5 and not github.dispatches()

    back = start_relay_for(start_service, quay, overrides, port=relay.port)
    assert wait_until(lambda: len(github.dispatches()) == 4, timeout=20)
    assert _build_ids(github) == sorted(b["id"] for b in builds)
    pushed = [d.json() for d in github.dispatches() if d.json()["event_type"] == "QUAY_REPO_PUSH"]
    assert [p["client_payload"]["tags"] for p in pushed] == [["v1.2"]]
    assert all(n["number_of_failures"] == 0 for n in notifications.values())
    assert [(d["event"], d["recovered"]) for d in deliveries(back)].count(("build_success", True)) == 2
    assert {d["recovered"] for d in deliveries(back)} == {True}
    shown = json.loads(run_flask(back.env, "quay", "--json").stdout)
    assert [(m["event"], m["uuid"]) for m in shown["may_be_missing"]] == [
        ("vulnerability_found", notifications["vulnerability_found"]["uuid"])]

    later = build("acme/api", "complete", time.time())  # the next build arrives the normal way
    quay.repositories["acme/api"].builds.append(later)
    quay.emit("acme/api", "build_success", webhook_body("acme/api", "build_success", later))
    assert wait_until(lambda: len(github.dispatches()) == 5, timeout=10)
    assert deliveries(back)[0]["recovered"] is False

    late = send_like_quay(back.url + "/incoming/build_success", webhook_body("acme/api", "build_success", builds[0]),
                          test_pki.pair("quay"), verify=test_pki.ca_file, )
    assert (late.status_code, late.json()["status"]) == (401, "error")  # the relay's own URL holds the token
    late = send_like_quay(f"https://quay:{INCOMING_TOKEN}@{RELAY_ADDRESS}:{back.port}/incoming/build_success",
                          webhook_body("acme/api", "build_success", builds[0]), test_pki.pair("quay"),
                          verify=test_pki.ca_file)
    assert (late.status_code, late.json()["status"]) == (200, "duplicate")  # Quay's late retry of a recovered build
    time.sleep(7)  # another watch: nothing recovered twice
    assert len(github.dispatches()) == 5
    metrics = scrape(back, test_pki)
    assert {event: metrics[("quay_dispatch_quay_recovered_events_total", (("event", event),))] for event in EVENTS} \
        == {"build_success": 2, "build_failure": 1, "repo_push": 1}


def test_a_newly_connected_repository_with_a_long_history_replays_nothing(start_service, quay, overrides, test_pki,
                                                                          github):
    now = time.time()
    quay.repositories["acme/api"].builds = [build("acme/api", "complete", now - 60 * i) for i in range(1, 101)]
    quay.repositories["acme/api"].tags = [{"name": f"v{i}", "manifest_digest": f"sha256:{i:064x}",
                                           "start_ts": int(now) - 60 * i} for i in range(1, 21)]
    relay = start_relay_for(start_service, quay, overrides)
    for notification in _connect(quay, relay.port).values():
        notification["number_of_failures"] = 3  # off since long before the relay first looked

    assert wait_until(lambda: all(n["number_of_failures"] == 0 for n in quay.repositories["acme/api"].notifications),
                      timeout=20)
    time.sleep(6)  # one more watch, past the grace
    assert not github.dispatches() and deliveries(relay) == []

    by_hand = run_flask(relay.env, "quay", "recover", "--since", "1770", "--dry-run")
    assert by_hand.returncode == 0, by_hand.stderr
    assert by_hand.stdout.count("would recover: acme/api build_success build ") == 29  # 1 to 29 minutes ago
    assert by_hand.stdout.count("would recover: acme/api repo_push tag ") == 20
    assert not github.dispatches() and deliveries(relay) == []


def test_a_workflow_can_ask_whether_its_event_was_recovered_and_the_payload_keeps_its_ten_keys():
    routes = parse_toml_routes('[[routes]]\nquay = "acme/*"\nworkflow = "deploy.yml"\ninputs = ["sha", "recovered"]\n'
                               '[[routes]]\nquay = "acme/*"\ngithub = "acme/other"\n')
    body = json.dumps(sample_body("build_success", "acme/api")).encode()
    event = parse_event("build_success", body)

    sent = plan_dispatches(event, routes, body)
    recovered = plan_dispatches(event, routes, body, recovered="build 1")

    assert [r.body["inputs"]["recovered"] for r in (sent[0], recovered[0])] == ["false", "true"]
    assert sent[1].body == recovered[1].body and len(recovered[1].body["client_payload"]) == 10
    assert [r.dedup_key for r in sent] == [r.dedup_key for r in recovered]  # a build is the same build either way
