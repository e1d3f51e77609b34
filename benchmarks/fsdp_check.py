"""Multi-GPU check of the real trainer: FSDP2 on N GPUs vs 1 GPU with the same global batch.

Runs `hrm-text train` (the real entry point) twice on the same sampled data: under
`torchrun --nproc_per_node N` and as one process with N x gradient accumulation. Per-step losses
must agree within bf16 tolerance; also reports tokens/s per GPU and a resume from the N-GPU
checkpoint on 1 GPU (DCP resharding).

    python benchmarks/fsdp_check.py --data .bench_data --gpus 2 --preset S --steps 8 --out res.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def losses(run: Path) -> dict[int, dict]:
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs if "train/loss" in r}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".bench_data", help="folder with sampled/ and tokenizer/")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--preset", default="S")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tokens-per-rank", type=int, default=8192)
    ap.add_argument("--work", default="/tmp/fsdp_check")
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", action="append", default=[], help="extra section.key=value overrides for both runs")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    work = Path(args.work)
    common = [
        f"model.preset={args.preset}", f"data.sampled_dir={data / 'sampled'}", f"data.tokenizer_dir={data / 'tokenizer'}",
        f"data.tokens_per_rank={args.tokens_per_rank}", f"train.global_batch_tokens={args.tokens_per_rank * args.gpus}",
        f"train.max_steps={args.steps}", "train.log_every=1", "train.lr=1e-3", "train.lr_warmup_steps=2",
        "train.ckpt_every=4", "train.tensorboard=false", *args.set,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    multi, single = work / "multi", work / "single"
    cmd_multi = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), "-m", "hrm_text.cli",
                 "train", *common, f"train.out_dir={multi}", "--resume", "none"]
    cmd_single = [sys.executable, "-m", "hrm_text.cli", "train", *common, f"train.out_dir={single}", "--resume", "none"]
    res: dict = {"overrides": args.set, "gpus": args.gpus, "preset": args.preset, "steps": args.steps, "tokens_per_rank": args.tokens_per_rank}
    for name, cmd in (("multi", cmd_multi), ("single", cmd_single)):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (work / f"{name}.log").parent.mkdir(parents=True, exist_ok=True)
        (work / f"{name}.log").write_text(p.stdout + p.stderr)
        res[f"{name}_exit"] = p.returncode
        if p.returncode != 0:
            print(p.stdout[-3000:], p.stderr[-5000:])
    if res["multi_exit"] == 0 and res["single_exit"] == 0:
        lm, ls = losses(multi), losses(single)
        res["loss_multi"] = [round(lm[s]["train/loss"], 5) for s in sorted(lm)]
        res["loss_single"] = [round(ls[s]["train/loss"], 5) for s in sorted(ls)]
        res["max_rel_diff"] = max(abs(lm[s]["train/loss"] - ls[s]["train/loss"]) / abs(ls[s]["train/loss"]) for s in ls)
        # steady-state throughput: skip the first 2 steps (compilation)
        def tps(rs: dict) -> float:
            steps = [rs[s] for s in sorted(rs)][2:]
            return sum(r["train/tokens_per_s_per_gpu"] for r in steps) / max(1, len(steps))
        res["tokens_per_s_per_gpu_multi"] = round(tps(lm), 1)
        res["tokens_per_s_per_gpu_single"] = round(tps(ls), 1)
        res["mfu_multi"] = round(sum(lm[s]["train/mfu"] for s in sorted(lm)[2:]) / max(1, len(lm) - 2), 4)
        # resume the multi-GPU run's step-4 checkpoint in one process (DCP reshards)
        ck = sorted(multi.glob("step_00000[4]"))
        if ck:
            resume_dir = work / "resumed"
            import shutil
            shutil.copytree(ck[0], resume_dir / ck[0].name, dirs_exist_ok=True)
            more = [c for c in common if not c.startswith("data.tokens_per_rank") and not c.startswith("train.global_batch")]
            more += [f"data.tokens_per_rank={args.tokens_per_rank}", f"train.global_batch_tokens={args.tokens_per_rank * args.gpus}"]
            p = subprocess.run([sys.executable, "-m", "hrm_text.cli", "train", *more, f"train.out_dir={resume_dir}"],
                               env=env, capture_output=True, text=True)
            res["resume_on_1gpu_exit"] = p.returncode
            if p.returncode == 0:
                lr_ = losses(resume_dir)
                res["loss_resumed_steps_5_on"] = [round(lr_[s]["train/loss"], 5) for s in sorted(lr_)]
            else:
                print(p.stderr[-3000:])
    ok = res.get("multi_exit") == 0 and res.get("single_exit") == 0 and res.get("max_rel_diff", 1) < 2e-2
    res["pass"] = bool(ok)
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
