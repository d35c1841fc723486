"""monitoring/: the alert rules pass promtool and their own cases, and a real Prometheus scraping the real service
sees them fire; every dashboard query is one that Prometheus answers."""

from __future__ import annotations

import json
import re
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import yaml

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.faults import hold_sqlite_lock
from testkit.prometheus import DASHBOARD, OPERATIONS, RULE_TESTS, RULES, Prometheus, prometheus_missing
from testkit.service import free_port, require, wait_until

# DESIGN.md's table ("Alerts and the dashboard"), the refused caller that presents Quay's name, and Quay's side.
ALERTS = {"QuayDispatchDown", "QuayDispatchAnsweredQuayWithError", "QuayDispatchDeliveryFailed",
          "QuayDispatchBacklogStuck", "QuayDispatchStoreDegraded", "QuayDispatchCertificateExpiresSoon",
          "QuayDispatchGitHubTokenExpiresSoon", "QuayDispatchGitHubRateLimitLow", "QuayDispatchDelivererStalled",
          "QuayDispatchQuayCertificateRefused", "QuayDispatchQuayNotificationDisabled",
          "QuayDispatchQuayNotificationMissing", "QuayDispatchQuayTokenRefused"}


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"  # the store is made unavailable by holding SQLite's lock


@pytest.fixture(autouse=True)
def promtool():
    require(prometheus_missing())


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_pass_promtools_check_and_their_own_cases():
    for argv in (["promtool", "check", "rules", RULES.name], ["promtool", "test", "rules", RULE_TESTS.name]):
        done = subprocess.run(argv, cwd=RULES.parent, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"


def test_every_alert_ships_with_its_severity_its_words_and_a_runbook_that_exists():
    anchors = {"#" + re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
               for title in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)}

    assert {rule["alert"] for rule in rules()} == ALERTS
    for rule in rules():
        assert 'job="quay-dispatch"' in rule["expr"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        path, anchor = rule["annotations"]["runbook_url"].split("#")
        assert (path, "#" + anchor) == ("docs/operations.md", "#" + rule["alert"].lower())
        assert "#" + anchor in anchors, f"{rule['alert']}: no section {anchor} in docs/operations.md"


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]

    assert {case["alertname"] for case in cases if case["exp_alerts"]} == ALERTS
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == ALERTS


def test_a_real_prometheus_sees_the_alerts_fire_against_the_real_service(start_service, test_pki, github,
                                                                          database_url, tmp_path):
    page = f"127.0.0.1:{free_port()}"
    service = start_service({"ADMIN_BIND": page}, args=["--workers", "2"])
    prometheus = Prometheus(tmp_path, page, test_pki.ca_file)
    try:
        assert wait_until(lambda: prometheus.query('up{job="quay-dispatch"} == 1'), timeout=20), prometheus.log()
        time.sleep(3)  # a few evaluations: a healthy service raises nothing
        assert prometheus.firing() == set()

        github.answer(204, headers={"X-RateLimit-Remaining": "4321", "X-RateLimit-Reset": str(int(time.time()) + 3600),
                                    "GitHub-Authentication-Token-Expiration": "2099-01-02 03:04:05 UTC"})
        notify(service, test_pki, "accepted")
        assert github.wait_for(1)
        github.answer(401, {"message": "Bad credentials"})
        notify(service, test_pki, "accepted")
        assert prometheus.wait_firing("QuayDispatchDeliveryFailed"), prometheus.api("alerts")

        with hold_sqlite_lock(urlsplit(database_url).path[1:], seconds=8):
            notify(service, test_pki, "dispatched")
        assert prometheus.wait_firing("QuayDispatchStoreDegraded"), prometheus.api("alerts")

        assert_every_dashboard_query_answers_with_data(prometheus, page)
        assert prometheus.firing() == {"QuayDispatchDeliveryFailed", "QuayDispatchStoreDegraded"}

        service.stop()
        assert prometheus.wait_firing("QuayDispatchDown"), prometheus.api("alerts")
    finally:
        prometheus.stop()


def notify(service, test_pki, status: str) -> None:
    response = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                              test_pki.pair("quay"), verify=test_pki.ca_file)
    assert (response.status_code, response.json()["status"]) == (202, status), response.text


def assert_every_dashboard_query_answers_with_data(prometheus: Prometheus, instance: str) -> None:
    """Each panel's queries as Grafana sends them (its variables filled in), each answered, each with data."""
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    selector = re.fullmatch(r"label_values\((.+), instance\)", variable["definition"]).group(1)
    assert prometheus.api("label/instance/values", **{"match[]": selector}) == [instance]
    assert wait_until(lambda: all(prometheus.query(t["expr"].replace("$instance", variable["allValue"])
                                                   .replace("$__rate_interval", "5m"))
                                  for panel in dashboard["panels"] for t in panel["targets"]), timeout=15), [
        (panel["title"], t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]
        if not prometheus.query(t["expr"].replace("$instance", ".+").replace("$__rate_interval", "5m"))]
