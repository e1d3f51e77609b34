"""The training loop: one function from laptop CPU to multi-GPU FSDP2 (launch under torchrun).

    step:  K = bp_steps_at(step)            K warm-up (docs/ARCHITECTURE.md#deep-credit-assignment)
           for each micro-batch:  loss_sum / global response tokens  -> backward
           AdamAtan2 step, EMA update       (docs/ARCHITECTURE.md#optimiser-and-schedules)
Gradients are normalised by the response-token count of the whole global batch and summed over
ranks, so 1 process and N processes with the same global batch compute the same update.
Checkpoints (DCP) every `ckpt_every` steps and at the end; SIGTERM/SIGINT save and exit 0.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hrm_text.checkpoint import store as ckpt
from hrm_text.checkpoint.loading import load_model, model_config_of
from hrm_text.config import Config, ConfigError, ModelConfig, config_from_dict
from hrm_text.data.batch import PackedBatch, apply_objective
from hrm_text.data.loader import PackedLoader, SampledData
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.model.flops import count_params, train_flops_per_token
from hrm_text.model.lm import HRMTextLM
from hrm_text.model.lora import apply_lora
from hrm_text.train.batching import (BatchLayout, apply_device_defaults, apply_memory_defaults, batch_layout,
                                     resume_mismatch_message)
from hrm_text.train.distributed import (DistInfo, all_reduce_sum, apply_fsdp2, barrier, cleanup, get_world_size,
                                        init_distributed, is_initialized, reshard_all)
from hrm_text.train.metrics import MetricsLogger, device_peak_flops
from hrm_text.train.optim import AdamAtan2, ModelEMA
from hrm_text.train.plan import FITTING_BUDGET, sharded_state_bytes
from hrm_text.train.schedule import bp_steps_at, lr_at
from hrm_text.train.step import float8_gemms, forward_backward, prepare_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    losses: list[float]  # per-step global training loss (this process's run only)
    final_checkpoint: Path | None
    interrupted: bool
    eval_history: list[dict[str, Any]]


class _StopFlag:
    """Set by SIGTERM/SIGINT. The loop polls it before every micro-step, drops a partial step,
    checkpoints the last completed one and exits cleanly: spot machines give ~30 s of notice,
    less than one optimizer step of a large accumulation.

    With several processes every rank must stop at the same micro-step (FSDP collectives and the
    checkpoint are collective), so `poll` answers from an all-reduce over a side gloo group: started
    without waiting at one poll, read at the next, so it costs no device sync and no wait in the step
    (ranks agree one micro-step after the signal)."""

    def __init__(self) -> None:
        self.stop = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}
        self._group: Any = None
        self._work: Any = None
        self._buf: torch.Tensor | None = None
        self.agreed = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        if is_initialized() and get_world_size() > 1:
            import torch.distributed as tdist

            self._group = tdist.new_group(backend="gloo")  # collective: every rank installs

    def poll(self) -> bool:
        """Whether every rank should stop now (the same answer on every rank at the same call)."""
        if self._group is None:
            self.agreed = self.stop
            return self.agreed
        import torch.distributed as tdist

        if self._work is not None:
            self._work.wait()
            self._work = None
            assert self._buf is not None
            if int(self._buf.item()) > 0:
                self.agreed = True
                return True
        self._buf = torch.tensor([int(self.stop)], dtype=torch.int32)
        self._work = tdist.all_reduce(self._buf, group=self._group, async_op=True)
        return False

    def _handle(self, signum: int, _frame: Any) -> None:
        self.stop = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        if self._work is not None:  # the last poll's all-reduce, started on every rank
            self._work.wait()
            self._work = None
        for sig, old in self._old.items():
            signal.signal(sig, old)


def check_data(cfg: Config) -> tuple[SampledData, TextTokenizer]:
    """Open tokenizer + sampled data and check they agree, before any expensive work."""
    if not cfg.data.sampled_dir:
        raise ConfigError("data.sampled_dir is not set: point it at the output of `hrm-text data sample`")
    sdir = Path(cfg.data.sampled_dir)
    if not (sdir / "metadata.json").is_file():
        raise ConfigError(f"data.sampled_dir={sdir} is not a sampled data folder (no metadata.json); run `hrm-text data sample` first")
    data = SampledData(sdir)
    tok_dir = cfg.data.tokenizer_dir or data.metadata.get("tokenizer_dir")
    if not tok_dir or not Path(tok_dir).is_dir():
        raise ConfigError(f"tokenizer folder {tok_dir!r} not found: set data.tokenizer_dir")
    tok = TextTokenizer.load(tok_dir)
    if tok.vocab_size != data.vocab_size:
        raise ConfigError(
            f"tokenizer {tok_dir} has {tok.vocab_size} tokens but {sdir} was tokenized with {data.vocab_size}: "
            "re-tokenize the data with this tokenizer or point data.tokenizer_dir at the one used"
        )
    return data, tok


def _device(dist: DistInfo) -> torch.device:
    return torch.device(dist.device)


def build_model(cfg: Config, vocab_size: int, device: torch.device, init_from: str | None) -> HRMTextLM:
    """Fresh model (seeded), or weights from `init_from` (our checkpoint or an HF folder) for SFT.
    Sets `cfg.model` to the model built (the checkpoint's shape, the tokenizer's vocabulary) and
    checks the training settings against it; the model runs `train.attn_backend`."""
    if init_from:
        src_cfg = model_config_of(init_from)
        if src_cfg.vocab_size != vocab_size and src_cfg.padded_vocab_size < vocab_size:
            raise ConfigError(f"train.init_from={init_from} has vocab {src_cfg.vocab_size}, the tokenizer has {vocab_size}")
        loaded = load_model(init_from, device="cpu", use_ema=cfg.train.init_from_ema, attn_backend=cfg.train.attn_backend)
        _refuse_model_overrides(cfg, loaded.model.cfg, f"train.init_from={init_from}")
        cfg.model = loaded.model.cfg
        cfg.train.validate(cfg.model)  # e.g. train.bp_max_steps against the checkpoint's cycles
        log.info("initialised from %s (%s weights)", loaded.path, loaded.source)
        return loaded.model.train().to(device)
    if cfg.model.vocab_size != vocab_size:
        log.info("model.vocab_size set to the tokenizer's %d (was %d)", vocab_size, cfg.model.vocab_size)
        cfg.model.vocab_size = vocab_size
    cfg.train.validate(cfg.model)
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):
        return HRMTextLM(cfg.model, attn_backend=cfg.train.attn_backend)


def _refuse_model_overrides(cfg: Config, saved: ModelConfig, source: str) -> None:
    """The network's shape comes with the weights: a `model.*` value the user set that differs from
    the checkpoint's is refused by name rather than silently replaced."""
    clash = []
    for key in sorted(k.split(".", 1)[1] for k in (cfg.set_keys or ()) if k.startswith("model.")):
        mine, theirs = getattr(cfg.model, key, None), getattr(saved, key, None)
        if key in ("vocab_size", "preset") or mine == theirs:
            continue
        clash.append(f"model.{key}={mine!r} (the checkpoint has {theirs!r})")
    if clash:
        raise ConfigError(f"{source} fixes the model's shape; remove these overrides: {', '.join(clash)}")


def total_steps_for(cfg: Config, steps_per_epoch: int) -> int:
    """Optimizer steps of the run (`steps_per_epoch` counts optimizer steps)."""
    t = cfg.train
    if t.max_steps is not None:
        return int(t.max_steps)
    if t.max_tokens is not None:
        return max(1, math.ceil(float(t.max_tokens) / t.global_batch_tokens))
    if t.epochs is not None:
        return max(1, steps_per_epoch * t.epochs)
    raise ConfigError("set one of train.max_steps, train.max_tokens or train.epochs")


@dataclass
class _Run:
    """What `_setup` and `_restore` build and the loop uses: the run's own config copy, the process
    layout, the data, and the model with its optimizer and EMA."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    out_dir: Path
    layout: BatchLayout
    loaders: list[PackedLoader]  # one per micro-step slot
    total_steps: int
    tok_dir: str | None
    model: HRMTextLM
    opt: AdamAtan2
    ema: ModelEMA
    use_bf16: bool
    resume_path: Path | None
    start_step: int = 0
    elapsed_offset: float = 0.0


@dataclass
class _LoopEnd:
    """Where the loop stopped: the last completed step and what to save for it."""

    step: int
    losses: list[float]
    evals: list[dict[str, Any]]
    final: Path | None  # newest checkpoint written by the loop
    saved_at: int  # step of that checkpoint (-1: none)
    partial: int  # micro-steps of a step dropped on a stop signal
    data_state: dict[str, Any] | None  # loader position before the dropped step


def train(
    cfg: Config,
    resume: str | None = "auto",
    on_step: Callable[[int, float], None] | None = None,
    eval_fn: Callable[[HRMTextLM, int], dict[str, float]] | None = None,
    progress: bool = True,
    resume_data: str = "saved",
) -> TrainResult:
    """Run training as configured. `resume`: "auto" (newest complete checkpoint in out_dir, if any),
    a checkpoint path, or None (start fresh). `resume_data`: "saved" continues the checkpoint's
    data position exactly (the batch layout must match), "fresh" restarts the data at the
    beginning of the checkpoint's epoch (after a batch change). Returns per-step losses and the
    final checkpoint. The caller's `cfg` is never changed."""
    cfg = copy.deepcopy(cfg)  # the run edits its own copy (vocab, init_from, resume, device defaults)
    data, tok = check_data(cfg)
    if eval_fn is None and cfg.wants_eval_during_training():
        # evaluation needs the engine and the suites, a floor above training: its caller builds it
        raise ConfigError(
            "eval.every is set but no eval_fn was given: `hrm-text train` builds it; from Python pass "
            "eval_fn=hrm_text.eval.during_training.make_eval_fn(cfg)"
        )
    dist = init_distributed()
    try:
        try:
            run = _setup(cfg, dist, data, tok, resume)
            if run.resume_path is not None:
                _restore(run, resume_data)
        except torch.OutOfMemoryError as e:  # the weights and their states alone do not fit
            raise OutOfMemory(setup_out_of_memory_message(cfg, dist.world_size, _device(dist))) from e
        if run.resume_path is None and dist.is_main:
            log.info("model %s: %s", cfg.model.preset or cfg.model.arch, count_params(cfg.model))
        peak, peak_src = device_peak_flops(run.device)
        t = cfg.train
        logger = MetricsLogger(run.out_dir, total_steps=run.total_steps, price_per_gpu_hour=t.price_per_gpu_hour,
                               num_gpus=dist.world_size, peak_flops=peak, peak_source=peak_src,
                               tensorboard=t.tensorboard, wandb=t.wandb, is_main=dist.is_main,
                               start_step=run.start_step, elapsed_offset=run.elapsed_offset, progress=progress,
                               config=cfg.to_dict())
        if dist.is_main:
            log.info("training on %s; %s", run.device, run.layout.describe(run.loaders[0].steps_per_epoch, run.total_steps))
        stop = _StopFlag()
        stop.install()
        try:
            end = _loop(run, logger, stop, on_step, eval_fn)
        except torch.OutOfMemoryError as e:  # a setting the user can change: say which, not a traceback
            _close(run, logger, stop)
            raise OutOfMemory(out_of_memory_message(run)) from e
        return _finish(run, logger, stop, end)
    finally:
        cleanup()


def _setup(cfg: Config, dist: DistInfo, data: SampledData, tok: TextTokenizer, resume: str | None) -> _Run:
    """Batch layout and loaders, the model (fresh, `train.init_from`, or the resumed checkpoint's
    shape), its FSDP2 wrapping and compilation, optimizer and EMA. Edits `cfg`, the run's copy."""
    device = _device(dist)
    t = cfg.train
    note = apply_device_defaults(cfg, device.type, dist.world_size, data.metadata.get("max_len"))
    layout = batch_layout(cfg, dist.world_size, note)
    tokens_per_micro = cfg.data.tokens_per_rank * dist.world_size
    accum = layout.accum
    if accum * tokens_per_micro != t.global_batch_tokens and dist.is_main:
        log.warning("global batch %d tokens is not a multiple of %d ranks x %d tokens; using %d micro-steps (%d tokens)",
                    t.global_batch_tokens, dist.world_size, cfg.data.tokens_per_rank, accum, accum * tokens_per_micro)
    # One loader per micro-step slot of a "virtual world" of world_size x accum rows per optimizer
    # step: rank r takes rows r, W + r, 2W + r, ... of each planned step. The rows of an optimizer
    # step are then the same whatever W and accum are (1 process x 2 micro-steps sees exactly
    # what 2 processes x 1 see), and the loader state can be restored on another GPU count.
    virtual_world = dist.world_size * accum
    loaders: list[PackedLoader] = []
    for m in range(accum):  # the epoch plan covers all slots: computed once, shared
        loaders.append(PackedLoader(data, cfg.data.tokens_per_rank, rank=m * dist.world_size + dist.rank,
                                    world_size=virtual_world, seed=cfg.data.seed, prefetch=cfg.data.num_workers > 0,
                                    share_plans_with=loaders[0] if loaders else None))
    total_steps = total_steps_for(cfg, loaders[0].steps_per_epoch)

    init_from = t.init_from
    resume_path: Path | None = None
    if resume == "auto":
        resume_path = ckpt.find_latest(Path(t.out_dir))
    elif resume:
        resume_path = Path(resume)
    if resume_path is not None:
        init_from = None  # the checkpoint holds everything, including the architecture
        cfg.model = config_from_dict(ckpt.read_checkpoint_config(resume_path)).model
    model = build_model(cfg, tok.vocab_size, device, init_from)
    if t.lora is not None:  # adapters only: base frozen; optimizer and EMA see trainable params
        apply_lora(model, t.lora, seed=t.seed)
    use_bf16 = t.dtype == "bf16" and device.type == "cuda"
    if use_bf16:  # the estimate is of a bf16 step
        budget_note = apply_memory_defaults(cfg, torch.cuda.get_device_properties(device).total_memory, dist.world_size)
        if budget_note and dist.is_main:
            log.info("%s", budget_note)
    if dist.world_size > 1:
        apply_fsdp2(model, model.blocks(), mp_dtype=torch.bfloat16 if use_bf16 else None,
                    reshard_after_forward=t.fsdp_reshard_after_forward, replicate=t.fsdp_replicate,
                    keep_gathered=t.fsdp_keep_gathered)
    prepare_model(model, t, device)
    opt = AdamAtan2([p for p in model.parameters() if p.requires_grad], lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    ema = ModelEMA(model, decay=t.ema_decay, warmup=t.ema_warmup)
    return _Run(cfg, dist, device, Path(t.out_dir), layout, loaders, total_steps, tok.source_dir, model, opt, ema,
                use_bf16, resume_path)


def _restore(run: _Run, resume_data: str) -> None:
    """Weights, optimizer, EMA, step, data position and RNG from `run.resume_path`."""
    assert run.resume_path is not None
    state = ckpt.load_checkpoint(run.resume_path, run.model, run.opt, run.ema)
    run.start_step = int(state["step"])
    run.elapsed_offset = float(state.get("extra", {}).get("elapsed_s", 0.0))
    pos = state.get("loader_state")
    if pos is not None and resume_data == "fresh":
        pos = {"epoch": int(pos["epoch"]), "batch": 0}  # no layout keys: any batch accepts it
        if run.dist.is_main:
            log.info("--resume-data fresh: data position restarts at the beginning of epoch %d", pos["epoch"])
    if pos is not None:
        try:
            for ld in run.loaders:
                ld.load_state_dict(pos)
        except ValueError as e:
            saved_dict = {**ckpt.read_checkpoint_config(run.resume_path), "extra": state.get("extra", {})}
            raise ConfigError(resume_mismatch_message(run.resume_path, saved_dict, run.layout, str(e))) from None
    ckpt.restore_rng(state["rng"])
    if run.dist.is_main:
        log.info("resumed from %s at step %d", run.resume_path, run.start_step)


def _save(run: _Run, logger: MetricsLogger, step: int, data_pos: dict[str, Any]) -> Path:
    return ckpt.save_checkpoint(run.out_dir, step, run.model, run.opt, run.ema, data_pos, run.cfg.to_dict(), run.tok_dir,
                                run.cfg.train.ckpt_keep, extra={"elapsed_s": logger.elapsed, "processes": run.dist.world_size})


def _loop(
    run: _Run,
    logger: MetricsLogger,
    stop: _StopFlag,
    on_step: Callable[[int, float], None] | None,
    eval_fn: Callable[[HRMTextLM, int], dict[str, float]] | None,
) -> _LoopEnd:
    """Optimizer steps until `total_steps`, the end of the data, or a stop signal: K and LR from
    their schedules, the micro-steps, the optimizer and EMA, logging, evaluation, checkpoints."""
    cfg, t, dist, device, model, opt = run.cfg, run.cfg.train, run.dist, run.device, run.model, run.opt
    loaders, loader, total_steps = run.loaders, run.loaders[0], run.total_steps
    end = _LoopEnd(step=run.start_step, losses=[], evals=[], final=None, saved_at=-1, partial=0, data_state=None)
    interval = {"loss": 0.0, "correct": 0.0, "count": 0.0, "tokens": 0.0, "flops": 0.0}
    flops_per_token: dict[int, float] = {}
    while end.step < total_steps and not stop.agreed:
        # schedules take the 1-based number of the step about to run (as the reference trainer)
        K = bp_steps_at(end.step + 1, total_steps, t, cfg.model.arch)
        lr = lr_at(end.step + 1, t, total_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        end.data_state = loader.state_dict()  # the position saved if this step is interrupted
        try:
            cpu_batches = [apply_objective(next(ld), t.objective) for ld in loaders]
        except StopIteration:
            break
        # token counts from the host copies: no device sync in the step
        loss_tokens = float(sum(b.num_loss_tokens for b in cpu_batches))
        real_tokens = float(sum(b.num_tokens for b in cpu_batches))
        micro: list[PackedBatch] = [b.with_loss_index().to(device, non_blocking=True) for b in cpu_batches]
        count = torch.tensor(loss_tokens, device=device)
        denom = (all_reduce_sum(count) if dist.world_size > 1 else count).clamp_min(1.0)
        loss_acc = torch.zeros((), device=device)
        correct_acc = torch.zeros((), device=device)
        for i, b in enumerate(micro):
            if stop.poll():  # between micro-steps: a long step must not delay the exit
                end.partial = i
                break
            if dist.world_size > 1:  # reduce-scatter gradients once, after the last micro-batch
                model.set_requires_gradient_sync(i == len(micro) - 1)  # type: ignore[operator]
            out = forward_backward(model, b, K, denom, run.use_bf16, t.recompute_calls)
            loss_acc += out.loss_sum
            correct_acc += out.num_correct.float()
        if dist.world_size > 1 and t.fsdp_keep_gathered:  # the next forward must gather the updated weights
            reshard_all(model)
        if stop.agreed:  # drop the partial step (gradients; its batches via data_state)
            opt.zero_grad(set_to_none=True)
            break
        opt.step_with_ema(run.ema, model)  # the EMA folded into the optimizer's pass where it can be
        opt.zero_grad(set_to_none=True)
        end.step += 1
        step = end.step
        stats = torch.stack([loss_acc, correct_acc, torch.tensor(real_tokens, device=device), denom])
        if dist.world_size > 1:  # denom is already global; summing it over ranks is undone below
            stats = all_reduce_sum(stats)
        s_loss, s_correct, s_tokens, s_denom = stats.tolist()  # one device->host copy per step
        s_denom /= dist.world_size
        step_loss = s_loss / s_denom
        end.losses.append(step_loss)
        logger.step_done(step, s_tokens, step_loss)
        interval["loss"] += s_loss
        interval["correct"] += s_correct
        interval["count"] += s_denom
        interval["tokens"] += s_tokens
        if K not in flops_per_token:
            flops_per_token[K] = train_flops_per_token(cfg.model, K)
        interval["flops"] += s_tokens * flops_per_token[K]
        if on_step is not None:
            on_step(step, step_loss)
        if step % t.log_every == 0 or step == total_steps:
            logger.log_train(step, loss=interval["loss"] / max(interval["count"], 1), accuracy=interval["correct"] / max(interval["count"], 1),
                             tokens=interval["tokens"], flops=interval["flops"], lr=lr, bp_steps=K, epoch=loader.epoch)
            interval = dict.fromkeys(interval, 0.0)
        if eval_fn is not None and cfg.eval.every > 0 and step % cfg.eval.every == 0:
            with run.ema.swap(model):
                res = eval_fn(model, step)
            model.train()
            end.evals.append({"step": step, **res})
            logger.log(step, res, prefix="eval/")
        if t.ckpt_every > 0 and step % t.ckpt_every == 0 and step < total_steps:
            end.final, end.saved_at = _save(run, logger, step, loader.state_dict()), step
    return end


def _finish(run: _Run, logger: MetricsLogger, stop: _StopFlag, end: _LoopEnd) -> TrainResult:
    """The last checkpoint (unless the loop just wrote it; on a stop signal at the dropped step's
    data position), then close the logger, signal handlers and loaders."""
    step = end.step
    if stop.agreed and run.dist.is_main:
        log.warning("received %s: dropped the step in progress (%d of %d micro-steps done); saving step %d "
                    "and exiting", stop.signal_name or "a stop signal on another rank", end.partial, run.layout.accum, step)
    final = end.final
    if (step > run.start_step or final is None) and end.saved_at != step:
        assert not stop.agreed or end.data_state is not None
        final = _save(run, logger, step, end.data_state if stop.agreed else run.loaders[0].state_dict())
    _close(run, logger, stop)
    barrier()
    return TrainResult(step, end.losses, final, stop.agreed, end.evals)


def _close(run: _Run, logger: MetricsLogger, stop: _StopFlag) -> None:
    logger.close()
    stop.restore()
    for ld in run.loaders:
        ld.close()


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory: in a training step (the message names the settings that
    would fit: train.fp8, train.activation_memory_budget, train.recompute_calls, data.tokens_per_rank)
    or while placing the model before the first step (it names the states' size and sharding)."""


def memory_settings(cfg: Config, cuda: bool, float8: bool) -> list[tuple[str, str]]:
    """(setting, what it does) for each change that lowers a training step's memory on this device
    (`float8`: it has float8 GEMMs), leaving out those already on or at their limit. Figures: XL,
    K = 5, 12,288-token rows, one H100 (docs/PERFORMANCE.md)."""
    t, rows = cfg.train, cfg.data.tokens_per_rank
    out = []
    if float8 and not t.fp8:
        out.append(("train.fp8=true", "float8 projections on H100/H200-class GPUs (XL at 12,288-token rows: 71 GB)"))
    if cuda and t.compile and t.activation_memory_budget > 0.5:  # read when the blocks compile (CUDA only)
        lower = FITTING_BUDGET if t.activation_memory_budget > FITTING_BUDGET else 0.5
        out.append((f"train.activation_memory_budget={lower}",
                    "the compiler recomputes cheap activations in backward (bf16 XL at 12,288-token rows: 0.8 71 GB; 0.5 48 GB with float32 states)"))
    if t.recompute_calls < t.bp_max_steps:  # at most every recorded call
        out.append((f"train.recompute_calls={t.recompute_calls + 1}", "one more recorded stack call recomputed in backward (about 10 GB less at XL)"))
    if rows >= 1024:
        out.append((f"data.tokens_per_rank={rows // 2}", "shorter rows: the same global batch, with twice the micro-steps"))
    return out


def _device_words(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    return f"{torch.cuda.get_device_name(device)} ({total:.0f} GiB; {peak:.1f} GiB allocated at the peak)"


def setup_out_of_memory_message(cfg: Config, world_size: int, device: torch.device) -> str:
    """Out of memory before the first step (placing the model, its optimizer and EMA): no step
    setting helps, only more ranks to shard over or a smaller model."""
    n = count_params(cfg.model).total
    states = sharded_state_bytes(cfg.model, world_size) / 2**30
    return (f"out of memory on {_device_words(device)} while placing the model: "
            f"{cfg.model.preset or cfg.model.arch} has {n / 1e6:,.0f}M parameters, and training holds their float32 "
            f"weights, gradients, Adam moments and EMA ({states:,.1f} GiB per process over {world_size} process(es)) "
            "before any activation. Shard them over more GPUs (torchrun --nproc_per_node=N -m hrm_text.cli train ..., "
            "FSDP2) or choose a smaller model.preset; `hrm-text plan` estimates the memory per GPU.")


def out_of_memory_message(run: _Run) -> str:
    """What ran out, the settings that would need less memory, and the newest checkpoint."""
    cfg, device = run.cfg, run.device
    where, cuda = _device_words(device), device.type == "cuda"
    precision = "float8" if cfg.train.fp8 else "bf16" if run.use_bf16 else "float32"
    lines = [f"out of memory on {where}, training {cfg.model.preset or cfg.model.arch} with "
             f"{cfg.data.tokens_per_rank:,}-token rows ({run.layout.accum} micro-step(s) per optimizer step, {precision}). "
             "Settings that need less memory:"]
    settings = memory_settings(cfg, cuda, float8_gemms(device))
    width = max((len(k) for k, _ in settings), default=0)
    lines += [f"  {k.ljust(width)}  {why}" for k, why in settings]
    latest = ckpt.find_latest(run.out_dir)
    lines.append(f"The newest checkpoint: {latest}" if latest is not None else "No checkpoint was written.")
    return "\n".join(lines)
