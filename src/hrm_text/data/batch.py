"""The packed batch: the one format every model, trainer, evaluator and engine consumes.

A row is a flat token budget holding several whole examples back to back, then padding:

    [<boq> <cond> instr... <eoq> resp... <eoa>] [<boq> ... <eoa>] ... [pad pad pad]

For each position t:
  input_ids[t]     the token
  labels[t]        the token to predict at t (= input_ids[t+1] of the same example) when that next
                   token is a response token (so `<eoq>` predicts the first response token and the
                   token before `<eoa>` predicts `<eoa>`); -100 everywhere else
  position_ids[t]  restarts at 0 for each example
  doc_ids[t]       index of the example inside its row (0, 1, ...); -1 on padding
  is_prefix[t]     True on instruction tokens (<boq> .. <eoq>): they attend bidirectionally
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, IGNORE_INDEX where no loss
    position_ids: torch.Tensor  # [B, T] int64
    doc_ids: torch.Tensor  # [B, T] int32, -1 on padding
    is_prefix: torch.Tensor  # [B, T] bool
    # flat indices (into B*T) of the labelled positions; optional. Computed on the host copy by
    # `with_loss_index`, so the loss can gather its rows on the GPU without a device->host sync.
    loss_index: torch.Tensor | None = None

    def _map(self, fn) -> "PackedBatch":  # type: ignore[no-untyped-def]
        return PackedBatch(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedBatch":
        return self._map(lambda t: t.pin_memory())

    def with_loss_index(self) -> "PackedBatch":
        """A copy that carries `loss_index` (call on the host copy, before `.to(device)`)."""
        idx = torch.nonzero(self.labels.reshape(-1) != IGNORE_INDEX).squeeze(1)
        return PackedBatch(**{**{f.name: getattr(self, f.name) for f in fields(self)}, "loss_index": idx})

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        return int((self.doc_ids >= 0).sum())


# Training objectives (paper Table 3), applied to a batch after the loader and before the model:
#   prefix_lm        the default: bidirectional prompt, loss on response tokens (docs/ARCHITECTURE.md#sequence-layout-and-objective)
#   causal_response  causal mask everywhere, loss on response tokens
#   causal_full      causal mask everywhere, loss on every next token of the example (prompt too)
Objective = Literal["prefix_lm", "causal_response", "causal_full"]
OBJECTIVES: tuple[str, ...] = ("prefix_lm", "causal_response", "causal_full")


def apply_objective(batch: PackedBatch, objective: str) -> PackedBatch:
    """The batch as `objective` trains on it. Works at the batch level so the model code keeps
    one mask builder and one loss: a causal mask is a PrefixLM mask with no prefix tokens, and the
    full-text loss is the same cross-entropy with more labelled positions."""
    if objective == "prefix_lm":
        return batch
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    causal = replace(batch, is_prefix=torch.zeros_like(batch.is_prefix))
    if objective == "causal_response":
        return causal
    # position t predicts token t+1 whenever t+1 belongs to the same example (never padding)
    nxt_ids = batch.input_ids[:, 1:]
    same = (batch.doc_ids[:, 1:] == batch.doc_ids[:, :-1]) & (batch.doc_ids[:, :-1] >= 0)
    labels = torch.full_like(batch.labels, IGNORE_INDEX)
    labels[:, :-1] = torch.where(same, nxt_ids, torch.full_like(nxt_ids, IGNORE_INDEX))
    return replace(causal, labels=labels)


Example = tuple[Sequence[int], Sequence[int]]  # (instruction part incl. boq/conds/eoq, response part incl. eoa)


def layout_row(examples: Sequence[Example], row_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Lay out one packed row (numpy, for the loader's worker): the reference layout above."""
    input_ids = np.full(row_len, pad_id, dtype=np.int64)
    labels = np.full(row_len, IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros(row_len, dtype=np.int64)
    doc_ids = np.full(row_len, -1, dtype=np.int32)
    is_prefix = np.zeros(row_len, dtype=np.bool_)
    cur = 0
    for d, (inst, resp) in enumerate(examples):
        p, r = len(inst), len(resp)
        n = p + r
        if p < 1 or r < 1:
            raise ValueError(f"example {d}: instruction and response need at least one token each")
        if cur + n > row_len:
            raise ValueError(f"examples need {cur + n} tokens but the row holds {row_len}")
        input_ids[cur : cur + p] = np.asarray(inst)
        input_ids[cur + p : cur + n] = np.asarray(resp)
        # position t predicts token t+1 when t+1 is a response token: targets are the response
        labels[cur + p - 1 : cur + n - 1] = input_ids[cur + p : cur + n]
        position_ids[cur : cur + n] = np.arange(n)
        doc_ids[cur : cur + n] = d
        is_prefix[cur : cur + p] = True
        cur += n
    # padding: positions continue from 0 so RoPE stays in range; no loss, own doc id -1
    if cur < row_len:
        position_ids[cur:] = np.arange(row_len - cur)
    return dict(input_ids=input_ids, labels=labels, position_ids=position_ids, doc_ids=doc_ids, is_prefix=is_prefix)


def pack_rows(rows: Sequence[Sequence[Example]], row_len: int, pad_id: int = 0) -> PackedBatch:
    """Build a PackedBatch from rows of (instruction_ids, response_ids) examples.

    Each row must fit in `row_len` tokens; the remainder is padding. The multipack sampler decides
    which examples go in which row; this function lays them out.
    """
    laid = []
    for b, row in enumerate(rows):
        try:
            laid.append(layout_row(row, row_len, pad_id))
        except ValueError as e:
            raise ValueError(f"row {b}: {e}") from None
    return PackedBatch(**{k: torch.from_numpy(np.stack([r[k] for r in laid])) for k in laid[0]})
