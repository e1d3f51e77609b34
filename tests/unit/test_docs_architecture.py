"""Code comments cite docs/ARCHITECTURE.md sections by anchor; every cited anchor must exist, so a
renamed heading cannot silently strand the comments that point at it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

_FULL = re.compile(r"ARCHITECTURE\.md#([\w-]+)")
# A second section named right after a first one: "(docs/ARCHITECTURE.md#records, #tokenizer)".
_BARE = re.compile(r"(?:(?<=\s)|(?<=\())#([a-z][a-z0-9-]*[a-z0-9])\b")
_BARE_WINDOW = 200  # characters after a full citation in which bare anchors count


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces -> hyphens."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def cited_anchors(text: str) -> set[str]:
    cited = set()
    for m in _FULL.finditer(text):
        cited.add(m.group(1))
        window = text[m.end() : m.end() + _BARE_WINDOW]
        cited.update(b.group(1) for b in _BARE.finditer(window))
    return cited


def test_heading_anchors_follow_github_rules() -> None:
    md = "# Title\n## Paper results and cost\n```\n# not a heading\n```\n### transformers interop\n"
    assert heading_anchors(md) == {"title", "paper-results-and-cost", "transformers-interop"}
    assert cited_anchors("see (docs/ARCHITECTURE.md#records, #tokenizer).") == {"records", "tokenizer"}


def test_every_cited_architecture_section_exists() -> None:
    anchors = heading_anchors(ARCHITECTURE.read_text(encoding="utf-8"))
    files = [p for d in ("src", "tests", "benchmarks", "docs") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".yaml", ".md") and p.is_file()]
    files.append(ROOT / "README.md")
    missing = []
    n_cited = 0
    for path in files:
        cited = cited_anchors(path.read_text(encoding="utf-8"))
        n_cited += len(cited)
        missing += [f"{path.relative_to(ROOT)}: #{a}" for a in sorted(cited - anchors)]
    assert n_cited > 20, "the citation scan found almost nothing: is the pattern still right?"
    assert not missing, "cited sections missing from docs/ARCHITECTURE.md:\n" + "\n".join(missing)
