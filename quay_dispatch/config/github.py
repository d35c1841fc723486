"""The GitHub settings: one kind of credentials (a token or an App), the API's URL and CA."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .reader import ConfigError, Env, read_file


def github_settings(env: Env, dry_run: bool) -> dict:
    """GITHUB_TOKEN (or GH_TOKEN) or GITHUB_APP_*, GITHUB_CA_FILE, GITHUB_API_URL (Settings' fields)."""
    token = env.get("GITHUB_TOKEN", "GH_TOKEN")
    app_id, app_key = env.get("GITHUB_APP_ID"), _app_private_key(env)
    app_key_given = bool(env.get("GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_FILE"))  # even one refused above
    installation = env.get("GITHUB_APP_INSTALLATION_ID")
    if installation is not None and not installation.isdigit():
        env.problems.append(f"GITHUB_APP_INSTALLATION_ID={installation!r} is not a number")
    if token and (app_id or app_key_given):
        env.problems.append("both GITHUB_TOKEN and a GitHub App are set: use one")
    elif bool(app_id) != app_key_given:
        env.problems.append("a GitHub App needs both GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY (or _FILE)")
    elif not token and not app_id and not dry_run:
        env.problems.append("no GitHub credentials: set GITHUB_TOKEN (or GH_TOKEN) or a GitHub App "
                            "(GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY), or DRY_RUN=1 to record without sending")
    ca_file = env.get("GITHUB_CA_FILE")
    if ca_file and not Path(ca_file).is_file():
        env.problems.append(f"GITHUB_CA_FILE={ca_file}: no such file")
    api_url = (env.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/")
    _check_api_url(api_url, env.flag("GITHUB_API_ALLOW_HTTP"), env.problems)
    return dict(github_token=token, github_app_id=app_id, github_app_private_key=app_key,
                github_app_installation_id=int(installation) if (installation or "").isdigit() else None,
                github_ca_file=ca_file, github_api_url=api_url)


def _app_private_key(env: Env) -> str | None:
    """The GitHub App's private key, from GITHUB_APP_PRIVATE_KEY (PEM text) or its _FILE; never repeated."""
    text, path = env.get("GITHUB_APP_PRIVATE_KEY") or "", env.get("GITHUB_APP_PRIVATE_KEY_FILE") or ""
    if text and path:
        env.problems.append("both GITHUB_APP_PRIVATE_KEY and GITHUB_APP_PRIVATE_KEY_FILE are set: use one")
        return None
    source = f"GITHUB_APP_PRIVATE_KEY_FILE={path}" if path else "GITHUB_APP_PRIVATE_KEY"
    if path:
        try:
            text = read_file("GITHUB_APP_PRIVATE_KEY_FILE", path).decode("ascii")
        except ConfigError as exc:
            env.problems.append(str(exc))
            return None
        except UnicodeDecodeError:
            text = "not PEM"
    if not text:
        return None
    # A PaaS often keeps a multi-line value with literal \n: accept that too.
    text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        env.problems.append(f"{source} is not an unencrypted PEM private key")
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        env.problems.append("the GitHub App private key must be an RSA key (GitHub signs App JWTs with RS256)")
        return None
    return text


def _check_api_url(url: str, allow_http: bool, problems: list[str]) -> None:
    """GITHUB_API_URL must be https: the token and the App's keys go to it. Plain http is for a
    loopback address (a test server), or needs GITHUB_API_ALLOW_HTTP=1."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problems.append(f"GITHUB_API_URL={url!r} is not an https URL such as https://api.github.com")
    elif parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        problems.append(f"GITHUB_API_URL={url!r} is plain http: the GitHub token would cross the network "
                        "in clear text; use https, or set GITHUB_API_ALLOW_HTTP=1 if the network is private "
                        "and you accept that risk")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
