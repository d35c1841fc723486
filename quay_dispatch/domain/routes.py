"""Routes: which Quay repository triggers which GitHub repository, as data the operator reads.

A route is a TOML table (ROUTES_FILE) or an inline `quay[=github]` entry
(ROUTES). The code only interprets them; see docs/configuration.md.
A namespace event (quota_*) has no repository: it is matched on the namespace
part of `quay`, and goes to a `github` target that does not use {name}.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .quay import ALL_EVENTS, NAMESPACE_EVENTS, QUOTA_FIGURES, QuayEvent, control_character

MAX_EVENT_TYPE_LENGTH = 100  # GitHub's limit for repository_dispatch
# Patterns are used with fullmatch: "$" would also match before a final newline.
_GITHUB_REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
_TEMPLATE_FIELDS = re.compile(r"\{([^{}]*)\}")
_KNOWN_KEYS = {"quay", "github", "events", "event_type", "branches", "tags", "workflow", "ref", "inputs"}
_WORKFLOW = re.compile(r"[A-Za-z0-9._-]+\.ya?ml|\d+")  # a file in .github/workflows, or its id
# What a workflow input or a ref template may name: the client_payload's keys (dispatch.py),
# for a repository event and for a namespace event.
PAYLOAD_FIELDS = ("text", "sha", "ref", "branch", "tags", "image", "build_id", "quay_repository", "event", "url")
NAMESPACE_PAYLOAD_FIELDS = ("namespace", "event", "url", *QUOTA_FIGURES)
# An input a route may name besides those: "true" when the relay recovered the event from Quay's lists (Quay dropped
# it), "false" when Quay sent it (docs/setup.md). Not in the client_payload, which has GitHub's 10 keys already.
RECOVERED_INPUT = "recovered"
MAX_WORKFLOW_INPUTS = 10  # GitHub allows 25, GitHub Enterprise Server 10


def template_fields(template: str) -> list[str]:
    """The {names} a template uses."""
    return _TEMPLATE_FIELDS.findall(template)


class RouteError(Exception):
    """A route is malformed; the message names the route and the key."""


@dataclass(frozen=True)
class Route:
    """One forwarding rule."""

    quay: str
    github: str = "{namespace}/{name}"
    events: tuple[str, ...] = ("build_success",)
    event_type: str | None = None
    branches: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    workflow: str | None = None  # workflow_dispatch of this workflow instead of repository_dispatch
    ref: str = "{branch}"  # with workflow; falls back to the repository's default branch
    inputs: tuple[str, ...] = ()  # with workflow: client_payload keys sent as inputs

    def target(self, quay_event: QuayEvent) -> str:
        """The GitHub repository "owner/name" this route sends `event` to."""
        return self.github.format(namespace=quay_event.namespace, name=quay_event.name)

    def fixed_target(self) -> str | None:
        """The one GitHub repository this route can send to, or None when it depends on the Quay name."""
        if not _TEMPLATE_FIELDS.search(self.github):
            return self.github
        if not any(c in self.quay for c in "*?["):
            namespace, _, name = self.quay.partition("/")
            return self.github.format(namespace=namespace, name=name)
        return None

    def event_type_for(self, quay_event: QuayEvent) -> str:
        return self.event_type or "QUAY_" + quay_event.event.upper()


@dataclass(frozen=True)
class Selection:
    """The routes that apply to an event, or why none does."""

    routes: tuple[Route, ...]
    repository_routed: bool
    reasons: tuple[str, ...]


def select_routes(routes: tuple[Route, ...], quay_event: QuayEvent) -> Selection:
    """Routes whose filters all match `event`; with the reason each other matching route skipped it."""
    selected, reasons, routed = [], [], False
    for route in routes:
        if not _matches(route, quay_event):
            continue
        routed = True
        reason = _filter_reason(route, quay_event)
        if reason:
            reasons.append(f"route {route.quay!r}: {reason}")
        else:
            selected.append(route)
    return Selection(tuple(selected), routed, tuple(reasons))


def _matches(route: Route, quay_event: QuayEvent) -> bool:
    """Whether the route's `quay` glob covers the event: its repository, or for a namespace event its namespace."""
    if quay_event.is_namespace_event:
        return fnmatchcase(quay_event.namespace, route.quay.partition("/")[0])
    return fnmatchcase(quay_event.repository, route.quay)


def _namespace_target_problem(route: Route) -> str | None:
    """Why the route cannot send a namespace event: a target built from {name}, which such an event has not."""
    if "name" in template_fields(route.github):
        return (f"github = {route.github!r} uses {{name}}, and a namespace event has no repository name: "
                "name the target, such as 'acme/infra' or '{namespace}/infra'")
    return None


def _filter_reason(route: Route, quay_event: QuayEvent) -> str | None:
    if quay_event.event not in route.events:
        return f"event {quay_event.event} is not in {list(route.events)}"
    if quay_event.is_namespace_event and (problem := _namespace_target_problem(route)):
        return problem
    if route.branches is not None:
        if quay_event.branch is None:
            return f"the build has no branch, and the route only allows branches {list(route.branches)}"
        if not any(fnmatchcase(quay_event.branch, glob) for glob in route.branches):
            return f"branch {quay_event.branch!r} does not match {list(route.branches)}"
    if route.tags is not None and not any(
        fnmatchcase(tag, glob) for tag in quay_event.tags for glob in route.tags
    ):
        return f"no tag of {list(quay_event.tags)} matches {list(route.tags)}"
    return None


def parse_toml_routes(text: str, source: str = "ROUTES_FILE") -> tuple[Route, ...]:
    """Routes from the [[routes]] tables of a TOML document."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RouteError(f"{source}: not valid TOML ({exc})") from None
    tables = document.get("routes")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise RouteError(f"{source}: expected one or more [[routes]] tables")
    return tuple(_route_from_table(table, f"{source}, route {i + 1}") for i, table in enumerate(tables))


def parse_inline_routes(text: str) -> tuple[Route, ...]:
    """Routes from ROUTES: `quay[=github]` entries separated by ';' (events: build_success)."""
    routes = []
    for i, entry in enumerate(e.strip() for e in text.split(";")):
        if not entry:
            continue
        quay, sep, github = (part.strip() for part in entry.partition("="))
        table = {"quay": quay, "github": github} if sep else {"quay": quay}
        routes.append(_route_from_table(table, f"ROUTES, entry {i + 1} ({entry!r})"))
    if not routes:
        raise RouteError("ROUTES: no route in it; write for example ROUTES='myorg/*'")
    return tuple(routes)


def _route_from_table(table: dict, where: str) -> Route:
    unknown = set(table) - _KNOWN_KEYS
    if unknown:
        known = ", ".join(sorted(_KNOWN_KEYS))
        raise RouteError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
    quay = _text(table, "quay", where, required=True)
    if "/" not in quay:
        raise RouteError(f"{where}: quay = {quay!r} must be a glob on 'namespace/name', such as 'myorg/*'")
    github = _text(table, "github", where) or "{namespace}/{name}"
    fields = set(_TEMPLATE_FIELDS.findall(github))
    if not fields <= {"namespace", "name"}:
        raise RouteError(f"{where}: github = {github!r} may only use {{namespace}} and {{name}}")
    if not _GITHUB_REPO.fullmatch(github.format(namespace="ns", name="repo")):
        raise RouteError(f"{where}: github = {github!r} is not an 'owner/repository' template")
    events = _list(table, "events", where) or ("build_success",)
    for event in events:
        if event not in ALL_EVENTS:
            raise RouteError(f"{where}: unknown event {event!r}; known: {', '.join(ALL_EVENTS)}")
    namespace_events = [event for event in events if event in NAMESPACE_EVENTS]
    if namespace_events:
        if problem := _namespace_target_problem(Route(quay=quay, github=github)):
            raise RouteError(f"{where}: {problem} (events {', '.join(namespace_events)})")
        if "branches" in table or "tags" in table:
            raise RouteError(f"{where}: branches and tags do not apply to the namespace event(s) "
                             f"{', '.join(namespace_events)}: put those in a route of their own")
    event_type = _text(table, "event_type", where)
    if event_type is not None and not 0 < len(event_type) <= MAX_EVENT_TYPE_LENGTH:
        raise RouteError(f"{where}: event_type must be 1 to {MAX_EVENT_TYPE_LENGTH} characters")
    workflow = _text(table, "workflow", where)
    if workflow is not None and not _WORKFLOW.fullmatch(workflow):
        raise RouteError(f"{where}: workflow = {workflow!r} must be a file name such as 'deploy.yml', or a workflow id")
    explicit_ref = _text(table, "ref", where)
    ref = explicit_ref or "{branch}"  # a namespace event has no branch: its workflow runs on the default branch
    inputs = _list(table, "inputs", where) or ()
    if workflow is None and ("ref" in table or "inputs" in table):
        raise RouteError(f"{where}: ref and inputs go with workflow = '...' (workflow_dispatch)")
    payload_fields = _payload_fields(events)
    ref_fields = set(payload_fields) - {"tags"}
    if explicit_ref is not None and not set(_TEMPLATE_FIELDS.findall(ref)) <= ref_fields:
        allowed = ", ".join("{" + f + "}" for f in sorted(ref_fields))
        raise RouteError(f"{where}: ref = {ref!r} may only use {allowed}")
    for name in inputs:
        if name not in (*payload_fields, RECOVERED_INPUT):
            raise RouteError(f"{where}: input {name!r} is not one of {', '.join((*payload_fields, RECOVERED_INPUT))}")
    if len(set(inputs)) > MAX_WORKFLOW_INPUTS:
        raise RouteError(f"{where}: at most {MAX_WORKFLOW_INPUTS} inputs (GitHub Enterprise Server's limit)")
    return Route(
        quay=quay,
        github=github,
        events=events,
        event_type=event_type,
        branches=_list(table, "branches", where),
        tags=_list(table, "tags", where),
        workflow=workflow,
        ref=ref,
        inputs=tuple(dict.fromkeys(inputs)),
    )


def _payload_fields(events: tuple[str, ...]) -> tuple[str, ...]:
    """The client_payload keys of the route's events: a missing one is an unknown value, as a manual build's sha."""
    fields = PAYLOAD_FIELDS if any(event not in NAMESPACE_EVENTS for event in events) else ()
    if any(event in NAMESPACE_EVENTS for event in events):
        fields += tuple(f for f in NAMESPACE_PAYLOAD_FIELDS if f not in fields)
    return fields


def _text(table: dict, key: str, where: str, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None or value == "":
        if required:
            raise RouteError(f"{where}: {key} is required")
        return None
    if not isinstance(value, str):
        raise RouteError(f"{where}: {key} must be a string")
    _refuse_control(value, key, where)
    return value


def _list(table: dict, key: str, where: str) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RouteError(f"{where}: {key} must be a non-empty list of strings")
    for item in value:
        _refuse_control(item, key, where)
    return tuple(value)


def _refuse_control(value: str, key: str, where: str) -> None:
    """A route's strings are matched against names that hold no control character, or sent to GitHub as-is."""
    if problem := control_character(value):
        raise RouteError(f"{where}: {key} = {value[:100]!r} {problem}")
