"""The Flask application factory: configuration, then each module plugged in."""

from __future__ import annotations

from flask import Flask

from quay_dispatch import cli
from quay_dispatch.config import Settings
from quay_dispatch.runtime import logs, services
from quay_dispatch.web import incoming, probes


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application; `settings` default to the environment's, read on first use."""
    app = Flask(__name__)
    services.init_app(app, settings)
    logs.init_app(app)
    incoming.init_app(app)
    probes.init_app(app)
    cli.init_app(app)
    return app
