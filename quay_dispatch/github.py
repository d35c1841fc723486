"""The GitHub client: the one place that knows headers, auth, timeouts and what a response means."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from . import __version__

API_VERSION = "2022-11-28"
CONNECT_TIMEOUT = 5.0
USER_AGENT = f"quay-github-actions-dispatch/{__version__}"
MAX_ERROR_LENGTH = 300

DELIVERED, RETRY, FAILED = "delivered", "retry", "failed"


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: delivered, retry (not before retry_at, if set) or failed for good."""

    result: str
    http_status: int | None = None
    request_id: str | None = None
    error: str | None = None
    retry_at: float | None = None
    rate_limit_remaining: int | None = None


def host_of(api_url: str) -> str:
    """The host that GitHub's one-write-at-a-time rule applies to."""
    return urlsplit(api_url).netloc.lower()


class GitHubClient:
    """Sends dispatch requests to one GitHub API with one token."""

    def __init__(self, api_url: str, token: str, timeout: float = 10.0):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers.update({
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
        })
        self._token = token

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url!r})"

    def post(self, path: str, body: str) -> Outcome:
        """POST `body` (JSON text) to `path`; classify the result, never raise for network trouble."""
        try:
            response = self._session.post(
                self.api_url + path,
                data=body.encode("utf-8"),
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=(CONNECT_TIMEOUT, self.timeout),
                allow_redirects=False,
            )
        except requests.Timeout:
            return Outcome(RETRY, error=f"GitHub did not answer within {self.timeout:g} s")
        except requests.RequestException as exc:
            return Outcome(RETRY, error=f"cannot reach GitHub: {type(exc).__name__}")
        return classify(response)


    def check_repository(self, target: str) -> tuple[bool, str]:
        """Whether the token can read `target` ("owner/name"), and what GitHub said of its rights."""
        try:
            response = self._session.get(f"{self.api_url}/repos/{target}", timeout=(CONNECT_TIMEOUT, self.timeout),
                                         headers={"Authorization": f"Bearer {self._token}"}, allow_redirects=False)
        except requests.RequestException as exc:
            return False, f"cannot reach GitHub: {type(exc).__name__}"
        if response.status_code != 200:
            return False, f"GitHub answered {response.status_code}: {_message(response)}"
        try:
            push = response.json().get("permissions", {}).get("push")
        except (ValueError, AttributeError):
            push = None
        if push is False:
            return False, "readable, but the token cannot write to it (a dispatch needs Contents: write)"
        return True, "readable" + (", writable" if push else "")


def classify(response: requests.Response, now: float | None = None) -> Outcome:
    """Turn GitHub's answer into an Outcome (see docs/operations.md for the policy)."""
    status = response.status_code
    request_id = response.headers.get("X-GitHub-Request-Id")
    remaining_text = response.headers.get("X-RateLimit-Remaining", "")
    remaining = int(remaining_text) if remaining_text.isdigit() else None  # GHES often sends none
    if 200 <= status < 300:
        return Outcome(DELIVERED, status, request_id, rate_limit_remaining=remaining)
    message = f"GitHub answered {status}: {_message(response)}"
    retry_at = rate_limit_reset(response, now)
    if status in (403, 429) and retry_at is not None:
        return Outcome(RETRY, status, request_id, "rate limited; " + message, retry_at, remaining)
    if status == 429 or status >= 500:
        return Outcome(RETRY, status, request_id, message, rate_limit_remaining=remaining)
    return Outcome(FAILED, status, request_id, message, rate_limit_remaining=remaining)


def rate_limit_reset(response: requests.Response, now: float | None = None) -> float | None:
    """When a rate-limited request may be retried: Retry-After, else x-ratelimit-reset when none remain."""
    now = time.time() if now is None else now
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return now + int(retry_after)
        try:
            return email.utils.parsedate_to_datetime(retry_after).timestamp()
        except (TypeError, ValueError):
            pass
    if response.headers.get("X-RateLimit-Remaining") == "0":
        reset = response.headers.get("X-RateLimit-Reset", "")
        if reset.isdigit():
            return float(reset)
    return None


def _message(response: requests.Response) -> str:
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else response.text.strip() or response.reason or ""
    return " ".join(text.split())[:MAX_ERROR_LENGTH]
