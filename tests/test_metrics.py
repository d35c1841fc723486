"""GET /metrics: Prometheus text, the same sums whichever gunicorn worker answers the scrape."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from quay_dispatch import __version__
from quay_dispatch.base.metrics import exposition
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.client import PLAIN
from testkit.credentials import INCOMING_TOKEN
from testkit.faults import hold_sqlite_lock
from testkit.service import scrape, wait_until


def test_metrics_add_up_every_worker(start_service, test_pki, github):
    github.answer(404, {"message": "Not Found"}, headers={"X-RateLimit-Remaining": "4321"})
    service = start_service(args=["--workers", "2"])
    for _ in range(6):
        body = sample_body("build_success", "acme/widget")
        assert send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"),
                              verify=test_pki.ca_file).status_code == 202
    send_like_quay(service.url + "/incoming", sample_body("build_success", "other/app"), test_pki.pair("quay"),
                   verify=test_pki.ca_file)
    assert len(github.wait_for(6)) == 6
    # The deliverers count an attempt once they have recorded GitHub's answer.
    def attempts():
        metrics = scrape(service, test_pki)
        return [metrics.get(("quay_dispatch_delivery_attempts_total", (("result", result),)))
                for result in ("delivered", "failed")]
    assert wait_until(lambda: attempts() == [5, 1], interval=0.1), attempts()

    # New connections, so different workers answer; every answer has the same sums.
    scrapes = [scrape(service, test_pki) for _ in range(6)]

    accepted = ("quay_dispatch_incoming_total", (("event", "build_success"), ("outcome", "accepted"),
                                                 ("status", "202")))
    refused = ("quay_dispatch_incoming_total", (("event", "build_success"), ("outcome", "error"), ("status", "403")))
    for metrics in scrapes:
        assert metrics[accepted] == 6
        assert metrics[refused] == 1
        assert metrics[("quay_dispatch_delivery_attempts_total", (("result", "delivered"),))] == 5
        assert metrics[("quay_dispatch_delivery_attempts_total", (("result", "failed"),))] == 1
        assert metrics[("quay_dispatch_deliveries", (("status", "delivered"),))] == 5
        assert metrics[("quay_dispatch_deliveries", (("status", "failed"),))] == 1
        assert metrics[("quay_dispatch_deliveries", (("status", "pending"),))] == 0
        assert metrics[("quay_dispatch_delivery_latency_seconds_count", ())] == 5
        assert metrics[("quay_dispatch_github_rate_limit_remaining", (("host", github.url[7:]),))] == 4321


def test_the_served_file_certificates_expiry_is_a_metric(start_service, test_pki):
    service = start_service(args=["--workers", "2"])
    expiry = test_pki.issued["server"].cert.not_valid_after_utc.timestamp()
    issued = test_pki.issued["server"].cert.not_valid_before_utc.timestamp()

    metrics = scrape(service, test_pki)

    assert metrics[("quay_dispatch_tls_certificate_expiry_timestamp_seconds", (("source", "file"),))] == expiry
    assert metrics[("quay_dispatch_tls_certificate_issued_timestamp_seconds", (("source", "file"),))] == issued


def test_a_service_without_tls_reports_no_certificate_expiry_rather_than_0(start_service):
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": INCOMING_TOKEN},
                            args=["--workers", "2"])

    text = requests.get(service.url + "/metrics", timeout=10).text

    assert [line for line in text.splitlines() if line.startswith("quay_dispatch_tls_certificate_")] == []


def host(github) -> str:
    return github.url.split("://", 1)[1]


def test_every_series_an_alert_reads_is_there_from_the_start(start_service, test_pki, github):
    service = start_service(args=["--workers", "2"])

    metrics = scrape(service, test_pki)

    for result in ("delivered", "retry", "failed", "expired"):
        assert metrics[("quay_dispatch_delivery_attempts_total", (("result", result),))] == 0
    for result in ("dispatched", "unavailable"):
        assert metrics[("quay_dispatch_store_bypass_total", (("result", result),))] == 0
    for status in ("500", "503"):
        assert metrics[("quay_dispatch_incoming_total", (("event", "build_success"), ("outcome", "error"),
                                                         ("status", status)))] == 0
    assert metrics[("quay_dispatch_build_info", (("version", __version__),))] == 1
    assert metrics[("quay_dispatch_oldest_pending_delivery_age_seconds", ())] == 0
    assert not [key for key in metrics if key[0] == "quay_dispatch_github_token_expiry_timestamp_seconds"]


def test_the_deliverers_heartbeat_is_the_oldest_workers_and_beats_on(start_service, test_pki, github):
    service = start_service(args=["--workers", "2"])
    key = ("quay_dispatch_deliverer_heartbeat_timestamp_seconds", (("host", host(github)),))

    first = scrape(service, test_pki)[key]
    assert wait_until(lambda: scrape(service, test_pki)[key] > first, timeout=5)
    assert time.time() - 5 < scrape(service, test_pki)[key] <= time.time()


def _has_beaten(directory, pid: int) -> bool:
    """Whether worker `pid`'s deliverer has written its heartbeat to prometheus-client's multiprocess files."""
    path = directory / f"gauge_livemin_{pid}.db"
    return path.exists() and any("deliverer_heartbeat" in key
                                 for key, *_ in MmapedDict.read_all_values_from_file(str(path)))


def test_one_stalled_deliverer_holds_the_heartbeat_back_while_the_other_beats(start_service, test_pki, github,
                                                                              tmp_path):
    metrics_dir = tmp_path / "metrics"
    service = start_service({"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, args=["--workers", "2"])
    key = ("quay_dispatch_deliverer_heartbeat_timestamp_seconds", (("host", host(github)),))
    assert wait_until(lambda: len(re.findall(r"Booting worker with pid: (\d+)", service.log())) == 2)
    stalled = int(re.findall(r"Booting worker with pid: (\d+)", service.log())[0])
    assert wait_until(lambda: _has_beaten(metrics_dir, stalled), timeout=15)  # its deliverer runs: a slow boot

    os.kill(stalled, signal.SIGSTOP)  # its deliverer, with all else in it, stops looking
    try:
        stopped_at = time.time()
        time.sleep(2.5)
        seen = [scrape(service, test_pki)[key] for _ in range(3)]  # answered by the other worker, beating on
    finally:
        os.kill(stalled, signal.SIGCONT)

    assert all(stopped_at - 5 < beat <= stopped_at for beat in seen), (stopped_at, seen)
    assert wait_until(lambda: scrape(service, test_pki)[key] > stopped_at + 2, timeout=5)


def test_the_oldest_pending_delivery_ages_while_github_fails(start_service, test_pki, github):
    github.answer(500, {"message": "down"}, times=50)
    service = start_service(args=["--workers", "2"])
    assert send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                          test_pki.pair("quay"), verify=test_pki.ca_file).status_code == 202
    key = ("quay_dispatch_oldest_pending_delivery_age_seconds", ())

    assert wait_until(lambda: scrape(service, test_pki)[key] > 1.0, timeout=10)
    first = scrape(service, test_pki)[key]
    time.sleep(1)
    assert scrape(service, test_pki)[key] >= first + 0.9


def after_github_said_when(start_service, test_pki, github):
    """A 2-worker service after one delivery whose answer named the token's expiry and the rate limit; and the
    label of those gauges."""
    github.answer(204, headers={"GitHub-Authentication-Token-Expiration": "2027-01-02 03:04:05 UTC",
                                "X-RateLimit-Remaining": "42", "X-RateLimit-Reset": "1900000000"})
    service = start_service(args=["--workers", "2"])
    assert send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                          test_pki.pair("quay"), verify=test_pki.ca_file).status_code == 202
    labels = (("host", host(github)),)
    assert wait_until(lambda: ("quay_dispatch_github_token_expiry_timestamp_seconds", labels) in
                      scrape(service, test_pki), timeout=10)
    return service, labels


def test_the_tokens_expiry_and_the_rate_limit_are_what_github_says(start_service, test_pki, github):
    service, labels = after_github_said_when(start_service, test_pki, github)
    expiry = ("quay_dispatch_github_token_expiry_timestamp_seconds", labels)

    metrics = scrape(service, test_pki)
    assert metrics[expiry] == datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()
    assert metrics[("quay_dispatch_github_rate_limit_remaining", labels)] == 42
    assert metrics[("quay_dispatch_github_rate_limit_reset_timestamp_seconds", labels)] == 1900000000


def test_a_refused_caller_that_names_quay_is_counted_and_a_stranger_is_not(start_service, test_pki):
    service = start_service(args=["--workers", "2"])
    key = ("quay_dispatch_quay_certificate_refused_total", ())
    assert scrape(service, test_pki)[key] == 0

    for name in ("other_host", "other_root", "other_root", "expired"):  # the second other_root from the cache
        assert send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                              test_pki.pair(name), verify=test_pki.ca_file).status_code == 403

    assert scrape(service, test_pki)[key] == 3


def test_with_the_store_down_the_gauges_it_holds_are_left_out_and_the_others_answer(start_service, test_pki,
                                                                                    github, backend, database_url):
    if backend != "sqlite":
        pytest.skip("SQLite's file moved away")
    service, labels = after_github_said_when(start_service, test_pki, github)
    before = scrape(service, test_pki)
    database = Path(urlsplit(database_url).path[1:])
    with hold_sqlite_lock(database, seconds=6):  # a write lock: a scrape reads beside it
        assert scrape(service, test_pki)[("quay_dispatch_outbox_readable", ())] == 1

    database.rename(database.with_name("away"))  # the store is gone: nothing can read it
    try:
        time.sleep(1.5)
        metrics = scrape(service, test_pki)
    finally:
        database.with_name("away").rename(database)

    assert metrics[("quay_dispatch_outbox_readable", ())] == 0
    assert ("quay_dispatch_oldest_pending_delivery_age_seconds", ()) not in metrics
    assert time.time() - 10 < metrics[("quay_dispatch_deliverer_heartbeat_timestamp_seconds", labels)]  # beats on
    # What the store does not hold answers as before.
    for name in ("quay_dispatch_github_token_expiry_timestamp_seconds", "quay_dispatch_github_rate_limit_remaining",
                 "quay_dispatch_github_rate_limit_reset_timestamp_seconds"):
        assert metrics[(name, labels)] == before[(name, labels)]
    for name in ("quay_dispatch_tls_certificate_expiry_timestamp_seconds",
                 "quay_dispatch_tls_certificate_issued_timestamp_seconds"):
        assert metrics[(name, (("source", "file"),))] == before[(name, (("source", "file"),))]
    assert metrics[("quay_dispatch_build_info", (("version", __version__),))] == 1


def test_a_workers_metrics_file_just_created_and_still_empty_is_no_500(tmp_path):
    """A booting worker creates its file, then sizes it: a scrape in between met an empty file, and prometheus-client
    raised on it (seen as a 500 to /metrics while the second worker booted)."""
    written = MmapedDict(str(tmp_path / "counter_1.db"))
    written.write_value(json.dumps(["quay_dispatch_probe", "quay_dispatch_probe_total", {}, "a probe"]), 3.0, 0.0)
    written.close()
    (tmp_path / "counter_2.db").touch()
    assert b"quay_dispatch_probe_total 3.0" in exposition(str(tmp_path))
