"""Every relative link of the README and the docs/ pages points to a file that exists, and every anchor
(``#section``, on the same page or another) to a heading of that page, so a page or section moved or renamed
cannot leave a reader at a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import DOCS_ROOT, documentation_pages

LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """The link targets of a markdown page that are files of the checkout (no web address, no in-page anchor)."""
    targets = [t.split("#", 1)[0] for t in LINK.findall(page.read_text())]
    return [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda p: p.relative_to(DOCS_ROOT).as_posix())
def test_every_relative_link_names_an_existing_file(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert missing == [], f"{page.relative_to(DOCS_ROOT)} links to files that do not exist: {missing}"


def test_the_readme_links_every_docs_page():
    linked = {(DOCS_ROOT / t).resolve() for t in relative_links(DOCS_ROOT / "README.md")}
    pages = {p.resolve() for p in documentation_pages()[1:] if p.suffix == ".md"}
    assert pages - linked == set(), "docs pages the README's table does not link"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # a '#' in a code block is no heading
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda p: p.relative_to(DOCS_ROOT).as_posix())
def test_every_anchor_names_a_heading_of_its_page(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if "#" not in target or "://" in target:
            continue
        file, anchor = target.split("#", 1)
        linked = (page.parent / file) if file else page
        if linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            broken.append(target)
    assert broken == [], f"{page.relative_to(DOCS_ROOT)} links to sections that do not exist: {broken}"


def test_heading_anchors_are_the_ones_github_makes():
    assert (
        _slug("Before a run: `brasyn doctor` and `--dry-run`") == "before-a-run-brasyn-doctor-and---dry-run"
    )
    assert _slug("Speed") == "speed"


def test_troubleshooting_lists_the_message_of_an_empty_synthetic_image():
    from brasyn.inference import synthesize

    message = f"{synthesize.EMPTY_IMAGE} (all voxels 0); check the inputs and"
    assert message == "the synthetic image is empty (all voxels 0); check the inputs and"
    assert "{EMPTY_IMAGE} (all voxels 0); check the inputs and " in Path(synthesize.__file__).read_text()
    assert f"`{message} ...`" in (DOCS_ROOT / "docs" / "troubleshooting.md").read_text()
