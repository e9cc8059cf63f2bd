"""The README stays a front page (what it is, the two commands, links), and every link of the
docs reaches a page and a heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "charts" / "azure-cni" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a fenced block; its info string is a language and maybe more words ("sh azure-only")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def test_the_readme_is_at_most_200_lines() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move detail to docs/"


def test_the_readme_sets_up_with_exactly_make_demo_and_make_test() -> None:
    shell = [block for lang, block in FENCE.findall(README.read_text()) if lang == "sh"]
    commands = [[line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
                for block in shell]
    assert ["make demo", "make test"] in commands, commands
    everywhere = [c for block in commands for c in block]
    assert [c for c in everywhere if c.startswith("make ")] == ["make demo", "make test"]


def test_the_readme_links_every_page_the_issue_names() -> None:
    links = set(LINK.findall(README.read_text()))
    for page in ("docs/install-azure.md", "docs/standalone.md", "docs/simulation.md",
                 "docs/operations.md", "docs/configuration.md"):
        assert page in links, f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, broken
