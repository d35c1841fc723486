"""TLS with pyOpenSSL for a server that verifies its clients' chains itself; usable without gunicorn.

Why not the stdlib's ssl (gunicorn's own TLS): it checks client certificates with
OpenSSL's client-purpose rule, which refuses Quay's serverAuth-only certificate.
Here the certificate is *requested*, any chain is let through the handshake (which
still proves the client holds the key), and quay_dispatch.transport.identity verifies it as
a server certificate for Quay.

- build_context: the server context, TLS 1.2 at least, no resumption.
- ReloadingContext: the context, rebuilt when the certificate files change.
- peer_chain_environ: the presented chain under mod_ssl's environ names.
- A client's handshake is bounded before OpenSSL parses it: OpenSSL works on memory
  buffers that TLSStream fills, and is given MAX_HANDSHAKE_BYTES before the handshake
  is done, no more; then MAX_CHAIN_CERTIFICATES are checked.
- quay_dispatch.transport.stream and tls_stream: Stream, PlainStream, TLSStream, a non-blocking connection
  that a thread can use like a blocking socket, every wait bounded (what gunicorn's
  parser and response need).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files
CLIENT_CERT = "SSL_CLIENT_CERT"  # mod_ssl's environ names: the leaf, then the rest of the chain
CLIENT_CERT_CHAIN_PREFIX = "SSL_CLIENT_CERT_CHAIN_"
# Quay's chain is about 5 kB. OpenSSL would take 100 kB of certificates and spend
# milliseconds parsing them before any callback of ours could refuse the chain.
MAX_HANDSHAKE_BYTES = 32 * 1024  # bytes a client may send before its handshake is done
MAX_CHAIN_CERTIFICATES = 8  # certificates it may present, its own included
# Mozilla's "intermediate" TLS 1.2 suites: ECDHE, with an AEAD cipher only (no CBC, so nothing for
# LUCKY13 to time). Quay's client negotiates TLS 1.3 or one of these. gunicorn's --ciphers wins.
DEFAULT_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                   "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def build_context(certfile: str, keyfile: str | None, cert_reqs: int, ciphers: str | None = None) -> SSL.Context:
    """The server TLS context; `cert_reqs` is gunicorn's (ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED), `ciphers`
    gunicorn's (None: DEFAULT_CIPHERS)."""
    ctx = _server_context(cert_reqs, ciphers)
    ctx.use_certificate_chain_file(certfile)
    ctx.use_privatekey_file(keyfile or certfile)
    ctx.check_privatekey()
    return ctx


def context_from_pem(chain_pem: bytes, key_pem: bytes, cert_reqs: int, ciphers: str | None = None) -> SSL.Context:
    """build_context's context for a certificate chain (leaf first) and key held in memory, not in files (ACME's)."""
    certificates = x509.load_pem_x509_certificates(chain_pem)
    ctx = _server_context(cert_reqs, ciphers)
    ctx.use_certificate(certificates[0])
    for intermediate in certificates[1:]:
        ctx.add_extra_chain_cert(intermediate)
    ctx.use_privatekey(serialization.load_pem_private_key(key_pem, password=None))
    ctx.check_privatekey()
    return ctx


def _server_context(cert_reqs: int, ciphers: str | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No resumption: a resumed session carries no peer chain, and every call
    # must present its certificate to be verified again.
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET
                    | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_cipher_list((ciphers or DEFAULT_CIPHERS).encode("ascii"))
    if cert_reqs != ssl.CERT_NONE:
        mode = SSL.VERIFY_PEER
        if cert_reqs == ssl.CERT_REQUIRED:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode)  # pyOpenSSL's state: no Python callback of its own
        _openssl.lib.SSL_CTX_set_verify(ctx._context, mode, _accept_any_chain)
        # A chain that links up longer than the cap fails in the handshake, with OpenSSL's bad_certificate.
        ctx.set_verify_depth(MAX_CHAIN_CERTIFICATES - 1)
    return ctx


_openssl = Binding()  # the cffi bindings pyOpenSSL itself is built on
_CHAIN_TOO_LONG = _openssl.lib.X509_V_ERR_CERT_REJECTED  # the verify result of a chain over the cap


# OpenSSL calls this once per problem it finds in the chain and once per certificate
# (three times for Quay's chain), in the middle of the handshake. It is registered
# with OpenSSL directly: pyOpenSSL's own wrapper makes eight OpenSSL calls per
# invocation to build arguments we do not use, and each of them can hand the GIL to a
# request thread under load (docs/architecture.md).
@_openssl.ffi.callback("int (*)(int, X509_STORE_CTX *)")
def _accept_any_chain(ok: int, store_ctx) -> int:
    # Deliberately lets every presented chain through, including OpenSSL's
    # "unsuitable certificate purpose": the application verifies the chain.
    # Except one longer than the verify depth, refused as "rejected": OpenSSL answers that with the
    # bad_certificate alert (a chain too long would be unknown_ca), and the stream can tell it apart.
    if not ok and _openssl.lib.X509_STORE_CTX_get_error(store_ctx) == _openssl.lib.X509_V_ERR_CERT_CHAIN_TOO_LONG:
        _openssl.lib.X509_STORE_CTX_set_error(store_ctx, _CHAIN_TOO_LONG)
        return 0
    _openssl.lib.X509_STORE_CTX_set_error(store_ctx, _openssl.lib.X509_V_OK)
    return 1


def chain_too_long(conn: SSL.Connection) -> bool:
    """After a failed handshake: whether it failed on a certificate chain longer than the cap."""
    return _openssl.lib.SSL_get_verify_result(conn._ssl) == _CHAIN_TOO_LONG


class ReloadingContext:
    """A server context that follows its files: a renewal is served to new connections, no restart.

    A pair that does not load (often a renewal half-written: new certificate, old key)
    is reported once through `warn`, and the current pair kept.
    """

    def __init__(self, certfile: str, keyfile: str | None, cert_reqs: int, ciphers: str | None,
                 info: Callable[[str], None], warn: Callable[[str], None],
                 loaded: Callable[[x509.Certificate], None] = lambda leaf: None):
        """`loaded` is told each certificate served, when it is (the expiry's metric)."""
        self._args = (certfile, keyfile, cert_reqs, ciphers)
        self._paths = (certfile, keyfile or certfile)
        self._info, self._warn, self._loaded_leaf = info, warn, loaded
        self._loaded = self._refused = self._signature()
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL
        self.context = build_context(*self._args)
        self._tell_loaded()

    def _signature(self) -> tuple:
        """What identifies the current files: a renewal changes it."""
        signature = []
        for path in self._paths:
            try:
                st = os.stat(path)
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def current(self) -> SSL.Context:
        """The context for a new connection, rebuilt first if the files changed (looked at once a second)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_CHECK_INTERVAL
            signature = self._signature()
            if signature not in (self._loaded, self._refused):
                try:
                    self.context = build_context(*self._args)
                except (SSL.Error, OSError) as exc:
                    self._refused = signature
                    self._warn("TLS files changed but do not load as a pair, keeping the current ones: "
                               + handshake_reason(exc))
                else:
                    self._loaded = signature
                    self._info(f"TLS certificate reloaded from {self._paths[0]}")
                    self._tell_loaded()
        return self.context

    def _tell_loaded(self) -> None:
        try:
            with open(self._paths[0], "rb") as chain:
                self._loaded_leaf(x509.load_pem_x509_certificates(chain.read())[0])
        except (OSError, ValueError):  # replaced again since it loaded: the next reload tells
            pass


def peer_chain_environ(leaf: crypto.X509 | None, chain: list[crypto.X509]) -> dict[str, str]:
    """After the handshake: the presented chain, leaf first, under mod_ssl's environ names."""
    if leaf is None:
        return {}
    environ = {CLIENT_CERT: _pem(leaf)}
    for i, cert in enumerate(chain):
        environ[f"{CLIENT_CERT_CHAIN_PREFIX}{i}"] = _pem(cert)
    return environ


class HandshakeRefused(SSL.Error):
    """The client's handshake is refused before OpenSSL looks further; the message says why."""


class ChallengeAnswered(Exception):
    """An ACME validator's tls-alpn-01 handshake is done (RFC 8737): the connection ends there, for the name given."""


def _pem(cert: crypto.X509) -> str:
    return crypto.dump_certificate(crypto.FILETYPE_PEM, cert).decode("ascii")


def handshake_reason(exc: Exception) -> str:
    """OpenSSL's reasons for a failure, such as "peer did not return a certificate"."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [entry[2] for entry in exc.args[0] if len(entry) == 3]
        if reasons:
            return ", ".join(reasons)
    return str(exc) or type(exc).__name__
