"""Text logs cannot be forged: what a client sends is escaped, one line per request, no raw ESC."""

from __future__ import annotations

import requests

from quay_dispatch.tools import pki
from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.service import wait_until

FORGED_LINE = "2026-12-02 00:43:00,000 INFO [quay_dispatch.http] POST /incoming 202 accepted 1.0ms from 10.0.0.1"


def request_lines(service) -> list[str]:
    return [line for line in service.log().splitlines() if "[quay_dispatch.http]" in line]


def test_a_path_cannot_write_a_line_of_its_own(start_service, test_pki):
    service = start_service()
    before = request_lines(service)
    path = "/x%0a" + FORGED_LINE.replace(" ", "%20") + "%1b[8m%0d%e2%80%a8"

    answer = requests.get(f"https://127.0.0.1:{service.port}{path}", cert=test_pki.pair("quay"),
                          verify=test_pki.ca_file, timeout=10)

    assert answer.status_code == 404
    assert wait_until(lambda: len(request_lines(service)) > len(before), timeout=5)
    added = request_lines(service)[len(before):]
    assert len(added) == 1, added
    assert "GET /x\\n2026-12-02 00:43:00,000 INFO" in added[0] and "\\x1b[8m\\r\\u2028" in added[0]
    assert "\x1b" not in service.log() and "\u2028" not in service.log()


def test_a_certificate_cannot_write_a_line_of_its_own(start_service, test_pki, tmp_path):
    service = start_service()
    forged = pki.issue("quay.io\x1b[2J", names=["x\n" + FORGED_LINE + "\n"])
    cert, key = tmp_path / "forged.pem", tmp_path / "forged.key"
    pki.write_pair(forged, cert, key)
    before = request_lines(service)

    answer = send_like_quay(f"https://127.0.0.1:{service.port}/incoming?event=build_success",
                            sample_body("build_success", "acme/widget"), (str(cert), str(key)),
                            verify=test_pki.ca_file)

    assert answer.status_code == 403
    error = answer.json()["error"]
    assert "\n" not in error and "\x1b" not in error and "x\\n2026-12-02" in error
    assert wait_until(lambda: len(request_lines(service)) > len(before), timeout=5)
    added = request_lines(service)[len(before):]
    assert len(added) == 1, added
    assert "POST /incoming 403" in added[0] and "quay.io\\x1b[2J" in added[0]
    assert "\x1b" not in service.log()
    assert not any(line.startswith(FORGED_LINE) for line in service.log().splitlines())
