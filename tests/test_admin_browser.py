"""The operator's page in a real headless Chromium (Debian's, through chromium-driver): browsing and sending
again, HTML in the data, another site's forms, the login, accessibility (axe-core). With SCREENSHOTS=DIR (make
screenshots) the browsing test leaves the pages' screenshots there, for docs/operations.md."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import requests
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from quay_dispatch.tools.sample import sample_body
from testkit.browser import AXE, PHONE, Browser, HostilePage, chromium_missing
from testkit.client import PLAIN
from testkit.credentials import INCOMING_TOKEN
from testkit.service import free_port, require, wait_until

TOKEN = "admin-token-for-the-browser-0123456789"
SCREENSHOTS = os.environ.get("SCREENSHOTS")


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture
def browser():
    require(chromium_missing())
    chromium = Browser()
    yield chromium
    chromium.close()


def page_service(start_service, token: str | None = None):
    """A service behind a router (plain HTTP, INCOMING_TOKEN), its page on a loopback port: a secure context
    for Chromium without a certificate it would have to trust."""
    port = free_port()
    service = start_service(PLAIN | {"CLIENT_CERT_SOURCE": "none", "INCOMING_TOKEN": INCOMING_TOKEN,
                                     "ADMIN_BIND": f"127.0.0.1:{port}", "ADMIN_TOKEN": token})
    return service, f"http://127.0.0.1:{port}"


def notify(service, repository: str = "acme/widget", **kwargs) -> dict:
    body = sample_body("build_success", repository, **kwargs)
    response = requests.post(service.url + "/incoming", data=json.dumps(body), auth=("quay", INCOMING_TOKEN),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 202, response.text
    return body


def rows(driver) -> list[str]:
    try:
        return [row.text for row in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]
    except WebDriverException:  # the page went away under us: a click's navigation
        return []


def text_of(driver, tag: str) -> str:
    try:
        return driver.find_element(By.TAG_NAME, tag).text
    except WebDriverException:
        return ""


def heading(driver, text: str) -> bool:
    """Whether the page shown comes to have this h1 (a click's navigation takes a moment)."""
    return wait_until(lambda: text_of(driver, "h1") == text, timeout=5)


def no_dialog(driver) -> bool:
    try:
        WebDriverWait(driver, 1).until(expected_conditions.alert_is_present())
    except TimeoutException:
        return True
    return False


def shoot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))


def test_browsing_filtering_and_sending_again(start_service, github, browser):
    service, url = page_service(start_service)
    github.answer(502, {"message": "Server Error"}, headers={"X-GitHub-Request-Id": "GH-502-A"})
    body = notify(service, branch="main", tags=("v2", "latest"))
    notify(service, "acme/other")
    assert wait_until(lambda: len(github.dispatches()) == 3, timeout=15)  # 502, then 204 twice
    driver = browser.driver

    driver.get(url + "/deliveries")
    assert len(rows(driver)) == 2
    header = driver.find_element(By.CSS_SELECTOR, "header.top")
    assert header.value_of_css_property("background-color") == "rgba(36, 41, 47, 1)"  # the stylesheet applies
    driver.find_element(By.NAME, "quay_repository").send_keys("acme/other")
    driver.find_element(By.CSS_SELECTOR, ".filters button").click()
    assert wait_until(lambda: ["acme/other" in text for text in rows(driver)] == [True], timeout=5)
    driver.get(url + "/deliveries?quay_repository=acme/widget")
    shoot(driver, "deliveries")
    link = driver.find_element(By.CSS_SELECTOR, "tbody a")
    assert link.get_attribute("target") == "_blank"
    delivery = link.get_attribute("href")
    driver.get(delivery)
    attempts = rows(driver)
    assert "502" in attempts[0] and "GH-502-A" in attempts[0] and "GitHub answered 502: Server Error" in attempts[0]
    assert "delivered" in attempts[1] and "204" in attempts[1]
    shoot(driver, "delivery")

    driver.find_element(By.NAME, "sure").click()
    driver.find_element(By.CSS_SELECTOR, ".redeliver button").click()
    assert wait_until(lambda: "is queued again" in text_of(driver, "main"), timeout=5)
    assert wait_until(lambda: len(github.dispatches()) == 4)
    assert github.dispatches()[-1].json()["client_payload"]["build_id"] == body["build_id"]

    assert wait_until(lambda: "pending" not in requests.get(url + "/deliveries?status=pending", timeout=5).text
                      .split("<tbody>")[1])
    driver.get(url + "/deliveries?quay_repository=acme/widget")
    driver.find_element(By.CSS_SELECTOR, ".bulk button").click()
    assert heading(driver, "Redeliver 1 deliveries?")
    driver.find_element(By.CSS_SELECTOR, "main form button").click()
    assert wait_until(lambda: len(github.dispatches()) == 5)
    time.sleep(1)
    assert len(github.dispatches()) == 5
    driver.get(url + "/")
    shoot(driver, "overview")
    assert [m for m in browser.console() if "SEVERE" in m or "Content Security Policy" in m] == []
    if SCREENSHOTS:
        on_a_phone(url, delivery)


def on_a_phone(url: str, delivery: str) -> None:
    phone = Browser(PHONE)
    try:
        for name, address in (("phone-overview", url + "/"), ("phone-delivery", delivery)):
            phone.driver.get(address)
            shoot(phone.driver, name)
    finally:
        phone.close()


def test_html_in_a_branch_and_in_githubs_words_stays_text(start_service, github, browser):
    service, url = page_service(start_service)
    github.answer(422, {"message": '<img src=x onerror="alert(2)">'})
    notify(service, branch="<svg/onload=alert(1)>")
    assert wait_until(lambda: len(github.dispatches()) == 1)
    driver = browser.driver

    driver.get(url + "/deliveries")
    assert "<svg/onload=alert(1)>" in rows(driver)[0]
    assert no_dialog(driver)
    driver.find_element(By.CSS_SELECTOR, "tbody a").click()
    driver.switch_to.window(driver.window_handles[-1])  # it opens in a tab of its own
    assert wait_until(lambda: '<img src=x onerror="alert(2)">' in text_of(driver, "main"))
    assert no_dialog(driver)

    assert [m for m in browser.console() if "SEVERE" in m or "Content Security Policy" in m] == []


def test_another_sites_forms_are_refused_and_nothing_is_sent(start_service, github, browser):
    service, url = page_service(start_service)
    github.answer(404, {"message": "Not Found"})
    notify(service)
    assert wait_until(lambda: "failed" in requests.get(url + "/deliveries", timeout=5).text)
    delivery = re.search(r'href="/deliveries/(\d+)"', requests.get(url + "/deliveries", timeout=5).text)[1]
    posts = {f"/deliveries/{delivery}/redeliver": {"sure": "on"},
             "/deliveries/redeliver": {"status": "failed", "confirmed": "1", "upto": "999999999"},
             "/logout": {}, "/login": {"token": "anything-at-all-000000000000"}}
    hostile = HostilePage({url + path: fields for path, fields in posts.items()})

    try:
        browser.driver.get(hostile.url)
        assert wait_until(lambda: all(f"POST {path} 403" in service.log() for path in posts), timeout=10), \
            service.log()
    finally:
        hostile.close()
    time.sleep(1)
    assert len(github.dispatches()) == 1  # nothing was sent again


def test_the_login_asks_for_the_token_refuses_a_wrong_one_and_then_lets_in(start_service, browser):
    service, url = page_service(start_service, token=TOKEN)
    driver = browser.driver

    driver.get(url + "/deliveries")
    assert driver.current_url == url + "/login?next=/deliveries"
    assert browser.accessibility_problems() == []
    driver.find_element(By.NAME, "token").send_keys("not-the-token-at-all-000000")
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    assert wait_until(lambda: "That is not the token." in text_of(driver, "main"), timeout=5)
    time.sleep(1.1)  # the wait a wrong token earns
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()

    assert heading(driver, "Deliveries")
    assert driver.current_url == url + "/deliveries"
    assert TOKEN not in service.log()
    # The worst next= found: a tab, which the browser drops, made another site of /<TAB>/evil.example.
    driver.get(url + "/login?next=/%09/evil.example")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    assert wait_until(lambda: "/login" not in driver.current_url, timeout=5)
    assert driver.current_url == url + "/"  # the overview, not another site


def test_no_page_has_a_serious_accessibility_problem(start_service, github, browser):
    if not AXE.exists():
        pytest.fail("axe-core is missing: `make test` installs it from npm into var/axe")
    service, url = page_service(start_service)
    github.answer(500, {"message": "down"})
    notify(service)
    requests.post(service.url + "/incoming", data="{}", headers={"Content-Type": "application/json"}, timeout=5)
    assert wait_until(lambda: len(github.dispatches()) == 2)
    delivery = re.search(r'href="(/deliveries/\d+)"', requests.get(url + "/deliveries", timeout=5).text)[1]

    found = {}
    for path in ("/", "/deliveries", delivery, "/refusals"):
        browser.driver.get(url + path)
        found[path] = browser.accessibility_problems()

    assert found == {path: [] for path in found}
