"""What makes the page safe to open: its own names only in Host (a DNS rebinding site's requests carry the site's),
a login where it is not on loopback, a CSRF token and a same-origin check on every POST, and headers that keep the
browser from running or framing anything the page did not ship.

The CSRF token is Flask-WTF's (a signed token bound to the session); Sec-Fetch-Site is read first, since with
Referrer-Policy: no-referrer Chromium sends `Origin: null` on the page's own forms.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict

from flask import Flask, abort, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from ..config.admin import canonical_address
from ..runtime.services import services_of

HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# Prometheus and health checks reach these by whatever name they were given; nothing in them is the operator's.
OPERATIONS = {"health.healthz", "health.readyz", "health.prometheus_metrics"}
OPEN_ENDPOINTS = {"admin.login", "static"} | OPERATIONS
FIRST_WAIT, LONGEST_WAIT = 1.0, 60.0  # seconds a caller waits after a wrong token, doubling per failure
SESSION_LONGEST, SESSION_IDLE = 12 * 3600, 3600  # seconds a login lasts: a working day, and an hour unused
_SAME_SITE = ("same-origin", "none")  # none: typed in the address bar, a bookmark


class Throttle:
    """Wrong tokens slow their sender down: after each, its next try is refused until a wait that doubles."""

    def __init__(self, entries: int = 1024):
        self._until: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (refused until, wait)
        self._entries = entries
        self._lock = threading.Lock()

    def wait_left(self, address: str) -> float:
        with self._lock:
            until, _ = self._until.get(address, (0.0, 0.0))
        return max(0.0, until - time.monotonic())

    def failed(self, address: str) -> None:
        with self._lock:
            _, wait = self._until.pop(address, (0.0, FIRST_WAIT / 2))
            wait = min(wait * 2, LONGEST_WAIT)
            self._until[address] = (time.monotonic() + wait, wait)
            while len(self._until) > self._entries:
                self._until.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._until.pop(address, None)


def token_matches(expected: str, presented: str) -> bool:
    """In constant time whatever the lengths: both are hashed first."""
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def host_answered(host: str, bind: tuple[str, int], names: tuple[str, ...]) -> bool:
    """Whether the page answers to `host` (a Host header, any port): the address it listens on (any address where
    it listens on all of them, any loopback address on loopback), `localhost` there, or one of `names`.

    A site's name that its owner makes resolve to this address (DNS rebinding) is none of these; an address
    typed in as such cannot be rebound, and the port may be a tunnel's.
    """
    if host.startswith("["):
        name = host[1:host.find("]")]
    else:
        name = host.rpartition(":")[0] if ":" in host else host
    name = name.lower().rstrip(".")
    listening = canonical_address(bind[0])
    try:
        address = canonical_address(name)
    except ValueError:
        return name in names or (name == "localhost" and _answers_localhost(listening))
    return listening.is_unspecified or address == listening or (listening.is_loopback and address.is_loopback) \
        or name in names


def _answers_localhost(listening) -> bool:
    """Whether the page, listening on `listening`, answers to `localhost`: where this machine itself reaches it."""
    return listening.is_loopback or listening.is_unspecified


def _own_host() -> None:
    """Refuse, before any page or form, a request whose Host is not one of the page's own names."""
    if request.endpoint in OPERATIONS:
        return
    settings = services_of().settings
    host = request.headers.get("Host", "")
    if not host_answered(host, settings.admin_bind, settings.admin_hosts):
        listening = canonical_address(settings.admin_bind[0])
        known = ["any address" if listening.is_unspecified else str(listening)]
        known += ["localhost"] if _answers_localhost(listening) else []
        abort(421, f"this page answers to {', '.join(known + list(settings.admin_hosts))}, not to {host[:100]!r}: "
                   "open it by one of those, or add its name to ADMIN_HOSTS")


def _same_origin() -> None:
    """Refuse a POST that another site's page sent (the CSRF token is checked after)."""
    if request.method != "POST":
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in _SAME_SITE:
            abort(403, f"refused: this form was sent from another site (Sec-Fetch-Site: {site[:40]})")
        return
    origin = request.headers.get("Origin")
    if origin not in (None, "null", request.host_url.rstrip("/")):
        abort(403, "refused: this form was sent from another origin")


def _logged_in() -> None:
    """Off loopback (ADMIN_TOKEN set), every page but the login and the operations endpoints needs the token."""
    if services_of().settings.admin_token is None or request.endpoint in OPEN_ENDPOINTS:
        return
    now = time.time()
    if session_fresh(session, now):
        session["seen"] = int(now)
        return
    if session.get("admin"):
        session.clear()  # a login past its time: the form's token goes with it, not the login page's
    if request.method == "GET":
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    abort(401, "log in first")


def log_in(now: float) -> None:
    """The browser's session is now a login, from `now`."""
    session.clear()
    session.update(admin=True, since=int(now), seen=int(now))


def session_fresh(values, now: float) -> bool:
    """Whether a session is a login younger than SESSION_LONGEST and used within SESSION_IDLE (a copy of its
    cookie lasts no longer, logged out or not)."""
    if not values.get("admin"):
        return False
    since, seen = values.get("since", 0), values.get("seen", 0)
    return now - since < SESSION_LONGEST and now - seen < SESSION_IDLE


def _secured(response):
    response.headers.update(HEADERS)
    return response


def _error(exc):
    """Errors as a page that says what happened, never a traceback."""
    if isinstance(exc, CSRFError):
        status, message = 400, f"refused: {exc.description} Reload the page and try again."
    else:
        status, message = exc.code, exc.description if exc.code != 500 else "internal error; see the service's log"
    g.outcome = "error"
    return render_template("error.html", status=status, message=message), status


def init_app(app: Flask) -> None:
    app.extensions["admin_throttle"] = Throttle()
    app.before_request(_own_host)
    app.before_request(_same_origin)
    app.before_request(_logged_in)
    CSRFProtect(app)  # after the two above: a form from elsewhere, or before the login, is refused as such
    app.after_request(_secured)
    app.register_error_handler(CSRFError, _error)
    for status in (400, 401, 403, 404, 405, 413, 421, 429, 500):
        app.register_error_handler(status, _error)
