"""GRPO: group rollouts from our engine, group-normalised advantages, response-only policy loss.

One step (one process, one device):
    1. refresh the rollout copy: merged (LoRA) or copied (full) training weights -> Engine model
    2. P prompts x G sampled completions with the engine (PrefixLM prefill of the prompt, KV cache)
    3. rewards r; advantages A = (r - mean_group) / (std_group + eps)   (or unscaled: Dr. GRPO)
    4. loss = -sum_t A * log pi(y_t) + kl_coef * k3(pi, pi_ref) over response tokens, divided by
       the step's response-token count; one optimizer step (on-policy, so no ratio clipping)
The reference of the KL is the starting model: with LoRA the same model with adapters disabled
(no second copy), with full weights a frozen copy. Checkpoints, exact resume (model, optimizer,
EMA, prompt order, RNG) and metrics use the trainer's machinery.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hrm_text.config import Config, ConfigError, config_from_dict
from hrm_text.data.batch import IGNORE_INDEX, pack_rows
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.infer.engine import Engine, Request, SamplingParams
from hrm_text.model.lm import HRMTextLM
from hrm_text.model.lora import adapters_disabled, apply_lora, copy_merged_weights, has_lora
from hrm_text.post.rewards import SafeReward, load_reward
from hrm_text.checkpoint import store as ckpt
from hrm_text.train.metrics import MetricsLogger
from hrm_text.train.optim import AdamAtan2, ModelEMA
from hrm_text.train.schedule import lr_at
from hrm_text.train.trainer import build_model

log = logging.getLogger(__name__)


@dataclass
class GRPOResult:
    steps: int
    rewards: list[float]  # mean reward per step of this process's run
    final_checkpoint: Path | None
    eval_history: list[dict[str, Any]]


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """JSONL rows with a non-empty `instruction`; bad lines are skipped and counted in a warning."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"rl.prompts={p} does not exist (a JSONL of instruction/response rows)")
    rows, bad = [], 0
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(row, dict) or not str(row.get("instruction", "")).strip():
            bad += 1
            continue
        rows.append(row)
    if bad:
        log.warning("%s: skipped %d malformed rows (not JSON objects with an instruction)", p, bad)
    if not rows:
        raise ConfigError(f"rl.prompts={p} has no usable rows")
    return rows


class PromptOrder:
    """Shuffled passes over the prompts; (epoch, pos) is the whole state (saved for resume)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._make()

    def _make(self) -> np.ndarray:
        return np.random.RandomState((self.seed * 1_000_003 + self.epoch) % 2**32).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make()
            out.append(int(self._perm[self.pos]))
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict[str, int]) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._perm = self._make()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """[P*G] rewards (groups contiguous) -> advantages normalised within each group."""
    r = rewards.view(-1, group_size)
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, keepdim=True, unbiased=False) + eps)
    return a.reshape(-1)


def token_logprobs(model: HRMTextLM, batch: Any, bp_steps: int | None) -> torch.Tensor:
    """log pi(label) at every labelled position of a packed batch ([B, T]; 0 where unlabelled)."""
    mask = model.build_mask(batch.doc_ids, batch.is_prefix)
    h = model.hidden(batch.input_ids, batch.position_ids, mask, bp_steps)
    logits = model.lm_head(h).float()
    labels = batch.labels.clamp_min(0)
    lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    return lp * (batch.labels != IGNORE_INDEX)


def _tokenizer(cfg: Config, init_from: str | None) -> TextTokenizer:
    if cfg.data.tokenizer_dir:
        return TextTokenizer.load(cfg.data.tokenizer_dir)
    if init_from:
        from hrm_text.checkpoint.loading import resolve_checkpoint

        p = resolve_checkpoint(init_from)
        for cand in (p / "tokenizer", p):
            if (cand / "tokenizer.json").is_file():
                return TextTokenizer.load(cand)
    raise ConfigError("no tokenizer: set data.tokenizer_dir or use a train.init_from that holds one")


def run_grpo(cfg: Config, resume: str | None = "auto", progress: bool = True,
             on_step: Callable[[int, dict[str, float]], None] | None = None) -> GRPOResult:
    """Run GRPO as configured (sections `rl` and `train`). `resume` as for `train`."""
    t, rl = cfg.train, cfg.rl
    if t.max_steps is None:
        raise ConfigError("set train.max_steps (the number of GRPO steps)")
    if not rl.prompts:
        raise ConfigError("set rl.prompts (a JSONL of prompts with reference answers)")
    out_dir = Path(t.out_dir)
    resume_path: Path | None = ckpt.find_latest(out_dir) if resume == "auto" else (Path(resume) if resume else None)
    if resume_path is None and not t.init_from:
        raise ConfigError("set train.init_from (the model to post-train: a checkpoint or an hrm_text folder)")
    prompts = read_prompts(rl.prompts)
    reward = SafeReward(load_reward(rl.reward))
    heldout = read_prompts(rl.heldout)[: rl.eval_limit] if rl.heldout and rl.eval_every > 0 else []
    tok = TextTokenizer.load(resume_path / "tokenizer") if resume_path is not None else _tokenizer(cfg, t.init_from)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = t.dtype == "bf16" and dev.type == "cuda"

    if resume_path is not None:
        cfg.model = config_from_dict(ckpt.read_checkpoint_config(resume_path)).model
        model = build_model(cfg, tok.vocab_size, dev, None)
    else:
        model = build_model(cfg, tok.vocab_size, dev, t.init_from)
    if t.lora is not None:
        apply_lora(model, t.lora, seed=t.seed)
    ref: HRMTextLM | None = None
    if rl.kl_coef > 0 and t.lora is None:  # full weights: the starting weights, frozen
        ref = build_model(copy.deepcopy(cfg), tok.vocab_size, dev, t.init_from) if resume_path is not None else copy.deepcopy(model)
        ref.requires_grad_(False).eval()
    opt = AdamAtan2([p for p in model.parameters() if p.requires_grad], lr=t.lr, betas=(t.beta1, t.beta2),
                    weight_decay=t.weight_decay)
    ema = ModelEMA(model, decay=t.ema_decay, warmup=t.ema_warmup)
    order = PromptOrder(len(prompts), rl.seed)
    start, elapsed0 = 0, 0.0
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path, model, opt, ema)
        start = int(state["step"])
        elapsed0 = float(state.get("extra", {}).get("elapsed_s", 0.0))
        if state.get("loader_state"):
            order.load_state_dict(state["loader_state"])
        ckpt.restore_rng(state["rng"])
        log.info("resumed from %s at step %d", resume_path, start)

    # the rollout copy: adapter-free, in the rollout dtype, refreshed in place every step
    # prompts are encoded when first drawn (a 100k-row file would take minutes up front); a token
    # is at least one byte, so bytes + condition tags + <boq>/<eoq> bound every prompt's length
    cache: dict[int, list[int]] = {}

    def encode(i: int) -> list[int]:
        if i not in cache:
            row = heldout[i - len(prompts)] if i >= len(prompts) else prompts[i]
            cache[i] = tok.encode_prompt(str(row["instruction"]), str(row.get("condition") or "direct"))
        return cache[i]

    longest = max(len(str(r["instruction"]).encode("utf-8")) + len(str(r.get("condition") or "direct").split(",")) + 2
                  for r in prompts + heldout)
    max_len = min(cfg.model.max_seq_len, longest + rl.max_new_tokens + 2)
    rollout = HRMTextLM(cfg.model, init=False).to(device=dev, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    n_rows = rl.prompts_per_step * rl.group_size
    engine = Engine(rollout, eoa_id=tok.eoa_id, max_batch=max(n_rows, min(64, len(heldout) or 1)), max_len=max_len,
                    decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True))
    K = cfg.train.final_bp_steps(cfg.model.arch)

    logger = MetricsLogger(out_dir, total_steps=t.max_steps, price_per_gpu_hour=t.price_per_gpu_hour, num_gpus=1,
                           peak_flops=0.0, tensorboard=t.tensorboard, wandb=t.wandb, start_step=start,
                           elapsed_offset=elapsed0, progress=progress, config=cfg.to_dict())
    tok_dir = tok.source_dir
    step = start
    rewards_log: list[float] = []
    evals: list[dict[str, Any]] = []
    final: Path | None = None

    def save() -> Path:
        return ckpt.save_checkpoint(out_dir, step, model, opt, ema, order.state_dict(), cfg.to_dict(), tok_dir,
                                    t.ckpt_keep, extra={"elapsed_s": logger.elapsed, "kind": "grpo"})

    def evaluate() -> dict[str, float]:
        with ema.swap(model):
            copy_merged_weights(model, rollout)
        reqs = [Request(encode(len(prompts) + i), SamplingParams(max_tokens=rl.max_new_tokens), i) for i in range(len(heldout))]
        res = engine.generate(reqs)
        scores = [reward(r.text or "", row) for r, row in zip(res, heldout)]
        return {"reward": float(np.mean(scores)), "pass_rate": float(np.mean([s >= 1.0 for s in scores])) * 100}

    while step < t.max_steps:
        lr = lr_at(step + 1, t, t.max_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order.take(rl.prompts_per_step)
        copy_merged_weights(model, rollout)
        reqs = []
        for j, pi in enumerate(idx):
            for g in range(rl.group_size):
                seed = (rl.seed * 7_919 + step * 104_729 + j * 1_009 + g) % 2**31  # reproducible after resume
                reqs.append(Request(encode(pi), SamplingParams(max_tokens=rl.max_new_tokens, temperature=rl.temperature,
                                                                   top_p=rl.top_p, seed=seed), len(reqs)))
        results = engine.generate(reqs)
        rows = [prompts[pi] for pi in idx for _ in range(rl.group_size)]
        r = torch.tensor([reward(res.text or "", row) for res, row in zip(results, rows)], dtype=torch.float32)
        adv = group_advantages(r, rl.group_size, rl.scale_rewards)
        examples = [(res.prompt_ids, res.token_ids + ([tok.eoa_id] if res.finish_reason == "stop" else [])) for res in results]
        n_resp = sum(len(e[1]) for e in examples)
        pg_sum, kl_sum = 0.0, 0.0
        model.train()
        for s in range(0, len(examples), rl.micro_batch):
            chunk = examples[s : s + rl.micro_batch]
            row_len = max(len(p) + len(c) for p, c in chunk)
            batch = pack_rows([[e] for e in chunk], row_len, pad_id=tok.pad_id).to(dev)
            a = adv[s : s + rl.micro_batch].to(dev)[:, None]
            resp = (batch.labels != IGNORE_INDEX).float()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                lp = token_logprobs(model, batch, K)
            loss = -(a * lp * resp).sum()
            if rl.kl_coef > 0:
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                    ctx = adapters_disabled(model) if has_lora(model) else contextlib.nullcontext()
                    with ctx:
                        ref_lp = token_logprobs(ref if ref is not None else model, batch, None)
                d = (ref_lp - lp) * resp
                kl = (torch.exp(d) - d - 1.0) * resp  # k3 estimator: unbiased, >= 0
                loss = loss + rl.kl_coef * kl.sum()
                kl_sum += float(kl.sum().detach())
            (loss / max(n_resp, 1)).backward()
            pg_sum += float(-(a * lp.detach() * resp).sum())
        opt.step_with_ema(ema, model)
        opt.zero_grad(set_to_none=True)
        step += 1
        groups = r.view(-1, rl.group_size)
        metrics = {
            "reward": float(r.mean()),
            "reward_std": float(r.std(unbiased=False)),
            "kl": kl_sum / max(n_resp, 1),
            "response_len": n_resp / len(examples),
            "pass_rate": float((r >= 1.0).float().mean()) * 100,
            "groups_zero_std": float((groups.std(1, unbiased=False) == 0).float().mean()),
            "reward_errors": float(reward.errors),
            "lr": lr,
        }
        rewards_log.append(metrics["reward"])
        if on_step is not None:
            on_step(step, metrics)
        if step % t.log_every == 0 or step == t.max_steps:
            logger.log_train(step, loss=pg_sum / max(n_resp, 1), accuracy=metrics["pass_rate"] / 100, tokens=n_resp,
                             flops=0.0, **{k: v for k, v in metrics.items()})
        if heldout and step % rl.eval_every == 0:
            res = evaluate()
            evals.append({"step": step, **res})
            logger.log(step, res, prefix="eval/")
        if t.ckpt_every > 0 and step % t.ckpt_every == 0 and step < t.max_steps:
            final = save()
    if step > start or final is None:
        final = save()
    logger.close()
    return GRPOResult(step, rewards_log, final, evals)
