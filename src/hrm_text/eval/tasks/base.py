"""What every task shares: the item a prompt becomes, a benchmark's protocol, the task record the
runner dispatches on, and small row helpers.

A task module (one per benchmark) defines its `BenchmarkSpec`, how its published rows become one
canonical example dict (`normalize`), the one instruction the model sees (`build_instruction`),
the reference the scorer compares against, and the scorer itself; `registry.py` collects them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COT_NEW_TOKENS",
    "MissingBenchmarkData",
    "EvalItem",
    "BenchmarkSpec",
    "Task",
    "PaperTask",
    "Example",
    "ShotPicker",
    "row_id",
    "random_shots",
    "apply_limit",
]

# Generation budget of the chain-of-thought benchmarks (GSM8K, MATH), within their 3072 context.
COT_NEW_TOKENS = 2048

Example = dict[str, Any]  # one normalised row: id, question/problem/passage, choices, answer, group
ShotPicker = Callable[[Mapping[str, Any]], list[Example]]  # example -> its solved shots


class MissingBenchmarkData(FileNotFoundError):
    """Benchmark files are absent and the Hub cannot be used; the message lists what to put where."""


@dataclass
class EvalItem:
    """One prompt of a suite: what the model is asked and how its answer is scored.

    `reference` is benchmark-specific: an int option index (multiple choice), an int (GSM8K), an
    answer string (MATH, built-in), or a list of acceptable span lists (DROP). `n_choices` is set
    for multiple choice only (it fixes the 1/n credit). `group` is the MMLU subject, MATH subject or
    built-in module: MMLU and the built-in suite are macro-averaged over it.
    """

    benchmark: str
    id: str
    condition: str
    instruction: str
    reference: Any
    n_choices: int | None
    max_new_tokens: int
    group: str = ""
    n_shots: int = 0
    max_context: int = 3072


@dataclass(frozen=True)
class BenchmarkSpec:
    """The protocol of one benchmark and where its data lives."""

    name: str
    display: str
    scoring: str  # "gsm8k" | "math" | "drop" | "mc"
    shots: int
    eval_split: str
    shot_split: str | None
    condition: str
    max_context: int
    max_new_tokens: int
    hub_path: str
    hub_configs: tuple[str | None, ...]
    hub_splits: Mapping[str, str]  # our split name -> the Hub's split name
    layout: tuple[str, ...]  # human-readable accepted local files, relative to <data_dir>/<name>/
    prefer: str | None = None  # when several copies match, keep paths with this component
    exclude: tuple[str, ...] = ()  # path components that disqualify a file


@dataclass(frozen=True)
class Task:
    """What the runner needs to score and average one benchmark's items.

    `score(item, generation)` returns fractions in [0, 1] and never raises on the generation;
    `primary` names the headline metric; `macro` averages over groups instead of items.
    """

    name: str
    score: Callable[[EvalItem, Any], dict[str, float]]
    primary: str
    macro: bool = False


def random_shots(bench: str, pool: Sequence[Example], k: int, seed: int) -> ShotPicker:
    """k training examples per item, drawn with a generator seeded by (seed, benchmark, item id),
    so prompts are reproducible and independent of `limit`."""

    def pick(ex: Mapping[str, Any]) -> list[Example]:
        if not k:
            return []
        # Draw one spare so the item itself (possible when shots come from the same file)
        # can be dropped without a scan of the whole pool per item.
        rng = random.Random(f"{seed}:{bench}:{ex['id']}")
        drawn = rng.sample(range(len(pool)), min(k + 1, len(pool)))
        return [pool[i] for i in drawn if pool[i]["id"] != ex["id"]][:k]

    return pick


@dataclass(frozen=True, kw_only=True)
class PaperTask(Task):
    """A benchmark of the paper's suite: published rows -> prompts with the paper's protocol.

    `shot_picker(bench, pool, k, seed)` returns the function that picks each item's solved shots
    from the normalised shot rows; the default is `random_shots`.
    """

    spec: BenchmarkSpec
    normalize: Callable[[Mapping[str, Any]], Example]
    build_instruction: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], str]
    reference: Callable[[Mapping[str, Any]], Any]
    shot_picker: Callable[[str, Sequence[Example], int, int], ShotPicker] = random_shots


def row_id(row: Mapping[str, Any], *keys: str) -> str:
    """The row's own id under the first of `keys` it has, else its file and row number."""
    for k in keys:
        v = row.get(k)
        if v not in (None, ""):
            return str(v)
    return f"{row.get('_path', '')}#{row.get('_row', 0)}"


def apply_limit(items: Sequence[Any], limit: int | None, key: Callable[[Any], str]) -> list[Any]:
    """The first `limit` items, taken round-robin over groups (MMLU subjects, built-in modules) so
    that a quick `--limit` run still samples every group instead of only the first one."""
    if limit is None or limit < 0 or limit >= len(items):
        return list(items)
    by_group: dict[str, list[Any]] = defaultdict(list)
    for it in items:
        by_group[key(it)].append(it)
    if len(by_group) == 1:
        return list(items[:limit])
    out: list[Any] = []
    queues = [list(reversed(v)) for v in by_group.values()]
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop())
    chosen = {id(x) for x in out}
    return [it for it in items if id(it) in chosen]
