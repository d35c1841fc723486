"""Operations endpoints: liveness, readiness and metrics (the workers' counters, and the outbox's counts read from
the store at scrape time). No credentials needed, nothing secret revealed."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..base import metrics
from ..outbox import Outbox, StoreUnavailable
from ..runtime.services import services_of

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process serves HTTP."""
    g.outcome = "ok"
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """The service can accept events: the store is writable and the deliverer runs."""
    svc = services_of()
    found = svc.not_ready()
    problems = [said for said, _ in found]
    if found:
        g.error_detail = "; ".join(detail for _, detail in found)  # the log line, not the answer
    g.outcome = "not ready" if problems else "ready"
    if problems:
        return jsonify({"status": "not ready", "reasons": problems}), 503
    return jsonify({"status": "ready", "dry_run": svc.settings.dry_run})


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format."""
    g.outcome = "ok"
    svc = services_of()
    store = CollectorRegistry()
    store.register(OutboxCollector(svc.outbox))
    if svc.settings.quay_api_token:
        from ..quay_side.gauges import QuaySideCollector

        store.register(QuaySideCollector(svc.outbox))
    return Response(metrics.exposition(svc.settings.metrics_dir) + generate_latest(store), mimetype=metrics.MEDIA_TYPE)


class OutboxCollector:
    """Deliveries by status, counted in the store at scrape time; left out while the store cannot be read."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def collect(self):
        try:
            counts, oldest = self.outbox.counts(), self.outbox.oldest_pending()
        except StoreUnavailable:
            counts = oldest = None
        yield GaugeMetricFamily("quay_dispatch_outbox_readable",
                                "1 if the outbox answered this scrape, 0 if not (its counts are then left out)",
                                value=0 if counts is None else 1)
        if counts is not None:
            family = GaugeMetricFamily("quay_dispatch_deliveries", "Deliveries in the outbox, by status",
                                       labels=["status"])
            for status, count in sorted(counts.items()):
                family.add_metric([status], count)
            yield family
            yield GaugeMetricFamily("quay_dispatch_oldest_pending_delivery_age_seconds",
                                    "Age of the oldest delivery still to send (since it was queued), 0 when none is",
                                    value=0 if oldest is None else max(0.0, time.time() - oldest))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
