"""A loopback HTTP server standing in for Quay's API, written from DESIGN.md's "Quay's side" (checked against Quay's
real API server): Bearer tokens with repo:admin only, notifications with their failure counts, repositories
paged by next_page, builds and tags. It records every request, and can be made slow."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

QUAY_API_TOKEN = "quay-api-token-for-the-tests-0123456789"
LESSER_TOKEN = "quay-token-with-repo-read-only-0123456"  # a token of a lesser scope: 403 insufficient_scope
EVENTS = ("build_queued", "build_start", "build_success", "build_failure", "build_cancelled", "repo_push",
          "vulnerability_found", "repo_image_expiry", "repo_mirror_sync_started", "repo_mirror_sync_success",
          "repo_mirror_sync_failed")
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

    def __init__(self, page_size: int = 2):
        self.repositories: dict[str, Repository] = {}
        self.requests: list[Request] = []
        self.page_size = page_size
        self.delay = 0.0  # seconds before each answer
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def add_notification(self, repository: str, event: str, url: str, failures: int = 0, method: str = "webhook",
                         title: str | None = None) -> dict:
        notification = {"uuid": str(uuid.uuid4()), "title": title, "event": event, "method": method,
                        "config": {"url": url}, "event_config": {}, "number_of_failures": failures}
        self.repositories.setdefault(repository, Repository()).notifications.append(notification)
        return notification

    def close(self) -> None:
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
        query = parse_qs(parts.query)
        if method == "GET" and parts.path == "/api/v1/repository":
            return 200, self._repository_page(query)
        match = _NOTIFICATIONS.fullmatch(parts.path)
        if match:
            return self._notifications(method, match[1], match[2], bool(match[3]), body)
        for kind in ("build", "tag"):
            found = re.fullmatch(rf"/api/v1/repository/([^/]+/[^/]+)/{kind}/", parts.path)
            if method == "GET" and found and found[1] in self.repositories:
                return 200, {f"{kind}s": getattr(self.repositories[found[1]], f"{kind}s"), "has_additional": False}
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
            return 201, self.add_notification(repository, asked["event"], asked["config"]["url"],
                                              method=asked["method"], title=asked.get("title"))
        found = next((n for n in repo.notifications if n["uuid"] == uid), None)
        if found is None:
            return (404 if method == "GET" else 400), {"error": "invalid_request"}
        if method == "POST" and test:
            repo.tests_sent.append(uid)
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
