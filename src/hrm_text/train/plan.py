"""`hrm-text plan`: what a pretraining run will cost before it starts (FLOPs, hours, dollars, memory).

FLOPs come from the paper's accounting (`hrm_text.model.flops.run_flops`, following the K warm-up).
Hours come from a *throughput table* of measured tokens/s per GPU, one entry per (preset, GPU) and
precision (bf16, FP8), each with the source of its number (benchmarks/train_throughput.py runs).
The paper-derived XL/H100 figure, 60e9 tokens / (46 h x 16 GPUs) = 22.6k tokens/s/GPU (about 38%
MFU against 989 TFLOP/s dense bf16), is kept as `PAPER_DERIVED` for comparison.
- every (preset, GPU) pair without a measurement is *estimated* at that 38% MFU of the datasheet peak:
  tokens/s/GPU = 0.38 x peak / (model FLOPs per token). Small presets will in practice reach a
  lower MFU (less work per kernel), so treat those estimates as optimistic.

Memory per rank assumes FSDP2 over all `gpus` (fp32 master weights, fp32 grads, fp32 Adam moments
and fp32 EMA, all sharded), bf16 compute with `torch.compile`, nothing recomputed, and the fused
chunked loss; see `memory_per_rank` for the terms. At XL on one GPU it comes within 4% of the
measured peaks (8,192- and 12,288-token rows; tests/unit/test_train_plan.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hrm_text.config import ConfigError, DataConfig, ModelConfig, PRESETS, TrainConfig, model_config
from hrm_text.model.flops import block_params, count_params, run_flops
from hrm_text.model.loss import CHUNK_ROWS
from hrm_text.train.metrics import PEAK_FLOPS_BF16

GiB = 1024**3

# GPU kinds the planner knows: datasheet dense-bf16 peak (from metrics.PEAK_FLOPS_BF16) and memory.
GPUS: dict[str, dict[str, float]] = {
    "H100": {"peak": 989e12, "memory": 80 * GiB},
    "H200": {"peak": 989e12, "memory": 141 * GiB},
    "A100": {"peak": 312e12, "memory": 80 * GiB},
    "B200": {"peak": 2250e12, "memory": 180 * GiB},
}
assert all(any(k == name for k, _, _ in PEAK_FLOPS_BF16) for name in GPUS)

# train.activation_memory_budget that fits bf16 XL at 12,288-token rows in 80 GB, fastest there: the
# compiler recomputes element-wise work only (71 GB with the bf16 weight cache and bf16 states; 0.9 and 0.95
# chose the same recomputation there; docs/PERFORMANCE.md)
FITTING_BUDGET = 0.8
ESTIMATE_MFU = 0.38  # the paper-derived XL/H100 MFU, used for every entry without a measurement


@dataclass(frozen=True)
class Throughput:
    tokens_per_s_per_gpu: float
    source: str


# Measured throughput, tokens/s per GPU, by (preset, gpu), one table per precision. Each source
# says which script, machine and date produced it (docs/PERFORMANCE.md has the full runs).
THROUGHPUT_TABLE: dict[tuple[str, str], Throughput] = {
    ("XL", "H200"): Throughput(
        22636.0,
        "measured: benchmarks/train_throughput.py, 1 H200, K=5, 12,288-token rows, bf16 with the "
        "weight cache and bf16 states, no activation budget (88.2 GB), one run, 2026-12-07",
    ),
    ("XL", "H100"): Throughput(
        22024.6,
        "measured: benchmarks/train_throughput.py, 1 H100, K=5, 12,288-token rows, bf16 with the "
        "weight cache, bf16 states and train.activation_memory_budget=0.8 (71.1 GB; without the "
        "budget 12,288 needs about 88 GB), one run, 2026-12-07 (float32 states: 21,211-21,713)",
    ),
}
FP8_THROUGHPUT_TABLE: dict[tuple[str, str], Throughput] = {
    ("XL", "H200"): Throughput(
        26132.0,
        "measured: benchmarks/train_throughput.py, 1 H200, K=5, 12,288-token rows, train.fp8 with "
        "train.fp8_recipe=fused_lowmem and the other defaults (bf16 states), 71.1 GB peak, one "
        "run, 2026-12-07",
    ),
    ("XL", "H100"): Throughput(
        25698.2,
        "measured: benchmarks/train_throughput.py, 1 H100, K=5, 12,288-token rows, train.fp8 with "
        "train.fp8_recipe=fused_lowmem and the other defaults (bf16 states; fits 80 GB without "
        "recomputation), 71.1 GB peak, one run, 2026-12-07 (float32 states: 24,737-25,040)",
    ),
}
PAPER_DERIVED = Throughput(
    60e9 / (46 * 3600 * 16),
    "paper-derived: 60B tokens in 46 h on 16 H100 (docs/ARCHITECTURE.md#paper-results-and-cost), about 38% MFU",
)


def throughput_for(preset: str, gpu: str, model_cfg: ModelConfig | None = None, fp8: bool = False) -> Throughput:
    """The measured entry if there is one (FP8 table with `fp8`), else an estimate at `ESTIMATE_MFU`
    of the datasheet peak (for FP8 without a measurement: the bf16 figure, the conservative choice)."""
    gpu = _check_gpu(gpu)
    if fp8:
        hit = FP8_THROUGHPUT_TABLE.get((preset, gpu))
        if hit is not None:
            return hit
        bf = throughput_for(preset, gpu, model_cfg)
        return Throughput(bf.tokens_per_s_per_gpu, f"no FP8 measurement for {preset} on {gpu}; the bf16 figure: {bf.source}")
    hit = THROUGHPUT_TABLE.get((preset, gpu))
    if hit is not None:
        return hit
    cfg = model_cfg or model_config(preset)
    per_token = _avg_flops_per_token(cfg)
    peak = GPUS[gpu]["peak"]
    return Throughput(
        ESTIMATE_MFU * peak / per_token,
        f"estimated: {ESTIMATE_MFU:.0%} MFU (the paper-derived XL/H100 figure) of {gpu} datasheet "
        f"{peak / 1e12:.0f} TFLOP/s dense bf16 / {per_token / 1e9:.2f} GFLOP per token; not measured",
    )


def _check_gpu(gpu: str) -> str:
    for name in GPUS:
        if name.lower() == gpu.lower():
            return name
    raise ConfigError(f"unknown GPU {gpu!r}; choose one of {', '.join(GPUS)}")


def _avg_flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token averaged over the K warm-up (what a whole run costs per token)."""
    return run_flops(cfg, 1.0)


@dataclass(frozen=True)
class MemoryEstimate:
    tokens_per_rank: int  # tokens in one micro-batch on one rank
    grad_accum_steps: int
    sharded_states_bytes: float  # fp32 params + grads + Adam m, v + EMA, divided over ranks
    gathered_params_bytes: float  # bf16 weight copies: FSDP's gathered root + 2 blocks, or one GPU's weight cache
    activation_bytes: float  # saved for backward by the K recorded stack calls
    logits_bytes: float  # one chunk of the fused head + loss (model/loss.py), transient
    total_bytes: float
    device_bytes: float

    @property
    def fits(self) -> bool:
        return self.total_bytes <= 0.92 * self.device_bytes  # leave room for allocator fragmentation


def activation_bytes_per_token_per_layer(cfg: ModelConfig, bf16_states: bool) -> float:
    """What one compiled block saves for backward, per token, under bf16 autocast: bf16 GEMM inputs
    of width h (4), q, k, v, the attention output and the gate (5 inner), gate|up and the down
    projection's input (3 I); the residual sums that feed the post-norms (2 h), float32 with
    float32 states; the per-row norm and attention statistics are negligible. These are the tensors
    that saved-tensor hooks find on the compiled block (benchmarks/saved_activations.py; XL width,
    flex, H100): 64.5 KB per token per layer call by this formula with float32 states, 74 KB
    counting whole storages (some are views of larger buffers), and the measured peak grows by
    about 69 KB per token per recorded layer call between 8,192- and 12,288-token rows.
    With `train.bf16_states` (the default) the block saves 2 h bytes fewer: XL at 12,288-token
    rows peaked at 88.2 GB instead of 91.2 GB on an H200 (docs/PERFORMANCE.md, 2026-12-07), 3.05 KB
    per token per recorded layer call, against 2 h = 3.07 KB."""
    h, inner, inter = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size
    return 2.0 * (4 * h + 5 * inner + 3 * inter) + 4.0 * (2 * h) - (2.0 * h if bf16_states else 0.0)


def sharded_state_bytes(cfg: ModelConfig, gpus: int = 1) -> float:
    """float32 weights, gradients, Adam's two moments and the EMA, divided over `gpus` FSDP ranks:
    what training holds per rank before any activation."""
    return count_params(cfg).total * (4 + 4 + 8 + 4) / gpus


def memory_per_rank(cfg: ModelConfig, gpus: int, gpu: str | None, tokens_per_rank: int, grad_accum_steps: int = 1,
                    bp_steps: int | None = None, device_bytes: float | None = None,
                    bf16_states: bool | None = None) -> MemoryEstimate:
    """Peak memory one rank needs (estimate; see the module docstring for the assumptions), on the
    datasheet memory of `gpu`, or on `device_bytes` (the memory of the GPU at hand; `gpu` None);
    `bf16_states` as `train.bf16_states` (None: its default)."""
    if device_bytes is None:
        device_bytes = GPUS[_check_gpu(gpu or "")]["memory"]
    params = count_params(cfg)
    states = sharded_state_bytes(cfg, gpus)
    emb = params.total - params.non_embedding  # input embedding + head, in FSDP's root unit
    # bf16 weight copies: under FSDP the gathered root and two blocks at a time; on one GPU the
    # weight cache (train/projections.py) holds every block weight in bf16 for the micro-step
    gathered = 2.0 * (emb + (2 * block_params(cfg) if gpus > 1 else params.non_embedding))
    K = TrainConfig().final_bp_steps(cfg.arch) if bp_steps is None else bp_steps  # the paper's steady K
    layers_per_call = max(1, cfg.half_layers if cfg.arch in ("hrm", "trm", "rins") else cfg.n_layers)
    recorded_calls = _recorded_calls(cfg, K)
    bf16_states = TrainConfig().bf16_states if bf16_states is None else bf16_states
    acts = tokens_per_rank * recorded_calls * layers_per_call * activation_bytes_per_token_per_layer(cfg, bf16_states)
    # one chunk of logits at a time (bf16 GEMM output, float32 softmax and its gradient), freed after
    logits = min(tokens_per_rank, CHUNK_ROWS) * cfg.padded_vocab_size * (2 + 4 + 4)
    total = states + gathered + acts + logits
    return MemoryEstimate(tokens_per_rank, grad_accum_steps, states, gathered, acts, logits, total, device_bytes)


def _recorded_calls(cfg: ModelConfig, K: int) -> int:
    from hrm_text.model.schedule import build_schedule

    return sum(build_schedule(cfg).recorded(K))


@dataclass(frozen=True)
class PlanResult:
    preset: str
    gpu: str
    gpus: int
    tokens: float
    price_per_gpu_hour: float
    params_total: int
    params_non_embedding: int
    flops_per_token: float  # averaged over the K warm-up
    total_flops: float
    throughput: Throughput  # per GPU
    hours: float
    gpu_hours: float
    dollars: float
    implied_mfu: float  # throughput x FLOPs/token / datasheet peak
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Plain-text report for the CLI."""
        m = self.memory
        lines = [
            f"plan: {self.preset} on {self.gpus} x {self.gpu}, {self.tokens:.3g} tokens",
            f"  parameters      {self.params_total / 1e9:.3f}B total, {self.params_non_embedding / 1e9:.3f}B non-embedding",
            f"  FLOPs           {self.total_flops:.3e} ({self.flops_per_token / 1e9:.2f} GFLOP/token, paper's accounting)",
            f"  throughput      {self.throughput.tokens_per_s_per_gpu:,.0f} tokens/s per GPU ({self.throughput.source})",
            f"  implied MFU     {100 * self.implied_mfu:.1f}% of {GPUS[self.gpu]['peak'] / 1e12:.0f} TFLOP/s (datasheet dense bf16)",
            f"  time            {self.hours:,.1f} h ({self.gpu_hours:,.0f} GPU-hours)",
            f"  cost            ${self.dollars:,.0f} at ${self.price_per_gpu_hour:g}/GPU-hour",
            f"  memory per rank {m.total_bytes / GiB:,.1f} GiB of {m.device_bytes / GiB:.0f} GiB "
            f"({'fits' if m.fits else 'DOES NOT FIT'}): states {m.sharded_states_bytes / GiB:.1f}, "
            f"gathered params {m.gathered_params_bytes / GiB:.1f}, activations {m.activation_bytes / GiB:.1f}, "
            f"logits {m.logits_bytes / GiB:.1f} GiB; {m.tokens_per_rank:,} tokens/rank x {m.grad_accum_steps} accumulation",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan(
    preset: str,
    tokens: float,
    gpus: int,
    price: float,
    gpu: str = "H100",
    *,
    global_batch_tokens: int | None = None,
    tokens_per_rank: int | None = None,
    model_cfg: ModelConfig | None = None,
    fp8: bool = False,
) -> PlanResult:
    """Predict FLOPs, wall hours, dollars and per-rank memory of a pretraining run.

    `global_batch_tokens` defaults to TrainConfig's (196,608, the XL run); the micro-batch per rank
    is the global batch split over the GPUs, capped at `tokens_per_rank` (DataConfig's 16,384),
    with gradient accumulation making up the rest.
    """
    if preset not in PRESETS and model_cfg is None:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not tokens > 0:
        raise ConfigError(f"--tokens must be > 0 (got {tokens})")
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1 (got {gpus})")
    if price < 0:
        raise ConfigError(f"--price must be >= 0 (got {price})")
    gpu = _check_gpu(gpu)
    cfg = model_cfg or model_config(preset)
    params = count_params(cfg)
    total_flops = run_flops(cfg, tokens)
    per_token = total_flops / tokens
    tp = throughput_for(preset, gpu, cfg, fp8=fp8)
    hours = tokens / (tp.tokens_per_s_per_gpu * gpus) / 3600.0
    gpu_hours = hours * gpus
    gbt = int(global_batch_tokens or TrainConfig().global_batch_tokens)
    cap = int(tokens_per_rank or DataConfig().tokens_per_rank)
    per_rank_needed = math.ceil(gbt / gpus)
    accum = max(1, math.ceil(per_rank_needed / cap))
    micro = math.ceil(per_rank_needed / accum)
    mem = memory_per_rank(cfg, gpus, gpu, micro, accum)
    notes = []
    if fp8:
        notes.append("the memory estimate is bf16's: train.fp8 holds less (XL at 12,288-token rows: 71.1 GB on an H100, measured)")
    elif not mem.fits:
        notes.append(f"estimated memory (bf16, nothing recomputed) exceeds the device: set train.activation_memory_budget={FITTING_BUDGET} "
                     "(the compiler recomputes element-wise work; XL at 12,288-token rows: 71 GB on an H100), "
                     "lower data.tokens_per_rank (more accumulation) or use more GPUs")
    if (preset, gpu) not in (FP8_THROUGHPUT_TABLE if fp8 else THROUGHPUT_TABLE):
        notes.append("throughput is an estimate, not a measurement: run benchmarks/ and add the result to THROUGHPUT_TABLE")
    return PlanResult(
        preset=preset, gpu=gpu, gpus=gpus, tokens=float(tokens), price_per_gpu_hour=float(price),
        params_total=params.total, params_non_embedding=params.non_embedding,
        flops_per_token=per_token, total_flops=total_flops, throughput=tp,
        hours=hours, gpu_hours=gpu_hours, dollars=gpu_hours * price,
        implied_mfu=tp.tokens_per_s_per_gpu * per_token / GPUS[gpu]["peak"],
        memory=mem, notes=notes,
    )


__all__ = [
    "ESTIMATE_MFU", "FITTING_BUDGET", "GPUS", "MemoryEstimate", "PlanResult", "THROUGHPUT_TABLE", "Throughput",
    "activation_bytes_per_token_per_layer", "memory_per_rank", "plan", "sharded_state_bytes", "throughput_for",
]
