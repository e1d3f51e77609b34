"""The training step's pieces shared by the trainer and `benchmarks/train_throughput.py`.

    prepare_model(model, train_cfg, device)      float8 swap, activation memory, per-block compile
    out = forward_backward(model, batch, K, denom, ...)   one micro-step: loss and backward

The speed levers live here, each a `train.*` setting (docs/PERFORMANCE.md has the measurements):
- `compile`: every Block is compiled on its own (`Block.compile()`); all blocks share one graph,
  since dynamo treats their parameters as inputs, so compile time does not grow with depth.
  `multi_kernel` (default on): inductor builds each row reduction both looped and whole-row and
  keeps the faster at its first run; those graphs skip inductor's compile cache (torch 2.11
  failed to load them from it).
- `fp8` (+ `fp8_recipe`): float8 training of the block projections (train/fp8.py: float8 forward
  and input-gradient GEMMs, row-wise scales whose casts fuse into the neighbouring kernels under
  compile; or one of torchao's recipes). The output head stays bf16. With our recipes on one
  process, `fp8_weight_cache` quantizes each weight once per micro-step, not at each of HRM's
  calls, and `fused_wgrad` adds weight gradients into `.grad` inside the GEMM.
- `bf16_weight_cache` (bf16 on one GPU, without float8): the same two savings for the bf16 block
  projections (train/projections.py): each float32 master weight is cast to bf16 once per
  micro-step instead of at each call, forward and backward.
- `bf16_states` (default on): the recurrent states (residual stream) in bf16 under autocast instead of float32.
- `activation_memory_budget` < 1: inductor's partitioner recomputes the cheapest activations in
  the backward until the saved ones fit that fraction (pointwise work first).
- `recompute_calls` = N: the first N recorded stack calls keep only their input and run again in
  the backward (activation checkpointing per stack call). The recomputation hands backward a
  stand-in for each parameter; the fused accumulation finds the parameter behind it
  (train/projections.py).
"""

from __future__ import annotations

import logging

import torch
from torch.distributed.tensor import DTensor

from hrm_text.config import FP8_RECIPES, ConfigError, TrainConfig
from hrm_text.data.batch import PackedBatch
from hrm_text.model.attention import backend_unavailable
from hrm_text.model.lm import HRMTextLM, LossOutput
from hrm_text.train.fp8 import FUSED_RECIPES, convert_to_float8
from hrm_text.train.projections import (cache_weights, convert_to_bf16_cached, drop_weight_cache, enable_fused_wgrad,
                                        enable_weight_cache)

log = logging.getLogger(__name__)


def float8_gemms(device: torch.device) -> bool:
    """Whether `device` runs float8 matmuls (CUDA compute capability 8.9+: H100, H200, L40S, ...)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)


def apply_fp8(model: HRMTextLM, recipe: str = TrainConfig.fp8_recipe) -> int:
    """Swap the block projections to float8 training linears; returns how many. The head
    (65k-wide, run on labelled rows only by the fused loss) stays in bf16."""
    if recipe not in FP8_RECIPES:
        raise ConfigError(f"train.fp8_recipe={recipe!r} is not one of {', '.join(FP8_RECIPES)}")
    if not float8_gemms(torch.device("cuda")):
        raise ConfigError("train.fp8=true needs a GPU with float8 matmuls (compute capability 8.9+: H100, H200, L40S, ...)")
    if recipe in FUSED_RECIPES:  # ours
        return convert_to_float8(model, **FUSED_RECIPES[recipe])
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # optional extra `fp8`
    except ImportError as e:
        raise ConfigError(f"train.fp8_recipe={recipe} needs torchao: pip install 'hrm-text[fp8]'") from e
    before = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe),
                               module_filter_fn=lambda mod, fqn: fqn != "lm_head")
    after = sum(type(m) is torch.nn.Linear for m in model.modules())
    return before - after


def prepare_model(model: HRMTextLM, t: TrainConfig, device: torch.device) -> None:
    """Apply the configured speed and memory settings to a model about to train (in place)."""
    if not 0.0 < t.activation_memory_budget <= 1.0:
        raise ConfigError(f"train.activation_memory_budget must be in (0, 1] (got {t.activation_memory_budget})")
    if t.recompute_calls < 0:
        raise ConfigError(f"train.recompute_calls must be >= 0 (got {t.recompute_calls})")
    # kernels that need a particular GPU: refuse before any work, not at the first batch
    if (why := backend_unavailable(t.attn_backend, device)) is not None:
        raise ConfigError(f"train.attn_backend={t.attn_backend} {why}")
    if t.fp8:
        n = apply_fp8(model, t.fp8_recipe)
        log.info("float8 training (recipe %s) on %d block projections", t.fp8_recipe, n)
        if t.fp8_recipe in FUSED_RECIPES:
            # both bypass a per-call path that FSDP2 relies on (its gathered weights; its gradient hooks)
            one_process = not _sharded(model)
            enable_weight_cache(model, t.fp8_weight_cache and one_process)
            enable_fused_wgrad(model, t.fused_wgrad and one_process)
    elif t.bf16_weight_cache and t.dtype == "bf16" and device.type == "cuda" and not _sharded(model):
        # only where the step runs under bf16 autocast (the trainer's CUDA path); FSDP2 gathers
        # its own bf16 copies and needs autograd's gradient hooks
        n = convert_to_bf16_cached(model)
        enable_weight_cache(model)
        enable_fused_wgrad(model, t.fused_wgrad)
        log.info("bf16 weight cache on %d block projections (fused weight gradients: %s)", n, t.fused_wgrad)
    model.model.autocast_states = t.bf16_states and t.dtype == "bf16"
    if t.activation_memory_budget < 1.0:
        import torch._functorch.config as functorch_config  # private knob of the min-cut partitioner

        functorch_config.activation_memory_budget = t.activation_memory_budget
    if t.compile and device.type == "cuda":
        # multi-kernel: the rows here (1,536 to 8,192 wide) exceed inductor's whole-row limit of
        # 1,024, so without it the norms and float8 scales loop over each row 2-3 times. Loading
        # such a graph from inductor's cache failed in torch 2.11 (MultiKernelCall on a cache hit),
        # so its graphs skip that cache: the path measured, cold at every launch.
        options = {"triton.multi_kernel": 1, "fx_graph_cache": False} if t.multi_kernel else None
        for blk in model.blocks():
            blk.compile(options=options)


def _sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 has sharded the parameters (they are DTensors)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def forward_backward(
    model: HRMTextLM, batch: PackedBatch, K: int, denom: torch.Tensor | float,
    bf16: bool, recompute_calls: int = 0,
) -> LossOutput:
    """Loss of one micro-batch, backward of loss / denom; returns the detached statistics."""
    cached = cache_weights(model)  # block weights converted once for this micro-step (if enabled)
    try:
        with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.loss(batch, bp_steps=K, remat_calls=recompute_calls)
        (out.loss_sum / denom).backward()
    finally:  # the weights change next: nothing may compute with this copy
        if cached:
            drop_weight_cache(model)
    return LossOutput(out.loss_sum.detach(), out.num_tokens, out.num_correct.detach())
