"""Operations endpoints: liveness, readiness and metrics. No credentials needed, nothing secret revealed."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, jsonify

from . import metrics
from .outbox import StoreUnavailable
from .services import services_of

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
    problems = []
    try:
        svc.outbox.check_writable()
    except StoreUnavailable as exc:
        problems.append("the outbox cannot commit a write right now")
        g.error_detail = f"the outbox ({svc.outbox.description}) cannot commit: {exc}"  # the log line, not the answer
    if not svc.deliverer.alive:
        problems.append("the deliverer is not running")
    if svc.certificates is not None and svc.certificates.waiting:
        problems.append(svc.certificates.waiting)
    g.outcome = "not ready" if problems else "ready"
    if problems:
        return jsonify({"status": "not ready", "reasons": problems}), 503
    return jsonify({"status": "ready", "dry_run": svc.settings.dry_run})


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format."""
    g.outcome = "ok"
    svc = services_of()
    return Response(metrics.exposition(svc.outbox, svc.settings.metrics_dir), mimetype=metrics.MEDIA_TYPE)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
