"""Client-controlled text made safe to show: one line, no raw control character, nothing that reorders or hides
the text around it."""

from __future__ import annotations

import re
import time

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators: refused in what Quay sends.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Those, and the format characters that reorder the text around them or show nothing: bidi marks, embeddings,
# overrides and isolates (Trojan Source, CVE-2021-42574), zero-width characters and the BOM. A branch or a
# commit message may hold them for good reasons (right-to-left text), so they are taken, and shown escaped.
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
                      "\ufeff]")


def find_control(text: str) -> re.Match[str] | None:
    """The first control character in `text` (as printable() would escape it), or None."""
    return _CONTROL.search(text)


def printable(text: str) -> str:
    """`text` with every control and format character as a visible escape: "\\n", "\\x1b", "\\u202e"."""
    return _UNSHOWN.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def shown(value):
    """A template's value as the page shows it: text printable(), anything else (numbers, markup) as it is."""
    return printable(value) if type(value) is str else value


def age(seconds: float) -> str:
    """A span as the command line shows ages: "45s", "12m", "3h", "2d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def utc(epoch: float) -> str:
    """A moment as the command line and the log write it: 2026-12-07T10:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
