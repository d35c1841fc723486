"""The operator's page (ADMIN_BIND) without a browser: its door, its login, its forms and what they do to the real
service and the loopback GitHub, on SQLite and on PostgreSQL. tests/test_admin_browser.py drives it in Chromium."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest
import requests

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.admin import AdminClient
from testkit.credentials import GITHUB_TOKEN
from testkit.service import deliveries, free_port, run_gunicorn, wait_until

TOKEN = "admin-token-for-the-tests-0123456789"


def with_page(start_service, test_pki, token: str | None = None, **env):
    """A service with its page on a loopback port of its own; the service and a client of the page."""
    port = free_port()
    service = start_service({"ADMIN_BIND": f"127.0.0.1:{port}", "ADMIN_TOKEN": token, **env})
    return service, AdminClient(f"https://127.0.0.1:{port}", test_pki.ca_file)


def notify(service, test_pki, repository: str = "acme/widget", **kwargs) -> dict:
    body = sample_body("build_success", repository, **kwargs)
    response = send_like_quay(service.url + "/incoming", body, test_pki.pair("quay"), verify=test_pki.ca_file)
    assert response.status_code == 202, response.text
    return body


def test_each_door_serves_its_own_and_nothing_of_the_other(start_service, test_pki):
    service, page = with_page(start_service, test_pki)

    overview = page.get("/")
    assert overview.status_code == 200 and "<h1>Overview</h1>" in overview.text
    assert overview.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in overview.headers["Content-Security-Policy"]
    assert (overview.headers["X-Content-Type-Options"], overview.headers["Referrer-Policy"]) == ("nosniff",
                                                                                               "no-referrer")
    stylesheet = page.get("/static/admin.css")
    assert (stylesheet.status_code, stylesheet.headers["Content-Type"]) == (200, "text/css; charset=utf-8")
    assert page.post("/incoming", csrf=False).status_code == 404  # no Quay door here
    assert page.get("/metrics").status_code == 200  # Prometheus needs no client certificate here
    assert page.get("/readyz").json()["status"] == "ready"
    for path in ("/", "/deliveries", "/refusals", "/login"):
        public = requests.get(service.url + path, cert=test_pki.pair("quay"), verify=test_pki.ca_file, timeout=10)
        assert public.status_code == 404, path  # no page on Quay's door
        assert public.json()["status"] == "error"


def test_the_page_holds_a_silent_client_like_every_other_door(start_service, test_pki):
    service, page = with_page(start_service, test_pki)
    port = int(page.url.rsplit(":", 1)[1])

    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the service, not by our timeout
        waited = time.monotonic() - started

    assert 4 < waited < 8
    assert wait_until(lambda: "no handshake within 5 s" in service.log(), timeout=3)


@pytest.mark.parametrize("env, words", [
    ({"ADMIN_BIND": "0.0.0.0:9090"}, "ADMIN_BIND=0.0.0.0:9090 is not a loopback address: anyone who reaches it "
                                     "could redeliver events; set ADMIN_TOKEN"),
    ({"ADMIN_BIND": "127.0.0.1:9090", "ADMIN_TOKEN": "short"}, "ADMIN_TOKEN is 5 characters long: use 24 at least"),
    ({"ADMIN_BIND": "admin.example:9090"}, "ADMIN_BIND='admin.example:9090': use an address and a port"),
    ({"ADMIN_TOKEN": TOKEN}, "ADMIN_TOKEN set without ADMIN_BIND"),
])
def test_an_unsafe_or_unusable_page_stops_the_start_saying_which_setting(env, words):
    result = run_gunicorn(env)

    assert result.returncode != 0
    assert words in result.stderr, result.stderr
    assert TOKEN not in result.stderr and "Traceback" not in result.stderr


def test_the_page_may_not_share_the_services_port():
    port = free_port()

    result = run_gunicorn({"ADMIN_BIND": f"127.0.0.1:{port}"}, "--bind", f"127.0.0.1:{port}")

    assert result.returncode != 0
    assert f"ADMIN_BIND=127.0.0.1:{port} is also where the service listens" in result.stderr, result.stderr


def test_with_a_token_every_page_but_the_login_asks_for_it_and_a_wrong_one_slows_its_sender(start_service,
                                                                                            test_pki):
    service, page = with_page(start_service, test_pki, token=TOKEN)

    assert page.get("/deliveries").headers["Location"] == "/login?next=/deliveries"
    assert page.post("/deliveries/1/redeliver").status_code == 401
    assert page.log_in("wrong" * 8).status_code == 401
    assert page.post("/login", {"token": TOKEN}).status_code == 429  # too soon after a wrong one, even the right
    time.sleep(1.1)
    logged_in = page.post("/login?next=/\\evil.example/", {"token": TOKEN})
    assert (logged_in.status_code, logged_in.headers["Location"]) == (303, "/")  # never to another site
    cookie = logged_in.headers["Set-Cookie"]
    assert all(flag in cookie for flag in ("HttpOnly", "SameSite=Strict", "Secure"))
    assert page.get("/deliveries").status_code == 200
    assert page.get("/healthz").status_code == 200  # the operations endpoints need no login
    assert TOKEN not in service.log()


def test_a_form_without_the_pages_token_or_from_another_site_is_refused(start_service, test_pki, github):
    service, page = with_page(start_service, test_pki)
    github.answer(404, {"message": "Not Found"})
    notify(service, test_pki)
    assert wait_until(lambda: page.get("/deliveries?status=failed").text.count('href="/deliveries/') == 1)

    url = re.search(r'href="(/deliveries/\d+)"', page.get("/deliveries").text)[1] + "/redeliver"
    without_token = page.post(url, csrf=False)
    cross_site = page.post(url, headers={"Sec-Fetch-Site": "same-site"})
    other_origin = page.post(url, headers={"Sec-Fetch-Site": None, "Origin": "https://127.0.0.1:1"})

    assert [r.status_code for r in (without_token, cross_site, other_origin)] == [400, 403, 403]
    assert "CSRF token" in without_token.text and "another site" in cross_site.text
    time.sleep(1)
    assert len(github.dispatches()) == 1  # nothing was sent again


def test_browsing_what_came_in_and_sending_it_again(start_service, test_pki, github):
    service, page = with_page(start_service, test_pki)
    github.answer(502, {"message": "Server Error"}, headers={"X-GitHub-Request-Id": "GH-FAILED-1"})
    body = notify(service, test_pki, branch="main")
    notify(service, test_pki, repository="acme/other")
    assert wait_until(lambda: len([r for r in github.dispatches() if r.status == 204]) == 2, timeout=15)

    listing = page.get("/deliveries").text
    assert listing.count('href="/deliveries/') == 2
    assert page.get("/deliveries?quay_repository=acme/other").text.count('href="/deliveries/') == 1
    assert page.get(f"/deliveries?q={body['build_id']}").text.count('href="/deliveries/') == 1
    delivery_id = re.search(r'href="/deliveries/(\d+)"', page.get(f"/deliveries?q={body['build_id']}").text)[1]
    detail = page.get(f"/deliveries/{delivery_id}").text
    assert "GH-FAILED-1" in detail and "502" in detail and "GitHub answered 502: Server Error" in detail
    assert "(the service's credentials, never shown)" in detail and GITHUB_TOKEN not in detail

    sent = page.post(f"/deliveries/{delivery_id}/redeliver", {"sure": "on"})
    assert sent.status_code == 303
    assert wait_until(lambda: len(github.dispatches()) == 4)  # 502, 204, 204, and this one
    assert github.dispatches()[-1].json()["client_payload"]["build_id"] == body["build_id"]

    # GitHub has the request a moment before the outbox records its answer: until then it is pending, not sendable
    assert wait_until(lambda: [(d["status"], d["attempts"]) for d in deliveries(service)
                               if d["id"] == int(delivery_id)] == [("delivered", 3)])  # 502, 204, and the redelivery
    confirm = page.post("/deliveries/redeliver", {"quay_repository": "acme/widget"})
    assert "Redeliver 1 deliveries?" in confirm.text
    upto = re.search(r'name="upto" value="(\d+)"', confirm.text)[1]
    done = page.post("/deliveries/redeliver", {"quay_repository": "acme/widget", "confirmed": "1", "upto": upto})
    assert done.status_code == 303
    assert wait_until(lambda: len(github.dispatches()) == 5)
    time.sleep(1)
    assert len(github.dispatches()) == 5


def test_refused_calls_are_shown_with_why(start_service, test_pki):
    service, page = with_page(start_service, test_pki)

    refused = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                             test_pki.pair("other_root"), verify=test_pki.ca_file)

    assert refused.status_code == 403
    assert wait_until(lambda: "does not chain to a trusted root" in page.get("/refusals").text, timeout=5)
    assert "CN=quay.io (DNS names: quay.io)" in page.get("/refusals").text


def test_html_in_a_branch_and_in_githubs_words_is_shown_as_text(start_service, test_pki, github):
    service, page = with_page(start_service, test_pki)
    github.answer(422, {"message": '<img src=x onerror="alert(2)">'})
    notify(service, test_pki, branch="<svg/onload=alert(1)>")
    assert wait_until(lambda: page.get("/deliveries?status=failed").text.count('href="/deliveries/') == 1)
    delivery = re.search(r'href="(/deliveries/\d+)"', page.get("/deliveries").text)[1]

    for path in ("/deliveries", delivery):
        html = page.get(path).text
        assert "<svg/onload" not in html and "<img src=x" not in html
    assert "&lt;svg/onload=alert(1)&gt;" in page.get("/deliveries").text
    assert "&lt;img src=x onerror=" in page.get(delivery).text


def test_the_overview_says_what_github_and_quay_last_did(start_service, test_pki, github):
    service, page = with_page(start_service, test_pki)
    assert "No call from Quay since the service started." in page.get("/").text
    github.answer(404, {"message": "Not Found"})

    notify(service, test_pki)
    assert wait_until(lambda: "Last answer" in page.get("/").text)
    stranger = send_like_quay(service.url + "/incoming", sample_body("build_success", "acme/widget"),
                              test_pki.pair("other_host"), verify=test_pki.ca_file)

    assert stranger.status_code == 403
    overview = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.get("/").text))
    assert re.search(r"Last answer \d+ s ago : failed 404 GitHub answered 404: Not Found", overview), overview
    assert re.search(r"Last call \d+ s ago , answered accepted", overview), overview  # not the stranger's 403


def test_the_page_stays_open_across_a_reload(start_service, test_pki):
    service, page = with_page(start_service, test_pki)
    booted = service.log().count("Booting worker")

    os.kill(service.proc.pid, signal.SIGHUP)  # gunicorn's master reads its configuration anew, new workers

    assert wait_until(lambda: service.log().count("Booting worker") > booted, timeout=10)
    assert wait_until(lambda: page.get("/healthz").status_code == 200, timeout=10)
    assert page.get("/").status_code == 200
    assert service.log().count("The operator's page at:") == 1  # the same listener, not a second one
    assert service.exited() is None


@pytest.mark.parametrize("path, status", [
    ("/deliveries/99999999999999999999999", 404), ("/deliveries?before=99999999999999999999999", 200),
    ("/deliveries?status=nope", 400), ("/deliveries?q=%00", 400), ("/deliveries/0", 404),
])
def test_what_no_delivery_is_gets_an_answer_not_a_500(start_service, test_pki, path, status):
    service, page = with_page(start_service, test_pki)

    assert page.get(path).status_code == status
    assert page.post("/deliveries/99999999999999999999999/redeliver").status_code == 404
    assert page.post("/deliveries/redeliver", {"confirmed": "1", "upto": "9" * 30}).status_code == 303
    assert "Traceback" not in service.log()

