"""Process-group setup and FSDP2 sharding, kept to plain functions.

One code path for every scale: a plain `python` run is a single process with no process group
(all helpers below then degrade to no-ops), and the same trainer under `torchrun` (one or many
nodes) gets a process group from the torchrun environment variables: NCCL on CUDA, gloo on CPU
(so multi-process behaviour is testable on a laptop). NVLink multicast (NCCL_NVLS_ENABLE and
friends) is deliberately left to the environment: this module never sets NCCL variables.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool  # rank 0: the one that logs, writes manifests, copies the tokenizer

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or is_initialized()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def init_distributed(device: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and start the process group if present.

    `device` ("cpu", "cuda") overrides the automatic choice (CUDA when available). A process group
    is created whenever torchrun launched us (even with one process) so the sharded checkpoint and
    FSDP paths are the ones exercised; a plain `python` launch creates none. The long default
    timeout covers rank 0 writing a checkpoint or evaluating while others wait at a barrier.
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if launched and not is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {}
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # eager NCCL init bound to our device (no guessing in barrier)
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it (unchanged without a process group).
    Used for global loss / token / correct counts so logged metrics are exact global values."""
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    """Destroy the process group (if any) so torchrun sees a clean exit."""
    if is_initialized():
        dist.destroy_process_group()


def apply_fsdp2(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    mp_dtype: torch.dtype | None = torch.bfloat16,
    reshard_after_forward: bool = True,
    sum_gradients: bool = True,
    forward_methods: Sequence[str] = ("loss",),
    replicate: int = 1,
    keep_gathered: bool = False,
) -> nn.Module:
    """Shard `model` with FSDP2: `fully_shard` on each block, then on the root.

    Parameters stay float32 (the master copy, sharded across ranks); with `mp_dtype` the
    all-gathered compute copy is in that dtype (bf16) and gradients are reduce-scattered in float32
    (`MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=float32)`), matching "bf16 compute,
    fp32 master" (docs/ARCHITECTURE.md#block). `mp_dtype=None` keeps fp32 compute (tests, CPU).
    Per-block units let the all-gather of the next block overlap the current one. HRM calls each
    block several times per step; `reshard_after_forward=False` keeps a block's gathered weights
    between those calls (fewer all-gathers, more memory): worth trying when the model is small
    compared with activations.
    It applies to the blocks; the root unit always keeps its gathered weights until backward.
    `sum_gradients=True` sets FSDP's gradient divide factor to 1 so gradients are *summed* over
    ranks (docs/ARCHITECTURE.md#optimiser-and-schedules) instead of averaged: with the loss
    normalised by the global token count each rank then holds exactly the single-process gradient,
    so N ranks and 1 process match.
    `forward_methods`: root methods other than `forward` that run the whole model (`HRMTextLM.loss`);
    FSDP only hooks `forward`, so without registering them the root's parameters (embeddings, head)
    would stay sharded when the trainer calls `model.loss(batch)`. Register only outermost entry
    points: a registered method called from another one reshards the root when it returns.
    `replicate` > 1 is HSDP: a 2-D device mesh (replicate x shard) with parameters sharded within
    each group of world/replicate ranks and replicated across the groups (gradients are
    reduce-scattered within a group, then all-reduced across groups).
    `keep_gathered=True` keeps every unit's gathered weights from its first all-gather until the
    caller's `reshard_all(model)` (once per optimizer step, before `opt.step()`): one all-gather
    per block per step instead of one per call and one per recorded call in backward (counted by
    benchmarks/fsdp_collectives.py), for the memory of one unsharded compute copy of the model.
    Returns the same module object (fully_shard works in place).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not is_initialized():
        raise RuntimeError("apply_fsdp2 needs a process group: launch with torchrun (init_distributed)")
    kwargs: dict = {"reshard_after_forward": reshard_after_forward and not keep_gathered}
    world = dist.get_world_size()
    if replicate < 1 or world % replicate:
        raise ValueError(f"train.fsdp_replicate={replicate} must divide the {world} processes")
    if replicate > 1:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        kwargs["mesh"] = init_device_mesh(device_type, (replicate, world // replicate), mesh_dim_names=("replicate", "shard"))
    if mp_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, **kwargs)
    # The root (embeddings, head, anything outside the blocks) is never resharded after forward: the
    # backward needs it at once, and `model.loss` returns a dataclass, on which FSDP (torch < 2.13)
    # registers no pre-backward hook to gather it again; that crashed on an H100 with torch 2.11.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    units = [*blocks, model]
    for unit in units:
        if keep_gathered:  # later calls' backward find the weights still gathered
            unit.set_reshard_after_backward(False)  # type: ignore[operator]  # FSDPModule method
        # Plain SUM collectives: gloo has neither AVG nor PREMUL_SUM, and NCCL's zero-copy path wants
        # SUM too. With divide factor 1 no scaling kernel runs at all; otherwise FSDP divides after.
        unit.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]  # FSDPModule method
        if sum_gradients:
            unit.set_gradient_divide_factor(1.0)  # type: ignore[operator]
    for name in forward_methods:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    return model


def reshard_all(model: nn.Module) -> None:
    """Free every FSDP unit's gathered weights (with `keep_gathered`: before each optimizer step,
    so the next forward gathers the updated ones)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
