"""HTTP: the /incoming endpoints. Authenticate, parse, route, store, answer — in that order."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from ..base import metrics
from ..base.limits import MAX_BODY
from ..config import Settings
from ..domain.dispatch_request import DispatchRequest
from ..domain.plan import plan_dispatches
from ..domain.quay import ALL_EVENTS, PayloadError, parse_event
from ..domain.routes import select_routes
from ..outbox import Accepted, Notification, StoreUnavailable
from ..outbox.browse import RefusedCall
from ..runtime.services import Services, services_of
from ..transport.identity import IdentityError, chain_from_header
from ..transport.tls_context import CLIENT_CERT, CLIENT_CERT_CHAIN_PREFIX

# Quay gives up after 10 s; what the service does for a notification ends by then, with room to answer.
ANSWER_WITHIN = 7.5

# jsonify's output outside debug mode (compact, keys sorted, ASCII), from one encoder made once:
# jsonify makes one per answer. The answers hold only strings, numbers and lists.
_ENCODER = json.JSONEncoder(ensure_ascii=True, sort_keys=True, separators=(",", ":"))

bp = Blueprint("incoming", __name__)
log = logging.getLogger("quay_dispatch.http")


class Refusal(Exception):
    """An answer other than success: its status, message and any extra JSON fields."""

    def __init__(self, status: int, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


@bp.post("/incoming", defaults={"event": "build_success"})
@bp.post("/incoming/<event>")
def incoming(event: str):
    """Receive one Quay notification; see docs/api.md for every answer."""
    svc = services_of()
    if event not in ALL_EVENTS:
        raise Refusal(404, f"unknown event {event[:60]!r}; known events: {', '.join(ALL_EVENTS)}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Refusal(413, f"the body is {request.content_length} bytes; the limit is {MAX_BODY}")
    authenticate(svc, request)
    if request.mimetype != "application/json":
        raise Refusal(415, f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}")
    body = read_body(MAX_BODY)
    log.debug("%s body: %s", g.get("request_id"), body[:4096].decode("utf-8", "replace"))
    try:
        quay_event = parse_event(event, body)
    except PayloadError as exc:
        raise Refusal(400, str(exc), field=exc.field or None) from None
    g.quay_repository = quay_event.subject

    selection = select_routes(svc.settings.routes, quay_event)
    if not selection.repository_routed:
        kind = "namespace" if quay_event.is_namespace_event else "repository"
        raise Refusal(403, f"no route allows Quay {kind} {quay_event.subject!r}")
    if not selection.routes:
        return answer(200, "ignored", reason="; ".join(selection.reasons))
    if quay_event.is_test and not svc.settings.forward_test_notifications:
        targets = sorted({route.target(quay_event) for route in selection.routes})
        return answer(200, "test", reason=(
            f"Quay test notification received; it would go to {', '.join(targets)}; "
            "not forwarded (set FORWARD_TEST_NOTIFICATIONS=1 to forward it)"
        ))

    planned = plan_dispatches(quay_event, selection.routes, body)
    notification = Notification(event, quay_event.subject, quay_event.build_id, svc.deliverer.host,
                                svc.settings.dry_run, quay_event.branch, quay_event.tags, quay_event.commit,
                                body.decode("utf-8"))
    try:
        accepted, duplicates = svc.outbox.add(planned, notification)
    except StoreUnavailable as exc:
        return dispatch_directly(svc, planned, notification, str(exc))
    if not accepted:
        return answer(200, "duplicate", reason=f"already accepted for {', '.join(duplicates)}")
    svc.deliverer.wake()
    return answer(202, "accepted", deliveries=[{"id": a.id} | _described(a) for a in accepted])


def dispatch_directly(svc: Services, planned: list[DispatchRequest], notification: Notification, reason: str):
    """The outbox cannot take the event: the deliverer sends it to GitHub now, so that Quay's call still succeeds.

    Answered 202 "dispatched" when GitHub accepts every request; else 503, and Quay
    retries (what GitHub did accept is remembered, and not sent again by this process).
    GitHub's calls end in time for Quay to have its answer within ANSWER_WITHIN seconds.
    """
    g.error_detail = f"the outbox cannot take the event: {reason}"
    if svc.settings.dry_run:
        metrics.STORE_BYPASS.labels("unavailable").inc()
        raise Refusal(503, "the event cannot be recorded right now (DRY_RUN: nothing is sent); Quay will retry",
                      headers={"Retry-After": "30"})
    sent, refused = svc.deliverer.dispatch_directly(planned, notification, g.started + ANSWER_WITHIN)
    if not sent:
        return answer(200, "duplicate", reason=f"already dispatched for {', '.join(r.target for r in planned)}")
    if refused:
        g.error_detail += "; GitHub did not take it either: " + "; ".join(refused)
        log.warning("%s %s: the outbox cannot take it (%s) and GitHub did not either: answered 503",
                    notification.event, notification.quay_repository, reason)
        raise Refusal(503, "the event can neither be stored nor sent to GitHub right now; Quay will retry",
                      headers={"Retry-After": "30"})
    log.warning("%s %s: the outbox cannot take it (%s): sent to GitHub directly, to %s",
                notification.event, notification.quay_repository, reason,
                ", ".join(req.target for req in sent))
    return answer(202, "dispatched", reason=f"the outbox cannot take the event right now ({reason}); "
                  "it was sent to GitHub directly", deliveries=[_described(req) for req in sent])


def _described(delivery: Accepted | DispatchRequest) -> dict:
    """A delivery as the 202 answer names it."""
    return ({"target": delivery.target, "event_type": delivery.event_type}
            | ({"workflow": delivery.workflow} if delivery.workflow else {}))


def authenticate(svc: Services, req: Request) -> None:
    """Raise a 401 for a missing or wrong token, a 403 for a caller that is not Quay."""
    settings = svc.settings
    if settings.incoming_token is not None and not _token_matches(settings.incoming_token, req):
        raise Refusal(401, "missing or wrong token: put INCOMING_TOKEN in the notification URL as "
                      "https://quay:TOKEN@host/incoming", headers={"WWW-Authenticate": 'Basic realm="quay-dispatch"'})
    g.from_quay = svc.verifier is None  # the token was Quay's proof, if any was asked
    if svc.verifier is None:
        return
    try:
        chain = _header_chain(settings, req) if settings.client_cert_source == "header" else _tls_chain(req)
        caller = svc.verifier.verify(chain)
    except IdentityError as exc:
        if exc.names_quay:
            metrics.QUAY_CERTIFICATE_REFUSED.inc()
        g.refused_names = exc.names
        raise Refusal(403, str(exc)) from None
    g.caller = caller.hostname
    g.from_quay = True


def _tls_chain(req: Request) -> list[str]:
    """The chain the TLS worker put in the environ, leaf first."""
    leaf = req.environ.get(CLIENT_CERT)
    if not leaf:
        raise IdentityError("no client certificate was presented; Quay presents its TLS certificate")
    chain = [leaf]
    while (cert := req.environ.get(f"{CLIENT_CERT_CHAIN_PREFIX}{len(chain) - 1}")) is not None:
        chain.append(cert)
    return chain


def _header_chain(settings: Settings, req: Request) -> list[bytes]:
    """The chain a trusted proxy forwarded; from anyone else the header is a forgery."""
    peer = ipaddress.ip_address(req.remote_addr or "0.0.0.0")
    if not any(peer in network for network in settings.forwarded_allow_ips):
        raise IdentityError(f"{req.remote_addr} is not a trusted proxy (FORWARDED_ALLOW_IPS): "
                            f"its {settings.client_cert_header} header is not believed")
    value = req.headers.get(settings.client_cert_header)
    if not value:
        raise IdentityError(f"the proxy sent no {settings.client_cert_header} header: "
                            "no client certificate was presented to it")
    return chain_from_header(value)


def read_body(limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes `limit` (declared length or not)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = request.stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise Refusal(413, f"the body is larger than {limit} bytes")
    return b"".join(chunks)


def _token_matches(expected: str, req: Request) -> bool:
    """Constant-time check of the Basic password, else the ?token= query parameter."""
    presented = None
    if req.authorization is not None and req.authorization.type == "basic":
        presented = req.authorization.password
    if presented is None:
        presented = req.args.get("token")
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def answer(status: int, outcome: str, **fields):
    g.outcome = outcome
    if "reason" in fields:
        g.error_detail = fields["reason"]
    return _json(status, {"status": outcome, **fields})


def _refusal(exc: Refusal):
    extra = {k: v for k, v in exc.extra.items() if v is not None}
    response = _json(exc.status, {"status": "error", "error": exc.message, **extra})
    response.headers.update(exc.headers)
    g.outcome = "error"
    g.error_detail = g.get("error_detail") or exc.message
    return response


def _json(status: int, body: dict) -> Response:
    return current_app.response_class(_ENCODER.encode(body) + "\n", status=status, mimetype="application/json")


def _options():
    """OPTIONS on any URL the service serves: the methods it allows, as JSON (Flask's own is an empty page)."""
    if request.method != "OPTIONS" or request.routing_exception is not None:
        return None
    allowed = sorted(current_app.url_map.bind_to_environ(request.environ).allowed_methods())
    g.outcome = "options"
    response = _json(200, {"status": "ok", "allow": allowed})
    response.headers["Allow"] = ", ".join(allowed)
    return response


def _http_error(exc: HTTPException):
    """Flask's own errors (404, 405, 413 while reading) as JSON, like every other answer."""
    messages = {
        404: "no such URL; Quay notifications go to /incoming or /incoming/<event>",
        405: f"method {request.method} is not allowed here",
    }
    refusal = Refusal(exc.code or 500, messages.get(exc.code, exc.description or exc.name))
    response = _refusal(refusal)
    if exc.code == 405:
        response.headers["Allow"] = ", ".join(exc.valid_methods or [])
    return response


def _unexpected(exc: Exception):
    # The traceback goes to the log; the caller learns nothing but the status.
    log.exception("unexpected error handling %s %s", request.method, request.path)
    g.error_detail = f"internal error: {type(exc).__name__}"
    return _refusal(Refusal(500, "internal error; see the service's log"))


def _count_and_keep_refusals(response):
    """Every answer to /incoming in the metrics, refusals before routing (405, 413) included; with the operator's
    page on, each refusal (4xx) kept for it; with Quay's side on, when Quay last got through with each event."""
    if request.path == "/incoming" or request.path.startswith("/incoming/"):
        event = (request.view_args or {}).get("event")
        event = event if event in ALL_EVENTS else "unknown"
        outcome = g.get("outcome") or "error"
        metrics.INCOMING.labels(event, str(response.status_code), outcome).inc()
        svc = services_of()
        if g.get("from_quay"):
            metrics.LAST_CALL.labels(outcome).set(time.time())
            if svc.settings.quay_api_token and response.status_code < 300 and g.get("quay_repository"):
                from ..quay_side.seen import heard  # Quay's side: when each event last came through

                heard(svc.outbox, g.quay_repository, event)
        refusals = svc.refusals
        if refusals is not None and 400 <= response.status_code < 500:
            refusals.add(RefusedCall(time.time(), request.remote_addr or "-", response.status_code, event,
                                     g.get("error_detail") or "", g.get("refused_names")))
    return response


def init_app(app: Flask) -> None:
    # Otherwise werkzeug answers /incoming/build_success with a 308 to /incoming (the same
    # view with its default): an extra round trip for Quay instead of the promised answer.
    app.url_map.redirect_defaults = False
    app.register_blueprint(bp)
    app.before_request(_options)
    app.after_request(_count_and_keep_refusals)
    metrics.count_from_zero(ALL_EVENTS)
    app.register_error_handler(Refusal, _refusal)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
