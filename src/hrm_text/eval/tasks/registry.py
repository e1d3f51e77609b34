"""Every task by name: the paper's eight benchmarks in the paper's order, then the built-in suite."""

from __future__ import annotations

from hrm_text.eval.tasks import arc, boolq, builtin, drop, gsm8k, hellaswag, math, mmlu, winogrande
from hrm_text.eval.tasks.base import BenchmarkSpec, PaperTask, Task

__all__ = [
    "PAPER_TASKS",
    "TASKS",
    "BENCHMARKS",
    "PAPER_BENCHMARKS",
    "LAYOUT",
    "canonical_benchmark",
]

PAPER_TASKS: dict[str, PaperTask] = {
    t.name: t for t in (gsm8k.TASK, math.TASK, drop.TASK, mmlu.TASK, arc.TASK, hellaswag.TASK,
                        winogrande.TASK, boolq.TASK)
}
TASKS: dict[str, Task] = {**PAPER_TASKS, builtin.TASK.name: builtin.TASK}

BENCHMARKS: dict[str, BenchmarkSpec] = {name: t.spec for name, t in PAPER_TASKS.items()}

PAPER_BENCHMARKS: tuple[str, ...] = tuple(BENCHMARKS)

LAYOUT: dict[str, tuple[str, ...]] = {name: spec.layout for name, spec in BENCHMARKS.items()}

_ALIASES = {
    "arc": "arc_challenge", "arc-c": "arc_challenge", "arc_c": "arc_challenge", "arcc": "arc_challenge",
    "arc-challenge": "arc_challenge", "gsm": "gsm8k", "gsm-8k": "gsm8k", "hendrycks_math": "math",
    "winogrande_xl": "winogrande", "hella": "hellaswag", "hella_swag": "hellaswag",
}


def canonical_benchmark(name: str) -> str:
    """Our name for a benchmark given any common spelling ("ARC-C" -> "arc_challenge")."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(PAPER_BENCHMARKS)}, builtin")
    return key
