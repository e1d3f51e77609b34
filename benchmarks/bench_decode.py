"""Decode and prefill throughput of our engine against transformers' `HrmTextForCausalLM.generate`.

Both run in the SAME process on the same device, with random weights of the same shape (XL by
default, bf16), 256-token prompts, PrefixLM (transformers gets `token_type_ids` = 1 on the prompt),
and never stop early (no end-of-answer token), so every row generates exactly the asked tokens.

Reported per batch size:
  ours.prefill_tok_s     prompt tokens/s of one batched prefill
  ours.decode_tok_s      generated tokens/s of the decode phase: (N-1) tokens per row over the time
                         of generate(N tokens) minus generate(1 token) (Python loop and sampling
                         included); transformers' decode_tok_s is measured the same way
  ours.e2e_tok_s         generated tokens / whole generate() time (prefill included)
  ours.step_tok_s        batch / time of one bare decode step (CUDA-graph replay on CUDA)
  hf.e2e_tok_s           generated tokens / whole transformers generate() time
  speedup_e2e, speedup_decode   ours over transformers

transformers is slow at batch 1 (about 8 tokens/s for XL on an H100), so its token counts are kept
small (--hf-new-tokens) to fit the whole run in one ~8-minute call.

    python benchmarks/bench_decode.py --out benchmarks/results/decode.json            # GPU, XL
    python benchmarks/bench_decode.py --preset tiny --device cpu --batches 1,4 --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    _sync(dev)
    t0 = time.perf_counter()
    out = fn()
    _sync(dev)
    return time.perf_counter() - t0, out


def build_ours(preset: str, dev: torch.device, dtype: torch.dtype, max_len: int):  # -> HRMTextLM
    from hrm_text.config import model_config
    from hrm_text.model.lm import HRMTextLM

    torch.manual_seed(0)
    cfg = model_config(preset, max_seq_len=max(max_len, 512))
    return HRMTextLM(cfg, attn_backend="sdpa").to(device=dev, dtype=dtype).eval()


def build_hf(our_cfg: Any, dev: torch.device, dtype: torch.dtype):  # -> HrmTextForCausalLM
    import transformers

    from hrm_text.model.hf_adapter import to_hf_config

    hf_cfg = transformers.HrmTextConfig.from_dict(to_hf_config(our_cfg, {"pad": 0}))
    with torch.device(dev):
        hf = transformers.HrmTextForCausalLM._from_config(hf_cfg, attn_implementation="sdpa", dtype=dtype)
    hf = hf.to(device=dev, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def bench_ours(
    model: Any, batch: int, prompt_len: int, new_tokens: int, dev: torch.device, graphs: bool, **engine_kw: Any
) -> dict[str, float]:
    from hrm_text.infer.engine import Engine, Request, SamplingParams

    vocab = model.cfg.vocab_size
    eng = Engine(model, eoa_id=-1, max_batch=batch, max_len=prompt_len + new_tokens + 8, cuda_graphs=graphs, **engine_kw)
    g = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(10, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)]

    def reqs(n: int) -> list[Request]:
        return [Request(p, SamplingParams(max_tokens=n), i) for i, p in enumerate(prompts)]

    eng.generate(reqs(4))  # warm-up: allocator, cuBLAS, CUDA-graph capture
    with torch.no_grad():
        t_pre, _ = _timed(lambda: eng._prefill(list(range(batch)), prompts), dev)
        t_pre = min(t_pre, _timed(lambda: eng._prefill(list(range(batch)), prompts), dev)[0])
        # bare decode step (graph replay): cache rows already hold the prompts
        eng._pos.fill_(prompt_len)
        eng._decode()
        n_steps = 20
        t_steps, _ = _timed(lambda: [eng._decode() for _ in range(n_steps)], dev)
    # prefill + first token through the whole engine (admission, sampling), best of two
    t_first = min(_timed(lambda: eng.generate(reqs(1)), dev)[0] for _ in range(2))
    t_e2e, res = _timed(lambda: eng.generate(reqs(new_tokens)), dev)
    assert all(len(r.token_ids) == new_tokens for r in res)
    gen = batch * new_tokens
    t_dec = max(t_e2e - t_first, 1e-9)
    return {
        "prefill_tok_s": batch * prompt_len / t_pre,
        "prefill_s": t_pre,
        "decode_tok_s": batch * (new_tokens - 1) / t_dec,  # the first token comes from the prefill
        "e2e_tok_s": gen / t_e2e,
        "e2e_s": t_e2e,
        "step_tok_s": batch * n_steps / t_steps,
        "step_ms": 1000 * t_steps / n_steps,
        "new_tokens": new_tokens,
        "cuda_graphs": bool(eng._use_graphs),
        "fused_attention": bool(eng._fused),
        "gemv": bool(eng._gemv),
    }


def bench_hf(hf: Any, batch: int, prompt_len: int, new_tokens: int, dev: torch.device, vocab: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(10, vocab, (batch, prompt_len), generator=g).to(dev)
    tt = torch.ones_like(ids)

    def run(n: int) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(input_ids=ids, token_type_ids=tt, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    run(2)  # warm-up
    t_pre, _ = _timed(lambda: run(1), dev)  # prefill + one token
    t_e2e, out = _timed(lambda: run(new_tokens), dev)
    assert out.shape[1] == prompt_len + new_tokens
    return {
        "prefill_tok_s": batch * prompt_len / t_pre,
        "decode_tok_s": batch * (new_tokens - 1) / max(t_e2e - t_pre, 1e-9),
        "e2e_tok_s": batch * new_tokens / t_e2e,
        "e2e_s": t_e2e,
        "new_tokens": new_tokens,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="XL", help="model preset (random weights): XL for the real measurement, tiny to smoke-test")
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--dtype", default=None, help="bf16 (default on cuda) or fp32 (default on cpu)")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row by our engine")
    ap.add_argument("--hf-new-tokens", default="16,16", help="tokens per row for transformers, one per batch size (it is slow)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--no-graphs", action="store_true", help="disable CUDA graphs in our engine")
    ap.add_argument(
        "--attention", default="auto",
        help="our decode variant: auto (engine defaults), fused (Triton attention), gemv (fused attention and "
        "matmuls as fused reductions), sdpa (eager attention), or a comma list; results of the first go "
        "under 'ours', the others under 'ours_<name>'",
    )
    ap.add_argument("--compile-mode", default=None,
                    help="InferConfig.compile_mode of our decode block, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype]
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    batches = [int(b) for b in args.batches.split(",")]
    hf_tokens = [int(n) for n in args.hf_new_tokens.split(",")]
    hf_tokens += [hf_tokens[-1]] * (len(batches) - len(hf_tokens))
    t_start = time.time()
    model = build_ours(args.preset, dev, dtype, args.prompt_len + args.new_tokens + 8)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "preset": args.preset, "dtype": str(dtype).replace("torch.", ""),
        "prompt_len": args.prompt_len, "params": sum(p.numel() for p in model.parameters()), "batches": {},
    }
    try:
        import transformers

        results["transformers"] = transformers.__version__
    except ImportError:
        args.no_hf = True
    from hrm_text.config import InferConfig  # imported where used, as the other hrm_text imports here

    variants = args.attention.split(",")
    engine_kw: dict[str, dict[str, Any]] = {
        "auto": {}, "fused": {"fused_attention": True, "gemv_rows": 0}, "sdpa": {"fused_attention": False},
        "gemv": {"fused_attention": True, "gemv_rows": 8},
    }
    for b in batches:
        r = results["batches"][str(b)] = {}
        for i, name in enumerate(variants):
            if name in ("gemv", "fused") and b > 8 and i > 0:
                continue  # beyond 8 rows both are the default engine
            key = "ours" if i == 0 else f"ours_{name}"
            r[key] = bench_ours(model, b, args.prompt_len, args.new_tokens, dev, not args.no_graphs,
                                options=InferConfig(compile_mode=args.compile_mode), **engine_kw[name])
            print(f"batch {b} {key}: {json.dumps(r[key])}", flush=True)
    if not args.no_hf:
        hf = build_hf(model.cfg, dev, dtype)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        for b, n in zip(batches, hf_tokens):
            r = results["batches"][str(b)]
            r["hf"] = bench_hf(hf, b, args.prompt_len, n, dev, hf.config.vocab_size)
            r["speedup_e2e"] = r["ours"]["e2e_tok_s"] / r["hf"]["e2e_tok_s"]
            r["speedup_decode"] = r["ours"]["decode_tok_s"] / r["hf"]["decode_tok_s"]
            r["speedup_prefill"] = r["ours"]["prefill_tok_s"] / r["hf"]["prefill_tok_s"]
            print(f"batch {b} hf: {json.dumps(r['hf'])}  speedup e2e {r['speedup_e2e']:.1f}x "
                  f"decode {r['speedup_decode']:.1f}x", flush=True)
    results["wall_s"] = time.time() - t_start
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
