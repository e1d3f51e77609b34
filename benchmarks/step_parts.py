"""GPU: the parts of the XL training step, one at a time, so a speed change can be chosen by
measurement before it goes into the step (issue 10). One device call, three sections:

  attention  PrefixLM attention forward and forward+backward on the packed rows of
             train_throughput.py (XL heads: 12 x 128, 12,288 tokens), per backend and kernel
             option set, with the per-batch mask build, checked against flex's output and gradients
  block      one compiled Block at XL width (forward with and without grad, forward+backward,
             saved-activation memory): residual stream float32 vs bfloat16, attention backend,
             bf16 vs float8 projections (ours, train/fp8.py, and torchao's recipes)
  matmul     the bf16 matmul rate of the card (8192^3, random data)

    python benchmarks/step_parts.py --out $OUT            # everything, about 4 minutes on an H200
    python benchmarks/step_parts.py --only attention --out /tmp/parts

The block section also prints the step's block time implied by each variant at K = 5:
48 block calls without grad (the 3 unrecorded stack calls) + 80 with forward and backward.
Results: OUT/step_parts.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from cuda_timing import timed_steps  # noqa: E402
from train_throughput import make_rows, matmul_rate  # noqa: E402  (the same rows and matmul rate as the throughput benchmark)

from hrm_text.model.attention import FLEX_BLOCK, AttnMask, attention, build_prefix_lm_mask  # noqa: E402
from hrm_text.model.layers import Block, RotaryEmbedding  # noqa: E402
from hrm_text.train.fp8 import FUSED_RECIPES, convert_to_float8  # noqa: E402

H, D, HIDDEN, INTER = 12, 128, 1536, 4096
NOGRAD_CALLS, RECORDED_CALLS, LAYERS_PER_CALL = 3, 5, 16


def timed(fn: Callable[[], Any], reps: int) -> float:
    """Median milliseconds of fn() with CUDA events, after two warm-up calls (cuda_timing.py)."""
    _, times, _ = timed_steps(lambda _i: fn(), reps)
    return sorted(times)[len(times) // 2] * 1e3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def attention_pairs(doc: torch.Tensor, pre: torch.Tensor) -> int:
    """Allowed (query, key) pairs of one row: the work a kernel that skips masked pairs must do."""
    total = 0
    for d in doc.unique().tolist():
        m = doc == d
        n, p = int(m.sum()), int((pre & m).sum())
        r = n - p
        total += p * p + r * p + r * (r + 1) // 2
    return total


def _exact_max(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """fn with cuDNN's max lengths passed as they are, not rounded up to powers of two."""
    import hrm_text.model.attention as attn_mod

    def run(*a: Any) -> torch.Tensor:
        bucket, attn_mod._bucket = attn_mod._bucket, lambda n: n
        try:
            return fn(*a)
        finally:
            attn_mod._bucket = bucket
    return run


def section_attention(rows: dict[str, torch.Tensor], reps: int, only_variants: list[str] | None = None) -> list[dict[str, Any]]:
    from torch.nn.attention.flex_attention import flex_attention

    dev = torch.device("cuda")
    nrows, T = rows["doc_ids"].shape
    docs = [rows["doc_ids"][i : i + 1].to(dev) for i in range(nrows)]
    pres = [rows["is_prefix"][i : i + 1].to(dev) for i in range(nrows)]
    pairs = sum(attention_pairs(rows["doc_ids"][i], rows["is_prefix"][i]) for i in range(nrows)) / nrows
    fwd_flop = 4 * pairs * H * D  # QK^T and PV, 2 flops per multiply-add
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = [[torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3)] for _ in range(nrows)]
    dout = [torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(nrows)]

    flex_c = torch.compile(flex_attention, dynamic=False)
    # inductor times flex's candidate kernel configs on these shapes and keeps the fastest; the
    # choices and their times go to stderr ("AUTOTUNE flex_attention..."), read from the log
    flex_tuned = torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")

    def flex_autotuned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        return flex_tuned(q, k, v, block_mask=mask.block_mask)

    def flex_with(opts: dict[str, Any]) -> Callable[..., torch.Tensor]:
        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
            return flex_c(q, k, v, block_mask=mask.block_mask, kernel_options=opts)
        return run

    variants: list[tuple[str, str, Callable[..., torch.Tensor]]] = [
        ("flex (current default)", "flex", attention),
        ("flex fwd 128x64 w8 s3, bwd 64x128 w8 s3", "flex", flex_with(
            {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 8, "fwd_num_stages": 3,
             "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
             "bwd_num_warps": 8, "bwd_num_stages": 3})),
        ("flex fwd 128x128 w8 s2 (TMA)", "flex", flex_with(
            {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 2, "USE_TMA": True})),
        ("flex autotuned (max-autotune)", "flex", flex_autotuned),
        # 128-query x 64-key sparse blocks: fewer masked pairs in the partial blocks (autotuned:
        # with BLOCK_N 64 forced, no backward config was valid, 2026-12-07)
        ("flex kv64 sparse blocks, autotuned", "flex_kv64", flex_autotuned),
        ("flex_fa4 (flex on FlashAttention-4 CuTe kernels)", "flex_fa4", attention),
        ("varlen (torch FA2, two calls)", "varlen", attention),
        ("cudnn (two ragged calls)", "cudnn", attention),
        ("cudnn (two ragged calls), exact max lengths", "cudnn", _exact_max(attention)),
        ("flex, doc-id mask_mod (before 2026-12-07)", "flex_docid", attention),
        # the kernel's own rate on simpler masks (their own pair counts; outputs differ from ours)
        ("flex, causal over the whole row (kernel rate)", "flex_causal", attention),
        ("flex, no mask (kernel rate)", "flex_none", attention),
    ]
    if only_variants:
        variants = [v for v in variants if any(o in v[0] for o in only_variants)]

    def make_mask(i: int, backend: str) -> Any:
        from torch.nn.attention.flex_attention import BlockMask, create_block_mask

        if backend == "flex_docid":  # the same block tables, the mask_mod of both sides' doc ids and flags
            bm = build_prefix_lm_mask(docs[i], pres[i], "flex").block_mask
            doc, pre = docs[i].to(torch.int32), pres[i]

            def mod(b: Any, h: Any, q: Any, k: Any) -> Any:
                return (doc[b, q] == doc[b, k]) & ((k <= q) | (pre[b, q] & pre[b, k]))

            return AttnMask("flex", block_mask=BlockMask.from_kv_blocks(
                bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
                BLOCK_SIZE=FLEX_BLOCK, mask_mod=mod, seq_lengths=(T, T)))
        if backend == "flex_kv64":  # today's mask_mod (per-query bounds) at 128 x 64 block granularity
            mod = build_prefix_lm_mask(docs[i], pres[i], "flex").block_mask.mask_mod
            return AttnMask("flex", block_mask=create_block_mask(mod, 1, None, T, T, device=dev, BLOCK_SIZE=(FLEX_BLOCK, 64)))
        if backend == "flex_causal":
            return AttnMask("flex", block_mask=create_block_mask(lambda b, h, q, k: k <= q, 1, None, T, T, device=dev))
        if backend == "flex_none":
            return AttnMask("flex", block_mask=create_block_mask(lambda b, h, q, k: q >= 0, 1, None, T, T, device=dev))
        return build_prefix_lm_mask(docs[i], pres[i], backend)

    own_pairs = {"flex_causal": T * (T + 1) // 2, "flex_none": T * T}
    results = []
    ref_out: list[torch.Tensor] = []
    ref_grads: list[tuple[torch.Tensor, ...]] = []
    for name, backend, fn in variants:
        res: dict[str, Any] = {"variant": name, "backend": backend}
        try:
            t0 = time.time()
            masks = [make_mask(i, backend) for i in range(nrows)]
            torch.cuda.synchronize()
            # first forward+backward on each row: compile (first row) and per-shape plan builds (cuDNN)
            first = []
            for i in range(nrows):
                t1 = time.time()
                q, k, v = (t.detach().requires_grad_() for t in qkv[i])
                torch.autograd.grad(fn(q, k, v, masks[i]), (q, k, v), dout[i])
                torch.cuda.synchronize()
                first.append(round((time.time() - t1) * 1e3, 1))
            res["first_call_ms_per_row"] = first
            res["mask_build_ms"] = timed(lambda: make_mask(0, backend), 5)
            errs = []
            for i in range(nrows):
                q, k, v = (t.detach().requires_grad_() for t in qkv[i])
                out = fn(q, k, v, masks[i])
                grads = torch.autograd.grad(out, (q, k, v), dout[i])
                if backend in own_pairs:
                    pass  # another mask: nothing to compare
                elif not ref_out or len(ref_out) <= i:
                    ref_out.append(out.detach())
                    ref_grads.append(tuple(x.detach() for x in grads))
                else:
                    errs.append(max([rel_err(out, ref_out[i])] + [rel_err(a, b) for a, b in zip(grads, ref_grads[i])]))
                if not torch.isfinite(out).all() or not all(torch.isfinite(x).all() for x in grads):
                    raise RuntimeError("non-finite output or gradient")
            res["compile_and_check_s"] = round(time.time() - t0, 1)
            res["max_rel_err_vs_flex"] = max(errs) if errs else 0.0
            it = [0]

            def fwd() -> None:
                i = it[0] % nrows
                it[0] += 1
                with torch.no_grad():
                    fn(*qkv[i], masks[i])

            def fwd_bwd() -> None:
                i = it[0] % nrows
                it[0] += 1
                q, k, v = (t.detach().requires_grad_() for t in qkv[i])
                torch.autograd.grad(fn(q, k, v, masks[i]), (q, k, v), dout[i])

            res["fwd_ms"] = timed(fwd, reps)
            res["fwd_bwd_ms"] = timed(fwd_bwd, reps)
            flop = 4 * own_pairs[backend] * H * D if backend in own_pairs else fwd_flop
            res["fwd_tflops"] = flop / res["fwd_ms"] / 1e9
            res["fwd_bwd_tflops"] = 3.5 * flop / res["fwd_bwd_ms"] / 1e9  # backward = 2.5x forward
            # the step at K = 5: 48 layer calls forward only, 80 forward + backward
            res["step_attention_ms_est"] = 48 * res["fwd_ms"] + 80 * res["fwd_bwd_ms"]
        except Exception as e:  # noqa: BLE001 - one failed variant must not hide the others
            res["error"] = f"{type(e).__name__}: {e}"[:800]
            traceback.print_exc()
        print(json.dumps(res), flush=True)
        results.append(res)
    results.append({"allowed_pairs_per_row": pairs, "fwd_gflop_per_layer_call": fwd_flop / 1e9})
    return results


def section_block(rows: dict[str, torch.Tensor], reps: int, all_variants: bool = False,
                  profile_to: Path | None = None, only_variants: list[str] | None = None) -> list[dict[str, Any]]:
    dev = torch.device("cuda")
    T = rows["doc_ids"].shape[1]
    doc, pre = rows["doc_ids"][:1].to(dev), rows["is_prefix"][:1].to(dev)
    pos = rows["position_ids"][:1].to(dev)
    rope = RotaryEmbedding(D).to(dev)(pos)
    # (name, residual dtype, attention backend, float8 recipe: None, "fused" (ours) or a torchao recipe)
    variants = [
        ("fp32 residual, flex, bf16", torch.float32, "flex", None),
        ("fp32 residual, flex, fp8 fused (ours)", torch.float32, "flex", "fused"),
        ("fp32 residual, flex, fp8 fused_precise (ours, precise accumulation)", torch.float32, "flex", "fused_precise"),
        ("fp32 residual, flex, fp8 fused_lowmem (ours, float8 x saved for the weight gradient)", torch.float32, "flex", "fused_lowmem"),
        ("fp32 residual, flex, fp8 torchao rowwise_with_gw_hp", torch.float32, "flex", "rowwise_with_gw_hp"),
    ]
    if all_variants:
        variants += [
            ("fp32 residual, flex, fp8 torchao tensorwise", torch.float32, "flex", "tensorwise"),
            ("fp32 residual, flex, fp8 torchao rowwise", torch.float32, "flex", "rowwise"),
            ("bf16 residual, flex, bf16", torch.bfloat16, "flex", None),
            ("fp32 residual, varlen, bf16", torch.float32, "varlen", None),
        ]
    # experimental (cuDNN's ragged call faulted on an H100): only when asked for by name
    experimental = [
        ("fp32 residual, cudnn, bf16", torch.float32, "cudnn", None),
        ("fp32 residual, cudnn, fp8 fused (ours)", torch.float32, "cudnn", "fused"),
    ]
    if only_variants:
        variants = [v for v in variants + experimental if any(o in v[0] for o in only_variants)]
    results = []
    for name, xdtype, backend, fp8 in variants:
        res: dict[str, Any] = {"variant": name}
        try:
            torch.manual_seed(0)
            blk = Block(HIDDEN, H, D, INTER, 1e-6).to(dev)
            for m in blk.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            if fp8 in FUSED_RECIPES:
                convert_to_float8(blk, **FUSED_RECIPES[fp8])
            elif fp8:
                from torchao.float8 import Float8LinearConfig, convert_to_float8_training

                convert_to_float8_training(blk, config=Float8LinearConfig.from_recipe_name(fp8))
            blk.compile()
            mask = build_prefix_lm_mask(doc, pre, backend)
            x0 = torch.randn(1, T, HIDDEN, device=dev, dtype=xdtype)
            gy = torch.randn(1, T, HIDDEN, device=dev, dtype=xdtype)

            def fwd_nograd() -> None:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    blk(x0, rope, mask)

            def fwd_bwd() -> None:
                x = x0.detach().requires_grad_()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = blk(x, rope, mask)
                y.backward(gy)

            t0 = time.time()
            fwd_nograd()
            fwd_bwd()
            torch.cuda.synchronize()
            res["compile_s"] = round(time.time() - t0, 1)
            res["fwd_nograd_ms"] = timed(fwd_nograd, reps)
            res["fwd_bwd_ms"] = timed(fwd_bwd, reps)
            # saved activations of one recorded block call
            x = x0.detach().requires_grad_()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = blk(x, rope, mask)
            torch.cuda.synchronize()
            res["saved_MB"] = (torch.cuda.memory_allocated() - before) / 1e6
            del y, x
            if profile_to is not None:  # the kernels of 3 forward+backward passes, by device time
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        fwd_bwd()
                    torch.cuda.synchronize()
                with open(profile_to, "a") as f:
                    f.write(f"\n### {name}: 3 x forward+backward\n")
                    f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
            res["step_block_ms_est"] = NOGRAD_CALLS * LAYERS_PER_CALL * res["fwd_nograd_ms"] + RECORDED_CALLS * LAYERS_PER_CALL * res["fwd_bwd_ms"]
            res["step_saved_GB_est"] = RECORDED_CALLS * LAYERS_PER_CALL * res["saved_MB"] / 1e3
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}"[:800]
            traceback.print_exc()
        print(json.dumps(res), flush=True)
        results.append(res)
        torch.cuda.empty_cache()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=12288)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--only", choices=["attention", "block", "matmul"], action="append", default=None)
    ap.add_argument("--all-block-variants", action="store_true", help="also torchao tensorwise/rowwise, bf16 residual, varlen attention")
    ap.add_argument("--profile", action="store_true", help="kernel table of each block variant (OUT/block_profile.txt)")
    ap.add_argument("--block-variant", action="append", default=None,
                    help="only the block variants whose name contains this text (repeatable)")
    ap.add_argument("--attention-variant", action="append", default=None,
                    help="only the attention variants whose name contains this text (repeatable)")
    ap.add_argument("--out", default="step_parts_out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("step_parts.py measures GPU kernels: no CUDA device here")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["matmul", "attention", "block"])
    rows = make_rows(args.tokens, 4, 65536, seed=0)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": args.tokens,
        "date": time.strftime("%Y-%m-%d"),
    }
    if "matmul" in only:
        report["matmul"] = {"bf16_matmul_tflops": matmul_rate() / 1e12}
        print(json.dumps(report["matmul"]), flush=True)
    # blocks before attention, and the experimental cuDNN kernels last: a kernel that faults (as
    # cuDNN's ragged call did on an H100) poisons the CUDA context for everything after it
    if "block" in only:
        report["block"] = section_block(rows, args.reps, args.all_block_variants,
                                        out / "block_profile.txt" if args.profile else None, args.block_variant)
        (out / "step_parts.json").write_text(json.dumps(report, indent=1))
    if "attention" in only:
        report["attention"] = section_attention(rows, args.reps, args.attention_variant)
    (out / "step_parts.json").write_text(json.dumps(report, indent=1))
    print("\n| section | variant | ms | est. per step (ms) | notes |\n|---|---|---:|---:|---|")
    for r in report.get("attention", []):
        if "variant" in r:
            print(f"| attention | {r['variant']} | fwd {r.get('fwd_ms', math.nan):.2f} / fwd+bwd {r.get('fwd_bwd_ms', math.nan):.2f} "
                  f"| {r.get('step_attention_ms_est', math.nan):.0f} | mask {r.get('mask_build_ms', math.nan):.1f} ms, "
                  f"err {r.get('max_rel_err_vs_flex', math.nan):.1e} {r.get('error', '')} |")
    for r in report.get("block", []):
        print(f"| block | {r['variant']} | nograd {r.get('fwd_nograd_ms', math.nan):.2f} / fwd+bwd {r.get('fwd_bwd_ms', math.nan):.2f} "
              f"| {r.get('step_block_ms_est', math.nan):.0f} | saved {r.get('step_saved_GB_est', math.nan):.1f} GB/step "
              f"{r.get('error', '')} |")


if __name__ == "__main__":
    main()
