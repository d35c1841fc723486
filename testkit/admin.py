"""The operator's page as a test uses it without a browser: a session that carries the page's cookie and sends
each form's CSRF token back, as the page's own forms do."""

from __future__ import annotations

import re

import requests

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class AdminClient:
    """requests on the page at `url` (its listener: ADMIN_BIND), trusting `ca_file` for its TLS."""

    def __init__(self, url: str, ca_file: str | bool = False):
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.verify = ca_file  # per request: REQUESTS_CA_BUNDLE in the environment would win over the session's
        self.csrf: str | None = None

    def get(self, path: str, **kwargs) -> requests.Response:
        return self._kept(self.http.get(self.url + path, timeout=10, allow_redirects=False, verify=self.verify,
                                        **kwargs))

    def post(self, path: str, data: dict | None = None, csrf: bool = True, **kwargs) -> requests.Response:
        """A form sent as the page sends it: its CSRF token, and Sec-Fetch-Site: same-origin, as Chromium says."""
        form = dict(data or {})
        if csrf:
            if self.csrf is None:
                self.get("/login" if "/login" in path else "/deliveries")  # a page with a form
            form["csrf_token"] = self.csrf
        headers = {"Sec-Fetch-Site": "same-origin", **kwargs.pop("headers", {})}
        return self._kept(self.http.post(self.url + path, data=form, headers=headers, timeout=10,
                                         allow_redirects=False, verify=self.verify, **kwargs))

    def _kept(self, response: requests.Response) -> requests.Response:
        """`response`, its page's CSRF token kept for the next form."""
        if match := _CSRF.search(response.text):
            self.csrf = match.group(1)
        return response

    def log_in(self, token: str) -> requests.Response:
        self.get("/login")
        return self.post("/login", {"token": token})
