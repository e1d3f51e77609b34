"""GRPO rollout throughput: our engine (as `hrm-text rl` runs it) against transformers' `generate`.

Same process, same device, same random weights (XL by default, bf16), P prompts x G sampled
completions (temperature 1), PrefixLM on the prompt (transformers gets `token_type_ids` = 1 on the
prompt), and no early stop (no end-of-answer token, `min_new_tokens` = `max_new_tokens` for
transformers), so both produce exactly P*G completions of the same length.

Reported:
  ours.completions_per_s   P*G / time of engine.generate (prefill, sampled decode, host work)
  ours.sync_s              time to refresh the rollout copy from the training model (LoRA merge)
  hf.completions_per_s     P*G / time of generate(num_return_sequences=G, do_sample=True)
  speedup                  ours / hf

    python benchmarks/bench_rollout.py --out $OUT/rollout.json                       # one H200, XL
    python benchmarks/bench_rollout.py --preset tiny --device cpu --prompts 2 --group 4 \\
        --prompt-len 16 --new-tokens 8 --out /tmp/rollout.json                       # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_decode import _timed, build_hf, build_ours  # noqa: E402  (same model builders as the decode bench)


def bench_ours(model: Any, prompts: list[list[int]], group: int, new_tokens: int, dev: torch.device, lora_rank: int) -> dict[str, Any]:
    from hrm_text.config import LoraConfig
    from hrm_text.infer.engine import Engine, Request, SamplingParams
    from hrm_text.model.lm import HRMTextLM
    from hrm_text.model.lora import apply_lora, copy_merged_weights

    p = next(model.parameters())
    n = len(prompts) * group
    max_len = max(len(x) for x in prompts) + new_tokens + 8
    rollout = HRMTextLM(model.cfg, init=False).to(device=dev, dtype=p.dtype)
    policy = model
    if lora_rank > 0:  # the training model of a LoRA run: base + adapters, merged into the rollout copy
        apply_lora(policy, LoraConfig(rank=lora_rank))
    t_sync, _ = _timed(lambda: copy_merged_weights(policy, rollout), dev)
    eng = Engine(rollout, eoa_id=-1, max_batch=n, max_len=max_len)

    def reqs(k: int, step: int) -> list[Request]:
        return [Request(pr, SamplingParams(max_tokens=k, temperature=1.0, seed=step * 100_003 + i * group + g), i * group + g)
                for i, pr in enumerate(prompts) for g in range(group)]

    eng.generate(reqs(4, 0))  # warm-up: compile, CUDA graph capture, allocator
    t, res = _timed(lambda: eng.generate(reqs(new_tokens, 1)), dev)
    assert all(len(r.token_ids) == new_tokens for r in res)
    return {"completions_per_s": n / t, "seconds": t, "tokens_per_s": n * new_tokens / t, "sync_s": t_sync,
            "cuda_graphs": bool(eng._use_graphs), "fused_attention": bool(eng._fused)}


def bench_hf(hf: Any, prompts: list[list[int]], group: int, new_tokens: int, dev: torch.device) -> dict[str, Any]:
    ids = torch.tensor(prompts, device=dev)  # equal-length prompts: no padding
    tt = torch.ones_like(ids)
    n = len(prompts) * group

    def run(k: int) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(input_ids=ids, token_type_ids=tt, max_new_tokens=k, min_new_tokens=k, do_sample=True,
                               temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=group)

    run(2)  # warm-up
    t, out = _timed(lambda: run(new_tokens), dev)
    assert out.shape == (n, ids.shape[1] + new_tokens), out.shape
    return {"completions_per_s": n / t, "seconds": t, "tokens_per_s": n * new_tokens / t}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="XL", help="model preset (random weights); tiny to smoke-test")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="bf16 (default on cuda) or fp32 (default on cpu)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step (P)")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens per completion (both engines)")
    ap.add_argument("--lora-rank", type=int, default=16, help="adapters on the policy (0 = full weights)")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype]
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    t0 = time.time()
    model = build_ours(args.preset, dev, dtype, args.prompt_len + args.new_tokens + 8)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, model.cfg.vocab_size, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "preset": args.preset, "dtype": str(dtype).replace("torch.", ""), "prompts": args.prompts, "group": args.group,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "lora_rank": args.lora_rank,
    }
    cfg = model.cfg
    results["ours"] = bench_ours(model, prompts, args.group, args.new_tokens, dev, args.lora_rank)
    print(f"ours: {json.dumps(results['ours'])}", flush=True)
    _write(args.out, results, time.time() - t0)  # kept if transformers' run is cut short
    if not args.no_hf:
        import transformers

        results["transformers"] = transformers.__version__
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        hf = build_hf(cfg, dev, dtype)
        results["hf"] = bench_hf(hf, prompts, args.group, args.new_tokens, dev)
        results["speedup"] = results["ours"]["completions_per_s"] / results["hf"]["completions_per_s"]
        print(f"hf: {json.dumps(results['hf'])}  speedup {results['speedup']:.1f}x", flush=True)
    _write(args.out, results, time.time() - t0)
    return results


def _write(out: str | None, results: dict[str, Any], wall_s: float) -> None:
    results["wall_s"] = wall_s
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
