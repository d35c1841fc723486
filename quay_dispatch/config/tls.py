"""The service's own TLS certificate and key: which files, and whether they can serve TLS."""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ..transport.identity import load_certificates
from ..transport.tls_context import build_context, handshake_reason
from .reader import ConfigError, Env, read_file


def tls_settings(env: Env) -> dict:
    """TLS_CERT_FILE (or CRT) and TLS_KEY_FILE (or KEY), and which variable each came from (Settings' fields)."""
    cert_setting, cert_file = env.named("TLS_CERT_FILE", "CRT")
    key_setting, key_file = env.named("TLS_KEY_FILE", "KEY")
    return dict(tls_cert_file=cert_file, tls_key_file=key_file, tls_cert_setting=cert_setting,
                tls_key_setting=key_setting)


def certificates_in(setting: str, path: str) -> list[x509.Certificate]:
    """The PEM certificates in the file `setting` names, or a ConfigError saying why there are none."""
    source = f"{setting}={path}"
    try:
        certificates = load_certificates(read_file(setting, path), source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not certificates:
        raise ConfigError(f"{source} is not a PEM certificate")
    return certificates


def tls_problems(cert: tuple[str, str | None], key: tuple[str, str | None]) -> list[str]:
    """Why the certificate and key files cannot serve TLS; each pair is (setting, path), path None when unset.

    Checked before any worker builds its TLS context, so that the operator reads the setting,
    the path and the reason instead of OpenSSL's error list.
    """
    (cert_setting, cert_path), (key_setting, key_path) = cert, key
    if cert_path is None:
        return [f"{key_setting} is set but no certificate: set TLS_CERT_FILE (or --certfile) too"]
    if key_path is None:  # gunicorn's rule: the key is then in the certificate file
        key_setting, key_path = cert_setting, cert_path
    problems: list[str] = []
    certificates = private_key = None
    try:
        certificates = certificates_in(cert_setting, cert_path)
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        private_key = _private_key(key_setting, key_path)
    except ConfigError as exc:
        problems.append(str(exc))
    if certificates is None or private_key is None:
        return list(dict.fromkeys(problems))  # a key in the certificate file: one message for one file
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificates[0].public_key().public_bytes(*spki) != private_key.public_key().public_bytes(*spki):
        return [f"{cert_setting} and {key_setting} do not match: the certificate in {cert_path} "
                f"is not for the key in {key_path}"]
    try:
        build_context(cert_path, key_path, ssl.CERT_NONE)
    except SSL.Error as exc:
        return [f"{cert_setting}={cert_path} and {key_setting}={key_path} cannot serve TLS: {handshake_reason(exc)}"]
    return []


def _private_key(setting: str, path: str):
    data = read_file(setting, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{setting}={path} is an encrypted private key: the service needs it without a "
                          "passphrase") from None
    except ValueError:
        raise ConfigError(f"{setting}={path} is not a PEM private key") from None
