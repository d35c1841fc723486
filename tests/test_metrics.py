"""GET /metrics: Prometheus text, the same sums whichever gunicorn worker answers the scrape."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from quay_dispatch.sample import sample_body, send_like_quay
from testkit.client import PLAIN
from testkit.credentials import INCOMING_TOKEN
from testkit.service import wait_until


def scrape(service, test_pki) -> dict[tuple, float]:
    # With cert_reqs 2 the TLS layer wants a certificate: any will do, such as the server's own.
    text = requests.get(service.url + "/metrics", cert=test_pki.pair("server"), verify=test_pki.ca_file,
                        timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


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

    metrics = scrape(service, test_pki)

    assert metrics[("quay_dispatch_tls_certificate_expiry_timestamp_seconds", (("source", "file"),))] == expiry


def test_a_service_without_tls_reports_no_certificate_expiry_rather_than_0(start_service):
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": INCOMING_TOKEN},
                            args=["--workers", "2"])

    text = requests.get(service.url + "/metrics", timeout=10).text

    assert [line for line in text.splitlines() if line.startswith("quay_dispatch_tls_certificate_")] == []
