"""GPU: training throughput of real steps (forward, backward, Adam-atan2, EMA), side by side with
the previous release of the step, on the same packed PrefixLM rows.

One call measures everything for a shape: each variant runs in its own process with a fresh
compile cache (cold start = launch to the end of the first optimizer step), then times steps
with CUDA events, reads peak memory, and profiles two steps to split the time by kind of work.

    # this tree against the commit before the speed work, XL, K = 5, 12,288-token rows
    python benchmarks/train_throughput.py --preset XL --tokens 12288 --K 5 \\
        --baseline-commit 3d5ee6a --variant new --variant fp8:fp8=true --out $OUT

    --variant NAME[:key=value,...]   train.* settings of this tree (fp8, activation_memory_budget,
                                     recompute_calls, compile, attn_backend, fsdp_keep_gathered)
                                     or compiler ones (inductor.triton.multi_kernel=1);
                                     repeatable; "new" = defaults; src=PATH runs another
                                     release's `src` folder (a second baseline, same rows)
    --baseline-commit REV            the previous release from a `git worktree` (needs git), or
    --baseline-src PATH              its `src` folder copied beforehand (the device machine has no .git)
    --baseline-opts key=value,...    the baseline's settings (default: its defaults), e.g. fp8=true

Rows: examples with log-normal instruction and response lengths (medians 180 and 220 tokens,
clipped to the 4,096 context), packed greedily into rows of `--tokens`; the same rows for every
variant (saved to OUT/rows.pt). Throughput counts real (non-padding) tokens.
Results: OUT/train_throughput.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# ---------------------------------------------------------------------------------------------
# rows


def make_rows(tokens: int, n_rows: int, vocab: int, seed: int, context: int = 4096) -> dict[str, Any]:
    """Packed rows as plain tensors (so any version of PackedBatch can be built from them)."""
    import numpy as np
    import torch

    rng = random.Random(seed)

    def draw() -> tuple[int, int]:
        p = min(context - 2, max(4, int(rng.lognormvariate(math.log(180), 1.0))))
        r = min(context - p, max(2, int(rng.lognormvariate(math.log(220), 1.1))))
        return p, r

    # best fit from a pool of drawn examples, like the multipack loader: rows come out nearly full
    pool = [draw() for _ in range(256)]
    rows = []
    for _ in range(n_rows):
        row, free = [], tokens
        while True:
            fits = [i for i, (p, r) in enumerate(pool) if p + r <= free]
            if not fits:
                break
            i = max(fits, key=lambda j: sum(pool[j]))
            row.append(pool.pop(i))
            free -= sum(row[-1])
            pool.append(draw())
        rows.append(row)
    # layout as data/batch.py documents it (positions restart per example, labels on the response)
    B = len(rows)
    out = {k: np.zeros((B, tokens), dtype=np.int64) for k in ("input_ids", "position_ids")}
    out["labels"] = np.full((B, tokens), -100, dtype=np.int64)
    out["doc_ids"] = np.full((B, tokens), -1, dtype=np.int32)
    out["is_prefix"] = np.zeros((B, tokens), dtype=np.bool_)
    nrng = np.random.default_rng(seed)
    for b, row in enumerate(rows):
        cur = 0
        for d, (p, r) in enumerate(row):
            n = p + r
            out["input_ids"][b, cur : cur + n] = nrng.integers(8, vocab, n)
            out["labels"][b, cur + p - 1 : cur + n - 1] = out["input_ids"][b, cur + p : cur + n]
            out["position_ids"][b, cur : cur + n] = np.arange(n)
            out["doc_ids"][b, cur : cur + n] = d
            out["is_prefix"][b, cur : cur + p] = True
            cur += n
        out["position_ids"][b, cur:] = np.arange(tokens - cur)
    return {k: torch.from_numpy(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# worker: one variant in its own process


def _classify(name: str) -> str:
    n = name.lower()
    if "flex" in n or n.startswith("triton_tem_fused") or "fmha" in n or "flash" in n or "attention" in n:
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "splitk", "f8f8")):
        return "matmul"
    if "adam_atan2" in n or "multi_tensor_apply" in n or "lerp" in n:
        return "optimizer_ema"
    if any(k in n for k in ("logsumexp", "argmax", "scatter_add", "nll_loss", "log_softmax", "cross_entropy")):
        return "loss"
    if n.startswith(("triton_poi", "triton_red", "triton_per")):
        return "fused_elementwise"  # norms, RoPE, gate, SwiGLU, residuals (forward and backward)
    if "memcpy" in n or "memset" in n or "copy" in n:
        return "copies"
    return "other_elementwise"


def _kernel_events(prof: Any) -> list[tuple[str, float]]:
    """(name, device ms) of every kernel event, each counted once. Left out: the profiler's
    "Command Buffer Full" entries (host waits) and the device-side spans of our `record_function`
    ranges (hrm::step and the like span whole phases: they are not kernels)."""
    from torch.autograd import DeviceType

    return [(evt.name, evt.self_device_time_total / 1e3) for evt in prof.events()
            if evt.device_type == DeviceType.CUDA and evt.name != "Command Buffer Full"
            and not getattr(evt, "is_user_annotation", False) and not evt.name.startswith("hrm::")]


def _profile_split(prof: Any) -> dict[str, float]:
    """Device time per kind of work (ms over the profiled steps), classified by kernel name (the
    head's matmuls count as matmuls)."""
    totals: dict[str, float] = {}
    for name, ms in _kernel_events(prof):
        c = _classify(name)
        totals[c] = totals.get(c, 0.0) + ms
    return totals


def _kernel_table(prof: Any, steps: int, top: int = 80) -> str:
    """The `top` kernels by device time: ms per step, launches per step, class, full name."""
    agg: dict[str, list[float]] = {}
    for name, ms in _kernel_events(prof):
        a = agg.setdefault(name, [0.0, 0])
        a[0] += ms
        a[1] += 1
    lines = [f"{'ms/step':>9} {'calls':>6}  {'class':<17} kernel"]
    for name, (ms, n) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{ms / steps:9.2f} {n / steps:6.0f}  {_classify(name):<17} {name[:220]}")
    return "\n".join(lines) + "\n"


def worker(args: argparse.Namespace) -> None:
    t_launch = float(os.environ["HRM_BENCH_LAUNCH"])
    faulthandler.dump_traceback_later(60, repeat=True)  # where a slow cold start spends its time

    def phase(what: str) -> None:
        print(f"PHASE {what} {time.time() - t_launch:.1f}s", flush=True)

    sys.path.insert(0, args.src)
    import torch

    from hrm_text.config import Config, model_config
    from hrm_text.data.batch import PackedBatch
    from hrm_text.model.lm import HRMTextLM
    from hrm_text.train.optim import AdamAtan2, ModelEMA

    try:  # this tree: the trainer's own step
        from hrm_text.train import step as step_mod
    except ImportError:  # the previous release: its trainer's recipe, written out
        step_mod = None
    phase(f"imported (inductor compile_threads={torch._inductor.config.compile_threads})")
    opts = json.loads(args.opts)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun (--gpus N): one process per GPU
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")  # cpu: smoke runs
    extra = {"n_layers": args.layers} if args.layers else {}
    mcfg = model_config(args.preset, arch=args.arch, max_seq_len=max(4096, args.tokens), **extra)
    cfg = Config(model=mcfg)
    for k, v in opts.items():  # a train.* setting, or a model-level one of this release (attn_backend)
        if k.startswith("inductor."):  # a compiler setting, e.g. inductor.triton.multi_kernel=1
            *path, leaf = k.split(".")[1:]
            node: Any = torch._inductor.config
            for p in path:
                node = getattr(node, p, None)
            if node is None or not hasattr(node, leaf):
                raise SystemExit(f"variant option {k!r}: torch._inductor.config has no such setting")
            setattr(node, leaf, v)
        elif hasattr(cfg.train, k):
            setattr(cfg.train, k, v)
        elif hasattr(mcfg, k):
            setattr(mcfg, k, v)
        else:
            raise SystemExit(f"variant option {k!r} is neither a train nor a model setting of {args.src}")
    torch.manual_seed(0)
    with torch.device(dev):
        model = HRMTextLM(mcfg)
    if hasattr(model, "set_attn_backend"):  # a run-time choice since the config split (train.attn_backend)
        model.set_attn_backend(getattr(cfg.train, "attn_backend", "auto"))
    keep = world > 1 and getattr(cfg.train, "fsdp_keep_gathered", False)  # absent in older releases
    if world > 1:  # the trainer's FSDP2 wrapping (bf16 compute, fp32 master), before compile
        from hrm_text.train.distributed import apply_fsdp2

        if keep:  # this tree only
            from hrm_text.train.distributed import reshard_all
        apply_fsdp2(model, model.blocks(), mp_dtype=torch.bfloat16 if dev.type == "cuda" else None,
                    reshard_after_forward=cfg.train.fsdp_reshard_after_forward, **({"keep_gathered": True} if keep else {}))
    if step_mod is not None:
        step_mod.prepare_model(model, cfg.train, dev)
    elif cfg.train.compile:
        for blk in model.blocks():
            blk.compile()
    phase("model built and prepared")
    opt = AdamAtan2(model.parameters(), lr=2.2e-4)
    ema = ModelEMA(model, decay=0.9999)
    rows = torch.load(args.rows_file)
    fields = set(PackedBatch.__dataclass_fields__)
    batches = []
    for i in range(rank, rows["input_ids"].shape[0], world):  # each rank its own rows
        b = PackedBatch(**{k: v[i : i + 1] for k, v in rows.items() if k in fields})
        if hasattr(b, "with_loss_index"):
            b = b.with_loss_index()
        batches.append((b.pin_memory() if dev.type == "cuda" else b, int((b.doc_ids >= 0).sum()), int((b.labels != -100).sum())))
    K = args.K
    bf16 = dev.type == "cuda"

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(i: int) -> tuple[torch.Tensor, int]:
        with torch.profiler.record_function("hrm::step"):
            cpu, real, n_loss = batches[i % len(batches)]
            b = cpu.to(dev, non_blocking=True)
            if step_mod is not None:
                with torch.profiler.record_function("hrm::forward_backward"):
                    out = step_mod.forward_backward(model, b, K, float(n_loss), bf16, cfg.train.recompute_calls)
                loss = out.loss_sum
            else:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model.loss(b, bp_steps=K)
                (out.loss_sum / n_loss).backward()
                loss = out.loss_sum.detach()
            if keep:  # as the trainer does: the next forward gathers the updated weights
                reshard_all(model)
            with torch.profiler.record_function("hrm::optimizer"):
                if hasattr(opt, "step_with_ema"):  # the EMA folded into the optimizer's pass (this tree)
                    opt.step_with_ema(ema, model)
                else:
                    opt.step()
                    ema.update(model)
                opt.zero_grad(set_to_none=True)
            return loss / n_loss, real

    res: dict[str, Any] = {"variant": args.name, "src": args.src, "opts": opts}
    t_ready = time.time()
    res["setup_s"] = round(t_ready - t_launch, 1)
    losses = []
    for i in range(3):
        loss, _ = step(i)
        losses.append(float(loss))
        sync()
        phase(f"step {i + 1} done")
        if i == 0:
            res["cold_start_s"] = round(time.time() - t_launch, 1)  # launch -> first optimizer step done
    res["launch_to_step3_s"] = round(time.time() - t_launch, 1)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, reals = [], []
    for i in range(3, 3 + args.steps):
        t0 = time.perf_counter()
        loss, real = step(i)
        losses.append(float(loss))  # reads the loss: the step is finished on the device
        sync()
        times.append(time.perf_counter() - t0)
        reals.append(real)
    if dev.type == "cuda":
        res["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        res["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    res["step_s_median"] = round(sorted(times)[len(times) // 2], 4)
    res["tokens_per_s"] = round(sum(reals) / sum(times), 1)  # this rank's (= per GPU)
    res["gpus"] = world
    if world > 1:  # slowest rank's time sets the pace; total = sum over ranks
        import torch.distributed as dist

        tot = torch.tensor([float(sum(reals)), sum(times)], dtype=torch.float64, device=dev)
        mx = tot.clone()
        dist.all_reduce(tot)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        res["tokens_per_s_total"] = round(float(tot[0]) / float(mx[1]), 1)
        res["tokens_per_s"] = round(res["tokens_per_s_total"] / world, 1)
    res["losses"] = [round(x, 5) for x in losses]
    phase("timed steps done")
    faulthandler.cancel_dump_traceback_later()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(2):
                step(100 + i)
            sync()
        split = {k: round(v / 2, 2) for k, v in sorted(_profile_split(prof).items(), key=lambda kv: -kv[1])}
        res["profile_ms_per_step"] = split
        if args.trace_dir:
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
            Path(args.trace_dir, f"profile_{args.name}.txt").write_text(table)
            Path(args.trace_dir, f"kernels_{args.name}.txt").write_text(_kernel_table(prof, 2))
    try:
        from torch._dynamo.utils import compile_times

        res["compile_times"] = compile_times(repr="str")[-2000:]
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    if rank == 0:
        print("RESULT " + json.dumps(res), flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# driver


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        try:
            opts[k] = json.loads(v)  # numbers, true/false
        except json.JSONDecodeError:
            opts[k] = v  # a bare word: a string setting (attn_backend=varlen, fp8_recipe=rowwise)
    return name, opts


def matmul_rate() -> float:
    """Measured bf16 matmul rate (FLOP/s), 8192^3 on random data, median of do_bench."""
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return 2 * 8192**3 / (ms / 1e3)


def run_variant(args: argparse.Namespace, name: str, src: str, opts: dict[str, Any], rows: Path, out: Path) -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix=f"inductor_{name}_")  # fresh: the cold start is measured
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
               HRM_BENCH_LAUNCH=repr(time.time()), PYTHONUNBUFFERED="1")
    launch = [sys.executable]
    if args.gpus > 1:  # NVLink multicast stays off (the device machines' rule; NCCL otherwise may use it)
        env.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.gpus)]
    cmd = [*launch, __file__, "--worker", "--name", name, "--src", src, "--opts", json.dumps(opts),
           "--rows-file", str(rows), "--preset", args.preset, "--arch", args.arch, "--K", str(args.K),
           "--tokens", str(args.tokens), "--steps", str(args.steps), "--trace-dir", str(out)]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    if args.profile:
        cmd.append("--profile")
    log_path = out / f"log_{name}.txt"
    with open(log_path, "w") as log:  # streamed, so a variant that runs out of time still shows where
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            p.wait(timeout=args.variant_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    text = log_path.read_text()
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    phases = [ln for ln in text.splitlines() if ln.startswith("PHASE ")]
    why = f"timed out after {args.variant_timeout} s" if p.returncode in (-9, None) else f"exit {p.returncode}"
    return {"variant": name, "error": why, "phases": phases[-3:], "tail": text.strip().splitlines()[-3:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="XL")
    ap.add_argument("--arch", default="hrm")
    ap.add_argument("--layers", type=int, default=None, help="total layers instead of the preset's (quick checks)")
    ap.add_argument("--K", type=int, default=5, help="recorded stack calls (deep credit assignment)")
    ap.add_argument("--tokens", type=int, default=12288, help="tokens per packed row (one micro-step)")
    ap.add_argument("--rows", type=int, default=4, help="distinct rows cycled through")
    ap.add_argument("--steps", type=int, default=8, help="timed steps after 3 warm-up steps")
    ap.add_argument("--variant", action="append", default=[], help="NAME[:key=value,...] of this tree")
    ap.add_argument("--baseline-commit", default=None)
    ap.add_argument("--baseline-src", default=None)
    ap.add_argument("--baseline-opts", default="", help="key=value,... settings of the baseline (e.g. fp8=true)")
    ap.add_argument("--profile", action="store_true", help="split two steps' kernel time by kind of work")
    ap.add_argument("--gpus", type=int, default=1,
                    help="GPUs (torchrun, FSDP2, one row per GPU per step); with N > 1 each variant also runs "
                         "on 1 GPU for the scaling efficiency (per-GPU tokens/s over 1-GPU tokens/s)")
    ap.add_argument("--variant-timeout", type=int, default=480)
    ap.add_argument("--out", default="train_throughput_out")
    # worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--src", default="", help=argparse.SUPPRESS)
    ap.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--trace-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rows-file", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from hrm_text.config import model_config
    from hrm_text.model.flops import train_flops_per_token

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"n_layers": args.layers} if args.layers else {}
    cfg = model_config(args.preset, arch=args.arch, max_seq_len=max(4096, args.tokens), **extra)
    rows_path = Path(tempfile.mkdtemp(prefix="hrm_rows_")) / "rows.pt"  # not under OUT: only results travel back
    torch.save(make_rows(args.tokens, max(args.rows, args.rows * args.gpus), cfg.vocab_size, seed=0), rows_path)

    variants: list[tuple[str, str, dict[str, Any]]] = []
    base_src = args.baseline_src
    if args.baseline_commit and not base_src:
        wt = Path(tempfile.mkdtemp(prefix="hrm_baseline_"))
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), args.baseline_commit], check=True)
        base_src = str(wt / "src")
    if base_src:
        variants.append(("baseline", base_src, parse_variant("baseline:" + args.baseline_opts)[1]))
    for spec in args.variant or ["new"]:
        name, opts = parse_variant(spec)
        src = opts.pop("src", None)  # another release's src folder (a second baseline)
        variants.append((name, str(Path(src).resolve()) if src else str(REPO / "src"), opts))

    flops_tok = train_flops_per_token(cfg, args.K)
    flops_tok_head = train_flops_per_token(cfg, args.K, include_head=True)
    results = []
    if args.gpus > 1:  # the 1-GPU reference of each variant, same shape and rows
        variants = [(f"{n}@1gpu", s_, o) for n, s_, o in variants] + [(f"{n}@{args.gpus}gpu", s_, o) for n, s_, o in variants]
    for name, src, opts in variants:
        print(f"== {name} ({src}) {opts}", flush=True)
        saved_gpus = args.gpus
        if name.endswith("@1gpu"):
            args.gpus = 1
        r = run_variant(args, name, src, opts, rows_path, out)
        args.gpus = saved_gpus
        if "tokens_per_s" in r:
            tps = r["tokens_per_s"]
            r["model_tflops"] = round(tps * flops_tok / 1e12, 1)
            r["mfu_989"] = round(tps * flops_tok / 989e12, 4)
            r["mfu_989_with_head"] = round(tps * flops_tok_head / 989e12, 4)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "compile_times"}), flush=True)
    # after the variants: this process's CUDA context and cached blocks (1.3 GB) would otherwise
    # sit on the GPU while they run and move their out-of-memory edge
    rate = matmul_rate()
    for r in results:
        if "tokens_per_s" in r:
            r["mfu_measured_matmul"] = round(r["tokens_per_s"] * flops_tok / rate, 4)
    for r in results:  # scaling efficiency: per-GPU rate on N GPUs over the same variant on 1
        if r["variant"].endswith(f"@{args.gpus}gpu") and args.gpus > 1 and "tokens_per_s" in r:
            one = next((x for x in results if x["variant"] == r["variant"].replace(f"@{args.gpus}gpu", "@1gpu")), {})
            if "tokens_per_s" in one:
                r["scaling_efficiency"] = round(r["tokens_per_s"] / one["tokens_per_s"], 3)
    base = next((r for r in results if r["variant"].startswith("baseline") and "tokens_per_s" in r), None)
    for r in results:
        if base and "tokens_per_s" in r:
            r["speedup_vs_baseline"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
    summary = {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "preset": args.preset, "arch": args.arch, **extra, "K": args.K, "tokens_per_row": args.tokens,
        "real_tokens_per_row": [int((r >= 0).sum()) for r in torch.load(rows_path)["doc_ids"]],
        "measured_bf16_matmul_tflops": round(rate / 1e12, 1), "command": " ".join(sys.argv), "results": results,
    }
    (out / "train_throughput.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['device']}, {args.preset}{' ' + str(args.layers) + ' layers' if args.layers else ''}, K={args.K}, "
          f"{args.tokens}-token rows, matmul {summary['measured_bf16_matmul_tflops']} TFLOP/s measured")
    print("| variant | tokens/s per GPU | x baseline | model TFLOP/s | MFU (989) | MFU (measured mm) | peak GB | cold start s | scaling |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "tokens_per_s" not in r:
            print(f"| {r['variant']} | {r.get('error')} |")
            continue
        print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r.get('speedup_vs_baseline', '')} | {r['model_tflops']} | "
              f"{r['mfu_989']:.3f} | {r['mfu_measured_matmul']:.3f} | {r.get('peak_mem_gb', '')} | {r['cold_start_s']} | "
              f"{r.get('scaling_efficiency', '')} |")
    for r in results:
        if "profile_ms_per_step" in r:
            print(f"profile {r['variant']} (ms/step): {r['profile_ms_per_step']}")


if __name__ == "__main__":
    main()
