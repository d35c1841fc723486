"""Metrics: the Prometheus counters, and their text for GET /metrics, the same whichever worker answers.

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker starts, which
puts prometheus-client in multiprocess mode: each worker writes its samples to
files there and a scrape adds them up. The outbox's counts are read from the store
at scrape time (health.py), so they are right across workers and replicas alike.
"""

from __future__ import annotations

import glob
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .. import __version__

MEDIA_TYPE = CONTENT_TYPE_LATEST

INCOMING = Counter("quay_dispatch_incoming_total", "Quay notifications answered, by event, HTTP status and outcome",
                   ["event", "status", "outcome"])
ATTEMPTS = Counter("quay_dispatch_delivery_attempts_total",
                   "Dispatch attempts, by what came of the delivery: delivered, retry, failed, expired", ["result"])
LATENCY = Histogram("quay_dispatch_delivery_latency_seconds", "From acceptance (or redelivery) to GitHub's 2xx",
                    buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400))
STORE_BYPASS = Counter("quay_dispatch_store_bypass_total",
                       "Notifications the outbox could not take, by what came of them: dispatched (sent to "
                       "GitHub directly, answered 202) or unavailable (GitHub refused too, answered 503)", ["result"])
QUAY_CERTIFICATE_REFUSED = Counter(
    "quay_dispatch_quay_certificate_refused_total",
    "Calls refused (403) although their client certificate names QUAY_HOSTNAME: Quay's own from a CA that "
    "QUAY_CA_FILE does not hold, or out of its validity, or a forgery of it")
# Labelled by where the certificate comes from (file or acme), so that a service without TLS has no sample
# at all: an unlabelled gauge in multiprocess mode is written as 0 by every worker from its import on.
TLS_CERTIFICATE_EXPIRY = Gauge("quay_dispatch_tls_certificate_expiry_timestamp_seconds",
                               "When the TLS certificate being served expires (its not-after, epoch seconds), by "
                               "source: file or acme; the earliest of the workers'", ["source"],
                               multiprocess_mode="livemin")
ACME_ORDERS = Counter("quay_dispatch_acme_orders_total", "Certificates ordered from ACME, by result: issued or failed",
                      ["result"])
for _result in ("issued", "failed"):
    ACME_ORDERS.labels(_result)  # at 0 from the start: an alert on increase() sees the first failure
TLS_CERTIFICATE_ISSUED = Gauge("quay_dispatch_tls_certificate_issued_timestamp_seconds",
                               "When the TLS certificate being served was issued (its not-before, epoch seconds), by "
                               "source: file or acme; the oldest of the workers'", ["source"],
                               multiprocess_mode="livemin")
GITHUB_TOKEN_EXPIRY = Gauge("quay_dispatch_github_token_expiry_timestamp_seconds",
                            "When the GitHub token expires, from GitHub's github-authentication-token-expiration "
                            "answer header (epoch seconds); absent while GitHub has sent none", ["host"],
                            multiprocess_mode="mostrecent")
DELIVERER_HEARTBEAT = Gauge("quay_dispatch_deliverer_heartbeat_timestamp_seconds",
                            "When a worker's deliverer last went round its loop (epoch seconds; every 2 s, idle or "
                            "not), for a GitHub host; the oldest of the live workers', so that one stalled thread "
                            "shows", ["host"],
                            multiprocess_mode="livemin")
BUILD_INFO = Gauge("quay_dispatch_build_info", "1, labelled with the service's version", ["version"],
                   multiprocess_mode="max")
BUILD_INFO.labels(__version__).set(1)
# The series an alert reads exist at 0 from the start: increase() cannot see a first sample's 1 as an increase.
for _result in ("delivered", "retry", "failed", "expired"):
    ATTEMPTS.labels(_result)
for _result in ("dispatched", "unavailable"):
    STORE_BYPASS.labels(_result)
LAST_CALL = Gauge("quay_dispatch_last_call_timestamp_seconds",
                  "When Quay last called (a caller that proved to be Quay), by the outcome of the answer",
                  ["outcome"], multiprocess_mode="mostrecent")
RATE_LIMIT_REMAINING = Gauge("quay_dispatch_github_rate_limit_remaining",
                             "GitHub's x-ratelimit-remaining in its latest answer", ["host"],
                             multiprocess_mode="mostrecent")
RATE_LIMIT_RESET = Gauge("quay_dispatch_github_rate_limit_reset_timestamp_seconds",
                         "GitHub's x-ratelimit-reset in its latest answer: when the remaining count is full again "
                         "(epoch seconds)", ["host"], multiprocess_mode="mostrecent")


def count_from_zero(events) -> None:
    """Every 5xx answer an alert watches for, at 0 from the start, for each of `events` (quay.ALL_EVENTS)."""
    for event in events:
        for status in ("500", "503"):
            INCOMING.labels(event, status, "error")


def github_said(host: str, outcome) -> None:
    """What GitHub's answer (a policy.Outcome) told of the rate limit and the token, for `host`."""
    for gauge, value in ((RATE_LIMIT_REMAINING, outcome.rate_limit_remaining),
                         (RATE_LIMIT_RESET, outcome.rate_limit_reset), (GITHUB_TOKEN_EXPIRY, outcome.token_expiry)):
        if value is not None:
            gauge.labels(host).set(value)


def certificate_served(source: str, leaf) -> None:
    """The TLS certificate now served (a cryptography certificate), from `source`: file or acme."""
    TLS_CERTIFICATE_EXPIRY.labels(source).set(leaf.not_valid_after_utc.timestamp())
    TLS_CERTIFICATE_ISSUED.labels(source).set(leaf.not_valid_before_utc.timestamp())


def exposition(multiprocess_dir: str | None) -> bytes:
    """Every counter and gauge of every worker, in Prometheus text format (the store's counts are health.py's).

    `multiprocess_dir` is Settings.metrics_dir: PROMETHEUS_MULTIPROC_DIR, prometheus-client's own
    switch to its multiprocess mode, which gunicorn.conf.py sets for the workers.
    """
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        registry.register(_Workers(multiprocess_dir))
    else:
        registry = REGISTRY
    return generate_latest(registry)


class _Workers(multiprocess.MultiProcessCollector):
    """The workers' files, but one a booting worker has just created, still empty (prometheus-client reads it as
    a broken file, and /metrics answered 500): it holds nothing yet, and a file only grows."""

    def __init__(self, path: str):
        self._path = path

    def collect(self):
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if os.path.getsize(f) >= 8]
        return self.merge(files, accumulate=True)
