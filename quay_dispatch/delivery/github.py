"""The GitHub client: the one place that knows headers, auth, timeouts and what a response means."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import requests

from .. import __version__
from ..domain.dispatch_request import RUN_DETAILS, WORKFLOW_DISPATCH, canonical_json
from ..domain.policy import MAX_ERROR_LENGTH, RETRY, Outcome, classify, json_object, message_of

API_VERSION = "2022-11-28"
CONNECT_TIMEOUT = 5.0
USER_AGENT = f"quay-github-actions-dispatch/{__version__}"

_budget = threading.local()
log = logging.getLogger("quay_dispatch.github")


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Every GitHub call this thread makes inside the block ends by `at` (time.monotonic()), auth included."""
    _budget.at = at
    try:
        yield
    finally:
        _budget.at = None


def host_of(api_url: str) -> str:
    """The host that GitHub's one-write-at-a-time rule applies to."""
    return urlsplit(api_url).netloc.lower()


class Transport:
    """One GitHub API: its URL, CA, timeouts and headers. Network trouble is a NoAnswer, never requests' own error."""

    def __init__(self, api_url: str, timeout: float = 10.0, ca_file: str | None = None):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        # GITHUB_CA_FILE: a GitHub Enterprise Server's private CA. Given with each request, not on
        # the session, where REQUESTS_CA_BUNDLE in the environment would override it.
        self._verify = ca_file or True
        self._local = threading.local()  # a session per thread: the deliverer's, and each request's

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update({
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": USER_AGENT,
            })
        return session

    def __repr__(self) -> str:
        return f"Transport({self.api_url!r})"

    def send(self, method: str, path: str, authorization: str, body: str | None = None) -> requests.Response:
        """GitHub's response to one request; NoAnswer (a RETRY) when GitHub could not be reached in time."""
        headers = {"Authorization": authorization}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connect, read = CONNECT_TIMEOUT, self.timeout
        at = getattr(_budget, "at", None)
        if at is not None:
            remaining = at - time.monotonic()
            if remaining < 0.1:
                raise NoAnswer(Outcome(RETRY, error="no time left to call GitHub"))
            connect, read = min(connect, remaining), min(read, remaining)
        try:
            return self._session.request(
                method, self.api_url + path, data=None if body is None else body.encode("utf-8"), headers=headers,
                timeout=(connect, read), allow_redirects=False, verify=self._verify,
            )
        except requests.Timeout:
            raise NoAnswer(Outcome(RETRY, error=f"GitHub did not answer within {read:g} s")) from None
        except requests.RequestException as exc:
            raise NoAnswer(Outcome(RETRY, error=f"cannot reach GitHub: {_cause(exc)}")) from None


class NoAnswer(Exception):
    """No answer from GitHub to go by: it could not be reached in time, or asked without credentials."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.error)
        self.outcome = outcome  # what the attempt came to: RETRY, or REFUSED for credentials that cannot be had


class AuthError(Exception):
    """No credentials for a repository: `result` says whether to retry (RETRY) or give up (REFUSED)."""

    def __init__(self, result: str, message: str):
        super().__init__(message)
        self.result = result


class TokenAuth:
    """A personal access token (GITHUB_TOKEN): the same for every repository, nothing to refresh."""

    def __init__(self, transport: Transport, token: str):
        self._transport = transport
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth()"

    def authorization(self, repo: str) -> str:
        return f"Bearer {self._token}"

    def refresh(self, repo: str) -> bool:
        """Whether new credentials could be had after a 401: not for a fixed token."""
        return False

    def check(self) -> tuple[bool, str]:
        """Whether GitHub accepts the token (GET /user), and the rights GitHub lists for it."""
        try:
            response = self._transport.send("GET", "/user", self.authorization(""))
        except NoAnswer as exc:
            return False, str(exc)
        if response.status_code == 401:
            return False, f"GitHub refused GITHUB_TOKEN: {message_of(response)}"
        if response.status_code != 200:
            return False, f"GitHub answered {response.status_code} to GET /user: {message_of(response)}"
        login = json_object(response).get("login")
        scopes = response.headers.get("X-OAuth-Scopes")
        if scopes is None:  # a fine-grained token: its rights are per repository
            return True, f"GITHUB_TOKEN accepted for {login}; GitHub lists a fine-grained token's rights per repository"
        granted = {scope.strip() for scope in scopes.split(",")}
        if not granted & {"repo", "public_repo"}:
            return False, (f"GITHUB_TOKEN accepted for {login}, but its scopes ({scopes or 'none'}) lack repo, "
                           "which a dispatch needs")
        return True, f"GITHUB_TOKEN accepted for {login}, scopes: {scopes}"

    def check_target(self, target: str, permission: str) -> tuple[bool, str]:
        """Whether the token can read `target` ("owner/name") and, where GitHub says, write to it."""
        try:
            response = self._transport.send("GET", f"/repos/{target}", self.authorization(target))
        except NoAnswer as exc:
            return False, str(exc)
        if response.status_code != 200:
            return False, f"GitHub answered {response.status_code}: {message_of(response)}"
        permissions = json_object(response).get("permissions")
        push = permissions.get("push") if isinstance(permissions, dict) else None
        if push is False:
            return False, f"readable, but the token cannot write to it (a dispatch needs {permission}: write)"
        return True, "readable" + (", writable" if push else "")


class GitHubClient:
    """Dispatches to one GitHub API with one kind of credentials; knows what each answer means."""

    def __init__(self, transport: Transport, auth):
        self.transport = transport
        self.api_url = transport.api_url
        self.timeout = transport.timeout
        self.auth = auth
        self._default_branches: dict[str, tuple[str, float]] = {}
        self.asks_for_run = True  # whether workflow dispatches ask for the run they start (RUN_DETAILS)

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url!r})"

    def post(self, path: str, body: str, repo: str) -> Outcome:
        """POST `body` (JSON text) to `path` for `repo`; a 401 is retried once with fresh credentials."""
        try:
            response = self._request("POST", path, repo, body)
            if response.status_code == 401 and self.auth.refresh(repo):
                response = self._request("POST", path, repo, body)
        except NoAnswer as exc:
            return exc.outcome
        return classify(response)

    def dispatch(self, kind: str, path: str, body: str, repo: str) -> Outcome:
        """Send one stored dispatch; the outcome says how long it took."""
        started = time.monotonic()
        if kind == WORKFLOW_DISPATCH:
            outcome = self._workflow_dispatch(path, body, repo)
        else:
            outcome = self.post(path, body, repo)
        return dataclasses.replace(outcome, duration_ms=round((time.monotonic() - started) * 1000))

    def _workflow_dispatch(self, path: str, body: str, repo: str) -> Outcome:
        """A workflow_dispatch: without a ref it runs on the repository's default branch. It asks GitHub for the
        run it starts (return_run_details); a GitHub that does not know the parameter (an older Enterprise
        Server: 400 or 422 naming it) is asked again without it, and never again with it."""
        fields = json.loads(body)
        if not self.asks_for_run:
            fields.pop(RUN_DETAILS, None)
        if fields.get("ref") is None:
            try:
                fields["ref"] = self.default_branch(repo)
            except NoAnswer as exc:
                return exc.outcome
        outcome = self.post(path, canonical_json(fields), repo)
        if RUN_DETAILS in fields and outcome.http_status in (400, 422) and RUN_DETAILS in (outcome.error or ""):
            self.asks_for_run = False
            log.warning("%s does not know workflow_dispatch's %s (%s): asking again without it, and from now on",
                        self.api_url, RUN_DETAILS, outcome.error)
            del fields[RUN_DETAILS]
            outcome = self.post(path, canonical_json(fields), repo)
        return outcome

    def _request(self, method: str, path: str, repo: str, body: str | None = None) -> requests.Response:
        """GitHub's response, with `repo`'s credentials; NoAnswer when there is none to go by."""
        try:
            authorization = self.auth.authorization(repo)
        except AuthError as exc:
            raise NoAnswer(Outcome(exc.result, error=str(exc))) from None
        return self.transport.send(method, path, authorization, body)

    def default_branch(self, repo: str) -> str:
        """The repository's default branch (cached for an hour); NoAnswer says why it could not be read."""
        cached = self._default_branches.get(repo)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        response = self._request("GET", f"/repos/{repo}", repo)
        if response.status_code != 200:
            outcome = classify(response)
            raise NoAnswer(Outcome(outcome.result, outcome.http_status, outcome.request_id,
                                   "reading the default branch: " + (outcome.error or ""), outcome.retry_at))
        branch = json_object(response).get("default_branch")
        if not isinstance(branch, str) or not branch:
            raise NoAnswer(Outcome(RETRY, 200, response.headers.get("X-GitHub-Request-Id"),
                                   "reading the default branch: GitHub's answer did not name one"))
        self._default_branches[repo] = (branch, time.monotonic() + 3600)
        return branch

    def check_credentials(self) -> tuple[bool, str]:
        """Whether GitHub accepts the credentials, and what it says they may do."""
        return self.auth.check()

    def check_target(self, target: str, permission: str) -> tuple[bool, str]:
        """Whether a dispatch to `target` could go: `permission` ("contents" or "actions") is what it needs."""
        return self.auth.check_target(target, permission)


def innermost(exc: BaseException) -> BaseException:
    """The error that says it all, which requests and urllib3 wrap (a TLS alert, a refused connection)."""
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    return exc


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests error, short."""
    exc = innermost(exc)
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
