"""Bodies that are not strict UTF-8 JSON, each otherwise a valid build_success, and the 400 message each gets;
and a valid body edited at one field.

The bad bodies are for tests that send them to the parser or to a live service:
(name, body, a substring of the 400 answer's error message). Every body fits the
service's 64 KiB limit, so each reaches the parser instead of getting a 413; that is
why the deep nesting is 30 000 levels (a 100 000-deep body is 200 kB).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable

VALID = {"repository": "acme/widget", "build_id": "b1", "docker_url": "quay.io/acme/widget", "docker_tags": ["latest"]}
VALID_TEXT = json.dumps(VALID)


def with_extra(value: str) -> bytes:
    """The valid body with one more member, "extra", whose JSON text is `value`."""
    return f'{VALID_TEXT[:-1]}, "extra": {value}}}'.encode()


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("nested 30 000 deep", with_extra("[" * 30_000 + "]" * 30_000), "nested deeper than 64 levels"),
    ("nested 65 deep", with_extra("[" * 64 + "]" * 64), "nested deeper than 64 levels"),
    ("1e999999", with_extra("1e999999"), "a JSON number is out of range: 1e999999"),
    ("10 000-digit number", with_extra("1" * 10_000), "a JSON number is 10000 characters long"),
    ("NaN", with_extra("NaN"), "NaN and Infinity are not JSON"),
    ("Infinity", with_extra("Infinity"), "NaN and Infinity are not JSON"),
    ("lone surrogate", VALID_TEXT.replace('"b1"', '"b1\\ud800"').encode(), "lone UTF-16 surrogate"),
    ("duplicate repository key", f'{{"repository": "evil/x", {VALID_TEXT[1:]}'.encode(),
     "duplicate key 'repository'"),
    ("UTF-8 BOM", codecs.BOM_UTF8 + VALID_TEXT.encode(), "starts with a UTF-8 byte order mark"),
    ("UTF-16-LE with BOM", codecs.BOM_UTF16_LE + VALID_TEXT.encode("utf-16-le"), "looks like UTF-16 or UTF-32"),
    ("UTF-16-BE", VALID_TEXT.encode("utf-16-be"), "looks like UTF-16 or UTF-32"),
    ("UTF-32-LE with BOM", codecs.BOM_UTF32_LE + VALID_TEXT.encode("utf-32-le"), "looks like UTF-16 or UTF-32"),
]


def _place(body: dict, field: str) -> tuple[dict | list, str | int]:
    """The container and key of `field` ("a", "a.b" or "a[0]", as PayloadError names it) in `body`."""
    if "." in field:
        parent, key = field.split(".")
        return body[parent], key
    if field.endswith("]"):
        parent, index = field[:-1].split("[")
        return body[parent], int(index)
    return body, field


def value_at(body: dict, field: str) -> str:
    container, key = _place(body, field)
    return container[key]


def edited(body: dict, field: str, change: Callable[[str], str]) -> dict:
    """`body` with the string at `field` replaced by change(it)."""
    container, key = _place(body, field)
    container[key] = change(container[key])
    return body
