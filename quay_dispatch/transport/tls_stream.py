"""TLS on a Stream: OpenSSL fed from memory buffers, so that a handshake is bounded (tls.MAX_HANDSHAKE_BYTES,
tls.MAX_CHAIN_CERTIFICATES) before OpenSSL parses it, and a response goes out as one TLS record (cork)."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
from collections.abc import Callable

from OpenSSL import SSL

from .stream import Stream, WouldBlock
from .tls_context import (
    MAX_CHAIN_CERTIFICATES,
    MAX_HANDSHAKE_BYTES,
    ChallengeAnswered,
    HandshakeRefused,
    chain_too_long,
    handshake_reason,
    peer_chain_environ,
)

_CHUNK = 64 * 1024  # bytes moved between the socket and OpenSSL at a time
_HEADER = 5  # bytes of a TLS record's header: type, version, length
_RECORD_OVERFLOW, _NO_APPLICATION_PROTOCOL = 22, 120  # TLS alert descriptions
# Given the client's first bytes: the context and the challenge's name (or None), None until the hello's first
# record is whole; raises HandshakeRefused for an acme-tls/1 connection that no pending challenge expects.
ChooseContext = Callable[[bytes], "tuple[SSL.Context, str | None] | None"]


class TLSStream(Stream):
    """A pyOpenSSL server connection on memory buffers: this class moves the bytes between the
    socket and OpenSSL, so that it can count what a handshake takes. The handshake is done
    (see handshake_nowait) before any read."""

    def __init__(self, raw: socket.socket, context: SSL.Context | ChooseContext, io_timeout: float | None,
                 client_certificate: bool = True):
        """`context`, or what picks one from the client's first bytes (ACME: quay_dispatch.acme.router.ChallengeRouter);
        without `client_certificate`, none is asked for, whatever the context says (the operator's page)."""
        super().__init__(raw, io_timeout)
        self._client_certificate = client_certificate
        self.tls: SSL.Connection | None = None
        self._choose: ChooseContext | None = None
        self._first = b""  # the client's bytes while no context is chosen
        self.challenge: str | None = None  # the name whose tls-alpn-01 challenge this connection answers
        if isinstance(context, SSL.Context):
            self._connect(context)
        else:
            self._choose = context
        self._records = HandshakeRecords()  # what of the handshake OpenSSL may be given
        self._plain = bytearray()  # decrypted, not yet read: nothing waits unseen inside OpenSSL
        self._cipher = b""  # what OpenSSL wrote that the socket has not taken yet
        self._output = False  # OpenSSL may have written since its buffer was last found empty
        self._closed = False  # the peer sent close_notify

    def handshake_nowait(self) -> bool:
        """Advance the handshake as far as the bytes received allow; True once it is done.

        Raises SSL.Error when the client is refused (no certificate, an old protocol, junk,
        a handshake or chain over the limits), once the alert that says why is sent.
        """
        # Read first: the loop calls this when the socket is readable, and OpenSSL can only
        # move on with bytes it has not seen (calling it without any costs an exception).
        while True:
            try:
                data = self.raw.recv(_CHUNK)
            except BlockingIOError:
                return False
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed by the peer during the handshake")
            given = self._records.take(data)
            if given and self.tls is None:
                given = self._chosen(given)
            if given:
                self.tls.bio_write(given)
                if self._advance():
                    break
            if self._records.over:
                self._refuse_over_limit()
        if self.challenge:  # RFC 8737: the validator only looks at the certificate; nothing reaches HTTP
            raise ChallengeAnswered(self.challenge)
        if self._records.held:  # what came after the handshake: application data
            self.tls.bio_write(self._records.held)
        chain = self.tls.get_peer_cert_chain() or []  # on the server side, without the leaf
        if len(chain) + 1 > MAX_CHAIN_CERTIFICATES:  # certificates that do not link up, so OpenSSL let them be
            raise HandshakeRefused(f"the client presented {len(chain) + 1} certificates, more than "
                                   f"{MAX_CHAIN_CERTIFICATES}")
        # gunicorn says https only for its own certificate files, not for ACME's
        self.environ = {"wsgi.url_scheme": "https", **peer_chain_environ(self.tls.get_peer_certificate(), chain)}
        self._decrypt()  # a request sent with the handshake's last bytes
        return True

    def _connect(self, context: SSL.Context) -> None:
        self.tls = SSL.Connection(context, None)
        if not self._client_certificate:
            self.tls.set_verify(SSL.VERIFY_NONE)
        self.tls.set_accept_state()

    def _chosen(self, data: bytes) -> bytes:
        """The client's bytes for OpenSSL once its ClientHello has chosen the context; b"" until then."""
        self._first += data
        try:
            choice = self._choose(self._first)
        except HandshakeRefused:
            self._alert_in_the_clear(_NO_APPLICATION_PROTOCOL)
            raise
        if choice is None:  # the hello's first record is not whole yet
            return b""
        context, self.challenge = choice
        self._connect(context)
        data, self._first = self._first, b""
        return data

    def _advance(self) -> bool:
        """One handshake step with the bytes OpenSSL has; True when the handshake is done."""
        self._output = True
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            self._flush_nowait()  # our flight: a few kB, which the socket's buffer takes
            return False
        except SSL.Error as exc:
            self._flush_nowait()  # the alert that tells the client why
            if chain_too_long(self.tls):
                raise HandshakeRefused(f"the client presented a certificate chain longer than "
                                       f"{MAX_CHAIN_CERTIFICATES} certificates") from exc
            raise
        self._flush_nowait()
        return True

    def _refuse_over_limit(self) -> None:
        """The next record would take the handshake past MAX_HANDSHAKE_BYTES: OpenSSL is given its header
        with a length no record may have, and answers with record_overflow, encrypted as the handshake
        stands (which only OpenSSL knows)."""
        if self.tls is None:  # the first record is over the limit, before a context was chosen: nothing was said yet
            self._alert_in_the_clear(_RECORD_OVERFLOW)
        else:
            self.tls.bio_write(self._records.held[:3] + b"\xff\xff")
            with contextlib.suppress(SSL.Error):
                self._advance()  # raises, once the alert is out
        raise HandshakeRefused(f"the client sent more than {MAX_HANDSHAKE_BYTES} bytes without finishing its "
                               "handshake (a ClientHello or a certificate chain far larger than Quay's)")

    def _alert_in_the_clear(self, description: int) -> None:
        """A fatal alert before the server spoke, so unencrypted: a few bytes, which the socket's buffer takes."""
        with contextlib.suppress(OSError):
            self.raw.send(bytes([0x15, 3, 3, 0, 2, 2, description]))

    def _decrypt(self) -> None:
        """Take every whole record OpenSSL holds into _plain."""
        while True:
            self._output = True  # a key update's answer, an alert
            try:
                self._plain += self.tls.recv(_CHUNK)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:  # close_notify: what came before it is still read
                self._closed = True
                return
            except SSL.Error as exc:
                self._flush_nowait()  # the alert OpenSSL wrote, before the close
                self.failure = handshake_reason(exc)
                # A reset: gunicorn's threads take it quietly, as the client's doing (the worker logs it once).
                raise ConnectionResetError(errno.ECONNRESET, f"TLS error: {self.failure}") from exc

    def recv_nowait(self, size: int) -> bytes:
        while not self._plain and not self._closed:
            try:
                data = self.raw.recv(_CHUNK)
            except BlockingIOError:
                raise WouldBlock(select.POLLIN) from None
            if not data:  # the peer closed, with close_notify or without
                return b""
            self.tls.bio_write(data)
            self._decrypt()
            self._flush_nowait()  # anything OpenSSL must answer (a key update)
        data = bytes(self._plain[:size])
        del self._plain[:size]
        return data

    def send_nowait(self, data) -> int:
        if not self._flush_nowait():
            raise WouldBlock(select.POLLOUT)
        self._output = True
        try:
            sent = self.tls.send(data[:_CHUNK])
        except SSL.Error as exc:
            raise BrokenPipeError(errno.EPIPE, f"TLS error: {exc}") from exc
        self._flush_nowait()
        return sent

    def _flush_nowait(self) -> bool:
        """Send what OpenSSL wrote, as far as the socket takes it now; True when all is sent."""
        while True:
            if not self._cipher:
                if not self._output:  # no OpenSSL call since its buffer was found empty
                    return True
                try:
                    self._cipher = self.tls.bio_read(_CHUNK)
                except SSL.WantReadError:  # nothing more to send
                    self._output = False
                    return True
                # A memory BIO hands over all it holds, up to the size asked: a shorter read emptied it.
                self._output = len(self._cipher) == _CHUNK
            try:
                sent = self.raw.send(self._cipher)
            except BlockingIOError:
                return False
            self._cipher = self._cipher[sent:]

    def _flushed(self, _=None) -> None:
        if not self._flush_nowait():
            raise WouldBlock(select.POLLOUT)

    def _send_all(self, data) -> None:
        super()._send_all(data)
        self._until_done(self._flushed, None, reading=False)  # the response's last bytes too

    def writable(self) -> bool:
        return not self._cipher and super().writable()

    def pending(self) -> int:
        return len(self._plain)

    def shutdown(self, how: int) -> None:
        if self.tls is not None:  # else the client left before its hello chose a context: nothing was said
            self._output = True
            try:
                self.tls.shutdown()  # close_notify; the peer's is not awaited
            except SSL.Error:
                pass  # after a fatal alert there is nothing more to say
            try:
                self._flush_nowait()  # sent if the socket takes it now
            except OSError:
                pass
        self.raw.shutdown(how)


class HandshakeRecords:
    """The client's handshake cut at TLS record boundaries: OpenSSL gets whole records within
    MAX_HANDSHAKE_BYTES, and the record that would go past it is held back with all that follows."""

    def __init__(self):
        self.total = 0  # bytes of the records begun, headers included
        self._left = 0  # bytes of the current record still to come
        self.held = b""  # not given to OpenSSL: a header not whole yet, or from the record past the limit on
        self.over = False  # held begins with the header of a record past the limit

    def take(self, data: bytes) -> bytes:
        """What of the held bytes and `data` OpenSSL may have now."""
        data = self.held + data
        given = 0
        while given < len(data) and not self.over:
            if self._left:
                step = min(self._left, len(data) - given)
                self._left -= step
                given += step
            elif len(data) - given < _HEADER:
                break
            else:
                length = int.from_bytes(data[given + 3:given + _HEADER], "big")
                self.over = self.total + _HEADER + length > MAX_HANDSHAKE_BYTES
                if not self.over:
                    self.total += _HEADER + length
                    self._left = length
                    given += _HEADER
        self.held = data[given:]
        return data[:given]
