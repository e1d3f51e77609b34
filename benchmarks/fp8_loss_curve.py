"""GPU: does float8 training follow the bf16 loss curve? (issue 10's check for `train.fp8`)

Trains the S preset several times from the same initialisation on the same data order, with the
real `hrm-text train`: bf16 (the reference), bf16 again (the GPU's nondeterminism alone), float32
(a precision floor: how far a different but sound precision drifts from bf16 over the same steps)
and the float8 recipes. Compares each
training-loss curve with bf16's, step by step. The issue's check passes when a float8 curve stays
within `--tol` (relative) of bf16's after the warm-up steps.

    python benchmarks/fp8_loss_curve.py --data runs/study_hrm_vs_tf/data --steps 300 --out $OUT

`--data` is a prepared data folder with `sampled/` and `tokenizer/` (for example the one
`hrm-text study --prepare-only` writes: the built-in corpus plus the docstring Q/A split).
`--variant NAME:key=value,...` replaces the default set (bf16 is always run as the reference);
`--parallel N` trains N variants at once on the one GPU (losses do not depend on it).
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


DEFAULT_VARIANTS = (
    "bf16_rerun:fp8=false",  # the same run again: GPU nondeterminism alone (atomics in backward kernels)
    "fp32:dtype=fp32",
    "fp8:fp8=true,fp8_recipe=fused",
    "fp8_precise:fp8=true,fp8_recipe=fused_precise",
)


def rel_diffs(curve: dict[int, float], ref: dict[int, float], skip: int, window: int) -> dict[str, float]:
    """Relative differences to the reference over the logged steps after `skip`: the largest, the
    last, and the largest of the means over `window` consecutive logged steps."""
    steps = sorted(s for s in ref if s in curve and s > skip)
    rel = [(curve[s] - ref[s]) / ref[s] for s in steps]
    means = [sum(rel[i : i + window]) / window for i in range(0, max(1, len(rel) - window + 1))]
    return {"max_abs_rel_diff": max(abs(r) for r in rel), "final_rel_diff": rel[-1],
            "max_abs_windowed_rel_diff": max(abs(m) for m in means), "mean_rel_diff": sum(rel) / len(rel)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with sampled/ and tokenizer/")
    ap.add_argument("--preset", default="S")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per optimizer step (one row)")
    ap.add_argument("--variant", action="append", default=None, help="NAME:key=value,... of train.* (repeatable)")
    ap.add_argument("--tol", type=float, default=0.01, help="relative loss difference allowed")
    ap.add_argument("--skip", type=int, default=20, help="warm-up steps left out of the check")
    ap.add_argument("--window", type=int, default=5, help="logged steps per window of the windowed difference")
    ap.add_argument("--parallel", type=int, default=1, help="variants trained at once")
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
    variants = {"bf16": ["train.fp8=false"]}
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, kv = spec.partition(":")
        variants[name] = [f"train.{item}" for item in kv.split(",") if item]
    report: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "preset": args.preset, "steps": args.steps,
                                 "tol": args.tol, "skip": args.skip, "variants": variants}
    pending = list(variants.items())
    running: list[tuple[str, subprocess.Popen[str], float]] = []
    curves: dict[str, dict[int, float]] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name, extra = pending.pop(0)
            run = Path(args.runs) / name
            cmd = [sys.executable, "-m", "hrm_text.cli", "train", *common, *extra, f"train.out_dir={run}",
                   "--max-steps", str(args.steps), "--resume", "none"]
            running.append((name, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), time.time()))
        name, p, t0 = running.pop(0)
        _, err = p.communicate()
        report[f"{name}_wall_s"] = round(time.time() - t0, 1)
        if p.returncode != 0:
            report[f"{name}_error"] = err[-3000:]
            print(f"{name}: {err[-3000:]}", file=sys.stderr)
            continue
        curves[name] = {step: loss for step, _flops, loss in read_metrics(Path(args.runs) / name)["curve"]}
        # written after every run, so a device call cut short still returns the finished curves
        (out / "fp8_loss_curve.json").write_text(json.dumps({**report, "curves_so_far": curves}, indent=1))
    if "bf16" in curves:
        ref = curves["bf16"]
        report["curves"] = {n: [[s, c[s]] for s in sorted(c)] for n, c in curves.items()}
        report["vs_bf16"] = {n: rel_diffs(c, ref, args.skip, args.window) for n, c in curves.items() if n != "bf16"}
        report["passed"] = {n: d["max_abs_rel_diff"] <= args.tol for n, d in report["vs_bf16"].items()  # type: ignore[union-attr]
                            if n.startswith("fp8")}
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
            for n, c in curves.items():
                xs = sorted(c)
                ax.plot(xs, [c[s] for s in xs], label=n, ls="-" if n == "bf16" else "--")
                if n != "bf16":
                    common_steps = [s for s in xs if s in ref]
                    ax2.plot(common_steps, [100 * (c[s] - ref[s]) / ref[s] for s in common_steps], label=n)
            ax.set_ylabel("training loss (nats/token)")
            ax.set_title(f"{args.preset}: precision variants, same init and data order")
            ax.legend()
            ax2.axhspan(-100 * args.tol, 100 * args.tol, color="0.9")
            ax2.set_xlabel("step")
            ax2.set_ylabel("vs bf16 (%)")
            ax2.legend()
            fig.tight_layout()
            fig.savefig(out / "fp8_loss_curve.png", dpi=120)
        except ImportError:
            pass
    (out / "fp8_loss_curve.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}))


if __name__ == "__main__":
    main()
