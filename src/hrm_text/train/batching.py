"""The batch of a training run: device-sized defaults, the accumulation it implies, and the words
used to describe it (start-of-run log lines, resume errors).

Terms, as a user sets them: the *global batch* `train.global_batch_tokens` (tokens per optimizer
step), the *row* `data.tokens_per_rank` (tokens one process packs per micro-step) and the number of
*processes* (torchrun's `--nproc_per_node` x nodes). Accumulation is derived:
`global batch = processes x micro-steps x row`. The loader works in *slots*
(processes x micro-steps), an internal number users never set, so messages never quote it alone.

Why CPU defaults: the config defaults (196,608-token global batch of 16,384-token rows) are the
paper's XL run on GPUs; on a 2-core CPU one such step of the `tiny` model takes minutes and the
progress bar looks hung. When neither value was set (in the YAML or as an override) a CPU run uses
one row of `CPU_ROW_TOKENS` (or the data's longest example, if longer) per process and no
accumulation, and says so at start. Any value the user did set is kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hrm_text.config import Config, DataConfig, TrainConfig
from hrm_text.train.plan import FITTING_BUDGET, memory_per_rank

CPU_ROW_TOKENS = 2048  # one micro-step of `tiny` on 2 CPU cores: ~1 s (docs/PERFORMANCE.md, Quickstart)

GLOBAL_KEY = "train.global_batch_tokens"
ROW_KEY = "data.tokens_per_rank"


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step is made: `processes` x `accum` micro-steps x `row` tokens."""

    row: int
    processes: int
    accum: int
    requested_global: int  # train.global_batch_tokens as configured (rounded to whole micro-steps)
    note: str  # where the numbers come from ("as configured" or the device default applied)

    @property
    def global_tokens(self) -> int:
        return self.row * self.processes * self.accum

    @property
    def slots(self) -> int:
        """Loader slots: rows per optimizer step (what the data position is laid out in)."""
        return self.processes * self.accum

    def describe(self, steps_per_epoch: int, total_steps: int) -> str:
        """The start-of-run line: effective batch, accumulation, steps per epoch and in the run."""
        return (f"batch: {self.global_tokens:,} tokens per optimizer step = {self.processes} process(es) x "
                f"{self.accum} micro-step(s) of accumulation x {self.row:,}-token rows ({self.note}); "
                f"{steps_per_epoch:,} steps per epoch, {total_steps:,} steps in this run")


def explicitly_set(cfg: Config, key: str) -> bool:
    """Whether `section.key` came from the YAML or an override. A Config not built by
    `load_config` (set_keys None) counts every key as set, so programmatic configs run as given."""
    return cfg.set_keys is None or key in cfg.set_keys


def apply_device_defaults(cfg: Config, device_type: str, processes: int, longest_example: int | None) -> str:
    """Fill unset batch keys with CPU-sized values on a CPU (in place, so checkpoints record what
    ran); returns the note for the start-of-run line. GPUs keep the config defaults."""
    set_global, set_row = explicitly_set(cfg, GLOBAL_KEY), explicitly_set(cfg, ROW_KEY)
    if device_type != "cpu" or (set_global and set_row):
        return "as configured"
    row = max(CPU_ROW_TOKENS, int(longest_example or 0))
    row = min(row, DataConfig().tokens_per_rank)
    if set_global:  # keep the user's global batch, split into CPU-sized rows
        per_process = max(1, cfg.train.global_batch_tokens // max(1, processes))
        cfg.data.tokens_per_rank = max(min(row, per_process), int(longest_example or 0))
        return (f"CPU default {ROW_KEY}={cfg.data.tokens_per_rank} for {GLOBAL_KEY}="
                f"{cfg.train.global_batch_tokens} as set")
    if not set_row:
        cfg.data.tokens_per_rank = row
    cfg.train.global_batch_tokens = cfg.data.tokens_per_rank * processes
    default = TrainConfig().global_batch_tokens
    what = (f"{GLOBAL_KEY} and {ROW_KEY} not set" if not set_row else f"{GLOBAL_KEY} not set, {ROW_KEY} as set")
    return (f"CPU default for preset {cfg.model.preset or cfg.model.arch}: {what}; the GPU default is "
            f"{default:,}; set {GLOBAL_KEY} to choose")


BUDGET_KEY = "train.activation_memory_budget"


def apply_memory_defaults(cfg: Config, device_bytes: float | None, processes: int) -> str | None:
    """On a GPU (`device_bytes`: its memory), turn on the compiler's activation budget when the
    bf16 step would not fit by `hrm-text plan`'s estimate and the user chose no memory setting
    (in place; returns the note to log, or None). Float8 and LoRA are left alone: the estimate is
    of full bf16 training."""
    t = cfg.train
    if (device_bytes is None or not t.compile or t.fp8 or t.lora is not None or t.recompute_calls > 0
            or explicitly_set(cfg, BUDGET_KEY)):
        return None
    est = memory_per_rank(cfg.model, processes, None, cfg.data.tokens_per_rank,
                          bp_steps=t.final_bp_steps(cfg.model.arch), device_bytes=device_bytes,
                          bf16_states=t.bf16_states)
    if est.fits:
        return None
    t.activation_memory_budget = FITTING_BUDGET
    return (f"{BUDGET_KEY}={FITTING_BUDGET}: the bf16 step needs about {est.total_bytes / 2**30:.0f} GiB by the "
            f"estimate, this GPU has {device_bytes / 2**30:.0f} GiB, so the compiler recomputes element-wise work in "
            f"backward (2% slower where both fit, on an H100; set {BUDGET_KEY}=1.0 to turn it off, or use train.fp8=true)")


def batch_layout(cfg: Config, processes: int, note: str = "as configured") -> BatchLayout:
    """Micro-steps per optimizer step for the configured global batch on `processes` processes."""
    per_micro = cfg.data.tokens_per_rank * processes
    accum = max(1, round(cfg.train.global_batch_tokens / per_micro))
    return BatchLayout(cfg.data.tokens_per_rank, processes, accum, cfg.train.global_batch_tokens, note)


def resume_mismatch_message(ckpt_path: Any, saved: dict[str, Any], now: BatchLayout,
                            loader_error: str) -> str:
    """Why a checkpoint's data position cannot be restored with this batch, in the user's terms,
    and the two ways on. `saved` is the checkpoint's config dict plus its `extra`."""
    old_global = saved.get("train", {}).get("global_batch_tokens")
    old_row = saved.get("data", {}).get("tokens_per_rank")
    old_procs = saved.get("extra", {}).get("processes")
    changes = []
    if old_global is not None and int(old_global) != now.requested_global:
        changes.append(f"{GLOBAL_KEY} {int(old_global):,} -> {now.requested_global:,}")
    if old_row is not None and int(old_row) != now.row:
        changes.append(f"{ROW_KEY} {int(old_row):,} -> {now.row:,}")
    if old_procs is not None and int(old_procs) != now.processes:
        changes.append(f"processes {int(old_procs)} -> {now.processes}")
    if not changes:
        changes.append(loader_error)  # nothing we can name (e.g. the sampled data changed)
    keep = []
    if old_global is not None:
        keep.append(f"{GLOBAL_KEY}={int(old_global)}")
    if old_row is not None:
        keep.append(f"{ROW_KEY}={int(old_row)}")
    if old_global is not None and old_row is not None and old_procs is not None:
        old_accum = max(1, round(int(old_global) / (int(old_row) * int(old_procs))))
        old_slots = int(old_procs) * old_accum
        same = [p for p in range(1, old_slots + 1) if old_slots % p == 0]
        keep_hint = (f"keep the batch: {' '.join(keep)} (any process count that divides "
                     f"{old_slots} rows per step: {', '.join(map(str, same))})")
    else:
        keep_hint = f"keep the batch the checkpoint was trained with: {' '.join(keep)}" if keep else "keep the batch"
    return (f"cannot resume the data position of {ckpt_path}: the batch changed ({'; '.join(changes)}). "
            f"Either {keep_hint}, or start the data position fresh with `--resume-data fresh` "
            "(weights, optimizer, EMA and step count resume; the data order restarts at the beginning "
            "of the checkpoint's epoch).")
