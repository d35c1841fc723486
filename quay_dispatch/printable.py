"""Client-controlled text made safe to show: one line, no raw control character."""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def find_control(text: str) -> re.Match[str] | None:
    """The first control character in `text` (as printable() would escape it), or None."""
    return _CONTROL.search(text)


def printable(text: str) -> str:
    """`text` with every control character as a visible escape: "\\n", "\\x1b", "\\u2028"."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
