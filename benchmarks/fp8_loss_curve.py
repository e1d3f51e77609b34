"""GPU: does float8 training follow the bf16 loss curve? (issue 10's check for `train.fp8`)

Trains the S preset twice from the same initialisation on the same data order, once in bf16 and
once with `train.fp8=true` (and `train.fp8_recipe`), with the real `hrm-text train`, and compares
the training losses step by step. Passes when the fp8 loss stays within `--tol` (relative) of
bf16's, averaged over each logging window, after the warm-up steps.

    python benchmarks/fp8_loss_curve.py --data runs/study_hrm_vs_tf/data --steps 300 --out $OUT

`--data` is a prepared data folder with `sampled/` and `tokenizer/` (for example the one
`hrm-text study --prepare-only` writes: the built-in corpus plus the docstring Q/A split).
Writes OUT/fp8_loss_curve.json and OUT/fp8_loss_curve.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from hrm_text.eval.study import read_metrics  # noqa: E402  (the trainer's metrics.jsonl, one reader)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with sampled/ and tokenizer/")
    ap.add_argument("--preset", default="S")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per optimizer step (one row)")
    ap.add_argument("--recipe", default="fused", help="train.fp8_recipe")
    ap.add_argument("--tol", type=float, default=0.01, help="relative loss difference allowed")
    ap.add_argument("--skip", type=int, default=20, help="warm-up steps left out of the check")
    ap.add_argument("--runs", default="/tmp/fp8_curve_runs")
    ap.add_argument("--out", default="fp8_curve_out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    common = [
        f"model.preset={args.preset}", "model.vocab_size=4096", "model.max_seq_len=1024",
        f"data.sampled_dir={data / 'sampled'}", f"data.tokenizer_dir={data / 'tokenizer'}",
        f"data.tokens_per_rank={args.tokens}", f"train.global_batch_tokens={args.tokens}", "train.lr=1e-3",
        "train.lr_warmup_steps=20", "train.lr_schedule=cosine", "train.lr_min_ratio=0.1",
        f"train.log_every={min(10, args.steps)}", "train.tensorboard=false", "train.ckpt_every=100000", "train.seed=0",
    ]
    report: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "preset": args.preset, "steps": args.steps,
                                 "recipe": args.recipe, "tol": args.tol}
    curves = {}
    for name, extra in (("bf16", ["train.fp8=false"]), ("fp8", ["train.fp8=true", f"train.fp8_recipe={args.recipe}"])):
        run = Path(args.runs) / name
        cmd = [sys.executable, "-m", "hrm_text.cli", "train", *common, *extra, f"train.out_dir={run}",
               "--max-steps", str(args.steps), "--resume", "none"]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        report[f"{name}_wall_s"] = round(time.time() - t0, 1)
        if p.returncode != 0:
            report[f"{name}_error"] = p.stderr[-3000:]
            print(p.stderr[-3000:], file=sys.stderr)
            continue
        curves[name] = {step: loss for step, _flops, loss in read_metrics(run)["curve"]}
    if len(curves) == 2:
        steps = sorted(s for s in curves["bf16"] if s in curves["fp8"] and s > args.skip)
        rel = [abs(curves["fp8"][s] - curves["bf16"][s]) / curves["bf16"][s] for s in steps]
        report["steps_compared"] = steps
        report["bf16"] = [curves["bf16"][s] for s in steps]
        report["fp8"] = [curves["fp8"][s] for s in steps]
        report["max_rel_diff"] = max(rel)
        report["final_rel_diff"] = rel[-1]
        report["passed"] = max(rel) <= args.tol
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(sorted(curves["bf16"]), [curves["bf16"][s] for s in sorted(curves["bf16"])], label="bf16")
            ax.plot(sorted(curves["fp8"]), [curves["fp8"][s] for s in sorted(curves["fp8"])], label=f"fp8 ({args.recipe})", ls="--")
            ax.set_xlabel("step")
            ax.set_ylabel("training loss (nats/token)")
            ax.set_title(f"{args.preset}: bf16 vs float8, max rel. diff {max(rel):.2%} after step {args.skip}")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / "fp8_loss_curve.png", dpi=120)
        except ImportError:
            pass
    (out / "fp8_loss_curve.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("steps_compared", "bf16", "fp8")}))


if __name__ == "__main__":
    main()
