"""Operations endpoints: liveness and readiness. No credentials needed, nothing secret revealed."""

from __future__ import annotations

from flask import Blueprint, Flask, g, jsonify

from .outbox import StoreUnavailable
from .services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process serves HTTP."""
    g.outcome = "ok"
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """The service can accept events: the store is writable and the deliverer runs."""
    svc = services()
    problems = []
    try:
        svc.outbox.check_writable()
    except StoreUnavailable:
        problems.append("the outbox is not writable")
    if not svc.deliverer.alive:
        problems.append("the deliverer is not running")
    g.outcome = "not ready" if problems else "ready"
    if problems:
        return jsonify({"status": "not ready", "reasons": problems}), 503
    return jsonify({"status": "ready", "dry_run": svc.settings.dry_run})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
