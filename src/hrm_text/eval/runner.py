"""The evaluation runner: build the prompts of the paper's eight benchmarks and the built-in
suite (one task module each, under `hrm_text.eval.tasks`), run a generation function over them
and score the outputs with the paper's protocol (docs/ARCHITECTURE.md#evaluation-protocol).

The model sees one instruction and writes one response
(docs/ARCHITECTURE.md#sequence-layout-and-objective), so few-shot examples are folded into the
instruction text and the response is just the answer. Nothing here knows about the model or the
inference engine: `run_suite` takes any `generate(pairs) -> texts` callable, which is what lets the
scoring be tested with fake generators and the engine be plugged in by the CLI.

Data comes from local files in each dataset's published format under `EVAL_DATA_DIR/<benchmark>/`
(see `LAYOUT` and docs/EVALUATION.md), or from the Hugging Face Hub through `datasets` when a network
exists. Offline with no files, `MissingBenchmarkData` names every file it looked for.

This module is the public entry point: it re-exports the names a caller needs (`EvalItem`,
`MissingBenchmarkData`, `builtin_items`, `BENCHMARKS`, ...).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hrm_text.eval.results import BenchmarkResult, ItemResult, SuiteResult
from hrm_text.eval.tasks.base import BenchmarkSpec, EvalItem, MissingBenchmarkData, apply_limit
from hrm_text.eval.tasks.builtin import builtin_items
from hrm_text.eval.tasks.files import default_data_dir, expected_files_message, load_split
from hrm_text.eval.tasks.registry import (
    BENCHMARKS,
    LAYOUT,
    PAPER_BENCHMARKS,
    PAPER_TASKS,
    TASKS,
    canonical_benchmark,
)

__all__ = [
    "PAPER_BENCHMARKS",
    "BENCHMARKS",
    "LAYOUT",
    "MissingBenchmarkData",
    "EvalItem",
    "ItemResult",
    "BenchmarkResult",
    "SuiteResult",
    "BenchmarkSpec",
    "canonical_benchmark",
    "load_benchmark_rows",
    "benchmark_items",
    "paper_items",
    "builtin_items",
    "score_item",
    "aggregate",
    "run_suite",
]

GenerateFn = Callable[[list[tuple[str, str]]], list[str]]
CountTokensFn = Callable[[str], int]


# ---------------------------------------------------------------------------------------------
# Items


def load_benchmark_rows(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    source: str = "auto",
) -> list[dict[str, Any]]:
    """Raw rows of one split of one benchmark.

    `source`: "local" (files only), "hub" (`datasets.load_dataset` only) or "auto" (files when
    present, else the Hub unless HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set). Raises
    MissingBenchmarkData naming the expected files when nothing can be loaded.
    """
    spec = BENCHMARKS[canonical_benchmark(name)]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return load_split(spec, split, root, source)


def benchmark_items(
    name: str,
    eval_rows: Sequence[Mapping[str, Any]],
    shot_rows: Sequence[Mapping[str, Any]] | None = None,
    limit: int | None = None,
    seed: int = 1234,
    count_tokens: CountTokensFn | None = None,
) -> list[EvalItem]:
    """Build the EvalItems of one benchmark from raw rows (any supported published format).

    Shots: MMLU uses the first k dev questions of the same subject (the original MMLU protocol);
    the others draw k training examples per item with a generator seeded by (seed, benchmark,
    item id), so prompts are reproducible and independent of `limit`. With `count_tokens`, shots
    are dropped from the end until prompt + `max_new_tokens` fits the benchmark's context.
    """
    bench = canonical_benchmark(name)
    task = PAPER_TASKS[bench]
    spec = task.spec
    examples = [task.normalize(r) for r in eval_rows]
    examples = apply_limit(examples, limit, key=lambda e: e.get("group", ""))
    pool = [task.normalize(r) for r in shot_rows] if (spec.shots and shot_rows) else []
    if spec.shots and not pool:
        raise ValueError(f"{bench} is {spec.shots}-shot but no '{spec.shot_split}' rows were given")
    pick_shots = task.shot_picker(bench, pool, spec.shots, seed)

    items: list[EvalItem] = []
    for ex in examples:
        shots = pick_shots(ex)
        instruction = task.build_instruction(ex, shots)
        if count_tokens is not None:
            while shots and count_tokens(instruction) + spec.max_new_tokens > spec.max_context:
                shots = shots[:-1]
                instruction = task.build_instruction(ex, shots)
        items.append(EvalItem(
            benchmark=bench,
            id=str(ex["id"]),
            condition=spec.condition,
            instruction=instruction,
            reference=task.reference(ex),
            n_choices=len(ex["choices"]) if spec.scoring == "mc" else None,
            max_new_tokens=spec.max_new_tokens,
            group=str(ex.get("group", "")),
            n_shots=len(shots),
            max_context=spec.max_context,
        ))
    return items


def paper_items(
    data_dir: str | Path | None = None,
    benchmarks: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = 1234,
    source: str = "auto",
    count_tokens: CountTokensFn | None = None,
) -> list[EvalItem]:
    """Items of the paper's suite (all eight benchmarks unless `benchmarks` narrows it).

    Every requested benchmark is checked before any is built, so a missing-data error lists all
    the absent files at once instead of one per attempt.
    """
    names = [canonical_benchmark(b) for b in (benchmarks or PAPER_BENCHMARKS)]
    names = [n for n in names if n != "builtin"]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    loaded: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {}
    missing: list[str] = []
    errors: list[str] = []
    for name in names:
        spec = BENCHMARKS[name]
        try:
            rows = load_benchmark_rows(name, spec.eval_split, root, source)
            shot_rows = load_benchmark_rows(name, spec.shot_split, root, source) if spec.shot_split else None
        except MissingBenchmarkData as e:
            missing.append(name)
            errors.append(str(e).splitlines()[-2])
            continue
        loaded[name] = (rows, shot_rows)
    if missing:
        reason = "\n".join(sorted(set(errors)))
        raise MissingBenchmarkData(expected_files_message(root, [BENCHMARKS[n] for n in missing], reason))
    items: list[EvalItem] = []
    for name in names:
        rows, shot_rows = loaded[name]
        items += benchmark_items(name, rows, shot_rows, limit=limit, seed=seed, count_tokens=count_tokens)
    return items


# ---------------------------------------------------------------------------------------------
# Scoring and aggregation


def score_item(item: EvalItem, generation: Any) -> dict[str, float]:
    """Scores of one generation, as fractions in [0, 1]; never raises on the generation."""
    return TASKS[item.benchmark].score(item, generation)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def aggregate(results: Sequence[ItemResult]) -> dict[str, BenchmarkResult]:
    """Per-benchmark percentages: micro average over items, except MMLU (the paper's macro
    average over subjects) and the built-in suite (macro over modules, so a large module does not
    hide a failing small one). Per-group scores are always kept."""
    by_bench: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_bench[r.benchmark].append(r)
    out: dict[str, BenchmarkResult] = {}
    for bench, rs in by_bench.items():
        task = TASKS[bench]
        metric_names = list(rs[0].scores)
        groups: dict[str, dict[str, float]] = {}
        by_group: dict[str, list[ItemResult]] = defaultdict(list)
        for r in rs:
            by_group[r.group].append(r)
        for g, grs in sorted(by_group.items()):
            if g:
                groups[g] = {"n": float(len(grs))}
                groups[g].update({m: 100.0 * _mean([r.scores.get(m, 0.0) for r in grs]) for m in metric_names})
        if task.macro and groups:
            metrics = {m: _mean([groups[g][m] for g in groups]) for m in metric_names}
        else:
            metrics = {m: 100.0 * _mean([r.scores.get(m, 0.0) for r in rs]) for m in metric_names}
        out[bench] = BenchmarkResult(name=bench, n=len(rs), primary=task.primary, metrics=metrics, groups=groups)
    return out


# ---------------------------------------------------------------------------------------------
# The run


def _select(items: Sequence[EvalItem], only: str | Iterable[str] | None) -> list[EvalItem]:
    if only is None:
        return list(items)
    wanted_raw = [w for w in (only.split(",") if isinstance(only, str) else only) if str(w).strip()]
    if not wanted_raw:
        return list(items)
    available = {it.benchmark for it in items} | {it.group for it in items if it.group}
    wanted: set[str] = set()
    for w in wanted_raw:
        w = str(w).strip()
        try:
            canon = canonical_benchmark(w)
        except ValueError:
            canon = w
        if canon in available:
            wanted.add(canon)
        elif w in available:
            wanted.add(w)
        else:
            raise ValueError(f"--only {w!r} matches no benchmark or group; available: "
                             f"{', '.join(sorted(available))}")
    return [it for it in items if it.benchmark in wanted or it.group in wanted]


def run_suite(
    items: Sequence[EvalItem],
    generate: GenerateFn,
    batch_size: int = 32,
    limit: int | None = None,
    only: str | Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> SuiteResult:
    """Generate a response for every selected item and score it.

    `generate` receives a batch of (condition, instruction) pairs and must return one response
    text per pair (greedy decoding in the real engine). `limit` caps items per benchmark
    (round-robin over groups), `only` keeps the named benchmarks or groups (a list or a
    comma-separated string). A generator returning the wrong number of texts is a bug and raises;
    anything it returns as a text, however malformed, is just scored.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    selected = _select(items, only)
    if limit is not None:
        by_bench: dict[str, list[EvalItem]] = defaultdict(list)
        for it in selected:
            by_bench[it.benchmark].append(it)
        selected = [x for b in by_bench.values() for x in apply_limit(b, limit, key=lambda i: i.group)]
    results: list[ItemResult] = []
    for start in range(0, len(selected), batch_size):
        batch = selected[start : start + batch_size]
        outputs = list(generate([(it.condition, it.instruction) for it in batch]))
        if len(outputs) != len(batch):
            raise ValueError(f"generate returned {len(outputs)} texts for {len(batch)} prompts")
        for it, out in zip(batch, outputs):
            text = out if isinstance(out, str) else ""
            results.append(ItemResult(benchmark=it.benchmark, id=it.id, group=it.group,
                                      generation=text, scores=score_item(it, text)))
        if progress is not None:
            progress(len(results), len(selected))
    run_meta = {"n_items": len(results), "batch_size": batch_size, "limit": limit,
                "only": only if isinstance(only, (str, type(None))) else list(only)}
    run_meta["n_shots"] = {b: sorted({it.n_shots for it in selected if it.benchmark == b})
                           for b in {it.benchmark for it in selected}}
    run_meta.update(meta or {})
    return SuiteResult(benchmarks=aggregate(results), items=results, meta=run_meta)
