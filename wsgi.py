"""The gunicorn entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

Imported in each worker process (gunicorn.conf.py turns preload off), so each
one builds its services and starts its own deliverer thread.
"""

from app import create_app
from quay_dispatch.runtime.services import services_of

app = create_app()
services_of(app).start_delivery()
