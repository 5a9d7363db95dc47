"""The method reference `docs/methods.md` has every section the code cites, and names every method and part.

Code, presets, help texts and run records cite the reference as "docs/methods.md §3.7" (also "§4.4, 5" for
several sections); a citation of a section that does not exist is a reference a user cannot follow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS_DOC = ROOT / "docs" / "methods.md"
SKIPPED_DIRS = {".git", ".venv", "venv", "build", "dist", "node_modules", "__pycache__", ".pytest_cache",
                ".ruff_cache"}
SECTION = r"\d+(?:\.\d+)*"
CITATION = re.compile(rf"docs/methods\.md §\s*({SECTION}(?:\s*,\s*{SECTION})*)")
HEADING = re.compile(rf"^(#{{2,3}}) ({SECTION})\.? \S")


def _repository_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        files += [Path(folder) / n for n in names if n.endswith((".py", ".toml", ".md"))]
    return files


def _headings() -> list[tuple[int, str]]:
    """(level, number) of every numbered `##`/`###` heading of docs/methods.md, in order."""
    found = []
    for line in METHODS_DOC.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def _citations() -> dict[str, list[str]]:
    """Cited section number → the files (and lines) citing it."""
    cited: dict[str, list[str]] = {}
    for path in _repository_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for match in CITATION.finditer(line):
                for section in re.split(r"\s*,\s*", match.group(1)):
                    cited.setdefault(section, []).append(f"{path.relative_to(ROOT)}:{number}")
    return cited


def test_the_citation_pattern_reads_single_and_listed_sections() -> None:
    line = "see docs/methods.md §3.7, 4.3 and docs/methods.md §1.6. Also docs/methods.md §2's table."
    found = [re.split(r"\s*,\s*", m.group(1)) for m in CITATION.finditer(line)]
    assert found == [["3.7", "4.3"], ["1.6"], ["2"]]


def test_sections_are_numbered_in_order() -> None:
    headings = _headings()
    assert headings, "docs/methods.md has no numbered sections"
    chapter, sub = 0, 0
    for level, number in headings:
        parts = [int(p) for p in number.split(".")]
        if level == 2:
            assert parts == [chapter + 1], f"section {number} follows chapter {chapter}"
            chapter, sub = parts[0], 0
        else:
            assert parts == [chapter, sub + 1], f"section {number} follows {chapter}.{sub}"
            sub = parts[1]


def test_every_cited_section_exists() -> None:
    sections = {number for _, number in _headings()}
    cited = _citations()
    assert len(cited) > 10, "found almost no citations of docs/methods.md: is the pattern still right?"
    missing = {s: where[:3] for s, where in cited.items() if s not in sections}
    assert not missing, f"cited sections missing from docs/methods.md: {missing}"


def _registered_names() -> dict[str, list[str]]:
    from mlpl.config import list_methods
    from mlpl.stages.train.labelstate import LABEL_STATES
    from mlpl.stages.train.losses import LOSSES
    from mlpl.stages.train.models import HEADS
    from mlpl.stages.train.pseudolabels import PSEUDOLABELLERS

    return {
        "method": list_methods(),
        "loss": [i.name for i in LOSSES],
        "pseudo-labeller": [i.name for i in PSEUDOLABELLERS],
        "label state": [i.name for i in LABEL_STATES],
        "head": [i.name for i in HEADS],
    }


@pytest.mark.parametrize("kind", ["method", "loss", "pseudo-labeller", "label state", "head"])
def test_every_registered_name_is_documented(kind: str) -> None:
    text = METHODS_DOC.read_text(encoding="utf-8")
    undocumented = [name for name in _registered_names()[kind] if f"`{name}`" not in text]
    assert not undocumented, f"docs/methods.md does not name these {kind}s (as `name`): {undocumented}"


def test_readme_links_the_references_and_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [name for name in ("methods.md", "architecture.md", "formats.md") if f"](docs/{name})" not in readme]
    assert not unlinked, f"README.md does not link these documents: {unlinked}"
    documents = sorted((ROOT / "docs").glob("*.md"))
    broken = []
    for page in [ROOT / "README.md", *documents]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, f"links to missing files: {broken}"
