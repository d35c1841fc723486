"""A loopback HTTP server standing in for GitHub's REST API, GitHub App endpoints included."""

from __future__ import annotations

import datetime
import json
import random
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from testkit.credentials import GITHUB_TOKEN, ISSUED_TOKENS, LEGACY_GITHUB_TOKEN
from testkit.service import wait_until


@dataclass
class Captured:
    """One request the loopback GitHub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the loopback GitHub answered
    at: float = 0.0  # when it arrived (time.time())

    def json(self):
        return json.loads(self.body)


class FakeApp:
    """The GitHub App side of the loopback GitHub: checks JWTs with the App's public key, issues tokens.

    Tokens claim to last `claimed_ttl` seconds, but each one works for `uses` requests
    only (None: any number), as a token revoked or expired early would.
    """

    def __init__(self, app_id: str, public_key, installations: dict[str, int], permissions: dict | None = None,
                 claimed_ttl: int = 3600, uses: int | None = None):
        self.app_id, self.public_key, self.installations = app_id, public_key, installations
        self.permissions = permissions or {"contents": "write", "actions": "write", "metadata": "read"}
        self.claimed_ttl, self.uses = claimed_ttl, uses
        self.tokens: dict[str, list] = {}  # token -> [installation, uses left]

    def jwt_problem(self, authorization: str) -> str | None:
        """Why the bearer is not a JWT of this App, as GitHub would check it; None when it is."""
        import jwt

        try:
            claims = jwt.decode(authorization.removeprefix("Bearer "), self.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"]})
        except jwt.PyJWTError as exc:
            return f"A JSON web token could not be decoded: {exc}"
        if str(claims["iss"]) != self.app_id:
            return "'Issuer' claim ('iss') must be an Integer"
        if claims["exp"] - time.time() > 600 or claims["iat"] > time.time():
            return "'Expiration time' claim ('exp') is too far in the future"
        return None

    def handle(self, method: str, path: str, authorization: str) -> tuple[int, dict | list] | None:
        """The answer to an App endpoint, a 401 for a bad installation token, or None to go on."""
        if match := re.fullmatch(r"/app/installations/(\d+)/access_tokens", path):
            if problem := self.jwt_problem(authorization):
                return 401, {"message": problem}
            if int(match[1]) not in self.installations.values():
                return 404, {"message": "Not Found"}
            token = "ghs_" + secrets.token_urlsafe(random.randint(16, 60))  # no fixed length
            self.tokens[token] = [int(match[1]), self.uses]
            ISSUED_TOKENS.append(token)
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.claimed_ttl)
            return 201, {"token": token, "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if path == "/app" or path.startswith("/app/installations?"):
            if problem := self.jwt_problem(authorization):
                return 401, {"message": problem}
            if path == "/app":
                return 200, {"id": int(self.app_id), "slug": "quay-dispatch-test", "name": "Quay dispatch (test)"}
            return 200, [{"id": installation, "account": {"login": repo.partition("/")[0]}}
                         for repo, installation in sorted(self.installations.items())]
        if match := re.fullmatch(r"/repos/([^/]+/[^/]+)/installation", path):
            if problem := self.jwt_problem(authorization):
                return 401, {"message": problem}
            if match[1] not in self.installations:
                return 404, {"message": "Not Found"}
            return 200, {"id": self.installations[match[1]], "permissions": self.permissions}
        repo = re.match(r"/repos/([^/]+/[^/]+)", path)
        entry = self.tokens.get(authorization.removeprefix("Bearer "))
        if repo is None or entry is None or entry[1] == 0 or self.installations.get(repo[1]) != entry[0]:
            return 401, {"message": "Bad credentials"}
        if entry[1] is not None:
            entry[1] -= 1
        return None


class FakeGitHub:
    """A loopback HTTP server standing in for GitHub's REST API; answers follow a script.

    POSTs get the scripted answers, then 204; GET /repos/{owner}/{repo} answers from
    `repos`. With `app` set, GitHub App endpoints work and other requests need an
    installation token. `prefix` ("/api/v3") and `tls` (a certificate pair) make it a
    GitHub Enterprise Server.
    """

    def __init__(self, prefix: str = "", tls: tuple[str, str] | None = None):
        self.requests: list[Captured] = []
        self.script: list[tuple[int, dict, bytes]] = []
        self.repos: dict[str, tuple[int, dict]] = {}  # "owner/name" -> answer to GET /repos/owner/name
        self.scopes: str | None = "repo, workflow"  # X-OAuth-Scopes of GET /user (None: a fine-grained token)
        self.app: FakeApp | None = None
        self.prefix = prefix
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self._serve("POST")

            def do_GET(self):
                self._serve("GET")

            def _serve(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    status, headers, payload = fake._answer(method, self.path, self.headers.get("Authorization", ""))
                    fake.requests.append(
                        Captured(method, self.path, dict(self.headers.items()), body, status, time.time()))
                try:
                    time.sleep(fake.delay)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                self.send_response(status)
                headers = {"X-GitHub-Request-Id": f"REQ{len(fake.requests)}", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}{prefix}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _answer(self, method: str, raw_path: str, authorization: str) -> tuple[int, dict, bytes]:
        def as_json(status, body):
            return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

        if not raw_path.startswith(self.prefix):
            return as_json(404, {"message": "Not Found"})
        path = raw_path[len(self.prefix):]
        if self.app and (answer := self.app.handle(method, path, authorization)) is not None:
            return as_json(*answer)
        if method == "GET" and path == "/user":
            if authorization not in (f"Bearer {GITHUB_TOKEN}", f"Bearer {LEGACY_GITHUB_TOKEN}"):
                return as_json(401, {"message": "Bad credentials"})
            status, headers, payload = as_json(200, {"login": "relay-bot"})
            return status, headers | ({} if self.scopes is None else {"X-OAuth-Scopes": self.scopes}), payload
        if method == "GET":
            return as_json(*self.repos.get(path.removeprefix("/repos/"), (404, {"message": "Not Found"})))
        return self.script.pop(0) if self.script else (204, {}, b"")

    def dispatches(self) -> list[Captured]:
        """The dispatch requests received (repository_dispatch and workflow_dispatch), in order."""
        return [r for r in list(self.requests) if r.method == "POST" and r.path.endswith("/dispatches")]

    def dispatched_builds(self) -> list[str]:
        """The Quay build_id of each repository_dispatch received, in order."""
        return [body["client_payload"]["build_id"] for body in (r.json() for r in self.dispatches())
                if "client_payload" in body]

    def answer(self, status: int, body: dict | None = None, headers: dict | None = None, times: int = 1):
        """Queue `times` answers of `status` before the default 204."""
        payload = json.dumps(body).encode() if body is not None else b""
        self.script.extend([(status, {"Content-Type": "application/json", **(headers or {})}, payload)] * times)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Captured]:
        """The requests received, once there are `count` of them (or `timeout` has passed)."""
        wait_until(lambda: len(self.requests) >= count, timeout, interval=0.02)
        return list(self.requests)

    def reset(self):
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.repos.clear()
            self.scopes = "repo, workflow"
            self.app = None
            self.delay = 0.0
            self.max_in_flight = 0

    def close(self):
        self._server.shutdown()
        self._server.server_close()
