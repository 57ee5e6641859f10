"""The README fits on a few screens, and every relative link in it and in docs/ resolves: to a file
that exists and, with a #fragment, to a heading of that file (GitHub's anchors)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    heads = re.findall(r"^#{1,6} +(.+?) *$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_the_readme_fits_on_a_few_screens():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, len(lines)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    links = [u for u in LINK.findall(text) if not re.match(r"[a-z]+:", u)]  # http(s), mailto: not here
    assert links or doc.name != "README.md"
    for link in links:
        target, _, fragment = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: {link} names no file"
        if fragment and path.suffix == ".md":
            assert fragment in anchors(path), f"{doc.name}: {link} names no heading of {path.name}"


def test_no_document_mentions_design_notes_that_are_not_here():
    for doc in DOCS:
        assert "design notes" not in doc.read_text(encoding="utf-8"), doc.name
