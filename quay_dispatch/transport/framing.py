"""How much of a request the event loop holds (connection.py reads it), read off its head and body as bytes: read
on, whole, or refused; and a refusal's answer, written as the service's every other error.

Only a whole request reaches a thread, so that no client can hold one by announcing what it never sends.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass

from gunicorn.http import errors as http_errors

from ..base.limits import MAX_BODY

# gunicorn's own refusals and their statuses (base.Worker.handle_error's); any other parse error is a 400.
_REFUSALS = (
    (http_errors.LimitRequestLine, 414, "URI Too Long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden"),
)
_NOT_REFUSALS = (http_errors.ConfigurationProblem, http_errors.InvalidResponseHeader,
                 http_errors.InvalidResponseHeaderName)  # the service's faults: gunicorn's 500 and traceback
http_log = logging.getLogger("quay_dispatch.http")
_HEADERS_END = b"\r\n\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
# The fields that frame a body, matched as gunicorn's parser could take them: any case, blanks around the name.
_FRAMING_FIELD = re.compile(rb"\r\n[ \t]*(content-length|transfer-encoding|expect)[ \t]*:([^\r\n]*)")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,8})[ \t]*(;[^\r\n]*)?")
WHOLE, CONTINUE = "whole", "continue"
CONTINUE_ANSWER = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class Refusal:
    """A request the loop answers itself, then closes: it will never be whole, or never within the limits."""

    status: int
    reason: str  # the status line's
    message: str


def max_head(cfg) -> int:
    """The most bytes of request line and headers gunicorn's limits let through (0 means its maximum, as there)."""
    line = cfg.limit_request_line if 0 < cfg.limit_request_line < 8190 else 8190
    fields = cfg.limit_request_fields if 0 < cfg.limit_request_fields < 32768 else 32768
    field_size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 8190
    return line + 2 + fields * (field_size + 2) + 4


def buffered_request(data: bytes | bytearray, head_limit: int) -> str | Refusal | None:
    """How much of a request `data` holds: None while the loop should read on, CONTINUE to read on once the
    client has its `100 Continue`, WHOLE for a whole request, or the Refusal to answer.

    Only a whole request ever reaches a thread, so that no client can hold one by
    announcing what it never sends. Bodies, by Content-Length or chunked, are
    buffered up to MAX_BODY; a larger one, a head over gunicorn's limits or one
    whose framing gunicorn's parser would not take is refused here, at once.
    """
    end = data.find(_HEADERS_END)
    if end < 0:
        if len(data) > head_limit:
            return Refusal(431, "Request Header Fields Too Large",
                           f"the request's headers are over {head_limit} bytes")
        if _BARE_LF.search(data):  # such a head never ends where the loop looks for its end
            return Refusal(400, "Bad Request", "a line of the request's head ends with a bare LF instead of CRLF")
        return None
    head = bytes(data[:end + 2])
    framing = _framing(head)
    if isinstance(framing, Refusal):
        return framing
    length, expects_continue = framing
    body_start = end + len(_HEADERS_END)
    if length is None:
        buffered = _chunked_body(data, body_start)
    else:
        buffered = WHOLE if len(data) >= body_start + length else None
    return CONTINUE if buffered is None and expects_continue else buffered


def _framing(head: bytes) -> tuple[int | None, bool] | Refusal:
    """The body the head announces: its length (None: chunked), and whether the client waits for
    `100 Continue` before it sends it. A Refusal for what gunicorn's parser would refuse too."""
    lengths, codings, expects_continue = [], [], False
    for name, value in _FRAMING_FIELD.findall(head.lower()):
        value = value.strip(b" \t")
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        else:
            # gunicorn, as RFC 9110 asks, ignores it from an HTTP/1.0 client (one empty line may come first).
            expects_continue = value == b"100-continue" and head.lstrip(b"\r\n").split(b"\r\n", 1)[0].endswith(
                b"HTTP/1.1")
    if codings:
        if lengths:
            return Refusal(400, "Bad Request", "the request has both Content-Length and Transfer-Encoding")
        if codings[-1].rsplit(b",", 1)[-1].strip(b" \t") != b"chunked":
            return Refusal(400, "Bad Request", "the request's Transfer-Encoding does not end with chunked")
        return None, expects_continue
    if len(lengths) > 1:
        return Refusal(400, "Bad Request", "the request has more than one Content-Length")
    if not lengths:
        return 0, False
    if not lengths[0].isdigit():
        return Refusal(400, "Bad Request", "the request's Content-Length is not a number")
    length = int(lengths[0])
    if length > MAX_BODY:
        return too_large(f"the body is {length} bytes; the limit is {MAX_BODY}")
    return length, expects_continue


def too_large(message: str) -> Refusal:
    return Refusal(413, "Content Too Large", message)


def _chunked_body(data: bytes | bytearray, start: int) -> str | Refusal | None:
    """Whether a chunked body starting at `start` is whole (WHOLE), incomplete (None), or refused."""
    at, size = start, 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            if len(data) - at <= 64:
                return None
            return Refusal(400, "Bad Request", "a chunk size line of the request's body is over 64 bytes")
        size_text = _CHUNK_SIZE.fullmatch(bytes(data[at:line_end]))
        if size_text is None:
            return Refusal(400, "Bad Request", "the request's body is not chunk framing")
        chunk = int(size_text[1], 16)
        size += chunk
        if size > MAX_BODY:
            return too_large(f"the chunked body is over {MAX_BODY} bytes, the limit")
        if chunk == 0:  # then any trailers, and an empty line
            return WHOLE if data.find(_HEADERS_END, line_end) >= 0 else None
        at = line_end + 2 + chunk + 2
        if at > len(data):
            return None


def refusal_answer(refusal: Refusal, peer: str) -> bytes:
    """A request refused before it reached the application, as every other refusal: a JSON error with
    X-Request-Id, and one log line. The connection is closed after it."""
    request_id = secrets.token_hex(6)
    message = f"the request was refused before it reached the service: {refusal.message}"
    http_log.info("%d error from %s: %s", refusal.status, peer, ascii(message)[1:-1], extra={
        "request_id": request_id, "status": refusal.status, "outcome": "error", "remote_addr": peer,
        "detail": message})
    body = json.dumps({"status": "error", "error": message}).encode()
    retry = "Retry-After: 30\r\n" if refusal.status == 503 else ""
    head = (f"HTTP/1.1 {refusal.status} {refusal.reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n{retry}Connection: close\r\n\r\n")
    return head.encode("ascii") + body


def parser_refusal(exc: Exception) -> Refusal | None:
    """A request gunicorn's parser refused, as the service answers it; None for what is the service's fault."""
    if not isinstance(exc, http_errors.ParseException) or isinstance(exc, _NOT_REFUSALS):
        return None
    status, reason = next(((s, r) for kind, s, r in _REFUSALS if isinstance(exc, kind)), (400, "Bad Request"))
    return Refusal(status, reason, str(exc))
