"""A loopback HTTP server standing in for Quay's API, written from DESIGN.md's "Quay's side" (checked against Quay's
real API server): Bearer tokens with repo:admin only, notifications with their failure counts, repositories
paged by next_page, builds and tags. It records every request, and can be made slow.

Beside it, Quay's sender (its notification worker): each event queued for the repository's notifications of that
event, sent as Quay's webhook method sends it, tried up to 5 times `retry_interval` apart; a failure adds one to the
notification's count and a success sets it to 0; at 3 the notification is disabled, and every event and test it
takes up then is dropped."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from quay_dispatch.tools.sample import sample_body
from testkit.credentials import LESSER_TOKEN, QUAY_API_TOKEN
from testkit.pebble import session_for

EVENTS = ("build_queued", "build_start", "build_success", "build_failure", "build_cancelled", "repo_push",
          "vulnerability_found", "repo_image_expiry", "repo_mirror_sync_started", "repo_mirror_sync_success",
          "repo_mirror_sync_failed")
QUAY_REFUSES = ("localhost", "127.0.0.1")  # webhook hosts Quay will not save
TRIES = 5  # of each event, by Quay's worker
DISABLED_AT = 3  # failures in a row
_NOTIFICATIONS = re.compile(r"/api/v1/repository/([^/]+/[^/]+)/notification/(?:([0-9a-f-]{36})(/test)?)?")


@dataclass
class Request:
    """One request the loopback Quay received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Repository:
    notifications: list[dict] = field(default_factory=list)
    builds: list[dict] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)
    tests_sent: list[str] = field(default_factory=list)  # uuids whose test was queued


class FakeQuay:
    """Quay's API on 127.0.0.1; `repositories` by "namespace/name"; `page_size` repositories a page."""

    def __init__(self, page_size: int = 2, cert: tuple[str, str] | None = None, verify: str | bool = True,
                 retry_interval: float = 30.0):
        """`cert`, `verify`: what the sender presents and trusts; `retry_interval`: seconds between two tries."""
        self.repositories: dict[str, Repository] = {}
        self.requests: list[Request] = []
        self.page_size = page_size
        self.delay = 0.0  # seconds before each answer
        self.cert, self.verify, self.retry_interval = cert, verify, retry_interval
        self.resolve: dict[str, str] = {}  # a webhook's host name -> the host:port the sender reaches it at
        self.calls: list[tuple[str, str, int]] = []  # the sender's: (event, uuid, status; 0 when no answer)
        self.dropped: list[tuple[str, str]] = []  # (event, uuid) dropped: disabled, or out of tries
        self._queue: list[dict] = []
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        threading.Thread(target=self._send_forever, daemon=True).start()

    def emit(self, repository: str, event: str, body: dict) -> None:
        """Quay queues `event` of `repository` for each of its notifications of that event."""
        with self._lock:
            for notification in self.repositories.get(repository, Repository()).notifications:
                if notification["event"] == event:
                    self._queue.append({"uuid": notification["uuid"], "repository": repository, "event": event,
                                        "body": body, "tries": 0, "at": time.monotonic()})

    def idle(self) -> bool:
        """Whether the sender has nothing left to try."""
        with self._lock:
            return not self._queue

    def _send_forever(self) -> None:
        while not self._closed.wait(0.05):
            with self._lock:
                due = [item for item in self._queue if item["at"] <= time.monotonic()]
            for item in due:
                self._try(item)

    def _post(self, url: str, body: dict) -> requests.Response:
        """POST `body` as Quay's webhook method does; a host in `resolve` is reached at its address there."""
        parts = urlsplit(url)
        session, auth = requests.Session(), None
        if parts.hostname in self.resolve:
            session = session_for(parts.hostname)
            auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
            url = f"https://{self.resolve[parts.hostname]}{parts.path}"
        with session:
            return session.post(url, data=json.dumps(body), headers={"Content-type": "application/json"}, auth=auth,
                                cert=self.cert, verify=self.verify, timeout=10)

    def _try(self, item: dict) -> None:
        with self._lock:
            repo = self.repositories.get(item["repository"], Repository())
            notification = next((n for n in repo.notifications if n["uuid"] == item["uuid"]), None)
            if notification is None or notification["number_of_failures"] >= DISABLED_AT:
                self._queue.remove(item)
                self.dropped.append((item["event"], item["uuid"]))
                return
            url = notification["config"]["url"]
        try:
            status = self._post(url, item["body"]).status_code
        except requests.RequestException:
            status = 0
        with self._lock:
            self.calls.append((item["event"], item["uuid"], status))
            item["tries"] += 1
            if 200 <= status < 300:
                notification["number_of_failures"] = 0
                self._queue.remove(item)
                return
            notification["number_of_failures"] += 1
            item["at"] = time.monotonic() + self.retry_interval
            if item["tries"] >= TRIES:
                self._queue.remove(item)
                self.dropped.append((item["event"], item["uuid"]))

    def add_notification(self, repository: str, event: str, url: str, failures: int = 0, method: str = "webhook",
                         title: str | None = None) -> dict:
        notification = {"uuid": str(uuid.uuid4()), "title": title, "event": event, "method": method,
                        "config": {"url": url}, "event_config": {}, "number_of_failures": failures}
        self.repositories.setdefault(repository, Repository()).notifications.append(notification)
        return notification

    def close(self) -> None:
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict | None]:
        parts = urlsplit(url)
        with self._lock:
            self.requests.append(Request(method, parts.path, headers, body))
        time.sleep(self.delay)
        authorization = headers.get("Authorization", "")
        if authorization == f"Bearer {LESSER_TOKEN}":
            return 403, {"error": "insufficient_scope", "error_description": "The request requires higher "
                                                                              "privileges than provided"}
        if authorization != f"Bearer {QUAY_API_TOKEN}":
            return 401, {"error": "invalid_token", "error_description": "The access token is invalid"}
        with self._lock:
            return self._answer(method, parts.path, parse_qs(parts.query), body)

    def _answer(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict | None]:
        if method == "GET" and path == "/api/v1/repository":
            return 200, self._repository_page(query)
        match = _NOTIFICATIONS.fullmatch(path)
        if match:
            return self._notifications(method, match[1], match[2], bool(match[3]), body)
        builds = re.fullmatch(r"/api/v1/repository/([^/]+/[^/]+)/build/", path)
        if method == "GET" and builds and builds[1] in self.repositories:
            return 200, {"builds": _builds(self.repositories[builds[1]].builds, query)}
        tags = re.fullmatch(r"/api/v1/repository/([^/]+/[^/]+)/tag/", path)
        if method == "GET" and tags and tags[1] in self.repositories:
            return 200, {"tags": self.repositories[tags[1]].tags, "has_additional": False}
        return 404, {"error": "not_found"}

    def _repository_page(self, query: dict) -> dict:
        namespace = query.get("namespace", [""])[0]
        names = sorted(name for name in self.repositories if name.split("/")[0] == namespace)
        start = int(query.get("next_page", ["0"])[0])
        page = names[start:start + self.page_size]
        listed = {"repositories": [{"namespace": n.split("/")[0], "name": n.split("/")[1]} for n in page]}
        return listed | ({"next_page": str(start + self.page_size)} if start + self.page_size < len(names) else {})

    def _notifications(self, method: str, repository: str, uid: str | None, test: bool, body: bytes):
        repo = self.repositories.get(repository)
        if repo is None:
            return 404, {"error": "not_found"}
        if uid is None and method == "GET":
            return 200, {"notifications": repo.notifications}
        if uid is None and method == "POST":
            asked = json.loads(body)
            if asked.get("event") not in EVENTS:
                return 500, {"error": "internal server error"}  # as Quay answers an unknown event
            if urlsplit(asked["config"]["url"]).hostname in QUAY_REFUSES:
                return 400, {"error": "invalid_request", "error_description": "Invalid webhook URL"}
            return 201, self.add_notification(repository, asked["event"], asked["config"]["url"],
                                              method=asked["method"], title=asked.get("title"))
        found = next((n for n in repo.notifications if n["uuid"] == uid), None)
        if found is None:
            return (404 if method == "GET" else 400), {"error": "invalid_request"}
        if method == "POST" and test:
            repo.tests_sent.append(uid)
            self._queue.append({"uuid": uid, "repository": repository, "event": found["event"], "tries": 0,
                                "body": sample_body(found["event"], repository, test=True), "at": time.monotonic()})
            return 200, {}
        if method == "POST":
            found["number_of_failures"] = 0
            return 204, None
        if method == "DELETE":
            repo.notifications.remove(found)
            return 204, None
        return 405, {"error": "method not allowed"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = fake.answer(self.command, self.path, dict(self.headers.items()), body)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

            def log_message(self, *args):
                pass

        return Handler


def _builds(builds: list[dict], query: dict) -> list[dict]:
    """Quay's build list: newest first, `limit` of them (5 by default), `since` filtering on `started`."""
    since = float(query.get("since", ["0"])[0])
    chosen = [b for b in builds if parsedate_to_datetime(b["started"]).timestamp() >= since]
    chosen.sort(key=lambda b: parsedate_to_datetime(b["started"]).timestamp(), reverse=True)
    return chosen[:int(query.get("limit", ["5"])[0])]


def build(repository: str, phase: str, started: float, commit: str = "0" * 40, branch: str = "main",
          tags: tuple[str, ...] = ("latest",)) -> dict:
    """A build as Quay's build list shows it; `started` in epoch seconds (Quay says it in RFC 2822, to the second)."""
    namespace, _, name = repository.partition("/")
    return {"id": str(uuid.uuid4()), "phase": phase, "started": formatdate(started, usegmt=True),
            "display_name": commit[:7], "tags": list(tags), "repository": {"namespace": namespace, "name": name},
            "trigger_metadata": {"commit": commit, "ref": f"refs/heads/{branch}", "default_branch": "main"}}


def webhook_body(repository: str, event: str, listed: dict) -> dict:
    """What Quay's webhook sends for the build `listed` (build())."""
    metadata = listed["trigger_metadata"]
    return sample_body(event, repository, build_id=listed["id"], commit=metadata["commit"],
                       branch=metadata["ref"].rpartition("/")[2], tags=tuple(listed["tags"]))


RELAY_ADDRESS = "127.0.0.2"  # where the loopback Quay calls the relay: Quay will not call localhost or 127.0.0.1


def start_relay_for(start_service, quay: FakeQuay, overrides: dict[str, str | None], workers: int = 1,
                    port: int | None = None):
    """A relay (start_service) with Quay's side on against `quay`, also listening where `quay` calls it; `port`: the
    one of a relay started before, to start it again."""
    from testkit.service import free_port

    port = port or free_port()
    env = {"QUAY_API_TOKEN": QUAY_API_TOKEN, "QUAY_API_URL": quay.url,
           "PUBLIC_URL": f"https://{RELAY_ADDRESS}:{port}"} | overrides
    return start_service(env, args=["--workers", str(workers), "--bind", f"{RELAY_ADDRESS}:{port}"], port=port)
