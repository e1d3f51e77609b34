"""The built-in suite: held-out exact match on the built-in corpus (`hrm-text data builtin`), one
group per held-out file or DeepMind-mathematics module, macro-averaged over them. It needs no
download and no network, so it runs anywhere, including during training."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrm_text.eval import scoring
from hrm_text.eval.tasks.base import EvalItem, MissingBenchmarkData, Task, apply_limit
from hrm_text.eval.tasks.files import read_rows

__all__ = ["TASK", "builtin_items"]


def _builtin_files(corpus: str | Path | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(corpus, Mapping):
        return {str(k): Path(v) for k, v in corpus.items()}
    path = Path(corpus)
    if path.is_file():
        return {path.stem: path}
    if not path.is_dir():
        raise MissingBenchmarkData(
            f"built-in held-out corpus not found at {path}: expected a folder of held-out JSONL or "
            "Parquet files with rows {condition, instruction, response} (write it with "
            "`hrm-text data builtin`).")
    files: dict[str, Path] = {}
    try:  # the corpus generator knows which of its files are held out, when it is installed
        from hrm_text.data.builtin import builtin_heldout_files  # type: ignore[attr-defined]

        files = {str(k): Path(v) for k, v in builtin_heldout_files(path).items()}
    except Exception:
        files = {}
    if not files:
        if (path / "heldout").is_dir():  # a whole corpus folder: only its held-out part
            path = path / "heldout"
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in (".jsonl", ".parquet"):
                files[str(p.relative_to(path).with_suffix(""))] = p
    if not files:
        raise MissingBenchmarkData(
            f"no held-out JSONL/Parquet files in {path}: expected rows {{condition, instruction, "
            "response}} (write them with `hrm-text data builtin`).")
    return files


def builtin_items(
    corpus: str | Path | Mapping[str, str | Path],
    limit: int | None = None,
) -> list[EvalItem]:
    """Items of the built-in suite: every row of every held-out file, scored by exact match.

    `corpus` is a corpus folder (its `heldout/` part is used), a folder of held-out files, one
    file, or a mapping name -> path (e.g. `hrm_text.data.builtin.builtin_heldout_files(dir)`).
    Each file is a group, split further by the rows' `module` field when present (DeepMind
    mathematics files hold every module), so results are reported per module. `limit` caps rows
    per file, taken round-robin over its modules. `max_new_tokens` is the reference's length in
    bytes plus a margin: a token is at least one byte, so a correct answer always fits, and a
    model that rambles is cut early instead of wasting the run.
    """
    items: list[EvalItem] = []
    for name, path in _builtin_files(corpus).items():
        if not path.is_file():
            raise MissingBenchmarkData(f"built-in held-out file {name!r} not found: {path}")
        rows = read_rows(path)
        for i, row in enumerate(rows):
            row["_index"] = i
        rows = apply_limit(rows, limit, key=lambda r: str(r.get("module") or ""))
        for row in rows:
            response = str(row.get("response", ""))
            module = str(row.get("module") or "")
            items.append(EvalItem(
                benchmark="builtin",
                id=f"{name}:{row['_index']}",
                condition=str(row.get("condition") or "direct"),
                instruction=str(row.get("instruction", "")),
                reference=response.strip(),
                n_choices=None,
                max_new_tokens=len(response.strip().encode("utf-8")) + 8,
                group=f"{name}/{module}" if module else name,
                n_shots=0,
                max_context=4096,
            ))
    return items


def score(item: EvalItem, generation: Any) -> dict[str, float]:
    return {"exact": scoring.score_exact(generation, str(item.reference))}


# Macro over modules, so a large module does not hide a failing small one.
TASK = Task(name="builtin", score=score, primary="exact", macro=True)
