"""Configuration: read once from the environment, validated, passed down as one object (Settings).

One parser per concern, each gathering its problems so that all are reported at once:
GitHub (github.py), who may call (quay.py), the outbox (store.py), the service's own
TLS files (tls.py), certificates from ACME (acme.py), the operator's page (admin.py), routes and
operations (settings.py); reader.py reads the environment.
"""

from .admin import SECRET_VARIABLE as ADMIN_SECRET_VARIABLE
from .quay import NO_TRUSTED_PROXY, quay_certificates, trusted_proxies
from .reader import ConfigError, listing, read_file
from .settings import Settings, environment_settings, environment_store_settings, load_settings, load_store_settings
from .store import DEFAULT_DATABASE_URL, stale_metric_files
from .tls import certificates_in, tls_problems

__all__ = ["ADMIN_SECRET_VARIABLE", "DEFAULT_DATABASE_URL", "NO_TRUSTED_PROXY", "ConfigError", "Settings",
           "certificates_in", "environment_settings",
           "environment_store_settings", "listing", "load_settings", "load_store_settings", "quay_certificates",
           "read_file", "stale_metric_files", "tls_problems", "trusted_proxies"]
