"""The Quay event model: one parser turns a notification body into a typed, validated event.

The body Quay sends does not name its event (a build_success and a
build_cancelled carry the same fields), so the event name comes from the URL.
Most events concern a repository; the quota events concern a namespace, and
their body has no repository at all.
Only the fields this service uses are validated; extra fields Quay may add are
ignored, so a newer Quay keeps working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..base.printable import find_control
from . import strict_json

BUILD_EVENTS = ("build_queued", "build_start", "build_success", "build_failure", "build_cancelled")
EVENTS = BUILD_EVENTS + (
    "repo_push",
    "vulnerability_found",
    "repo_image_expiry",
    "repo_mirror_sync_started",
    "repo_mirror_sync_success",
    "repo_mirror_sync_failed",
)  # the repository events
NAMESPACE_EVENTS = ("quota_warning", "quota_error")
QUOTA_FIGURES = ("threshold_percent", "usage_percent", "usage_bytes", "limit_bytes")  # whole numbers, as sent
ALL_EVENTS = EVENTS + NAMESPACE_EVENTS
TEST_BUILD_ID = "fake-build-id"

# Patterns are used with fullmatch: "$" would also match before a final newline.
_SEGMENT = re.compile(r"[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*")  # not only dots: not "." or ".."
_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")


def control_character(text: str) -> str | None:
    """Where `text` holds a control character (C0, DEL, C1, U+2028/U+2029), shown escaped; None if it holds none."""
    found = find_control(text)
    if found is None:
        return None
    return f"contains a control character ({found.group()!r}) at position {found.start()}"


class PayloadError(Exception):
    """The body is not a Quay notification; names the field and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class QuayEvent:
    """A validated Quay notification. Unknown values are None, never invented.

    A namespace event (quota_*) has a namespace and no repository or name.
    """

    event: str
    repository: str | None
    namespace: str
    name: str | None
    docker_url: str | None = None
    homepage: str | None = None
    build_id: str | None = None
    commit: str | None = None
    ref: str | None = None
    tags: tuple[str, ...] = ()
    threshold_percent: int | None = None
    usage_percent: int | None = None
    usage_bytes: int | None = None
    limit_bytes: int | None = None

    @property
    def is_namespace_event(self) -> bool:
        return self.event in NAMESPACE_EVENTS

    @property
    def subject(self) -> str:
        """What the event concerns, as logs and the outbox name it: the repository, or the namespace."""
        return self.namespace if self.repository is None else self.repository

    @property
    def is_build(self) -> bool:
        return self.event in BUILD_EVENTS

    @property
    def is_test(self) -> bool:
        """Quay's "Test Notification" button: only build events carry a marker."""
        return self.is_build and self.build_id == TEST_BUILD_ID

    @property
    def branch(self) -> str | None:
        if self.ref and self.ref.startswith("refs/heads/"):
            return self.ref[len("refs/heads/"):]
        return None


def parse_event(event: str, body: bytes) -> QuayEvent:
    """Parse the body of a Quay notification for `event`; raise PayloadError naming the field."""
    data = _load_json(body)
    if not isinstance(data, dict):
        raise PayloadError("", f"the body must be a JSON object, not {_kind(data)}")
    if event in NAMESPACE_EVENTS:
        return _namespace_event(event, data)

    repository = _string(data, "repository", required=True)
    namespace, _, name = repository.partition("/")
    if not (_SEGMENT.fullmatch(namespace) and _SEGMENT.fullmatch(name)):
        raise PayloadError(
            "repository",
            f"{repository[:100]!r} is not 'namespace/name' (letters, digits, '.', '_' and '-')",
        )
    # Quay also sends "namespace" and "name"; "repository" is the one source
    # of truth (the original service's README example disagrees with itself).
    _string(data, "namespace")
    _string(data, "name")

    fields = {
        "event": event,
        "repository": repository,
        "namespace": namespace,
        "name": name,
        "docker_url": _string(data, "docker_url"),
        "homepage": _string(data, "homepage"),
    }
    if event in BUILD_EVENTS:
        fields.update(_build_fields(data))
    elif event == "repo_push":
        fields["tags"] = _tags(data, "updated_tags", allow_map=True)
    elif event in ("vulnerability_found", "repo_image_expiry"):
        fields["tags"] = _tags(data, "tags", allow_map=False)
    return QuayEvent(**fields)


def _namespace_event(event: str, data: dict) -> QuayEvent:
    """A quota notification: the namespace, its page, and the quota figures (Quay's formatted sizes are not read)."""
    namespace = _string(data, "namespace", required=True)
    if not _SEGMENT.fullmatch(namespace):
        raise PayloadError(
            "namespace", f"{namespace[:100]!r} is not a Quay namespace (letters, digits, '.', '_' and '-')"
        )
    return QuayEvent(
        event=event, repository=None, namespace=namespace, name=None, homepage=_string(data, "homepage"),
        **{key: _count(data, key) for key in QUOTA_FIGURES},
    )


def _count(data: dict, key: str) -> int:
    """A required whole number, zero or more: Quay sends the quota figures as integers."""
    value = data.get(key)
    if value is None:
        raise PayloadError(key, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if isinstance(value, float) else _kind(value)
        raise PayloadError(key, f"must be a whole number, not {shown}")
    if value < 0:
        raise PayloadError(key, f"must not be negative (it is {value})")
    return value


def _load_json(body: bytes) -> object:
    try:
        return strict_json.loads(body)
    except strict_json.NotStrictJSON as exc:
        raise PayloadError("", str(exc)) from None


def _build_fields(data: dict) -> dict:
    build_id = _string(data, "build_id", required=True)
    tags = _tags(data, "docker_tags", allow_map=False)
    metadata = data.get("trigger_metadata")
    if metadata is None:
        # A manual build (an uploaded Dockerfile) has no trigger and no commit.
        return {"build_id": build_id, "tags": tags}
    if not isinstance(metadata, dict):
        raise PayloadError("trigger_metadata", f"must be an object, not {_kind(metadata)}")
    commit = _string(metadata, "commit", prefix="trigger_metadata.")
    if commit is not None and not _COMMIT.fullmatch(commit):
        raise PayloadError(
            "trigger_metadata.commit", f"{commit[:80]!r} is not a commit SHA (7 to 64 hexadecimal characters)"
        )
    return {
        "build_id": build_id,
        "tags": tags,
        "commit": commit.lower() if commit else None,
        "ref": _string(metadata, "ref", prefix="trigger_metadata."),
    }


def _string(data: dict, key: str, *, required: bool = False, prefix: str = "") -> str | None:
    """The string at `key`, None when absent; refused when not a string, or holding a control character."""
    value = data.get(key)
    if value is None:
        if required:
            raise PayloadError(prefix + key, "is required")
        return None
    if not isinstance(value, str):
        raise PayloadError(prefix + key, f"must be a string, not {_kind(value)}")
    if required and not value:
        raise PayloadError(prefix + key, "must not be empty")
    _refuse_control(value, prefix + key)
    return value


def _tags(data: dict, key: str, *, allow_map: bool) -> tuple[str, ...]:
    """A list of tag names; older Quay sends repo_push's updated_tags as a {tag: digest} map."""
    value = data.get(key)
    if value is None:
        return ()
    if allow_map and isinstance(value, dict):
        value = list(value)
    if not isinstance(value, list):
        expected = "a list of tags or a {tag: digest} object" if allow_map else "a list of tags"
        raise PayloadError(key, f"must be {expected}, not {_kind(value)}")
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            raise PayloadError(f"{key}[{i}]", f"must be a string, not {_kind(tag)}")
        _refuse_control(tag, f"{key}[{i}]")
    return tuple(value)


def _refuse_control(value: str, field: str) -> None:
    """A newline or escape in a name would reach GitHub's URL, the client_payload and the logs."""
    if problem := control_character(value):
        raise PayloadError(field, problem)


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
