"""Quay's API, as far as the relay may use it: list, create, reset and test notifications; list repositories,
builds and tags. Nothing else can be called, whatever a caller asks: the token holds repo:admin on every repository
it covers (docs/security.md), so the client itself refuses any other route, and never deletes or changes.

Facts from Quay's code (endpoints/api/repositorynotification.py and its neighbours), in DESIGN.md's "Quay's side".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

import requests

from .. import __version__

TIMEOUT = 10.0  # seconds for each call, connecting included
MAX_PAGES = 50  # of a listing, however many Quay says there are
_NAME = r"[a-z0-9][a-z0-9._-]*"  # a Quay namespace or repository name
_REPO = rf"/api/v1/repository/{_NAME}/{_NAME}"
_UUID = r"[0-9a-f-]{36}"
_ORG = rf"/api/v1/organization/{_NAME}"
ALLOWED = tuple((method, re.compile(path)) for method, path in (
    ("GET", r"/api/v1/repository"),  # ?namespace=
    ("GET", rf"{_REPO}/notification/"),
    ("POST", rf"{_REPO}/notification/"),  # create
    ("POST", rf"{_REPO}/notification/{_UUID}"),  # reset the failure count
    ("POST", rf"{_REPO}/notification/{_UUID}/test"),
    ("GET", rf"{_REPO}/build/"),
    ("GET", rf"{_REPO}/tag/"),
    ("GET", rf"{_ORG}/notifications"),
    ("POST", rf"{_ORG}/notifications"),
    ("POST", rf"{_ORG}/notifications/{_UUID}"),
    ("POST", rf"{_ORG}/notifications/{_UUID}/test"),
))


class QuayAPIError(Exception):
    """Quay's API did not do what was asked: its status (0: no answer) and why, in words an operator can act on."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


    @property
    def stops_all(self) -> bool:
        """Whether no other call can fare better now: the token refused (401, 403), Quay overloaded (429), down or
        unreachable (5xx, no answer). A 404 or 400 concerns one repository or notification."""
        return self.status in (0, 401, 403, 429) or self.status >= 500


class NotAllowed(QuayAPIError):
    """A call outside ALLOWED: refused before anything is sent."""


@dataclass(frozen=True)
class QuayNotification:
    """One of a repository's (or organisation's) notifications, as Quay lists it."""

    uuid: str
    title: str | None
    event: str
    method: str
    url: str | None  # a webhook's config.url
    failures: int  # number_of_failures: Quay turns it off at 3

    @property
    def disabled(self) -> bool:
        return self.failures >= 3


class QuayAPI:
    """Quay's API at `base_url` with an OAuth token (repo:admin), each call within TIMEOUT."""

    def __init__(self, base_url: str, token: str, timeout: float = TIMEOUT):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        self._http = requests.Session()
        self._http.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                                   "User-Agent": f"quay-github-actions-dispatch/{__version__}"})

    def notifications(self, repository: str) -> list[QuayNotification]:
        listed = self._call("GET", f"{_repo(repository)}/notification/")
        return [_notification(item) for item in listed.get("notifications", [])]

    def create_notification(self, repository: str, event: str, url: str, title: str) -> QuayNotification:
        body = {"event": event, "method": "webhook", "config": {"url": url}, "eventConfig": {}, "title": title}
        return _notification(self._call("POST", f"{_repo(repository)}/notification/", body))

    def reset_failures(self, repository: str, uuid: str) -> None:
        self._call("POST", f"{_repo(repository)}/notification/{uuid}")

    def send_test(self, repository: str, uuid: str) -> None:
        self._call("POST", f"{_repo(repository)}/notification/{uuid}/test")

    def repositories(self, namespace: str) -> list[str]:
        """Every repository of `namespace`, as "namespace/name", following Quay's pages (MAX_PAGES at most)."""
        names, params = [], {"namespace": namespace}
        for _ in range(MAX_PAGES):
            page = self._call("GET", "/api/v1/repository", params=params)
            names += [f"{repo['namespace']}/{repo['name']}" for repo in page.get("repositories", [])]
            if not page.get("next_page"):
                break
            params = {"namespace": namespace, "next_page": page["next_page"]}
        return names

    def builds(self, repository: str, since: float | None = None, limit: int = 100) -> list[dict]:
        params = {"limit": limit} | ({"since": int(since)} if since is not None else {})
        return self._call("GET", f"{_repo(repository)}/build/", params=params).get("builds", [])

    def tags(self, repository: str) -> list[dict]:
        """The repository's tags, following Quay's pages (MAX_PAGES at most)."""
        tags = []
        for page in range(1, MAX_PAGES + 1):
            listed = self._call("GET", f"{_repo(repository)}/tag/", params={"page": page})
            tags += listed.get("tags", [])
            if not listed.get("has_additional"):
                break
        return tags

    def _call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
        if not any(method == allowed and pattern.fullmatch(path) for allowed, pattern in ALLOWED):
            raise NotAllowed(0, f"{method} {path} is not a call the relay makes to Quay's API")
        try:
            answer = self._http.request(method, self.base_url + path, json=body, params=params,
                                        timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise QuayAPIError(0, f"Quay's API at {self.base_url} did not answer: {type(exc).__name__}") from None
        if answer.status_code >= 300:
            raise QuayAPIError(answer.status_code, _why(answer))
        return answer.json() if answer.content else {}


def _repo(repository: str) -> str:
    namespace, _, name = repository.partition("/")
    return f"/api/v1/repository/{quote(namespace, safe='')}/{quote(name, safe='')}"


def _notification(item: dict) -> QuayNotification:
    return QuayNotification(item["uuid"], item.get("title"), item["event"], item["method"],
                            (item.get("config") or {}).get("url"), int(item.get("number_of_failures") or 0))


def _why(answer: requests.Response) -> str:
    """What Quay's answer says, and what to do about the usual ones."""
    try:
        said = answer.json()
        said = said.get("error_description") or said.get("detail") or said.get("message") or said.get("error")
    except ValueError:
        said = None
    said = " ".join(str(said or answer.reason or "").split())[:300]
    if answer.status_code == 401:
        return f"Quay refused the token (401 {said}): make a new one, QUAY_API_TOKEN"
    if answer.status_code == 403:
        return (f"the token may not do this (403 {said}): it needs the repo:admin scope, on a user who administers "
                "the repository")
    return f"Quay's API answered {answer.status_code}: {said}"
