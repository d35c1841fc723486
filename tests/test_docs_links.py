"""Every link between the README and docs/*.md reaches a file that exists and, with a #fragment, one of its headings.

Each thing is explained once and linked from elsewhere, so a link that lands nowhere loses the reader a fact. A
fragment is a heading's anchor as GitHub makes it: lower case, punctuation dropped but `-` and `_`, each space a
`-`, a repeated heading numbered `-1`, `-2`. Links inside code blocks and to other sites are not links here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^ *```.*?^ *```[^\n]*$", re.M | re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)


def anchors(text: str) -> set[str]:
    """The fragments GitHub gives the headings of a Markdown text."""
    seen: dict[str, int] = {}
    found = set()
    for title in _HEADING.findall(_FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of a page that reaches no file, or no heading of it, in words."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        name = f"{page.relative_to(root)}: ({target})"
        if not file.exists():
            broken.append(f"{name}: no file {path}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{name}: no heading #{fragment} in {file.relative_to(root)}")
    return broken


def test_every_link_between_the_pages_lands_on_a_file_and_a_heading():
    assert [problem for page in PAGES for problem in broken_links(page)] == []


def test_a_link_to_a_missing_heading_or_file_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The operator's page\n\n## Quay's side\n\n## Quay's side\n")
    page.write_text("[a](other.md#the-operators-page) [b](other.md#quays-side-1) [c](#here)\n\n## Here\n\n"
                    "[d](other.md#gone) [e](missing.md) [f](https://example.com/x#y)\n\n```\n[g](nowhere.md)\n```\n")
    assert broken_links(page, tmp_path) == ["page.md: (other.md#gone): no heading #gone in other.md",
                                            "page.md: (missing.md): no file missing.md"]
