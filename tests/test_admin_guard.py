"""What an attacker tried on the operator's page (issue 31): a DNS rebinding site, an ADMIN_BIND written another way
and a SIGHUP, a login's next= that a browser reads differently from a check, a stolen session cookie, and text that
reads backwards. On SQLite only: nothing here depends on the store."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import requests
from ada_url import URL
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from quay_dispatch.admin.guard import SESSION_IDLE, SESSION_LONGEST, host_answered, session_fresh
from quay_dispatch.admin.pages import own_path
from quay_dispatch.base.printable import printable
from quay_dispatch.config import ConfigError, load_settings
from quay_dispatch.config.admin import is_admin_listener
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.admin import AdminClient
from testkit.client import PLAIN
from testkit.credentials import INCOMING_TOKEN
from testkit.service import free_port, run_gunicorn, wait_until

TOKEN = "admin-token-for-the-guard-0123456789"
PAGE = "https://127.0.0.1:9090"
REBOUND = "rebound.evil.example"


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


def notify_plain(service, **kwargs) -> dict:
    body = sample_body("build_success", "acme/widget", **kwargs)
    response = requests.post(service.url + "/incoming", data=json.dumps(body), auth=("quay", INCOMING_TOKEN),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 202, response.text
    return body


# DNS rebinding ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, bind, names, answered", [
    ("127.0.0.1:9090", "127.0.0.1", (), True),
    ("127.0.0.1:8080", "127.0.0.1", (), True),  # a tunnel's own port
    ("localhost:9090", "127.0.0.1", (), True),
    ("LOCALHOST.", "127.0.0.1", (), True),
    ("[::1]:9090", "127.0.0.1", (), True),  # a tunnel to another loopback address
    ("[::1]:9090", "::1", (), True),
    ("[::ffff:127.0.0.1]:9090", "127.0.0.1", (), True),
    (f"{REBOUND}:9090", "127.0.0.1", (), False),
    ("localhost.evil.example", "127.0.0.1", (), False),
    ("127.0.0.1.evil.example", "127.0.0.1", (), False),
    ("", "127.0.0.1", (), False),
    ("10.0.0.5:9090", "127.0.0.1", (), False),
    ("10.0.0.5:9090", "10.0.0.5", (), True),
    ("10.0.0.6:9090", "10.0.0.5", (), False),
    ("localhost:9090", "10.0.0.5", (), False),
    ("203.0.113.9:9090", "0.0.0.0", (), True),  # an address cannot be rebound
    (f"{REBOUND}:9090", "0.0.0.0", (), False),
    ("relay.example.com:9090", "0.0.0.0", ("relay.example.com",), True),
    ("Relay.Example.com", "10.0.0.5", ("relay.example.com",), True),
])
def test_the_page_answers_to_its_own_names_only(host, bind, names, answered):
    assert host_answered(host, (bind, 9090), names) is answered


def test_a_rebinding_sites_requests_see_nothing_and_redeliver_nothing(start_service, github):
    port = free_port()
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": INCOMING_TOKEN,
                                     "ADMIN_BIND": f"127.0.0.1:{port}"})
    body = notify_plain(service)
    assert wait_until(lambda: len(github.dispatches()) == 1)
    page = AdminClient(f"http://127.0.0.1:{port}")
    delivery = re.search(r'href="(/deliveries/\d+)"', page.get("/deliveries").text)[1]
    page.get(delivery)  # the page's own CSRF token, which the rebinding site could not even read
    origin = f"http://{REBOUND}:{port}"
    rebound = {"Host": f"{REBOUND}:{port}", "Origin": origin, "Sec-Fetch-Site": "same-origin"}

    shown = [page.get(path, headers=rebound) for path in ("/", "/deliveries", delivery, "/refusals")]
    sent = [page.post(delivery + "/redeliver", {"sure": "on"}, headers=rebound),
            page.post("/deliveries/redeliver", {"confirmed": "1", "upto": "1000"}, headers=rebound)]

    for response in shown + sent:
        assert response.status_code == 421, response.url
        assert body["build_id"] not in response.text and "acme/widget" not in response.text
        assert f"not to &#39;{REBOUND}:{port}&#39;" in response.text
    time.sleep(1)
    assert len(github.dispatches()) == 1  # nothing was sent again
    # Its own names, and the operations endpoints by any name (Prometheus scrapes them by the name it was given).
    assert page.get(delivery, headers={"Host": f"localhost:{port}"}).status_code == 200
    assert page.get("/metrics", headers={"Host": f"quay-dispatch:{port}"}).status_code == 200


def test_admin_hosts_adds_a_name_and_refuses_what_is_not_one(start_service):
    port = free_port()
    service = start_service({"ADMIN_BIND": f"127.0.0.1:{port}", "ADMIN_HOSTS": "Relay.Example.com."})
    page = AdminClient(f"https://127.0.0.1:{port}", False)

    assert page.get("/", headers={"Host": f"relay.example.com:{port}"}).status_code == 200
    assert page.get("/", headers={"Host": f"other.example.com:{port}"}).status_code == 421
    assert service.exited() is None
    with pytest.raises(ConfigError, match="ADMIN_HOSTS: 'https://relay.example.com' is not a host name"):
        load_settings({"GITHUB_TOKEN": "x" * 40, "ROUTES": "a/*", "ADMIN_BIND": "127.0.0.1:9090",
                       "ADMIN_HOSTS": "https://relay.example.com"})


# ADMIN_BIND however it is written, and SIGHUP ------------------------------------------------------------------

def test_an_admin_bind_is_its_listener_however_either_writes_the_address():
    assert is_admin_listener(("::1", 9090, 0, 0), ("::1", 9090))
    assert is_admin_listener(("::ffff:127.0.0.1", 9090, 0, 0), ("127.0.0.1", 9090))
    assert not is_admin_listener(("::1", 9091, 0, 0), ("::1", 9090))
    assert not is_admin_listener("/run/quay-dispatch.sock", ("::1", 9090))
    for written, kept in (("[0:0:0:0:0:0:0:1]", "::1"), ("[FD00::1]", "fd00::1"), ("[::FFFF:127.0.0.1]", "127.0.0.1")):
        settings = load_settings({"GITHUB_TOKEN": "x" * 40, "ROUTES": "a/*", "ADMIN_BIND": f"{written}:9090",
                                  "ADMIN_TOKEN": TOKEN})
        assert settings.admin_bind == (kept, 9090)


@pytest.mark.parametrize("admin, bind", [("[0:0:0:0:0:0:0:1]", "[::1]"), ("[::FFFF:127.0.0.1]", "127.0.0.1"),
                                          ("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "localhost")])
def test_the_page_may_not_share_the_services_port_however_either_is_written(admin, bind):
    port = free_port()

    result = run_gunicorn({"ADMIN_BIND": f"{admin}:{port}", "ADMIN_TOKEN": TOKEN}, "--bind", f"{bind}:{port}")

    assert result.returncode != 0
    assert "is also where the service listens" in result.stderr, result.stderr


@pytest.mark.parametrize("written, url_host", [("0:0:0:0:0:0:0:1", "[::1]"),
                                               ("::FFFF:127.0.0.1", "[::ffff:127.0.0.1]")],
                         ids=["long", "upper case, IPv4-mapped"])
def test_an_admin_bind_written_long_serves_the_page_there_and_survives_sighup(start_service, test_pki, written,
                                                                               url_host):
    port = free_port()
    service = start_service({"ADMIN_BIND": f"[{written}]:{port}"})
    page = AdminClient(f"https://{url_host}:{port}", False)

    assert "<h1>Overview</h1>" in page.get("/").text
    quay_there = requests.post(page.url + "/incoming", data=json.dumps(sample_body("build_success", "acme/widget")),
                               headers={"Content-Type": "application/json"}, cert=test_pki.pair("quay"),
                               verify=False, timeout=10)
    assert quay_there.status_code == 404  # the page's door, never Quay's
    booted = service.log().count("Booting worker")

    os.kill(service.proc.pid, signal.SIGHUP)

    assert wait_until(lambda: service.log().count("Booting worker") > booted, timeout=10)
    assert wait_until(lambda: page.get("/healthz").status_code == 200, timeout=10)
    assert "<h1>Overview</h1>" in page.get("/").text
    assert service.exited() is None
    assert service.log().count("The operator's page at:") == 1


# The login's next= ------------------------------------------------------------------------------------------

def _hostile_nexts() -> list[str]:
    """Another site, written every way a browser still reads as one."""
    elsewhere = ["//evil.example", "/\\evil.example", "\\\\evil.example", "https://evil.example", "https:evil.example",
                 "http:/evil.example", "//user@evil.example", "javascript:alert(1)", "data:text/html,x", "evil.example"]
    sneaky = []
    for char in ("\t", "\r", "\n", "\x00", " ", "\\", "\x0b", "\x1f"):
        sneaky += [f"/{char}/evil.example", f"{char}//evil.example", f"/{char}{char}/evil.example",
                   f"{char}/{char}/evil.example{char}", f"//{char}evil.example", f"/{char}\\evil.example"]
    return elsewhere + sneaky


@pytest.mark.parametrize("target", _hostile_nexts())
def test_a_next_that_a_browser_reads_as_another_site_lands_on_the_page(target):
    location = own_path(target) or "/"

    landed = URL(location, base=PAGE + "/login?next=x")  # WHATWG's parser, as browsers resolve Location

    assert (landed.protocol, landed.host) == ("https:", "127.0.0.1:9090"), (target, location)
    assert location.isascii() and location.isprintable()  # a header value, never a 500


@pytest.mark.parametrize("target, path", [
    ("/deliveries?status=failed", "/deliveries?status=failed"),
    ("/%09/evil.example", "/%09/evil.example"),  # percent-encoded stays a path
    ("/%2F%2Fevil.example", "/%2F%2Fevil.example"),
    ("/@evil.example", "/@evil.example"),  # userinfo needs an authority: this is a path
    ("/deliveries?q=a b", "/deliveries?q=a%20b"),
    ("/d\x00x", "/d%00x"),
])
def test_a_next_on_the_page_itself_is_kept_as_a_browser_reads_it(target, path):
    landed = URL(own_path(target), base=PAGE + "/login")

    assert landed.host == "127.0.0.1:9090"
    assert landed.pathname + landed.search == path


def test_the_login_sends_a_browser_back_to_the_page_whatever_next_holds(start_service, test_pki):
    port = free_port()
    start_service({"ADMIN_BIND": f"127.0.0.1:{port}", "ADMIN_TOKEN": TOKEN})
    page = AdminClient(f"https://127.0.0.1:{port}", test_pki.ca_file)
    landings = {}
    for target in ("/%09/evil.example", "/%0D%0A/evil.example", "/%0A%0Devil.example%0D", "%00//evil.example",
                   "/deliveries%3Fstatus%3Dfailed"):
        page.http.cookies.clear()
        page.csrf = None
        answer = page.post(f"/login?next={target}", {"token": TOKEN})
        assert answer.status_code == 303, (target, answer.status_code)
        landed = URL(answer.headers["Location"], base=page.url + "/login")
        landings[target] = landed.host, landed.pathname

    assert set(host for host, _ in landings.values()) == {f"127.0.0.1:{port}"}
    assert landings["/deliveries%3Fstatus%3Dfailed"][1] == "/deliveries"


# Sessions ---------------------------------------------------------------------------------------------------

def test_a_login_lasts_a_working_day_and_an_hour_unused():
    login = 1_000_000

    assert session_fresh({"admin": True, "since": login, "seen": login}, login + 60)
    assert session_fresh({"admin": True, "since": login, "seen": login + SESSION_LONGEST - 60},
                         login + SESSION_LONGEST - 1)
    assert not session_fresh({"admin": True, "since": login, "seen": login + SESSION_LONGEST - 60},
                             login + SESSION_LONGEST)
    assert session_fresh({"admin": True, "since": login, "seen": login}, login + SESSION_IDLE - 1)
    assert not session_fresh({"admin": True, "since": login, "seen": login}, login + SESSION_IDLE)
    assert not session_fresh({"admin": True}, login)  # a cookie from before the bounds
    assert not session_fresh({}, login)


def _signed_session(values: dict) -> str:
    """A session cookie as the page signs it: its key derives from ADMIN_TOKEN, which the test knows."""
    secret = load_settings({"GITHUB_TOKEN": "x" * 40, "ROUTES": "a/*", "ADMIN_BIND": "127.0.0.1:9090",
                            "ADMIN_TOKEN": TOKEN}).admin_secret
    app = Flask(__name__)
    app.secret_key = secret
    return SecureCookieSessionInterface().get_signing_serializer(app).dumps(values)


def test_the_service_refuses_a_session_past_either_bound(start_service, test_pki):
    port = free_port()
    start_service({"ADMIN_BIND": f"127.0.0.1:{port}", "ADMIN_TOKEN": TOKEN})
    page = AdminClient(f"https://127.0.0.1:{port}", test_pki.ca_file)
    now = int(time.time())
    sessions = {"fresh": {"admin": True, "since": now - 3600, "seen": now - 60},
                "too old": {"admin": True, "since": now - SESSION_LONGEST - 1, "seen": now - 60},
                "unused": {"admin": True, "since": now - 7200, "seen": now - SESSION_IDLE - 1},
                "before the bounds": {"admin": True}}
    answers = {}
    for name, values in sessions.items():
        page.http.cookies.set("quay_dispatch_admin", _signed_session(values))
        answers[name] = page.get("/deliveries").status_code

    assert answers == {"fresh": 200, "too old": 302, "unused": 302, "before the bounds": 302}


# Text that reads backwards -----------------------------------------------------------------------------------

BIDI = "\u202e\u2066\u200f"  # right-to-left override, left-to-right isolate, right-to-left mark


def test_bidi_controls_in_a_branch_a_tag_and_a_commit_message_are_shown_escaped(start_service, test_pki, github):
    port = free_port()
    service = start_service({"ADMIN_BIND": f"127.0.0.1:{port}"})
    page = AdminClient(f"https://127.0.0.1:{port}", test_pki.ca_file)
    body = sample_body("build_success", "acme/widget", branch=f"main{BIDI}txt.exe", tags=(f"v1{BIDI}",))
    body["trigger_metadata"]["commit_info"] = {"message": f"fix {BIDI} it", "url": "https://github.com/acme/widget"}
    github.answer(422, {"message": f"no {BIDI} such ref"})
    response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)
    assert response.status_code == 202  # taken: right-to-left text is no reason to fail Quay's call
    assert wait_until(lambda: page.get("/deliveries?status=failed").text.count('href="/deliveries/') == 1)
    delivery = re.search(r'href="(/deliveries/\d+)"', page.get("/deliveries").text)[1]

    for path in ("/deliveries", delivery):
        html = page.get(path).text
        assert not any(char in html for char in BIDI), path
    assert f"main{printable(BIDI)}txt.exe" in page.get("/deliveries").text
    detail = page.get(delivery).text
    assert "v1\\u202e\\u2066\\u200f" in detail and "fix \\u202e\\u2066\\u200f it" in detail
    assert "no \\u202e\\u2066\\u200f such ref" in detail
    assert github.dispatches()[0].json()["client_payload"]["branch"] == f"main{BIDI}txt.exe"  # sent as Quay said
