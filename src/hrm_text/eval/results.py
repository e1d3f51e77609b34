"""What an evaluation run produces: per-item scores, per-benchmark aggregates and run metadata,
with a JSON round trip (written by `report.save_results`, read back by `report.load_results`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ItemResult", "BenchmarkResult", "SuiteResult"]


@dataclass
class ItemResult:
    """The generation for one item and its scores (fractions in [0, 1])."""

    benchmark: str
    id: str
    group: str
    generation: str
    scores: dict[str, float]


@dataclass
class BenchmarkResult:
    """Aggregated scores of one benchmark, in percent (the paper's scale).

    `metrics[primary]` is the headline number; `groups` holds per-subject/per-module scores.
    """

    name: str
    n: int
    primary: str
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.metrics[self.primary]


@dataclass
class SuiteResult:
    """Everything a run produced: aggregated results, per-item records and run metadata."""

    benchmarks: dict[str, BenchmarkResult]
    items: list[ItemResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Headline score (percent) per benchmark."""
        return {name: b.score for name, b in self.benchmarks.items()}

    def to_dict(self, include_items: bool = True) -> dict[str, Any]:
        return {
            "meta": dict(self.meta),
            "benchmarks": {name: asdict(b) for name, b in self.benchmarks.items()},
            "items": [asdict(i) for i in self.items] if include_items else [],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteResult:
        benchmarks = {name: BenchmarkResult(**b) for name, b in data.get("benchmarks", {}).items()}
        items = [ItemResult(**i) for i in data.get("items", [])]
        return cls(benchmarks=benchmarks, items=items, meta=dict(data.get("meta", {})))
