"""The links between the README and the pages under ``docs/`` lead somewhere: every relative link names a file that
exists and, with ``#anchor``, a heading of that file (GitHub's anchors), and every page under ``docs/`` is linked from
the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (backticks, dots, commas, ...), spaces to
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    found: set[str] = set()
    for match in re.finditer(r"^#{1,6} (.+)$", prose(page.read_text(encoding="utf-8")), re.M):
        base = name = anchor(match.group(1))
        count = 0
        while name in found:
            count += 1
            name = f"{base}-{count}"
        found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of a page that lead nowhere, each with why."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_file():
            broken.append(f"{target}: no file {linked}")
        elif fragment and fragment not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.name}")
    return broken


def test_the_anchor_of_a_heading_is_githubs() -> None:
    assert anchor("Why `agent.grad_clip=0.2` and, with AdamW, `agent.adam_beta2=0.99`") == \
        "why-agentgrad_clip02-and-with-adamw-agentadam_beta2099"
    assert anchor("The embedded default model (`policy.model=tiny`)") == "the-embedded-default-model-policymodeltiny"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def test_the_docs_pages_are_linked_from_the_readme_and_link_back() -> None:
    assert len(PAGES) > 1, "no pages under docs/"
    readme = prose((ROOT / "README.md").read_text(encoding="utf-8"))
    readme_targets = {target.partition("#")[0] for target in LINK.findall(readme)}
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme_targets, f"docs/{page.name} is not linked from the README"
        assert "../README.md" in {t.partition("#")[0] for t in LINK.findall(page.read_text(encoding="utf-8"))}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## A section\n\n[fine](#a-section) [gone](#a-sectoin) [no file](other.md)\n"
                    "```bash\n[in code](nowhere.md)\n```\n", encoding="utf-8")
    assert [b.split(":")[0] for b in broken_links(page)] == ["#a-sectoin", "other.md"]
