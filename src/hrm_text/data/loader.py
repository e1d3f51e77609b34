"""Training-time data: the memory-mapped sampled corpus and the multipack loader
(docs/ARCHITECTURE.md#batching).

`SampledData` opens a directory written by `hrm-text data sample` without reading it into memory
(the token store can be far larger than RAM). `PackedLoader` turns it into one `PackedBatch` of
shape [1, tokens_per_rank] per micro-step for this rank:

* Multipack, planned globally. For each step the loader plans the rows of *all* ranks at once from a
  look-ahead pool of the shuffled epoch: the pool is sorted longest first and each example goes to
  the currently least-loaded rank that still has room (longest-processing-time first). Examples that
  fit nowhere stay in the pool for the next step. This fills ~99.5% of slots and keeps the token
  count of the ranks within a few tokens of each other, so no rank waits for another.
* Deterministic everywhere. The plan depends only on (seed, epoch, lengths, tokens_per_rank,
  world_size), never on timing or machine, so every rank computes the same plan and takes its slice;
  no communication is needed.
* Over-long examples. An example longer than `tokens_per_rank` has its response truncated to fit
  (the `<eoa>` is then gone, as for `long_context: truncate` at sampling time), provided the prompt
  plus `min_response_tokens` still fit; otherwise it is skipped. `num_skipped_long` counts these.
* End of epoch. The last steps may be partly filled. If fewer examples than ranks remain for the
  final step, those (< world_size) examples are dropped so that no rank gets an empty row.
* Resume. `state_dict()` is the position of the *next* batch to be returned, (epoch, batch); a
  loader given that state yields exactly the same following batches as the original would have.
* Prefetch. A background thread builds the next batches while the model computes (numpy work
  mostly releases the GIL); `prefetch=False` builds them inline.
"""

from __future__ import annotations

import heapq
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .batch import PackedBatch, layout_row

SAMPLED_FORMAT_VERSION = 1


class SampledData:
    """An output directory of `hrm-text data sample`, memory-mapped.

    Files: tokens.npy (all examples back to back, prompt then response), offsets.npy (n+1 starts),
    inst_len.npy, lengths.npy, source.npy (index into metadata["sources"]), epochs/epoch_XXXX.npy
    (example indices of each sampled epoch, repeats included), metadata.json, report.md.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_file = self.path / "metadata.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} has no metadata.json; create it with `hrm-text data sample`")
        self.metadata: dict[str, Any] = json.loads(meta_file.read_text())
        if self.metadata.get("format_version") != SAMPLED_FORMAT_VERSION:
            raise ValueError(f"{meta_file}: unsupported format_version {self.metadata.get('format_version')}")
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")
        self.offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        self.inst_len = np.load(self.path / "inst_len.npy", mmap_mode="r")
        self.lengths = np.load(self.path / "lengths.npy", mmap_mode="r")
        self.source = np.load(self.path / "source.npy", mmap_mode="r")
        self.num_epochs: int = int(self.metadata["num_epochs"])

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt ids incl. <boq>/conditions/<eoq>, response ids incl. <eoa> unless truncated)."""
        o = int(self.offsets[i])
        e = int(self.offsets[i + 1])
        p = o + int(self.inst_len[i])
        return self.tokens[o:p], self.tokens[p:e]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Example indices of sampled epoch `epoch % num_epochs` (grouped by source, unshuffled)."""
        e = epoch % self.num_epochs
        return np.load(self.path / "epochs" / f"epoch_{e:04d}.npy", mmap_mode="r")

    @property
    def pad_id(self) -> int:
        return int(self.metadata["pad_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])


def _mix_seed(*parts: int) -> int:
    """A 64-bit seed from integers, identical on every machine (no Python hash randomisation)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, dtype=np.uint64)[0])


def plan_steps(
    order: np.ndarray, lens: np.ndarray, tokens_per_rank: int, world_size: int, lookahead: float = 2.0
) -> tuple[list[list[np.ndarray]], int]:
    """Plan the packed rows of one epoch. Returns (steps, dropped).

    `order` is the shuffled example ids, `lens` their (already capped) lengths, each <= the budget.
    steps[s][r] is the array of example ids in rank r's row at step s. Algorithm in the module
    docstring; `lookahead` is the pool size in units of one step's total capacity (bigger pools
    fill better and delay leftovers a little more).
    """
    T, W = int(tokens_per_rank), int(world_size)
    cap = T * W
    n = len(order)
    cum = np.cumsum(lens, dtype=np.int64)
    steps: list[list[np.ndarray]] = []
    pend_ids: list[int] = []
    pend_lens: list[int] = []
    pos = 0
    dropped = 0
    order = np.asarray(order)
    lens = np.asarray(lens)
    while pos < n or pend_ids:
        need = lookahead * cap - sum(pend_lens)
        if pos < n and need > 0:
            base = int(cum[pos - 1]) if pos > 0 else 0
            end = int(np.searchsorted(cum, base + need, side="left")) + 1
            end = min(max(end, pos + 1), n)
            pend_ids.extend(order[pos:end].tolist())
            pend_lens.extend(lens[pos:end].tolist())
            pos = end
        exhausted = pos >= n
        if exhausted and len(pend_ids) < W:
            dropped += len(pend_ids)
            break
        ids = np.asarray(pend_ids, dtype=np.int64)
        ls = np.asarray(pend_lens, dtype=np.int64)
        srt = np.argsort(-ls, kind="stable")
        heap = [(0, r) for r in range(W)]
        bins: list[list[int]] = [[] for _ in range(W)]
        left: list[int] = []
        for j in srt.tolist():
            ln = int(ls[j])
            load, r = heap[0]
            if load + ln <= T:
                heapq.heapreplace(heap, (load + ln, r))
                bins[r].append(int(ids[j]))
            else:
                left.append(j)
        # leftovers keep their shuffled pool order and go first into the next step's pool
        left.sort()
        left_ids = [int(ids[j]) for j in left]
        left_lens = [int(ls[j]) for j in left]
        steps.append([np.asarray(b, dtype=np.int64) for b in bins])
        pend_ids, pend_lens = left_ids, left_lens
    return steps, dropped


def _to_batch(row: dict[str, np.ndarray]) -> PackedBatch:
    return PackedBatch(**{k: torch.from_numpy(v).unsqueeze(0) for k, v in row.items()})


class PackedLoader:
    """Iterator of `PackedBatch` [1, tokens_per_rank] for one rank; see the module docstring.

    `epochs=None` runs forever: epoch e uses sampled epoch e % num_epochs with a fresh shuffle.
    """

    def __init__(
        self,
        data: "str | os.PathLike | SampledData",
        tokens_per_rank: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epochs: int | None = None,
        prefetch: bool = True,
        prefetch_depth: int = 4,
        lookahead: float = 2.0,
        share_plans_with: "PackedLoader | None" = None,
    ) -> None:
        """`share_plans_with`: another loader over the same data and layout (another rank slot of
        the same process); the epoch plan covers every rank, so it is computed once and shared."""
        self.data = data if isinstance(data, SampledData) else SampledData(data)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, {world_size})")
        self.tokens_per_rank = int(tokens_per_rank)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.epochs = epochs
        self.prefetch, self.prefetch_depth, self.lookahead = prefetch, prefetch_depth, lookahead
        self.pad_id = self.data.pad_id
        self.min_response_tokens = int(self.data.metadata.get("min_response_tokens", 2))
        T = self.tokens_per_rank
        lengths = np.asarray(self.data.lengths, dtype=np.int64)
        inst = np.asarray(self.data.inst_len, dtype=np.int64)
        too_long = lengths > T
        fixable = too_long & (inst + self.min_response_tokens <= T)
        # effective length in this loader; 0 marks a skipped example
        self._eff = np.where(too_long, np.where(fixable, T, 0), lengths)
        self.num_truncated_long = int(fixable.sum())
        self.num_skipped_long = int((too_long & ~fixable).sum())
        self._epoch, self._batch = 0, 0
        self._plans: dict[int, list[list[np.ndarray]]] = {}
        self._dropped: dict[int, int] = {}
        self._lock = threading.Lock()
        if share_plans_with is not None:
            o = share_plans_with
            same = (o.data is self.data, o.tokens_per_rank == self.tokens_per_rank, o.world_size == self.world_size,
                    o.seed == self.seed, o.lookahead == self.lookahead)
            if not all(same):
                raise ValueError("share_plans_with needs a loader over the same data, budget, world size and seed")
            self._plans, self._dropped, self._lock = o._plans, o._dropped, o._lock
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # ---- planning ---------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[list[np.ndarray]]:
        with self._lock:
            if epoch not in self._plans:
                idx = np.asarray(self.data.epoch_indices(epoch), dtype=np.int64)
                idx = idx[self._eff[idx] > 0]
                rng = np.random.default_rng(_mix_seed(self.seed, epoch, 0x5EED))
                order = idx[rng.permutation(len(idx))]
                steps, dropped = plan_steps(order, self._eff[order], self.tokens_per_rank, self.world_size, self.lookahead)
                # keep only a few plans (long runs cycle through many epochs)
                for old in [e for e in self._plans if e < epoch - 1]:
                    del self._plans[old]
                self._plans[epoch] = steps
                self._dropped[epoch] = dropped
            return self._plans[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        """Micro-steps in `epoch` (the same number on every rank)."""
        return len(self._plan(epoch))

    @property
    def steps_per_epoch(self) -> int:
        """Micro-steps of the current epoch (epochs are re-sampled, so counts differ slightly)."""
        return self.steps_in_epoch(self._epoch)

    @property
    def epoch(self) -> int:
        """Epoch of the next batch to be returned."""
        return self._epoch

    def rows_for_step(self, epoch: int, step: int) -> list[np.ndarray]:
        """Example ids of every rank's row at (epoch, step): for inspection and tests."""
        return self._plan(epoch)[step]

    def _example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        inst, resp = self.data.example(int(i))
        if len(inst) + len(resp) > self.tokens_per_rank:
            resp = resp[: self.tokens_per_rank - len(inst)]
        return inst, resp

    def build_batch(self, epoch: int, step: int) -> PackedBatch:
        ids = self._plan(epoch)[step][self.rank]
        return _to_batch(layout_row([self._example(i) for i in ids], self.tokens_per_rank, self.pad_id))

    # ---- position ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            "world_size": self.world_size,
            "tokens_per_rank": self.tokens_per_rank,
            "num_examples": len(self.data),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore the position; refuses a state from a different layout (it would not replay)."""
        for k in ("seed", "world_size", "tokens_per_rank", "num_examples"):
            if k in d and d[k] != self.state_dict()[k]:
                raise ValueError(f"loader state was saved with {k}={d[k]}, this loader has {self.state_dict()[k]}")
        self._shutdown()
        self._epoch, self._batch = int(d["epoch"]), int(d["batch"])

    # ---- iteration ----------------------------------------------------------------------------------
    def _positions(self, epoch: int, batch: int) -> Iterator[tuple[int, int]]:
        while self.epochs is None or epoch < self.epochs:
            n = self.steps_in_epoch(epoch)
            while batch < n:
                yield epoch, batch
                batch += 1
            epoch, batch = epoch + 1, 0

    def _worker(self, start: tuple[int, int], q: queue.Queue, stop: threading.Event) -> None:
        try:
            for e, b in self._positions(*start):
                item = (e, b, self.build_batch(e, b))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)

    def _shutdown(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None
            self._stop = threading.Event()

    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> PackedBatch:
        if not self.prefetch:
            for e, b in self._positions(self._epoch, self._batch):
                batch = self.build_batch(e, b)
                self._advance(e, b)
                return batch
            raise StopIteration
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch_depth)
            self._thread = threading.Thread(
                target=self._worker, args=((self._epoch, self._batch), self._queue, self._stop), daemon=True
            )
            self._thread.start()
        item = self._queue.get()
        if item is None:
            self._shutdown()
            raise StopIteration
        if isinstance(item, BaseException):
            self._shutdown()
            raise item
        e, b, batch = item
        self._advance(e, b)
        return batch

    def _advance(self, e: int, b: int) -> None:
        if b + 1 >= self.steps_in_epoch(e):
            self._epoch, self._batch = e + 1, 0
        else:
            self._epoch, self._batch = e, b + 1

    def close(self) -> None:
        self._shutdown()

    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:
            pass

    # ---- reporting ----------------------------------------------------------------------------------
    def fill_stats(self, epoch: int = 0) -> dict[str, float]:
        """Slot use and rank balance of an epoch's plan (what the benchmark reports)."""
        steps = self._plan(epoch)
        loads = np.array([[int(self._eff[r].sum()) for r in s] for s in steps], dtype=np.int64)
        total = loads.size * self.tokens_per_rank
        return {
            "steps": len(steps),
            "fill": float(loads.sum() / total) if total else 0.0,
            "fill_excluding_last": float(loads[:-1].sum() / ((len(steps) - 1) * self.world_size * self.tokens_per_rank))
            if len(steps) > 1
            else float("nan"),
            "max_rank_imbalance_tokens": int((loads.max(1) - loads.min(1)).max()) if len(steps) else 0,
            "dropped_end_of_epoch": self._dropped.get(epoch, 0),
        }
