"""Evaluation results as JSON and markdown, side by side with the paper or another run.

The paper's numbers (docs/ARCHITECTURE.md#paper-results-and-cost, #baselines) are kept here as data
so that `--compare paper` needs no network and no PDF; a results JSON written by `save_results` can
be compared the same way, which is how two checkpoints (or two inference settings) are put next to
each other.

    python -m hrm_text.eval.report results.json --compare paper [--compare other.json] [--groups]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrm_text.eval.results import SuiteResult
from hrm_text.eval.tasks.registry import BENCHMARKS, PAPER_BENCHMARKS

__all__ = [
    "PAPER_ORDER",
    "PAPER_REFERENCE",
    "PAPER_HRM",
    "result_scores",
    "save_results",
    "load_results",
    "load_reference",
    "markdown_table",
    "builtin_split_rows",
    "builtin_split_table",
    "write_report",
    "main",
]

# The paper's column order.
PAPER_ORDER: tuple[str, ...] = (
    "mmlu", "arc_challenge", "hellaswag", "winogrande", "boolq", "drop", "gsm8k", "math",
)


def _row(values: Sequence[float]) -> dict[str, float]:
    return dict(zip(PAPER_ORDER, values, strict=True))


PAPER_HRM = "HRM-Text 1B (paper)"

# docs/ARCHITECTURE.md#baselines, the paper's FLOPs-matched results (percent; DROP is F1 as reported there).
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    PAPER_HRM: _row([60.7, 81.9, 63.4, 72.4, 86.2, 82.2, 84.5, 56.2]),
    "Looped 1B (paper)": _row([56.5, 74.1, 47.6, 68.2, 82.4, 76.2, 75.1, 48.3]),
    "RINS 1B (paper)": _row([56.1, 76.7, 52.5, 68.4, 84.0, 79.9, 77.7, 48.9]),
    "Transformer 1B (paper)": _row([53.2, 74.3, 47.3, 65.5, 83.6, 75.3, 75.1, 48.4]),
    "Transformer 3B deep (paper)": _row([56.7, 80.5, 51.1, 68.0, 84.1, 77.0, 75.7, 50.5]),
}


def result_scores(result: SuiteResult | Mapping[str, Any]) -> dict[str, float]:
    """Headline score (percent) per benchmark, from a SuiteResult or its JSON dict."""
    if isinstance(result, SuiteResult):
        return result.scores()
    benches = result.get("benchmarks", {})
    return {name: float(b["metrics"][b["primary"]]) for name, b in benches.items()}


def save_results(result: SuiteResult, path: str | Path, include_items: bool = True) -> Path:
    """Write the full result (aggregates, per-item generations and scores, metadata) as JSON.

    Per-item generations are kept by default: they are what lets anyone re-score a run after a
    scoring fix, or audit a surprising number, without re-running the model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(include_items), indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def load_results(path: str | Path) -> SuiteResult:
    """Read a results JSON written by `save_results`."""
    return SuiteResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def load_reference(spec: str) -> dict[str, dict[str, float]]:
    """Reference columns for `--compare`.

    `paper` gives the paper's HRM-Text numbers, `paper:all` adds its baselines; anything else is a
    path to a results JSON from `save_results` (or a plain `{"benchmark": score}` JSON), labelled by
    its file name.
    """
    if spec == "paper":
        return {PAPER_HRM: dict(PAPER_REFERENCE[PAPER_HRM])}
    if spec == "paper:all":
        return {k: dict(v) for k, v in PAPER_REFERENCE.items()}
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--compare {spec!r}: not 'paper', 'paper:all' or an existing results JSON")
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "benchmarks" in data:
        scores = result_scores(data)
    elif isinstance(data, Mapping) and all(isinstance(v, (int, float)) for v in data.values()):
        scores = {str(k): float(v) for k, v in data.items()}
    else:
        raise ValueError(f"{path}: neither a results JSON (with 'benchmarks') nor a {{benchmark: score}} map")
    return {path.stem: scores}


def _display(name: str) -> str:
    spec = BENCHMARKS.get(name)
    return spec.display if spec else name


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def _ordered(names: Sequence[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(PAPER_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def markdown_table(
    result: SuiteResult,
    compare: Mapping[str, Mapping[str, float]] | None = None,
    groups: bool = False,
    label: str = "ours",
) -> str:
    """A markdown table: one row per benchmark (paper order), our score, each reference column
    and the difference to the first reference. The average row covers the paper's eight
    benchmarks and appears only when all eight were run (a partial average would mislead)."""
    compare = dict(compare or {})
    ref_names = list(compare)
    header = ["benchmark", "metric", "n", label] + ref_names + ([f"Δ vs {ref_names[0]}"] if ref_names else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]

    def add(name: str, metric: str, n: str, ours: float | None, refs: list[float | None]) -> None:
        delta = (_fmt(ours - refs[0]) if ours is not None and refs and refs[0] is not None else "")
        cells = [name, metric, n, _fmt(ours)] + [_fmt(r) for r in refs] + ([delta] if refs else [])
        lines.append("| " + " | ".join(cells) + " |")

    names = _ordered(list(result.benchmarks))
    for name in names:
        b = result.benchmarks[name]
        metric = b.primary + (f" (em {b.metrics['em']:.1f})" if "em" in b.metrics and b.primary != "em" else "")
        if name == "builtin" and b.groups:  # a macro average: say so, it is not the share of items
            metric += f" (unweighted mean of {len(b.groups)} groups)"
        add(_display(name), metric, str(b.n), b.score, [compare[r].get(name) for r in ref_names])
        if groups:
            for g, gm in b.groups.items():
                add(f"  {name}/{g}", b.primary, str(int(gm.get("n", 0))), gm.get(b.primary),
                    [compare[r].get(f"{name}/{g}") for r in ref_names])
    if all(p in result.benchmarks for p in PAPER_BENCHMARKS):
        ours = sum(result.benchmarks[p].score for p in PAPER_BENCHMARKS) / len(PAPER_BENCHMARKS)
        refs: list[float | None] = []
        for r in ref_names:
            vals = [compare[r].get(p) for p in PAPER_BENCHMARKS]
            refs.append(None if any(v is None for v in vals) else sum(vals) / len(vals))  # type: ignore[arg-type]
        add("Average (8)", "", "", ours, refs)
    return "\n".join(lines) + "\n"


def builtin_split_rows(result: SuiteResult) -> list[dict[str, Any]]:
    """Per held-out file ("split") of the built-in suite: items, item-weighted exact match, number
    of groups (modules) and the unweighted mean over them; then an `all` row.

    Two averages because they answer different questions and can differ by tens of points: the
    item-weighted one is "what fraction of the questions is right", the unweighted group mean (the
    suite's headline, so a large module cannot hide a failing small one) is "how good is it on a
    typical module". Splits come from the item ids (`<file>:<row>`)."""
    items = [i for i in result.items if i.benchmark == "builtin"]
    by_split: dict[str, list[Any]] = {}
    for it in items:
        by_split.setdefault(it.id.rsplit(":", 1)[0], []).append(it)

    def row(name: str, its: list[Any]) -> dict[str, Any]:
        by_group: dict[str, list[float]] = {}
        for it in its:
            by_group.setdefault(it.group or name, []).append(float(it.scores.get("exact", 0.0)))
        group_means = [100.0 * sum(v) / len(v) for v in by_group.values()]
        return {"split": name, "n": len(its),
                "items_exact": 100.0 * sum(float(i.scores.get("exact", 0.0)) for i in its) / len(its),
                "groups": len(by_group), "group_mean": sum(group_means) / len(group_means)}

    rows = [row(name, its) for name, its in by_split.items()]
    if items:
        rows.append(row("all", items))
    return rows


def builtin_split_table(result: SuiteResult) -> str:
    """The built-in suite as a short terminal table (see `builtin_split_rows`), both averages named."""
    rows = builtin_split_rows(result)
    if not rows:
        return ""
    width = max(len("split"), *(len(r["split"]) for r in rows))
    head = f"{'split':<{width}}  {'n':>6}  {'exact (items)':>13}  {'groups':>6}  {'exact (group mean)':>18}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["split"] == "all":
            lines.append("-" * len(head))
        lines.append(f"{r['split']:<{width}}  {r['n']:>6}  {r['items_exact']:>12.1f}%  {r['groups']:>6}  "
                     f"{r['group_mean']:>17.1f}%")
    total = rows[-1]
    lines.append(f"item-weighted exact match (every item counts once):            {total['items_exact']:.1f}%")
    lines.append(f"unweighted group mean (each of {total['groups']} groups counts once; headline): "
                 f"{total['group_mean']:.1f}%")
    return "\n".join(lines) + "\n"


def write_report(
    result: SuiteResult,
    out_dir: str | Path,
    compare: Sequence[str] = (),
    groups: bool = True,
    stem: str = "results",
) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` (table, with the requested comparisons) into `out_dir`."""
    out = Path(out_dir)
    json_path = save_results(result, out / f"{stem}.json")
    refs: dict[str, dict[str, float]] = {}
    for spec in compare:
        refs.update(load_reference(spec))
    md_path = out / f"{stem}.md"
    text = markdown_table(result, refs, groups=groups)
    if "builtin" in result.benchmarks:  # the per-split view with both averages, as printed
        text += "\n```\n" + builtin_split_table(result) + "```\n"
    md_path.write_text(text, encoding="utf-8")
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    """Print the markdown table of a results JSON, optionally beside references."""
    parser = argparse.ArgumentParser(prog="python -m hrm_text.eval.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results JSON written by `hrm-text eval`")
    parser.add_argument("--compare", action="append", default=[],
                        help="'paper', 'paper:all' or another results JSON (repeatable)")
    parser.add_argument("--groups", action="store_true", help="also list per-subject / per-module scores")
    args = parser.parse_args(argv)
    result = load_results(args.results)
    refs: dict[str, dict[str, float]] = {}
    for spec in args.compare:
        refs.update(load_reference(spec))
    sys.stdout.write(markdown_table(result, refs, groups=args.groups))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
