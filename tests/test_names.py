"""Names with control characters, live: the real service answers 400 naming the field, and GitHub hears nothing."""

from __future__ import annotations

import pytest

from quay_dispatch.tools.sample import sample_body, send_like_quay
from testkit.bodies import edited
from testkit.credentials import INCOMING_TOKEN
from testkit.service import wait_until

PLAIN_TOKEN_MODE = {"TLS_CERT_FILE": None, "TLS_KEY_FILE": None, "CLIENT_CERT_SOURCE": "none",
                    "INCOMING_TOKEN": INCOMING_TOKEN}
# (field, what is appended to it): the finding's trailing newline, and what a ref or a tag could smuggle in.
TAINTED = [("repository", "\n")] + [
    (field, char) for field in ("trigger_metadata.ref", "docker_tags[0]") for char in ("\r", "\x00", "\x1b")
]


def test_names_with_control_characters_get_400_naming_the_field_and_are_never_dispatched(start_service, github):
    service = start_service(PLAIN_TOKEN_MODE)
    url = f"{service.url}/incoming/build_success?token={INCOMING_TOKEN}"

    refused = []
    for field, char in TAINTED:
        body = edited(sample_body("build_success", "acme/widget"), field, lambda text, char=char: text + char)
        response = send_like_quay(url, body, None)
        refused.append((field, char, response.status_code, response.json()))
    valid = sample_body("build_success", "acme/widget", build_id="the-valid-one")
    accepted = send_like_quay(url, valid, None)

    for field, char, status, answer in refused:
        assert (status, answer["status"], answer.get("field")) == (400, "error", field), answer
        assert answer["error"].startswith(f"{field}: contains a control character ({char!r}) at position ")
        assert char not in answer["error"]
    assert accepted.status_code == 202, accepted.text
    # The valid one was posted last; once it has arrived, anything the service would send for the others has too.
    assert wait_until(lambda: github.dispatches(), timeout=10), service.log()[-3000:]
    [sent] = github.dispatches()
    assert sent.path == "/repos/acme/widget/dispatches"
    assert sent.json()["client_payload"]["build_id"] == "the-valid-one"


@pytest.fixture(scope="session")
def backend() -> str:
    """Refusing a name happens before the outbox: SQLite is enough."""
    return "sqlite"
