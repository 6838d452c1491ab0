"""The docs hold together: every file under docs/ is linked from the README or another page, every relative link
resolves, the benchmarks page stays short. (That they speak of the product, not of how it was made,
``test_layout`` checks with the code.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _links(page: Path) -> list[tuple[str, Path]]:
    """``(link, resolved path)`` of each relative link of ``page`` (web links and anchors left out)."""
    found = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        found.append((target, (page.parent / target.split("#")[0]).resolve()))
    return found


def test_every_relative_link_resolves():
    broken = [
        f"{page.relative_to(ROOT)}: {link}" for page in _pages() for link, path in _links(page) if not path.exists()
    ]
    assert not broken, broken


def test_every_file_under_docs_is_linked():
    linked = {path for page in _pages() for _, path in _links(page)}
    files = [path.resolve() for path in DOCS.rglob("*") if path.is_file()]
    unlinked = [str(path.relative_to(ROOT)) for path in files if path not in linked]
    assert not unlinked, unlinked


def test_the_benchmarks_page_opens_with_the_current_figures_and_stays_short():
    page = DOCS / "benchmarks.md"
    assert page.stat().st_size <= 10_500
    assert "NVIDIA H100 80GB HBM3" in page.read_text(encoding="utf-8")
