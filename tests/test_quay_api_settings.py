"""Quay's side's settings (issue 33, first step): what QUAY_API_TOKEN turns on, its defaults, and what is refused
with the setting named. The token itself never appears in a problem."""

from __future__ import annotations

import pytest

from quay_dispatch.config import ConfigError, load_settings

TOKEN = "quay-oauth-token-0123456789abcdefghij"
BASE = {"GITHUB_TOKEN": "x" * 40, "ROUTES": "acme/*"}


def settings(**env):
    return load_settings(BASE | env)


def test_without_a_token_quays_side_is_off_and_public_url_is_still_read():
    plain = settings()
    assert (plain.quay_api_token, plain.quay_api_url, plain.public_url) == (None, None, None)
    assert settings(PUBLIC_URL="https://relay.example.com/").public_url == "https://relay.example.com"


def test_with_a_token_the_defaults_follow_quay_hostname_and_acme_domains():
    on = settings(QUAY_API_TOKEN=TOKEN, ACME_DOMAINS="relay.example.com, other.example.com",
                  QUAY_HOSTNAME="quay.corp.example")

    assert on.quay_api_url == "https://quay.corp.example"
    assert on.public_url == "https://relay.example.com"
    assert (on.quay_watch_interval, on.quay_repair, on.quay_recover) == (300.0, True, True)
    assert (on.quay_recover_grace, on.quay_recover_max_age) == (120.0, 86400.0)
    assert settings(QUAY_API_TOKEN=TOKEN, PUBLIC_URL="https://r.example.com").quay_api_url == "https://quay.io"


def test_the_watch_settings_are_read_as_durations_and_flags():
    on = settings(QUAY_API_TOKEN=TOKEN, PUBLIC_URL="https://relay.example.com", QUAY_WATCH_INTERVAL="2m",
                  QUAY_REPAIR="0", QUAY_RECOVER="off", QUAY_RECOVER_GRACE="5m", QUAY_RECOVER_MAX_AGE="2d",
                  QUAY_API_URL="http://127.0.0.1:8080")

    assert (on.quay_watch_interval, on.quay_repair, on.quay_recover) == (120.0, False, False)
    assert (on.quay_recover_grace, on.quay_recover_max_age, on.quay_api_url) == (300.0, 172800.0,
                                                                                 "http://127.0.0.1:8080")


@pytest.mark.parametrize("env, words", [
    ({"QUAY_API_TOKEN": TOKEN}, "QUAY_API_TOKEN needs PUBLIC_URL"),
    ({"QUAY_WATCH_INTERVAL": "60"}, "QUAY_WATCH_INTERVAL set without QUAY_API_TOKEN"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "http://relay.example.com"}, "PUBLIC_URL=http://relay.example.com: "
                                                                           "must be https"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://quay:secret-token@relay.example.com"},
     "PUBLIC_URL=https://…@relay.example.com: may hold no user, password"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "relay.example.com"}, "is not a URL such as https://"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://localhost:8443"}, "Quay refuses a webhook to localhost"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://r.example.com", "QUAY_API_URL": "http://quay.example.com"},
     "QUAY_API_URL=http://quay.example.com: must be https"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://r.example.com", "QUAY_WATCH_INTERVAL": "2"},
     "QUAY_WATCH_INTERVAL=2: 5 s at least"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://r.example.com", "QUAY_RECOVER_GRACE": "2d"},
     "QUAY_RECOVER_GRACE (172800 s) must be shorter than QUAY_RECOVER_MAX_AGE (86400 s)"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://r.example.com", "QUAY_RECOVER_MAX_AGE": "20d"},
     "QUAY_RECOVER_MAX_AGE (1728000 s) must be shorter than DELIVERY_RETENTION (1209600 s)"),
    ({"QUAY_API_TOKEN": TOKEN, "PUBLIC_URL": "https://r.example.com", "QUAY_REPAIR": "maybe"},
     "QUAY_REPAIR='maybe' is not a boolean"),
])
def test_what_cannot_work_is_refused_naming_the_setting(env, words):
    with pytest.raises(ConfigError) as refused:
        settings(**env)

    assert words in str(refused.value)
    assert TOKEN not in str(refused.value) and "secret-token" not in str(refused.value)
