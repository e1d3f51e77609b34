"""The language model: recurrent core + untied head + the response-only loss.

    model = HRMTextLM(model_config("tiny", vocab_size=1024), attn_backend="auto")
    out = model.loss(batch, bp_steps=K)      # batch: hrm_text.data.batch.PackedBatch
    logits = model(input_ids, position_ids, mask)

State dict keys are transformers' on-disk `hrm_text` keys for the HRM architecture
(`model.embed_tokens.weight`, `model.{H,L}_module.layers.N.attn.gqkv_proj.weight`, ...,
`model.z_L_init`, `lm_head.weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from hrm_text.config import ATTN_BACKENDS, ModelConfig
from hrm_text.data.batch import IGNORE_INDEX, PackedBatch
from hrm_text.model.attention import AttnMask, build_prefix_lm_mask
from hrm_text.model.hrm import RecurrentCore
from hrm_text.model.kv_cache import PromptWrites, StaticKVCache
from hrm_text.model.layers import Block, trunc_normal_
from hrm_text.model.loss import CHUNK_ROWS, linear_cross_entropy


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # fp32 scalar: summed cross-entropy over response tokens (differentiable)
    num_tokens: torch.Tensor  # number of response (loss) tokens
    num_correct: torch.Tensor  # argmax == label count (token accuracy numerator)


class HRMTextLM(nn.Module):
    """`cfg` is the network's shape (saved with the weights). `attn_backend` picks the attention
    kernel of full-sequence masks (`build_mask`): a run-time choice (train.attn_backend, or
    load_model's argument), not saved; change it with `set_attn_backend`."""

    def __init__(self, cfg: ModelConfig, init: bool = True, attn_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.set_attn_backend(attn_backend)
        self.model = RecurrentCore(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=False)
        if init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        self.model.reset_parameters()
        trunc_normal_(self.lm_head.weight, 1.0 / math.sqrt(self.cfg.hidden_size))

    def blocks(self) -> list[Block]:
        """The units FSDP2 shards one by one (and activation checkpointing would wrap)."""
        return [m for m in self.modules() if isinstance(m, Block)]

    def set_attn_backend(self, backend: str) -> None:
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend={backend!r} is not one of {', '.join(ATTN_BACKENDS)}")
        self.attn_backend = backend

    def build_mask(self, doc_ids: torch.Tensor, is_prefix: torch.Tensor) -> AttnMask:
        return build_prefix_lm_mask(doc_ids, is_prefix, self.attn_backend)

    @property
    def num_cache_slots(self) -> int:
        return self.model.schedule.num_cache_slots

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> StaticKVCache:
        p = self.lm_head.weight
        return StaticKVCache(
            self.num_cache_slots, batch_size, self.cfg.num_heads, max_len, self.cfg.head_dim,
            dtype=dtype or p.dtype, device=device or p.device,
        )

    def hidden(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: AttnMask,
        bp_steps: int | None = None,
        cache: StaticKVCache | PromptWrites | None = None,
        *,
        cache_positions: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        remat_calls: int = 0,
    ) -> torch.Tensor:
        """The recurrent core's output state [B, T, hidden]; arguments as for `RecurrentCore.forward`."""
        return self.model(
            input_ids, position_ids, mask, bp_steps, cache,
            cache_positions=cache_positions, cache_rows=cache_rows, remat_calls=remat_calls,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: AttnMask,
        bp_steps: int | None = None,
        cache: StaticKVCache | PromptWrites | None = None,
        *,
        cache_positions: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
        remat_calls: int = 0,
    ) -> torch.Tensor:
        """Logits [B, T, padded_vocab]; arguments as for `hidden`."""
        return self.lm_head(
            self.hidden(
                input_ids, position_ids, mask, bp_steps, cache,
                cache_positions=cache_positions, cache_rows=cache_rows, remat_calls=remat_calls,
            )
        )

    def loss(self, batch: PackedBatch, bp_steps: int | None = None, mask: AttnMask | None = None, remat_calls: int = 0) -> LossOutput:
        """Response-only cross-entropy (docs/ARCHITECTURE.md#sequence-layout-and-objective), summed; the
        caller normalises."""
        if mask is None:
            mask = self.build_mask(batch.doc_ids, batch.is_prefix)
        h = self.hidden(batch.input_ids, batch.position_ids, mask, bp_steps, remat_calls=remat_calls)
        return response_loss(h, self.lm_head, batch.labels, batch.loss_index)


def response_loss(h: torch.Tensor, head: nn.Linear, labels: torch.Tensor, loss_index: torch.Tensor | None = None, chunk: int = CHUNK_ROWS) -> LossOutput:
    """Cross-entropy over labelled positions only: their hidden rows are gathered, then the head and
    the loss run fused, chunk by chunk (model/loss.py), never holding float32 logits for backward.
    `loss_index` (flat indices of labelled positions) avoids a device sync when given."""
    flat_labels = labels.reshape(-1)
    if loss_index is None:
        loss_index = torch.nonzero(flat_labels != IGNORE_INDEX).squeeze(1)
    rows = h.reshape(-1, h.shape[-1]).index_select(0, loss_index)
    targets = flat_labels.index_select(0, loss_index)
    loss_sum, correct = linear_cross_entropy(rows, head.weight, targets, chunk)
    n = torch.full((), loss_index.numel(), dtype=torch.int64, device=h.device)  # from the shape: no sync
    return LossOutput(loss_sum, n, correct)
