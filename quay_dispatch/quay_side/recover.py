"""Recovery: the events Quay dropped while the relay's notification failed or was off, read back from Quay's lists and
dispatched as if Quay had sent them, marked recovered.

- Build events from the build list, by phase (complete, error, cancelled), one listing a repository. A build is the
  same build by its id, whoever sent it: the outbox refuses it forever once it holds it (domain/plan.py), so a late
  retry from Quay after a recovery is a duplicate, and so is a recovery of what Quay did deliver.
- repo_push from the tag list, one event a tag that moved (its start_ts), keyed by repository, tag and manifest
  digest; not when the relay took a push of that tag since then (a push's body has no digest: DESIGN.md).
Only what the caller's windows hold: never before the relay first watched the repository, never older than
QUAY_RECOVER_MAX_AGE, never younger than QUAY_RECOVER_GRACE (Quay's chance to deliver it itself).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from ..config import Settings
from ..domain.plan import plan_dispatches
from ..domain.quay import PayloadError, parse_event
from ..domain.routes import select_routes
from ..outbox import Notification, Outbox
from .api import QuayAPI, QuayAPIError

BUILD_PHASES = {"complete": "build_success", "error": "build_failure", "cancelled": "build_cancelled"}
RECOVERABLE = (*BUILD_PHASES.values(), "repo_push")
BUILD_LIMIT = 100  # builds read a repository and look
PUSH_SLACK = 60.0  # seconds: a push the relay took this long before the tag's start_ts still counts (clocks differ)
# How long before its trouble began an event may have started: a build is listed by when it was queued, and ends
# (the event Quay dropped) up to an hour later; a tag's start_ts and a build's start are to the second.
LEAD = {"build_success": 3600.0, "build_failure": 3600.0, "build_cancelled": 3600.0, "repo_push": 1.0}
log = logging.getLogger("quay_dispatch.quay")

Windows = dict[tuple[str, str], tuple[float, float]]  # (repository, event) -> (from, to), epoch seconds


@dataclass(frozen=True)
class Found:
    """An event of Quay's lists in a window, and what came of it."""

    repository: str
    event: str
    what: str  # "build <id>" or "tag <name>@<digest>"
    at: float  # the build's start, the tag's move
    outcome: str  # recovered, would recover, duplicate (the relay had it), not routed (a route's filter), unreadable


class Recovery:
    """Finds and dispatches what Quay dropped, for the GitHub host `host` (the deliverer's)."""

    def __init__(self, settings: Settings, outbox: Outbox, api: QuayAPI, host: str):
        self.settings, self.outbox, self.api, self.host = settings, outbox, api, host
        self.quay_host = urlsplit(settings.quay_api_url).netloc

    def run(self, windows: Windows, dry_run: bool = False) -> tuple[list[Found], list[str]]:
        """Every event of `windows` Quay's lists show, dispatched unless `dry_run`; and what could not be read."""
        found, problems = [], []
        for repository in dict.fromkeys(repo for repo, _ in windows):
            mine = {event: span for (repo, event), span in windows.items() if repo == repository}
            try:
                if any(event in BUILD_PHASES.values() for event in mine):
                    found += self._builds(repository, mine, dry_run)
                if "repo_push" in mine:
                    found += self._pushes(repository, mine["repo_push"], dry_run)
            except QuayAPIError as exc:
                problems.append(f"{repository}: not recovered: {exc}")
                if exc.stops_all:
                    break
        return found, problems

    def _builds(self, repository: str, windows: dict[str, tuple[float, float]], dry_run: bool) -> list[Found]:
        since = min(start for event, (start, _) in windows.items() if event in BUILD_PHASES.values())
        found = []
        for build in self.api.builds(repository, since=since, limit=BUILD_LIMIT):
            event = BUILD_PHASES.get(build.get("phase"))
            started = _epoch(build.get("started"))
            if event not in windows or started is None or not windows[event][0] <= started <= windows[event][1]:
                continue
            body = self._base(repository) | {
                "build_id": str(build["id"]), "build_name": build.get("display_name"), "docker_tags": build.get("tags"),
                "homepage": f"https://{self.quay_host}/repository/{repository}/build/{build['id']}"}
            if isinstance(build.get("trigger_metadata"), dict) and build["trigger_metadata"]:
                body["trigger_metadata"] = build["trigger_metadata"]
            found.append(self._dispatch(repository, event, f"build {build['id']}", started, body, None, dry_run))
        return found

    def _pushes(self, repository: str, window: tuple[float, float], dry_run: bool) -> list[Found]:
        found = []
        for tag in self.api.tags(repository):
            moved, name, digest = tag.get("start_ts"), tag.get("name"), tag.get("manifest_digest")
            if not (isinstance(moved, int | float) and name and digest and window[0] <= moved <= window[1]):
                continue
            what = f"tag {name}@{digest}"
            if self.outbox.received_push(repository, name, moved - PUSH_SLACK):
                found.append(Found(repository, "repo_push", what, moved, "duplicate"))
                continue
            body = self._base(repository) | {"updated_tags": [name]}
            found.append(self._dispatch(repository, "repo_push", what, moved, body, f"{repository}|{name}|{digest}",
                                        dry_run))
        return found

    def _base(self, repository: str) -> dict:
        namespace, _, name = repository.partition("/")
        return {"repository": repository, "namespace": namespace, "name": name,
                "docker_url": f"{self.quay_host}/{repository}",
                "homepage": f"https://{self.quay_host}/repository/{repository}"}

    def _dispatch(self, repository: str, event: str, what: str, at: float, body: dict, identity: str | None,
                  dry_run: bool) -> Found:
        """Route, plan and store one event as Quay would have sent it (`identity`: a push's, see plan_dispatches)."""
        raw = json.dumps(body).encode()
        try:
            quay_event = parse_event(event, raw)
        except PayloadError as exc:
            log.warning("Quay's %s of %s cannot be recovered: %s", what, repository, exc)
            return Found(repository, event, what, at, "unreadable")
        routes = select_routes(self.settings.routes, quay_event).routes
        if not routes:
            return Found(repository, event, what, at, "not routed")
        planned = plan_dispatches(quay_event, routes, raw, recovered=identity or what)
        if dry_run:
            known = self.outbox.known([request.dedup_key for request in planned])
            return Found(repository, event, what, at, "duplicate" if len(known) == len(planned) else "would recover")
        notification = Notification(event, repository, quay_event.build_id, self.host, self.settings.dry_run,
                                    quay_event.branch, quay_event.tags, quay_event.commit, raw.decode(),
                                    recovered=True)
        accepted, _ = self.outbox.add(planned, notification)
        if not accepted:
            return Found(repository, event, what, at, "duplicate")
        log.warning("recovered %s %s of %s, which Quay dropped: %s", event, what, repository,
                    ", ".join(f"delivery {a.id} to {a.target}" for a in accepted))
        return Found(repository, event, what, at, "recovered")


def count_recovered(state: dict, found: list[Found]) -> None:
    """Add what was recovered to the watch's kept counts, by event (quay_dispatch_quay_recovered_events_total)."""
    counts = state.setdefault("recovered", {})
    for item in found:
        if item.outcome == "recovered":
            counts[item.event] = counts.get(item.event, 0) + 1


def _epoch(started) -> float | None:
    """A build's `started` (RFC 2822, as Quay formats it) in epoch seconds; None when it is not one."""
    try:
        return parsedate_to_datetime(started).timestamp()
    except (TypeError, ValueError):
        return None
