"""What the page shows and does: the overview, the deliveries (filtered, a page at a time), one delivery whole,
redeliver (one, or what a filter selects once its count is confirmed), the refused calls, the login."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

from flask import Blueprint, Flask, abort, current_app, flash, g, redirect, render_template, request, session, url_for

from ..domain.dispatch_request import STATUSES
from ..outbox import StoreUnavailable
from ..outbox.browse import Filter
from ..runtime.services import services_of
from . import chart, readings
from .guard import log_in, token_matches

bp = Blueprint("admin", __name__)
PAGE_SIZE = 50
MAX_ID = 2**63 - 1  # the stores' largest integer: a larger id names no delivery
FILTERS = ("status", "target", "quay_repository", "event", "q")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
_TAB_OR_NEWLINE = re.compile("[\t\n\r]")


def _filter() -> Filter:
    """The filter the query string (or a form) gives; an unknown status or a control character is a 400."""
    given = {name: (request.values.get(name) or "").strip()[:200] or None for name in FILTERS}
    if given["status"] and given["status"] not in STATUSES:
        abort(400, f"no status {given['status']!r}; the statuses are {', '.join(STATUSES)}")
    if any(ord(c) < 32 for value in given.values() if value for c in value):
        abort(400, "a filter is text without control characters")
    return Filter(**given)


def _number(name: str) -> int | None:
    """An id or a count from the query string or a form, within what the store holds (a 64-bit integer)."""
    value = request.values.get(name, type=int)
    return None if value is None else max(0, min(value, MAX_ID))


@bp.get("/")
def overview():
    svc = services_of()
    g.outcome = "ok"
    try:
        counts, hours, last = svc.outbox.counts(), svc.outbox.hourly(), svc.outbox.last_attempt()
        oldest, store_problem = svc.outbox.oldest_pending(), None
    except StoreUnavailable as exc:
        counts, hours, last, oldest, store_problem = {}, [], None, None, str(exc)
    return render_template("overview.html", counts=counts, store_problem=store_problem, health=readings.health(svc),
                           deliverer_alive=svc.deliverer.alive, chart=chart.svg(hours) if hours else None,
                           last=last, oldest=oldest, now=time.time(), quay=_quay_side(svc))


def _quay_side(svc) -> dict | None:
    """Quay's side as the overview's card shows it, from the watch's latest look; None when it is off."""
    if not svc.settings.quay_api_token:
        return None
    from ..quay_side.survey import notification_state
    from ..quay_side.watch import load_state

    try:
        state = load_state(svc.outbox)
    except StoreUnavailable:
        state = {}
    entries = list((state.get("notifications") or {}).values())
    for entry in entries:
        entry["state"] = notification_state(entry["missing"], entry["disabled"], entry["failures"])
    counts = {state: sum(e["state"] == state for e in entries) for state in ("ok", "failing", "disabled", "missing")}
    api_error = (state.get("api") or {}).get("error")
    return {"at": state.get("at"), "api_error": api_error, "counts": counts, "resets": state.get("resets_total", 0),
            "recovered": sum((state.get("recovered") or {}).values()), "outages": (state.get("outages") or [])[-5:],
            "trouble": [e for e in entries if e["state"] != "ok"][:10],
            "bad": bool(api_error or counts["disabled"] or counts["missing"])}


@bp.get("/deliveries")
def deliveries():
    where = _filter()
    before = _number("before")
    listed, next_before = services_of().outbox.page(where, before, PAGE_SIZE)
    g.outcome = "ok"
    return render_template("deliveries.html", listed=listed, where=where, next_before=next_before,
                           statuses=STATUSES, now=time.time())


@bp.get("/deliveries/<int:delivery_id>")
def delivery(delivery_id: int):
    found = services_of().outbox.detail(delivery_id) if delivery_id <= MAX_ID else None
    if found is None:
        abort(404, f"no delivery {delivery_id}")
    detail, attempts = found
    g.outcome = "ok"
    return render_template("delivery.html", d=detail, attempts=attempts, body=_pretty(detail.body),
                           notification=_pretty(detail.notification), now=time.time(),
                           web=web_url(services_of().settings.github_api_url))


@bp.post("/deliveries/<int:delivery_id>/redeliver")
def redeliver(delivery_id: int):
    svc = services_of()
    if delivery_id > MAX_ID:
        abort(404, f"no delivery {delivery_id}")
    queued, refused = svc.outbox.redeliver([delivery_id])
    if queued:
        svc.deliverer.wake()
        flash(f"delivery {delivery_id} is queued again: it goes out within seconds")
    else:
        flash(f"delivery {delivery_id} was not queued again: {refused[delivery_id]}")
    g.outcome = "redelivered" if queued else "refused"
    return redirect(url_for("admin.delivery", delivery_id=delivery_id), 303)


@bp.post("/deliveries/redeliver")
def redeliver_selected():
    """Without `confirmed`: the confirmation, with how many; with it: queue exactly those again."""
    svc = services_of()
    where = _filter()
    confirmed, upto = _number("confirmed"), _number("upto")
    if confirmed is None or upto is None:
        counts, upto = svc.outbox.redeliverable(where)
        g.outcome = "confirm"
        return render_template("confirm.html", where=where, counts=counts, total=sum(counts.values()), upto=upto)
    queued = svc.outbox.redeliver_selected(where, upto, confirmed)
    if queued is None:
        flash("nothing was queued: the selection changed since you confirmed it; look at the count again")
    else:
        svc.deliverer.wake()
        flash(f"{len(queued)} deliveries are queued again")
    g.outcome = "refused" if queued is None else "redelivered"
    return redirect(url_for("admin.deliveries", **{k: v for k, v in vars(where).items() if v}), 303)


@bp.get("/refusals")
def refusals():
    g.outcome = "ok"
    return render_template("refusals.html", refused=services_of().outbox.refusals(), now=time.time())


@bp.route("/login", methods=["GET", "POST"])
def login():
    settings = services_of().settings
    if settings.admin_token is None:
        return redirect(url_for("admin.overview"))
    if request.method == "GET":
        g.outcome = "ok"
        return render_template("login.html", wrong=False)
    throttle, address = current_app.extensions["admin_throttle"], request.remote_addr or "-"
    if wait := throttle.wait_left(address):
        g.outcome = "throttled"
        abort(429, f"too many wrong tokens: try again in {wait:.0f} s")
    if not token_matches(settings.admin_token, request.form.get("token", "")):
        throttle.failed(address)
        g.outcome = "refused"
        return render_template("login.html", wrong=True), 401
    throttle.succeeded(address)
    log_in(time.time())
    g.outcome = "ok"
    return redirect(own_path(request.args.get("next", "")) or url_for("admin.overview"), 303)


@bp.post("/logout")
def logout():
    session.clear()
    g.outcome = "ok"
    return redirect(url_for("admin.login"), 303)


def own_path(target: str) -> str | None:
    """`target` as the path on the page's own origin that a browser would go to for it, ready for a Location
    header; None when a browser would go anywhere else.

    Judged as a browser's URL parser (WHATWG's) reads it: leading and trailing controls and spaces dropped,
    tabs and newlines dropped wherever they are, a backslash read as a slash. `/\t/evil.example` is then
    `//evil.example`, another site.
    """
    url = _TAB_OR_NEWLINE.sub("", target.strip(_C0_OR_SPACE)).replace("\\", "/")
    if not url.startswith("/") or url.startswith("//"):
        return None
    return quote(url, safe="/?#[]@!$&'()*+,;=:%-._~")  # controls, spaces and the rest percent-encoded


def _pretty(text: str | None) -> str | None:
    """JSON text indented for reading; any other text as it is."""
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _span(seconds: int) -> str:
    """A duration as people say it: 42 s, 7 min, 3 h, 12 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _isotime(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def web_url(api_url: str) -> str:
    """GitHub's web address for its API's: github.com for api.github.com, the server's own for an Enterprise
    Server's /api/v3."""
    api_url = api_url.rstrip("/")
    return "https://github.com" if api_url == "https://api.github.com" else api_url.removesuffix("/api/v3")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_template_filter(_span, "span")
    app.add_template_filter(_isotime, "isotime")
