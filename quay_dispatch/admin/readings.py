"""Is it healthy: what /metrics says (every worker's, summed as for Prometheus), as the overview shows it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ..base import metrics
from ..runtime.services import Services


def health(svc: Services) -> dict:
    """What the workers' metrics say, as the overview shows it (the store's own counts it reads itself)."""
    text = metrics.exposition(svc.settings.metrics_dir).decode("utf-8")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return {
        "bypasses": _per_label(samples, "quay_dispatch_store_bypass_total", "result"),
        "calls": {k: v for k, v in _per_label(samples, "quay_dispatch_incoming_total", "outcome").items() if v},
        "last_call": max(((v, k) for k, v in _per_label(samples, "quay_dispatch_last_call_timestamp_seconds",
                                                   "outcome").items()), default=None),
        "rate_limit": _per_label(samples, "quay_dispatch_github_rate_limit_remaining", "host"),
        "token_expiry": _per_label(samples, "quay_dispatch_github_token_expiry_timestamp_seconds", "host"),
        "certificate_expiry": _per_label(samples, "quay_dispatch_tls_certificate_expiry_timestamp_seconds", "source"),
        "heartbeat": _per_label(samples, "quay_dispatch_deliverer_heartbeat_timestamp_seconds", "host"),
    }


def _per_label(samples: dict, name: str, label: str) -> dict[str, float]:
    """A metric's samples summed by one label."""
    summed: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        key = dict(labels).get(label, "")
        summed[key] = summed.get(key, 0.0) + value
    return summed
