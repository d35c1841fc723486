"""What makes the page safe to open: a login where it is not on loopback, a CSRF token and a same-origin check on
every POST, and headers that keep the browser from running or framing anything the page did not ship.

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

from ..services import services_of

HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
OPEN_ENDPOINTS = {"admin.login", "static", "health.healthz", "health.readyz", "health.prometheus_metrics"}
FIRST_WAIT, LONGEST_WAIT = 1.0, 60.0  # seconds a caller waits after a wrong token, doubling per failure
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
    if session.get("admin"):
        return
    if request.method == "GET":
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    abort(401, "log in first")


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
    app.before_request(_same_origin)
    app.before_request(_logged_in)
    CSRFProtect(app)  # after the two above: a form from elsewhere, or before the login, is refused as such
    app.after_request(_secured)
    app.register_error_handler(CSRFError, _error)
    for status in (400, 401, 403, 404, 405, 413, 429, 500):
        app.register_error_handler(status, _error)
