"""The credentials the tests hand the service, and the logs that must never show them."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

GITHUB_TOKEN = "ghp_testtoken0123456789abcdefTESTTOKEN"
LEGACY_GITHUB_TOKEN = "gho_legacy_token_name_value"
INCOMING_TOKEN = "incoming-token-for-tests-0123456789"
QUAY_API_TOKEN = "quay-api-token-for-the-tests-0123456789"  # the one the loopback Quay (testkit.quay_api) accepts
LESSER_TOKEN = "quay-token-with-repo-read-only-0123456"  # a token of a lesser scope: 403 insufficient_scope
REVOKED_QUAY_TOKEN = "quay-token-revoked-0123456789abcdef"  # one the loopback Quay does not know: 401
APP_ID = "123456"  # the GitHub App the loopback GitHub knows (testkit.github.FakeApp)
# What must never appear in any log line of a test run (checked when the session ends).
SECRETS = (GITHUB_TOKEN, LEGACY_GITHUB_TOKEN, INCOMING_TOKEN, QUAY_API_TOKEN, LESSER_TOKEN, REVOKED_QUAY_TOKEN,
           "PRIVATE KEY")
ALL_LOGS: list[Path] = []  # every log file a test's process wrote
ISSUED_TOKENS: list[str] = []  # installation tokens the loopback GitHub issued: never to be logged either


def leaks() -> list[str]:
    """Each line of ALL_LOGS that holds a secret, with its file's name (the line cut short)."""
    return [f"{path.name}: {line.strip()[:200]}" for path in ALL_LOGS if path.exists()
            for line in path.read_text(errors="replace").splitlines()
            if any(s in line for s in (*SECRETS, *ISSUED_TOKENS))]



def key_pem(key) -> str:
    """A private key as GITHUB_APP_PRIVATE_KEY holds it: PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def as_app(key, **overrides) -> dict:
    """The settings of a service that authenticates as the GitHub App with `key`, instead of a token."""
    return {"GITHUB_TOKEN": None, "GITHUB_APP_ID": APP_ID, "GITHUB_APP_PRIVATE_KEY": key_pem(key), **overrides}
