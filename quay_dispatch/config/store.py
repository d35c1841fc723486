"""Where the outbox lives (DATABASE_URL), how long its transactions may take, and the metrics' directory."""

from __future__ import annotations

import re
from pathlib import Path

from ..outbox import DEFAULT_TIMEOUT as DEFAULT_STORE_TIMEOUT
from .reader import Env, duration

DEFAULT_DATABASE_URL = "sqlite:///var/quay-dispatch.sqlite3"
MAX_STORE_TIMEOUT = 4.0  # seconds: what leaves a direct delivery time to answer Quay within 8 s
_METRICS_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")  # prometheus-client's own


def store_settings(env: Env) -> dict:
    """DATABASE_URL and STORE_TIMEOUT (Settings' fields): all that the outbox commands need."""
    database_url = env.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    _check_database_url(database_url, env.problems)
    return dict(database_url=database_url, store_timeout=_store_timeout(env.get("STORE_TIMEOUT"), env.problems))


def metrics_settings(env: Env, database_url: str) -> dict:
    """PROMETHEUS_MULTIPROC_DIR (Settings' field), which must not hold the outbox."""
    metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        _check_metrics_dir(metrics_dir, database_url, env.problems)
    return dict(metrics_dir=metrics_dir)


def _check_database_url(url: str, problems: list[str]) -> None:
    """DATABASE_URL must name SQLite (sqlite:///relative, sqlite:////absolute) or PostgreSQL."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return
    if url.startswith(("postgresql://", "postgres://")):
        return
    # The URL itself is not repeated: it may hold a password.
    problems.append(
        "DATABASE_URL is not a database URL: use sqlite:///relative/path, sqlite:////absolute/path "
        "or postgresql://user:password@host/database"
    )


def _store_timeout(text: str | None, problems: list[str]) -> float:
    """STORE_TIMEOUT: a few seconds at most, so that a notification the store cannot take still
    leaves time to send it to GitHub directly within Quay's 10 s."""
    if text is None:
        return DEFAULT_STORE_TIMEOUT
    seconds = duration(text)
    if seconds is None or not 0.1 <= seconds <= MAX_STORE_TIMEOUT:
        problems.append(f"STORE_TIMEOUT={text!r}: use a duration from 0.1 to {MAX_STORE_TIMEOUT:g} seconds "
                        "(for example 2 or 1.5s); Quay gives up after 10 s")
        return DEFAULT_STORE_TIMEOUT
    return seconds


def _check_metrics_dir(directory: str, database_url: str, problems: list[str]) -> None:
    """PROMETHEUS_MULTIPROC_DIR is cleared of old metric files at start: it must not hold the outbox."""
    if not database_url.startswith("sqlite:///"):
        return
    outbox = Path(database_url[len("sqlite:///"):]).resolve()
    if outbox.is_relative_to(Path(directory).resolve()):
        problems.append(f"PROMETHEUS_MULTIPROC_DIR={directory}: it holds the outbox ({outbox}); give the "
                        "metrics a directory of their own, such as /tmp/quay-dispatch-metrics")


def stale_metric_files(directory: str) -> list[Path]:
    """The files in PROMETHEUS_MULTIPROC_DIR that prometheus-client made: the only ones ever deleted."""
    return [path for path in Path(directory).iterdir() if path.is_file() and _METRICS_FILE.fullmatch(path.name)]
