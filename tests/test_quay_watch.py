"""The watch (issue 33): a real relay looks at a loopback Quay every QUAY_WATCH_INTERVAL, resets what Quay disabled,
holds off when resets do not help, and serves Quay as before whatever Quay's API does."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.credentials import INCOMING_TOKEN, LESSER_TOKEN, REVOKED_QUAY_TOKEN
from testkit.quay_api import RELAY_ADDRESS, Repository, start_relay_for
from testkit.service import free_port, run_flask, scrape, wait_for_log, wait_until

INTERVAL = "5"  # seconds, the least QUAY_WATCH_INTERVAL allowed
EVENT = ("quay_dispatch_quay_notification_disabled", (("event", "build_success"), ("repository", "acme/api")))


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture(autouse=True)
def repositories(quay):
    for name in ("acme/api", "acme/web"):
        quay.repositories[name] = Repository()


def _resets(quay, notification) -> int:
    return sum(1 for r in quay.requests if r.method == "POST" and r.path.endswith(notification["uuid"]))


def _relay_url(relay, password: str = INCOMING_TOKEN) -> str:
    return f"https://quay:{password}@{RELAY_ADDRESS}:{relay.port}/incoming/build_success"


def test_a_disabled_notification_is_reset_within_one_watch_and_counted(start_service, quay, test_pki):
    page = f"127.0.0.1:{free_port()}"
    relay = start_relay_for(start_service, quay, {"QUAY_WATCH_INTERVAL": INTERVAL, "INCOMING_TOKEN": INCOMING_TOKEN,
                                                  "ADMIN_BIND": page})
    disabled = quay.add_notification("acme/api", "build_success", _relay_url(relay), failures=3)
    theirs = quay.add_notification("acme/web", "build_success", "https://elsewhere.example/hook", failures=3)

    assert wait_until(lambda: disabled["number_of_failures"] == 0, timeout=20)
    assert wait_until(lambda: scrape(relay, test_pki).get(EVENT) == 0, timeout=10)
    metrics = scrape(relay, test_pki)
    assert _resets(quay, disabled) == 1 and _resets(quay, theirs) == 0 and theirs["number_of_failures"] == 3
    assert metrics[("quay_dispatch_quay_notification_resets_total", ())] == 1
    assert metrics[("quay_dispatch_quay_notification_missing", (("event", "build_success"),
                                                                 ("repository", "acme/web")))] == 1
    assert metrics[("quay_dispatch_quay_api_token_refused", ())] == 0
    assert wait_for_log(relay, f"Quay had disabled the notification {disabled['uuid']} of acme/api")
    overview = requests.get(f"https://{page}/", verify=test_pki.ca_file, timeout=5).text
    card = overview[overview.index("<h2>Quay's side</h2>"):]
    card = card[:card.index("</div>")]
    assert "1 notifications well, 1 missing" in card and "acme/web build_success: missing" in card
    assert "Reset: 1; recovered: 0" in card


def test_a_relay_that_refuses_quay_is_reset_a_bounded_number_of_times_then_held(start_service, quay, test_pki):
    relay = start_relay_for(start_service, quay, {"QUAY_WATCH_INTERVAL": INTERVAL, "INCOMING_TOKEN": INCOMING_TOKEN})
    refused = quay.add_notification("acme/api", "build_success", _relay_url(relay, "a-wrong-token-0123456789abc"),
                                    failures=3)
    stop = threading.Event()

    def builds():  # Quay keeps building, and the relay keeps refusing its calls (401)
        for _ in range(300):
            if stop.wait(0.3):
                return
            quay.emit("acme/api", "build_success", sample_body("build_success", "acme/api"))

    sender = threading.Thread(target=builds, daemon=True)
    sender.start()
    held = ("quay_dispatch_quay_notification_repair_held", EVENT[1])
    try:
        assert wait_until(lambda: _resets(quay, refused) == 3 and refused["number_of_failures"] >= 3
                          and scrape(relay, test_pki).get(held) == 1, timeout=60, interval=0.5)
        assert wait_for_log(relay, "Quay had disabled the notification", count=3)
        shown = run_flask(relay.env, "quay", "--json")
        time.sleep(6)  # one more watch: no fourth reset
    finally:
        stop.set()
        sender.join(5)
    assert _resets(quay, refused) == 3
    assert shown.returncode == 1
    row = next(row for row in json.loads(shown.stdout)["notifications"] if row["uuid"] == refused["uuid"])
    assert (row["state"], row["resets"]) == ("disabled", 3)
    assert row["repair_held"].startswith("reset 3 times and disabled again each time, with nothing coming through")

    repaired = run_flask(relay.env, "quay", "repair")  # the operator fixed the cause: a reset by hand, whatever held it
    assert repaired.returncode == 0 and "reset: acme/api build_success" in repaired.stdout, repaired.stdout
    assert _resets(quay, refused) == 4 and refused["number_of_failures"] == 0


@pytest.mark.parametrize("trouble", ["revoked", "lesser", "down", "slow"])
def test_quay_s_api_refusing_down_or_slow_never_touches_quay_s_calls(start_service, quay, test_pki, trouble):
    overrides = {"QUAY_WATCH_INTERVAL": INTERVAL}
    tokens = {"revoked": REVOKED_QUAY_TOKEN, "lesser": LESSER_TOKEN}
    if trouble in tokens:
        overrides["QUAY_API_TOKEN"] = tokens[trouble]
    if trouble == "slow":
        quay.delay = 12.0  # past the client's 10 s timeout
    page = overrides["ADMIN_BIND"] = f"127.0.0.1:{free_port()}"
    relay = start_relay_for(start_service, quay, overrides)
    if trouble == "down":
        quay.close()

    answered = send_like_quay(relay.url + "/incoming/build_success", sample_body("build_success", "acme/api"),
                              test_pki.pair("quay"), verify=test_pki.ca_file)
    assert answered.status_code == 202, answered.text
    expected = {"revoked": "Quay refused the token (401", "lesser": "the token may not do this (403",
                "down": f"Quay's API at {quay.url} did not answer",
                "slow": f"Quay's API at {quay.url} did not answer: ReadTimeout"}[trouble]
    assert wait_for_log(relay, f"Quay's side was not looked at: {expected}", timeout=25), relay.log()
    if trouble != "slow":
        checked = run_flask(relay.env, "check-config", "--online")
        assert checked.returncode == 1 and f"PROBLEM, {expected}" in checked.stdout, checked.stdout
    assert requests.get(relay.url + "/readyz", cert=test_pki.pair("server"), verify=test_pki.ca_file,
                        timeout=5).status_code == 200
    overview = requests.get(f"https://{page}/", verify=test_pki.ca_file, timeout=5).text
    assert "Last look" in overview and expected.replace("'", "&#39;") in overview
    refused = scrape(relay, test_pki)[("quay_dispatch_quay_api_token_refused", ())]
    assert refused == (1 if trouble in ("revoked", "lesser") else 0)
