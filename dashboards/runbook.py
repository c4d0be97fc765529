"""The runbook (``docs/runbook.md``) has one section per alert; alerts link to it by the section's anchor."""

from __future__ import annotations

import re
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"
_HEADING = re.compile(r"^## +(.+?) *$", re.MULTILINE)


def anchor(heading: str) -> str:
    """The anchor GitHub and most Markdown renderers give a heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def sections(text: str) -> dict[str, str]:
    """Second-level headings → their anchors."""
    return {heading: anchor(heading) for heading in _HEADING.findall(text)}


def runbook_url(base_url: str, alert: str, text: str) -> str:
    found = sections(text)
    if alert not in found:
        raise LookupError(f"docs/runbook.md has no '## {alert}' section; add one before generating the alert")
    return f"{base_url}#{found[alert]}"
