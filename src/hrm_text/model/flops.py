"""Parameter counts and the paper's FLOPs accounting (docs/ARCHITECTURE.md#flops-accounting), from the
config alone.

Paper's rule: a stack call costs 2 * N_call FLOPs per token forward and 4 * N_call backward, where
N_call is the non-embedding parameter count of the stack called. Only recorded calls (deep credit
assignment) run backward. A dense Transformer is the one-call case: 6 * N per token.
The output head (hidden x vocab) and the attention score FLOPs are not in the paper's count; they
are available separately (`include_head`, `seq_len`) so MFU can be reported either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrm_text.config import ModelConfig, TrainConfig
from hrm_text.model.schedule import build_schedule


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # everything except the input embedding and the output head

    def __str__(self) -> str:
        return f"{self.total / 1e6:,.1f}M total, {self.non_embedding / 1e6:,.1f}M non-embedding"


def block_params(cfg: ModelConfig) -> int:
    d, inner, inter = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size
    return d * 4 * inner + inner * d + d * 2 * inter + inter * d


def stack_params(cfg: ModelConfig) -> dict[str, int]:
    sched = build_schedule(cfg)
    return {name: n * block_params(cfg) for name, n in sched.stacks.items()}


def count_params(cfg: ModelConfig) -> ParamCount:
    """Trainable parameters (z_L_init is a fixed buffer, not counted)."""
    emb = cfg.padded_vocab_size * cfg.hidden_size
    non_emb = sum(stack_params(cfg).values())
    return ParamCount(total=non_emb + 2 * emb, non_embedding=non_emb)


def _attention_flops_per_call(cfg: ModelConfig, n_layers: int, seq_len: int) -> float:
    # QK^T and AV: 2 matmuls * 2 FLOPs * seq_len * inner per token per layer (full, unmasked context)
    return 4.0 * seq_len * cfg.num_heads * cfg.head_dim * n_layers


def forward_flops_per_token(cfg: ModelConfig, include_head: bool = False, seq_len: int | None = None) -> float:
    """Forward FLOPs per token: every stack call runs forward (inference cost, e.g. for decode MFU)."""
    sched = build_schedule(cfg)
    per_stack = stack_params(cfg)
    total = 0.0
    for call in sched.calls:
        total += 2.0 * per_stack[call.stack]
        if seq_len:
            total += _attention_flops_per_call(cfg, sched.stacks[call.stack], seq_len)
    if include_head:
        total += 2.0 * cfg.hidden_size * cfg.padded_vocab_size
    return total


def train_flops_per_token(cfg: ModelConfig, bp_steps: int | None = None, include_head: bool = False, seq_len: int | None = None) -> float:
    """Training FLOPs per token with K = `bp_steps` recorded calls, as the model's forward reads it
    (None: every call recorded; the K of a training run: TrainConfig.final_bp_steps)."""
    sched = build_schedule(cfg)
    per_stack = stack_params(cfg)
    recorded = sched.recorded(bp_steps)
    total = 0.0
    for call, rec in zip(sched.calls, recorded):
        mult = 6.0 if rec else 2.0
        total += mult * per_stack[call.stack]
        if seq_len:
            total += mult / 2.0 * _attention_flops_per_call(cfg, sched.stacks[call.stack], seq_len)
    if include_head:
        total += 6.0 * cfg.hidden_size * cfg.padded_vocab_size
    return total


def run_flops(cfg: ModelConfig, tokens: float, train: TrainConfig | None = None, include_head: bool = False) -> float:
    """Total training FLOPs for `tokens`, following the K warm-up of `train` (K averaged over training
    progress; None: TrainConfig's defaults, the paper's schedule)."""
    t = train if train is not None else TrainConfig()
    ratio = 0.0 if t.full_bp_from_start else t.bp_warmup_ratio
    if cfg.arch not in ("hrm", "trm") or ratio <= 0:
        return tokens * train_flops_per_token(cfg, t.final_bp_steps(cfg.arch), include_head)
    # progress p in [0, 1]; K(p) = bp_min + int(min(1, p/ratio) * (bp_max - bp_min)); integrate exactly
    span = t.bp_max_steps - t.bp_min_steps
    total = 0.0
    if span == 0:
        return tokens * train_flops_per_token(cfg, t.bp_min_steps, include_head)
    for j in range(span):  # K = bp_min + j holds for progress in [ratio*j/span, ratio*(j+1)/span)
        total += ratio / span * train_flops_per_token(cfg, t.bp_min_steps + j, include_head)
    total += (1.0 - ratio) * train_flops_per_token(cfg, t.bp_max_steps, include_head)
    return tokens * total
