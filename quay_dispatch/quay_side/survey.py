"""What Quay has, beside what the routes want: for each routed repository and each repository event its routes name,
the relay's notification (or none), its failures, and when the relay last heard from it. A notification is the
relay's when its webhook URL is PUBLIC_URL's scheme, host and port, whatever its path and credentials; any other is
Quay's or someone else's, listed apart and never touched (DESIGN.md, "Ours and theirs")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import quote, urlsplit

from ..domain.quay import EVENTS
from ..domain.routes import Route
from .api import QuayAPI, QuayAPIError, QuayNotification

TITLE = "quay-github-actions-dispatch: {event}"  # what `quay connect` names the notifications it creates
_GLOB = "*?["


def webhook_url(public_url: str, event: str, incoming_token: str | None) -> str:
    """The URL Quay calls for `event`: PUBLIC_URL + /incoming/<event>, with INCOMING_TOKEN as the password."""
    parts = urlsplit(public_url)
    credentials = f"quay:{quote(incoming_token, safe='')}@" if incoming_token else ""
    return f"{parts.scheme}://{credentials}{parts.netloc}{parts.path.rstrip('/')}/incoming/{event}"


def is_ours(url: str | None, public_url: str) -> bool:
    """Whether a webhook URL calls this relay: PUBLIC_URL's scheme, host and port."""
    if not url:
        return False
    try:
        theirs, ours = urlsplit(url), urlsplit(public_url)
        return (theirs.scheme.lower(), theirs.hostname, theirs.port or _DEFAULT_PORT.get(theirs.scheme.lower())) == (
            ours.scheme, ours.hostname, ours.port or _DEFAULT_PORT[ours.scheme])
    except ValueError:  # a port that is not a number: not ours
        return False


_DEFAULT_PORT = {"https": 443, "http": 80}


def without_credentials(url: str | None) -> str:
    """A webhook URL as it may be shown: the password (INCOMING_TOKEN, or someone else's) left out."""
    if not url:
        return ""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


@dataclass(frozen=True)
class Row:
    """A repository event the routes want (or one the relay's notification carries although no route wants it)."""

    repository: str
    event: str
    notification: QuayNotification | None  # the relay's; None: missing
    last_received: float | None  # when the relay last heard this event from this repository (epoch seconds)
    wanted: bool = True

    @property
    def state(self) -> str:
        n = self.notification
        return notification_state(n is None, bool(n and n.disabled), n.failures if n else 0)


def notification_state(missing: bool, disabled: bool, failures: int) -> str:
    """ok, failing (1 or 2 failures in a row), disabled (Quay drops its events), or missing."""
    if missing:
        return "missing"
    if disabled:
        return "disabled"
    return "failing" if failures else "ok"


@dataclass
class Survey:
    rows: list[Row] = field(default_factory=list)
    foreign: list[tuple[str, QuayNotification]] = field(default_factory=list)  # never touched
    problems: list[str] = field(default_factory=list)  # what could not be looked at, and why
    unwatched: list[str] = field(default_factory=list)  # namespace (quota) events: in Quay's organisation settings
    stopped: QuayAPIError | None = None  # why the survey stopped short: the token refused, Quay down

    def missing(self) -> list[Row]:
        return [row for row in self.rows if row.notification is None]


def routed_repositories(api: QuayAPI, routes: tuple[Route, ...], problems: list[str]) -> dict[str, list[str]]:
    """Each Quay repository the routes cover, with the repository events its routes name, in the routes' order.

    A pattern's repositories are read from Quay's repository list of its namespace (once a namespace);
    a pattern whose namespace is itself a pattern cannot be listed, and is said in `problems`. Raises
    QuayAPIError when no call can fare better (QuayAPIError.stops_all).
    """
    listed: dict[str, list[str]] = {}
    wanted: dict[str, list[str]] = {}
    for route in routes:
        events = [event for event in route.events if event in EVENTS]
        if not events:
            continue
        namespace, _, name = route.quay.partition("/")
        if any(c in namespace for c in _GLOB):
            problems.append(f"route {route.quay!r}: a namespace pattern cannot be listed through Quay's API; name "
                            "the namespace (myorg/*)")
            continue
        if any(c in name for c in _GLOB):
            if namespace not in listed:
                try:
                    listed[namespace] = api.repositories(namespace)
                except QuayAPIError as exc:
                    if exc.stops_all:
                        raise
                    problems.append(f"namespace {namespace}: {exc}")
                    listed[namespace] = []
            names = [repo for repo in listed[namespace] if fnmatchcase(repo, route.quay)]
        else:
            names = [route.quay]
        for repo in names:
            known = wanted.setdefault(repo, [])
            known += [event for event in events if event not in known]
    return wanted


def survey(api: QuayAPI, routes: tuple[Route, ...], public_url: str, seen: dict[tuple[str, str], float],
           between: Callable[[int], None] | None = None) -> Survey:
    """What Quay has for every routed repository (one notification listing each), beside what the routes want.

    `seen`: when the relay last heard each (repository, event) from Quay (seen.py); `between(n)`: called before
    each of the n repositories' listings but the first (the watch spreads them over its interval). When Quay
    refuses the token or is down, the survey stops there and says so in `problems`, with `stopped` set."""
    found = Survey()
    found.unwatched = sorted({f"{route.quay.partition('/')[0]}: {event}" for route in routes
                              for event in route.events if event not in EVENTS})
    try:
        wanted = routed_repositories(api, routes, found.problems)
    except QuayAPIError as exc:
        found.problems.append(str(exc))
        found.stopped = exc
        return found
    for index, (repository, events) in enumerate(wanted.items()):
        if index and between:
            between(len(wanted))
        try:
            notifications = api.notifications(repository)
        except QuayAPIError as exc:
            found.problems.append(f"{repository}: {exc}")
            if exc.stops_all:
                found.stopped = exc
                return found
            continue
        ours = [n for n in notifications if n.method == "webhook" and is_ours(n.url, public_url)]
        found.foreign += [(repository, n) for n in notifications if n not in ours]
        for event in events:
            matching = [n for n in ours if n.event == event] or [None]
            found.rows += [Row(repository, event, n, seen.get((repository, event))) for n in matching]
        found.rows += [Row(repository, n.event, n, seen.get((repository, n.event)), wanted=False)
                       for n in ours if n.event not in events]
    return found
