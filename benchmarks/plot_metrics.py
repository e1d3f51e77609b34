"""Plot scalars of a run's metrics.jsonl to a PNG (e.g. the GRPO reward curve of docs/POST_TRAINING.md).

    python benchmarks/plot_metrics.py RUN/metrics.jsonl --keys train/reward eval/pass_rate --out curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--keys", nargs="+", default=["train/reward"])
    ap.add_argument("--scale", nargs="*", type=float, default=None, help="multiplier per key (e.g. 100 for a fraction)")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in args.keys}
    bad = 0
    for line in args.metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        for k in args.keys:
            if isinstance(rec.get(k), (int, float)):
                series[k][0].append(int(rec["step"]))
                series[k][1].append(float(rec[k]))
    scales = args.scale or [1.0] * len(args.keys)
    fig, ax = plt.subplots(figsize=(7, 4))
    for (k, (x, y)), s in zip(series.items(), scales):
        ax.plot(x, [v * s for v in y], marker="o" if len(x) < 20 else None, label=k + (f" x{s:g}" if s != 1 else ""))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}" + (f" ({bad} unreadable lines skipped)" if bad else ""))


if __name__ == "__main__":
    main()
