"""The natural-language held-out split: docstring question/answer pairs (data/nl_docs.py)."""

from __future__ import annotations

import json
from pathlib import Path

from hrm_text.data.builtin import builtin_heldout_files, write_builtin_corpus
from hrm_text.data.nl_docs import DocQAStats, collect_doc_qa, doc_qa_split, first_sentence, is_heldout

PKG = '''"""A small package for testing the question builder.

More text here.
"""

def parse_value(text):
    """Parse a value from the given text and return it.

    Longer explanation.
    """

def _private():
    """This private helper must never become a question."""

def dup_a():
    """Return the representation of this object."""

def dup_b():
    """Return the representation of this object."""

def with_code():
    """Compute x = y + 1 for every value given."""

def short():
    """Do it."""

class Frobnicator:
    """The ``Frobnicator`` class turns :func:`parse_value` results into frobs."""

    def run(self, n):
        """Run the frobnicator for n rounds, e.g. three rounds."""
'''


def _tree(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "toolpkg").mkdir(parents=True, exist_ok=True)
    (root / "toolpkg" / "__init__.py").write_text(PKG)
    (root / "toolpkg" / "tests").mkdir(exist_ok=True)
    (root / "toolpkg" / "tests" / "test_x.py").write_text('def test_it():\n    """A test docstring that must be skipped."""\n')
    (root / "toolpkg" / "broken.py").write_text("def f(:\n")
    return root


def test_pairs_filters_and_dedupe(tmp_path: Path) -> None:
    st = DocQAStats()
    pairs = collect_doc_qa([_tree(tmp_path)], max_package_share=1.0, stats=st)
    got = {p["instruction"]: p["response"] for p in pairs}
    assert got == {
        "What is the `toolpkg` module for?": "A small package for testing the question builder.",
        "What does `toolpkg.parse_value` do?": "Parse a value from the given text and return it.",
        "What is `toolpkg.Frobnicator`?": "The Frobnicator class turns parse_value results into frobs.",
        "What does `toolpkg.Frobnicator.run` do?": "Run the frobnicator for n rounds, e.g. three rounds.",
    }
    assert st.unparsable_files == 1 and st.dropped_duplicate_answers == 2
    # deterministic: the same tree gives the same list
    assert collect_doc_qa([_tree(tmp_path)], max_package_share=1.0) == pairs


def test_first_sentence_quality_filter() -> None:
    assert first_sentence("Deprecated alias for the other function here.") is None
    assert first_sentence("See the documentation of frob for details.") is None
    assert first_sentence("lowercase start is not a sentence we keep.") is None
    assert first_sentence("Visit http://example.com for the details now.") is None
    assert first_sentence("Return the sum of two numbers.  Extra.") == "Return the sum of two numbers."


def test_split_is_disjoint_and_follows_the_hash() -> None:
    pairs = [{"instruction": f"What does `m.f{i}` do?", "response": f"Does thing number {i} well.", "package": "m"} for i in range(400)]
    train, test = doc_qa_split(pairs, 10_000, 10_000)
    assert len(train) + len(test) == 400 and 5 <= len(test) <= 40
    assert all(is_heldout(r["instruction"]) for r in test) and not any(is_heldout(r["instruction"]) for r in train)
    small_train, small_test = doc_qa_split(pairs, 50, 3)
    assert len(small_train) == 50 and len(small_test) == 3
    assert {r["instruction"] for r in small_test} <= {r["instruction"] for r in test}


def test_builtin_corpus_optional_part(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    m = write_builtin_corpus(out, size="quickstart", workers=1, parts=["nl_docs"], nl_roots=[_tree(tmp_path)])
    rows = [json.loads(x) for x in (out / "train/nl_docs.jsonl").read_text().splitlines()]
    rows += [json.loads(x) for x in (out / "heldout/nl_docs_test.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"condition", "instruction", "response"} for r in rows)
    assert m["nl_docs"]["pairs"] == 4
    if m["files"]["heldout/nl_docs_test.jsonl"]:
        assert "nl_docs_test" in builtin_heldout_files(out)
    # the default parts do not include it (the quickstart trains on what it always did)
    write_builtin_corpus(tmp_path / "c2", size="quickstart", workers=1, parts=["arith"])
    assert not (tmp_path / "c2/train/nl_docs.jsonl").exists()
