"""GRPO smoke: a few steps run, reward/KL/length/pass rate are logged, exact resume, rewards."""

from __future__ import annotations

import json

import pytest
import torch

from hrm_text.config import ConfigError, load_config
from hrm_text.checkpoint.loading import load_model
from hrm_text.post.grpo import group_advantages, run_grpo
from hrm_text.post.rewards import auto_reward, load_reward

pytest.importorskip("peft")


def digit_reward(completion: str, row: dict) -> float:
    """Partial credit (matching characters), so a barely trained base still gets a learning signal;
    also exercises the `module:function` reward path."""
    ref = str(row["response"])
    got = completion.strip()
    return sum(a == b for a, b in zip(got, ref)) / max(len(ref), len(got), 1)


def _over(tiny_data, base, out, steps: int, **extra) -> list[str]:
    over = {
        "train.init_from": str(base), "train.out_dir": str(out), "train.max_steps": steps, "train.lr": 1e-3,
        "train.lr_warmup_steps": 1, "train.tensorboard": "false", "train.log_every": 1, "train.ckpt_every": 0,
        "train.ema_decay": 0.9, "train.ema_warmup": "true", "train.compile": "false",
        "rl.prompts": str(tiny_data["heldout"]), "rl.heldout": str(tiny_data["heldout"]), "rl.eval_every": 2,
        "rl.eval_limit": 8, "rl.prompts_per_step": 2, "rl.group_size": 4, "rl.max_new_tokens": 5,
        "rl.micro_batch": 3, "rl.reward": "test_post_grpo:digit_reward", **extra,
    }
    return [f"{k}={v}" for k, v in over.items()]


def _records(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_lora_runs_logs_and_resumes_exactly(tiny_data, trained_tiny, tmp_path):
    lora = {"train.lora.rank": 4, "rl.kl_coef": 0.1}
    full = run_grpo(load_config(None, _over(tiny_data, trained_tiny, tmp_path / "a", 4, **lora)), resume=None, progress=False)
    assert full.steps == 4 and len(full.rewards) == 4
    recs = _records(tmp_path / "a")
    train_recs = [r for r in recs if "train/reward" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    for key in ("train/reward", "train/kl", "train/response_len", "train/pass_rate"):
        assert all(isinstance(r[key], float) for r in train_recs), key
    assert train_recs[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert train_recs[-1]["train/kl"] > 0  # the adapters moved away from the base
    assert any("eval/pass_rate" in r for r in recs)

    over = _over(tiny_data, trained_tiny, tmp_path / "b", 4, **lora, **{"train.ckpt_every": 2})
    part = run_grpo(load_config(None, over + ["train.max_steps=2"]), resume=None, progress=False)
    assert part.steps == 2 and (tmp_path / "b" / "step_000002" / "COMPLETE").is_file()
    rest = run_grpo(load_config(None, over), resume="auto", progress=False)
    assert rest.steps == 4
    assert part.rewards + rest.rewards == full.rewards
    a = load_model(full.final_checkpoint, merge_lora=False, use_ema=False).model.state_dict()
    b = load_model(rest.final_checkpoint, merge_lora=False, use_ema=False).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the GRPO checkpoint is a normal LoRA checkpoint: it loads merged for generate/chat/serve
    assert load_model(rest.final_checkpoint).model is not None


def test_grpo_full_weights_with_kl(tiny_data, trained_tiny, tmp_path):
    res = run_grpo(load_config(None, _over(tiny_data, trained_tiny, tmp_path, 2, **{"rl.kl_coef": 0.05})), resume=None, progress=False)
    assert res.steps == 2
    before = load_model(trained_tiny).model.state_dict()
    after = load_model(res.final_checkpoint, use_ema=False).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_config_errors(tiny_data, trained_tiny, tmp_path):
    with pytest.raises(ConfigError, match="rl.prompts"):
        run_grpo(load_config(None, _over(tiny_data, trained_tiny, tmp_path, 1, **{"rl.prompts": str(tmp_path / "nope.jsonl")})), resume=None)
    with pytest.raises(ConfigError, match="group_size"):
        load_config(None, ["rl.group_size=1"])


def test_group_advantages_and_rewards():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3)
    assert adv[:3].sum().abs() < 1e-5 and adv[0] > 0 > adv[1]
    assert torch.all(adv[3:] == 0)  # equal rewards: no signal
    assert auto_reward(" 42 ", {"instruction": "40+2=", "response": "42"}) == 1.0
    assert auto_reward("0.5", {"instruction": "q", "response": ".5", "module": "arithmetic__mul"}) == 1.0
    grid = "534678912\n672195348\n198342567\n859761423\n426853791\n713924856\n961537284\n287419635\n345286179"
    puzzle = "Solve this sudoku (. = empty):\n" + grid.replace("5", ".", 2)
    assert auto_reward(grid, {"instruction": puzzle}) == 1.0
    bad = grid[:-1] + "8"
    assert auto_reward(bad, {"instruction": puzzle}) == 0.0
    assert load_reward("boxed_math")("so \\boxed{\\frac{1}{2}}", {"response": "\\frac12"}) == 1.0
    assert load_reward("json:dumps") is json.dumps
    with pytest.raises(ValueError, match="no function"):
        load_reward("json:nothing_here")
