"""Quay's side (issue 33): `quay` shows what Quay has beside what the routes want, `quay connect` creates what is
missing and proves the path with Quay's tests. A real relay (gunicorn, TLS, client certificates) and a loopback Quay
(testkit.quay_api) whose sender follows Quay's rules; the relay is called at 127.0.0.2, as Quay will not call
localhost or 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from testkit.credentials import INCOMING_TOKEN, QUAY_API_TOKEN
from testkit.quay_api import Repository, start_relay_for
from testkit.service import run_flask

ROUTES = """
[[routes]]
quay = "acme/*"
events = ["build_success", "repo_push"]

[[routes]]
quay = "solo/app"
github = "solo-gh/app"
events = ["build_failure", "quota_warning"]
"""


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"  # Quay's side on PostgreSQL: the two-replica test


@pytest.fixture(autouse=True)
def repositories(quay):
    for name in ("acme/api", "acme/web", "solo/app", "other/thing"):
        quay.repositories[name] = Repository()


@pytest.fixture
def relay(start_service, quay, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    return start_relay_for(start_service, quay, {"ROUTES": None, "ROUTES_FILE": str(routes),
                                                 "INCOMING_TOKEN": INCOMING_TOKEN, "QUAY_WATCH_INTERVAL": "1h",
                                                 "QUAY_REPAIR": "0"})  # the watch's repairs: test_quay_watch


def _quay(relay, *args):
    return run_flask(relay.env, "quay", *args)


def _shown(relay) -> dict:
    return json.loads(_quay(relay, "--json").stdout)


def test_connect_creates_exactly_the_missing_notifications_and_leaves_others_alone(relay, quay):
    public = relay.env["PUBLIC_URL"]
    theirs = quay.add_notification("acme/api", "build_success", "https://elsewhere.example/hook?x=1", failures=3)
    own = quay.add_notification("acme/api", "quay_notification", "", method="quay_notification")
    already = quay.add_notification("acme/web", "build_success", f"https://quay:old@{public[8:]}/incoming/build_success")

    before = _quay(relay)
    dry = _quay(relay, "connect", "--dry-run")
    unchanged = [dict(n) for repo in quay.repositories.values() for n in repo.notifications]
    connected = _quay(relay, "connect")
    again = _quay(relay, "connect")

    assert before.returncode == 1 and "missing" in before.stdout and "quay connect" in before.stdout
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would create:") == 4 and len(unchanged) == 3
    assert "elsewhere.example" not in dry.stdout  # a foreign notification is not for connect to mind
    created = [r.json() for r in quay.requests if r.method == "POST"]
    assert sorted((c["event"], c["config"]["url"]) for c in created) == sorted([
        ("repo_push", f"https://quay:{INCOMING_TOKEN}@{public[8:]}/incoming/repo_push"),
        ("build_success", f"https://quay:{INCOMING_TOKEN}@{public[8:]}/incoming/build_success"),
        ("repo_push", f"https://quay:{INCOMING_TOKEN}@{public[8:]}/incoming/repo_push"),
        ("build_failure", f"https://quay:{INCOMING_TOKEN}@{public[8:]}/incoming/build_failure"),
    ])
    assert {c["method"] for c in created} == {"webhook"} and all(c["eventConfig"] == {} for c in created)
    assert {c["title"] for c in created} >= {"quay-github-actions-dispatch: repo_push"}
    assert connected.returncode == 0 and connected.stdout.count("created:") == 4
    assert "nothing to create" in again.stdout and len([r for r in quay.requests if r.method == "POST"]) == 4
    assert theirs in quay.repositories["acme/api"].notifications and theirs["number_of_failures"] == 3
    assert own in quay.repositories["acme/api"].notifications and already["config"]["url"].startswith("https://quay:old")
    assert not any(r.method == "DELETE" for r in quay.requests)
    assert INCOMING_TOKEN not in connected.stdout + connected.stderr + again.stdout + before.stdout

    shown = _shown(relay)
    assert sorted((n["repository"], n["event"], n["state"]) for n in shown["notifications"]) == [
        ("acme/api", "build_success", "ok"), ("acme/api", "repo_push", "ok"), ("acme/web", "build_success", "ok"),
        ("acme/web", "repo_push", "ok"), ("solo/app", "build_failure", "ok")]
    assert {(n["repository"], n["event"]) for n in shown["not_ours"]} == {("acme/api", "build_success"),
                                                                        ("acme/api", "quay_notification")}
    assert shown["not_watched"] == ["solo: quota_warning"] and shown["problems"] == []
    checked = run_flask(relay.env, "check-config", "--online")  # (the loopback GitHub knows no solo-gh/app)
    assert f"ok, {quay.url} takes the token: it reads the notifications of 3 routed repositories" in checked.stdout


def test_connect_test_says_which_tests_arrived_and_why_the_others_did_not(relay, quay):
    public = relay.env["PUBLIC_URL"][8:]
    assert _quay(relay, "connect").returncode == 0
    web_push = next(n for n in quay.repositories["acme/web"].notifications if n["event"] == "repo_push")
    web_push["config"]["url"] = f"https://quay:wrong-token-0123456789abcdef@{public}/incoming/repo_push"  # refused
    solo = quay.repositories["solo/app"].notifications[0]
    solo["number_of_failures"] = 3  # Quay turned it off: its test is dropped

    tested = _quay(relay, "connect", "--test", "--wait", "15")

    lines = tested.stdout.splitlines()
    assert tested.returncode == 1
    assert sorted(line for line in lines if line.startswith("arrived:")) == [
        "arrived: acme/api build_success", "arrived: acme/api repo_push", "arrived: acme/web build_success"]
    assert any(line.startswith("not arrived: acme/web repo_push") and "Quay called and failed" in line
               for line in lines), tested.stdout
    assert any(line.startswith("not arrived: solo/app build_failure") and "quay repair" in line for line in lines)
    shown = {(n["repository"], n["event"]): n for n in _shown(relay)["notifications"]}
    assert shown[("acme/api", "build_success")]["last_received"] is not None
    assert shown[("acme/web", "repo_push")]["last_received"] is None


def test_quay_commands_say_that_quay_side_is_off_without_a_token(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "ROUTES": "acme/*", "DRY_RUN": "1", "CLIENT_CERT_SOURCE": "none",
           "INCOMING_TOKEN": INCOMING_TOKEN, "DATABASE_URL": f"sqlite:///{tmp_path}/outbox.sqlite3"}
    shown = run_flask(env, "quay")
    assert shown.returncode == 1 and "Quay's side is off: set QUAY_API_TOKEN" in shown.stderr


def test_a_wildcard_namespace_is_listed_page_by_page_and_a_pattern_namespace_is_said(quay, tmp_path):
    from quay_dispatch.domain.routes import parse_inline_routes
    from quay_dispatch.quay_side.api import QuayAPI
    from quay_dispatch.quay_side.survey import survey

    for name in range(5):
        quay.repositories[f"big/r{name}"] = Repository()
    found = survey(QuayAPI(quay.url, QUAY_API_TOKEN), parse_inline_routes("big/*; */x; acme/api"),
                   "https://relay.example.com", {})

    assert [row.repository for row in found.rows] == [f"big/r{n}" for n in range(5)] + ["acme/api"]
    assert {row.state for row in found.rows} == {"missing"}
    assert found.problems == ["route '*/x': a namespace pattern cannot be listed through Quay's API; name the "
                              "namespace (myorg/*)"]
