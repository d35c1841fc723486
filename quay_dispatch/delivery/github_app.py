"""GitHub App authentication: a JWT signed with the App's key, exchanged for installation tokens.

Installation tokens last an hour; each is cached until 5 minutes before its
`expires_at`, and dropped on a 401. The installation of each repository is looked
up once an hour, unless GITHUB_APP_INSTALLATION_ID names it. No token length is
assumed, and neither tokens nor the key are ever logged.
"""

from __future__ import annotations

import datetime
import threading
import time

import jwt
import requests

from ..domain.policy import ACCEPTED, RETRY, classify
from .github import AuthError, NoAnswer, Transport

JWT_BACKDATE = 60  # seconds: GitHub's advice against clock drift
JWT_LIFETIME = 540  # seconds: GitHub allows at most 10 minutes
TOKEN_REFRESH_MARGIN = 300  # seconds before expires_at
INSTALLATION_CACHE = 3600  # seconds


class AppAuth:
    """Installation tokens for one GitHub App."""

    def __init__(self, transport: Transport, app_id: str, private_key: str, installation_id: int | None = None):
        self._transport = transport
        self.app_id = app_id
        self._key = private_key
        self.fixed_installation = installation_id
        self._installations: dict[str, tuple[int, dict, float]] = {}  # repo -> (id, permissions, until)
        self._tokens: dict[int, tuple[str, float]] = {}  # installation -> (token, refresh after)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AppAuth(app_id={self.app_id!r})"

    def app_jwt(self) -> str:
        """A JWT that authenticates as the App itself (RS256, iss = the App's id)."""
        now = int(time.time())
        claims = {"iat": now - JWT_BACKDATE, "exp": now + JWT_LIFETIME, "iss": self.app_id}
        return jwt.encode(claims, self._key, algorithm="RS256")

    def authorization(self, repo: str) -> str:
        installation, _ = self.installation(repo)
        with self._lock:
            cached = self._tokens.get(installation)
        if cached and cached[1] > time.time():
            return f"Bearer {cached[0]}"
        answer = self._as_app("POST", f"/app/installations/{installation}/access_tokens", "creating a token")
        token, expires_at = answer.get("token"), answer.get("expires_at")
        if not isinstance(token, str) or not token:
            raise AuthError(RETRY, "GitHub's answer to the installation token request held no token")
        refresh_after = _timestamp(expires_at) - TOKEN_REFRESH_MARGIN if expires_at else time.time()
        with self._lock:
            self._tokens[installation] = (token, refresh_after)
        return f"Bearer {token}"

    def refresh(self, repo: str) -> bool:
        """Forget what GitHub refused for `repo` (its token and installation); the next request starts afresh."""
        with self._lock:
            cached = self._installations.pop(repo, None)
            self._tokens.pop(cached[0] if cached else self.fixed_installation, None)
        return True

    def installation(self, repo: str) -> tuple[int, dict]:
        """The installation (id, permissions) that covers `repo`, cached for an hour."""
        if self.fixed_installation is not None:
            return self.fixed_installation, {}
        with self._lock:
            cached = self._installations.get(repo)
        if cached and cached[2] > time.monotonic():
            return cached[0], cached[1]
        answer = self._as_app("GET", f"/repos/{repo}/installation", f"finding the App's installation on {repo}",
                              not_found=f"the GitHub App is not installed on {repo}")
        installation, permissions = answer.get("id"), answer.get("permissions") or {}
        if not isinstance(installation, int):
            raise AuthError(RETRY, f"GitHub's answer about the installation on {repo} held no id")
        with self._lock:
            self._installations[repo] = (installation, permissions, time.monotonic() + INSTALLATION_CACHE)
        return installation, permissions

    def check(self) -> tuple[bool, str]:
        """Whether GitHub accepts the App's JWT (GET /app), and where the App is installed."""
        try:
            app = self._as_app("GET", "/app", "reading the App")
            installations = self._as_app("GET", "/app/installations?per_page=100", "listing the App's installations",
                                         expect=list)
        except AuthError as exc:
            return False, str(exc)
        name = app.get("slug") or self.app_id
        where = ", ".join(f"{(i.get('account') or {}).get('login')} ({i.get('id')})" for i in installations
                          if isinstance(i, dict))
        if not where:
            return False, f"GitHub App {name}'s JWT is accepted, but the App is installed nowhere"
        ids = {i.get("id") for i in installations if isinstance(i, dict)}
        if self.fixed_installation is not None and self.fixed_installation not in ids:
            return False, (f"GITHUB_APP_INSTALLATION_ID={self.fixed_installation} is not an installation of "
                           f"GitHub App {name}; it is installed on {where}")
        return True, f"GitHub App {name}'s JWT accepted; installed on {where}"

    def check_target(self, target: str, permission: str) -> tuple[bool, str]:
        """Whether the App is installed on `target` ("owner/name") with `permission`: write."""
        try:
            installation, permissions = self.installation(target)
        except AuthError as exc:
            return False, str(exc)
        if self.fixed_installation is None and permissions.get(permission) != "write":
            return False, f"the App's installation {installation} lacks {permission}: write"
        return True, f"the App's installation {installation} may write {permission}"

    def _as_app(self, method: str, path: str, doing: str, not_found: str | None = None, expect: type = dict):
        """A request authenticated with the App's JWT; its JSON answer (an `expect`), or AuthError."""
        body = "{}" if method == "POST" else None
        try:
            response = self._transport.send(method, path, f"Bearer {self.app_jwt()}", body)
        except NoAnswer as exc:
            raise AuthError(exc.outcome.result, f"{doing}: {exc}") from None
        outcome = classify(response)  # what GitHub's answer means is policy's; only the words are this module's
        if outcome.result != ACCEPTED:
            if response.status_code == 404 and not_found:
                raise AuthError(outcome.result, not_found)
            if response.status_code == 401:
                raise AuthError(outcome.result, f"GitHub refused the App's JWT while {doing} (check GITHUB_APP_ID "
                                                f"and the private key): {outcome.error}")
            raise AuthError(outcome.result, f"{doing}: {outcome.error}")
        try:
            answer = response.json()
        except requests.JSONDecodeError:
            answer = None
        if not isinstance(answer, expect):
            raise AuthError(RETRY, f"{doing}: GitHub's answer is not a JSON {'array' if expect is list else 'object'}")
        return answer


def _timestamp(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 time such as GitHub's expires_at (2016-07-11T22:14:10Z)."""
    try:
        return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return time.time()  # unreadable: use the token once, then ask again
