"""The project's documents stand on their own: every relative link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "vcsim" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    for target in relative_links(text):
        path = (document.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{document.name}: {target} points outside the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_files_outside_the_project(document: Path) -> None:
    text = document.read_text()
    assert "../shared" not in text
    assert "notes/" not in text


def test_the_link_pattern_finds_relative_links_only() -> None:
    text = "[a](docs/X.md) [b](https://x.org) [c](#top) [d](../vcsim/README.md#build)"
    assert relative_links(text) == ["docs/X.md", "../vcsim/README.md#build"]


def test_the_design_and_the_vsphere_guide_are_linked_from_the_readme() -> None:
    links = relative_links((ROOT / "README.md").read_text())
    assert "docs/DESIGN.md" in links
    assert "docs/VSPHERE.md" in links
