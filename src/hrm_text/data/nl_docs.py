"""Natural-language question/answer pairs from the docstrings of the Python standard library and the
installed packages: real English text that is on every machine that runs this project, offline.

    What does `json.dump` do?            ->  Serialize obj as a JSON formatted stream to fp.
    What is `fractions.Fraction`?        ->  This class implements rational numbers.
    What is the `shlex` module for?      ->  A lexical analyzer class for simple shell-like syntaxes.

How (all deterministic for a given Python and set of installed packages; nothing is imported, the
sources are read with `ast`, so no package code runs):
* Files: every `.py` file under the standard library and under site-packages, walked in sorted
  order; test folders, vendored copies and `__pycache__` are skipped.
* Names: module docstrings, public top-level functions and classes, and public methods of public
  top-level classes (no leading underscore anywhere in the dotted name).
* Answer: the first sentence of the docstring's first paragraph, with reST/Markdown markup removed
  (``x``, :func:`x`, `x` -> x). Kept only if it is 4-40 words and 20-200 characters of printable
  ASCII, starts with a capital letter, ends with a period, and holds no code or links (`>>>`,
  `::`, braces, `http`, `%`, `=`), and is not a stub ("Deprecated", "Alias for", "See ...",
  "Same as ...").
* Dedupe: one pair per dotted name; an answer text that occurs for two or more names (generic
  boilerplate such as "Return repr(self).") is dropped everywhere, so a held-out answer is never
  a training answer.
* Balance: no top-level package gives more than `max_package_share` of the pairs.
* Split: a question is held out when crc32(question) % 20 == 0 (5%); the requested counts are the
  pairs with the lowest crc32 of each side (a stable subset).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HELDOUT_MODULO = 20
SKIP_DIRS = frozenset({"__pycache__", "test", "tests", "testing", "_vendor", "vendor", "_vendored", "idlelib",
                       "lib2to3", "ensurepip", "site-packages", "dist-packages", "turtledemo", "node_modules"})
_BAD = (">>>", "::", "{", "}", "http", "%", "=", "|", "\\", "TODO", "XXX")
_STUB = re.compile(r"^(Deprecated|Alias|See |Same as|Equivalent to|Shortcut|Wrapper|Backward|Internal|"
                   r"Placeholder|Dummy|Helper|Overrides?|Implements?|This method|This function is deprecated)", re.I)
_ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]+?)(?:\s*<[^>]*>)?`")
_SENT_END = re.compile(r"(?<![A-Z]\.)(?<!\be\.g)(?<!\bi\.e)(?<!\betc)\.(?:\s|$)")


@dataclass
class DocQAStats:
    files: int = 0
    unparsable_files: int = 0
    candidates: int = 0  # named objects with a docstring
    kept_after_filter: int = 0
    dropped_duplicate_answers: int = 0
    dropped_package_cap: int = 0
    pairs: int = 0
    packages: int = 0
    python: str = field(default_factory=lambda: sys.version.split()[0])

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def first_sentence(doc: str) -> str | None:
    """The cleaned first sentence of a docstring, or None when it fails the quality filter."""
    para = doc.strip().split("\n\n", 1)[0]
    text = " ".join(para.split())
    text = _ROLE.sub(r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = text.replace("**", "").replace("*", "")
    m = _SENT_END.search(text)
    if m is None:
        return None
    s = text[: m.start() + 1].strip()
    words = s.split()
    if not (4 <= len(words) <= 40 and 20 <= len(s) <= 200):
        return None
    if not s.isascii() or not s.isprintable() or not s[0].isupper() or "`" in s:
        return None
    if any(b in s for b in _BAD) or _STUB.match(s):
        return None
    return s


def default_roots() -> list[Path]:
    """The standard library, then site-packages (purelib and platlib when they differ)."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"])]
    for key in ("purelib", "platlib"):
        p = Path(paths[key])
        if p.is_dir() and p not in roots:
            roots.append(p)
    return roots


def _module_name(root: Path, path: Path) -> str | None:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or any(not p.isidentifier() or p.startswith("_") for p in parts):
        return None
    return ".".join(parts)


def _python_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith((".dist-info", ".egg-info")))
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield Path(dirpath) / f


def _named_docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str, str]]:
    """(dotted name, kind, docstring) for the module, its public functions/classes and their methods."""
    doc = ast.get_docstring(tree)
    if doc:
        yield module, "module", doc
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            name = f"{module}.{node.name}"
            d = ast.get_docstring(node)
            if d:
                yield name, "class" if isinstance(node, ast.ClassDef) else "function", d
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        ds = ast.get_docstring(sub)
                        if ds:
                            yield f"{name}.{sub.name}", "function", ds


def question_for(name: str, kind: str) -> str:
    if kind == "module":
        return f"What is the `{name}` module for?"
    if kind == "class":
        return f"What is `{name}`?"
    return f"What does `{name}` do?"


def is_heldout(question: str) -> bool:
    return zlib.crc32(question.encode()) % HELDOUT_MODULO == 0


def collect_doc_qa(roots: list[Path] | None = None, max_package_share: float = 0.2,
                   stats: DocQAStats | None = None) -> list[dict[str, str]]:
    """Every pair that passes the filters, sorted by question (see the module docstring)."""
    st = stats if stats is not None else DocQAStats()
    by_name: dict[str, tuple[str, str]] = {}
    for root in roots or default_roots():
        for path in _python_files(root):
            module = _module_name(root, path)
            if module is None:
                continue
            st.files += 1
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except (SyntaxError, ValueError, OSError, RecursionError):
                st.unparsable_files += 1  # counted, skipped: a file written for another Python
                continue
            for name, kind, doc in _named_docstrings(tree, module):
                if name in by_name:  # the same module under two roots: the first root wins
                    continue
                st.candidates += 1
                ans = first_sentence(doc)
                if ans is not None:
                    by_name[name] = (kind, ans)
    st.kept_after_filter = len(by_name)
    counts = Counter(a for _, a in by_name.values())
    pairs = []
    for name, (kind, ans) in sorted(by_name.items()):
        if counts[ans] > 1:
            st.dropped_duplicate_answers += 1
            continue
        pairs.append({"instruction": question_for(name, kind), "response": ans, "package": name.split(".")[0]})
    # balance: visit in hash order so the cap keeps a stable, spread-out subset of each package
    n_pkgs = len({p["package"] for p in pairs})
    # a share cap only makes sense when enough packages exist to fill the rest
    cap = max(1, int(max_package_share * len(pairs))) if n_pkgs * max_package_share > 1 else len(pairs)
    per_pkg: Counter[str] = Counter()
    kept = []
    for p in sorted(pairs, key=lambda r: (zlib.crc32(r["instruction"].encode()), r["instruction"])):
        if per_pkg[p["package"]] >= cap:
            st.dropped_package_cap += 1
            continue
        per_pkg[p["package"]] += 1
        kept.append(p)
    kept.sort(key=lambda r: r["instruction"])
    st.pairs = len(kept)
    st.packages = len(per_pkg)
    return kept


def doc_qa_split(pairs: list[dict[str, str]], n_train: int, n_test: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) rows in the corpus format; at most `n_train` / `n_test` of each."""
    def rows(side: list[dict[str, str]], n: int) -> list[dict[str, str]]:
        side = sorted(side, key=lambda r: (zlib.crc32(r["instruction"].encode()) // HELDOUT_MODULO, r["instruction"]))[:n]
        return [{"condition": "direct", "instruction": r["instruction"], "response": r["response"]}
                for r in sorted(side, key=lambda r: r["instruction"])]

    held = [p for p in pairs if is_heldout(p["instruction"])]
    train = [p for p in pairs if not is_heldout(p["instruction"])]
    return rows(train, n_train), rows(held, n_test)
