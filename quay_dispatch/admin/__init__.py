"""The operator's page (ADMIN_BIND): what came in, what went out, what GitHub answered, and "send it again".

A Flask application of its own on the service's Services, served by the same workers on a listener of its
own (tls_worker tells the doors apart): the pages, and the operations endpoints, never /incoming; the public
listener never serves the page. Imported only when ADMIN_BIND is set. guard.py makes it safe to open (login,
CSRF, the browser's headers); pages.py is what it shows and does; templates/ and static/ are its HTML and CSS.
"""

from __future__ import annotations

from flask import Flask

from ..base.limits import MAX_BODY
from ..base.printable import shown
from ..runtime import logs, services
from ..runtime.services import Services
from ..web import probes
from . import guard, pages


def create_admin_app(svc: Services, tls: bool) -> Flask:
    """The page's application on `svc`; `tls`: its listener speaks TLS (the session cookie is then Secure)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=svc.settings.admin_secret,
        SESSION_COOKIE_NAME="quay_dispatch_admin",
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=tls,
        PERMANENT_SESSION_LIFETIME=guard.SESSION_LONGEST,  # the signature's own bound, behind guard's two
        MAX_CONTENT_LENGTH=MAX_BODY,
        WTF_CSRF_SSL_STRICT=False,  # the Referer check: the page sends none (Referrer-Policy: no-referrer)
    )
    app.jinja_env.finalize = shown  # every value a template shows, whatever its template: see printable.py
    services.init_app(app, svc)
    logs.init_app(app)
    probes.init_app(app)
    guard.init_app(app)
    pages.init_app(app)
    return app
