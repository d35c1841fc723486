"""JSON held to the strict standard: UTF-8 without a BOM, finite numbers of sane length, unique keys,
shallow nesting and no lone surrogates. Python's json module lets each of those through."""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable
from functools import partial

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_MAX_DEPTH = 64  # Quay's bodies are 3 levels deep; json.loads itself fails near 1000 with a RecursionError
_MAX_NUMBER_LENGTH = 100  # characters; the longest float or 64-bit integer needs 24
_TOO_DEEP = f"the JSON is nested deeper than {_MAX_DEPTH} levels"


class NotStrictJSON(ValueError):
    """The text is not strict JSON; the message says where it fails, for the 400 answer."""


def loads(body: bytes) -> object:
    """The JSON value of `body`, held to strict JSON: UTF-8, finite numbers, unique keys, shallow nesting."""
    try:
        data = json.loads(
            _utf8(body), parse_constant=_not_json, object_pairs_hook=_unique_keys,
            parse_int=partial(_number, int), parse_float=partial(_number, float),
        )
    except RecursionError:
        raise NotStrictJSON(_TOO_DEEP) from None
    except NotStrictJSON:
        raise
    except ValueError as exc:
        raise NotStrictJSON(f"the body is not valid JSON ({exc})") from None
    _check_nesting_and_strings(data)
    return data


def _utf8(body: bytes) -> str:
    """The body as text; json.loads(bytes) would guess UTF-16 or UTF-32 and skip a BOM, so decode it here."""
    if body.startswith(codecs.BOM_UTF8):
        raise NotStrictJSON("the body is not UTF-8 JSON: it starts with a UTF-8 byte order mark")
    if b"\0" in body:  # JSON text never holds NUL; UTF-16 and UTF-32 put one beside every ASCII character
        raise NotStrictJSON("the body is not UTF-8 JSON: it holds NUL bytes, so it looks like UTF-16 or UTF-32; "
                               "Quay sends UTF-8")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotStrictJSON(f"the body is not UTF-8 JSON: byte {body[exc.start]:#04x} at offset {exc.start} "
                               f"is not UTF-8 ({exc.reason})") from None


def _not_json(constant: str) -> float:
    """Refuse the NaN and Infinity that Python's json module accepts by default."""
    raise NotStrictJSON(f"NaN and Infinity are not JSON (the body has {constant})")


def _number(convert: Callable[[str], int | float], text: str) -> int | float:
    """A JSON number; refused if too long (int() fails past 4300 digits) or beyond a float's range (inf)."""
    if len(text) > _MAX_NUMBER_LENGTH:
        raise NotStrictJSON(f"a JSON number is {len(text)} characters long; the limit is {_MAX_NUMBER_LENGTH}")
    value = convert(text)
    if not math.isfinite(value):
        raise NotStrictJSON(f"a JSON number is out of range: {text}")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict, refusing a repeated key (json.loads would keep the last one silently)."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise NotStrictJSON(f"duplicate key {key[:100]!r} in a JSON object")
        data[key] = value
    return data


def _check_nesting_and_strings(data: object) -> None:
    """Refuse nesting deeper than _MAX_DEPTH, and lone surrogates: UTF-8 cannot encode them, so the outbox fails."""
    stack = [(data, 1)]  # a loop, not recursion: the nesting is what is being checked
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str) and _SURROGATE.search(value):
            raise NotStrictJSON("a JSON string holds a lone UTF-16 surrogate")
        if isinstance(value, dict | list):
            if depth > _MAX_DEPTH:
                raise NotStrictJSON(_TOO_DEEP)
            items = [*value, *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
