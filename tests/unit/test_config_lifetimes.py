"""Config by lifetime (docs/ARCHITECTURE.md#configuration): `model` is the network's shape only;
credit assignment and the attention kernel are training settings; evaluation during training is one
`eval` section; the engine's switches are an InferConfig. Old spellings stop with an error naming
the new key; configs saved in older checkpoints are migrated."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.config import (MOVED_KEYS, Config, ConfigError, InferConfig, TrainConfig, config_from_dict, infer_config,
                             load_config, migrate_saved_config, model_config)
from hrm_text.infer.decode_block import CompiledDecodeBlock, eager_block
from hrm_text.infer import engine as engine_module
from hrm_text.infer.engine import Engine, Request, SamplingParams, greedy
from hrm_text.model.lm import HRMTextLM
from hrm_text.model.schedule import build_schedule
from hrm_text.train.trainer import build_model

# a config as version <= issue 12b saved it in a checkpoint's config.json (Config.to_dict())
OLD_MODEL_KEYS = {"bp_min_steps": 3, "bp_max_steps": 4, "bp_warmup_ratio": 0.5, "looped_bp_steps": 3,
                  "rins_bp_steps": 5, "attn_backend": "sdpa"}


def _old_saved_config() -> dict:
    d = Config(model=model_config("tiny")).to_dict()
    for key in OLD_MODEL_KEYS:
        d["train"].pop(key)
    d["model"].update(OLD_MODEL_KEYS)
    d["data"]["heldout_dir"] = d["eval"].pop("heldout_dir")
    d["data"]["heldout_jsonl"] = "held/out.jsonl"
    d["eval"].pop("heldout_jsonl")
    d["train"]["eval_every"] = 7
    d["train"]["eval_limit"] = 9
    d["eval"].pop("every")
    d["eval"].pop("heldout_limit")
    return d


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_an_old_key_as_override_names_the_new_key(old: str) -> None:
    with pytest.raises(ConfigError, match=rf"{old} is now {MOVED_KEYS[old]}\b"):
        load_config(None, ["model.preset=tiny", f"{old}=1"])


def test_an_old_key_in_yaml_names_the_new_key(tmp_path: Path) -> None:
    f = tmp_path / "old.yaml"
    f.write_text("model:\n  preset: tiny\n  bp_max_steps: 4\n")
    with pytest.raises(ConfigError, match=r"model\.bp_max_steps is now train\.bp_max_steps"):
        load_config(f)
    f.write_text("train:\n  eval_every: 100\n")
    with pytest.raises(ConfigError, match=r"train\.eval_every is now eval\.every"):
        load_config(f)


def test_attn_backend_in_model_config_points_at_train_and_inference() -> None:
    with pytest.raises(ConfigError, match=r"train\.attn_backend.*load_model.*HRMTextLM\(cfg, attn_backend"):
        model_config("tiny", attn_backend="sdpa")


def test_new_keys_load_and_are_checked_against_the_model() -> None:
    cfg = load_config(None, ["model.preset=tiny", "train.bp_max_steps=4", "train.attn_backend=sdpa",
                             "eval.every=5", "eval.heldout_jsonl=x.jsonl", "eval.heldout_limit=3"])
    assert (cfg.train.bp_max_steps, cfg.train.attn_backend) == (4, "sdpa")
    assert (cfg.eval.every, cfg.eval.heldout_jsonl, cfg.eval.heldout_limit) == (5, "x.jsonl", 3)
    assert cfg.wants_eval_during_training()
    assert "bp_max_steps" not in cfg.to_dict()["model"] and "attn_backend" not in cfg.to_dict()["model"]
    with pytest.raises(ConfigError, match=r"train\.bp_max_steps=9 exceeds the model's 8 stack calls"):
        load_config(None, ["model.preset=tiny", "train.bp_max_steps=9"])
    with pytest.raises(ConfigError, match=r"train\.attn_backend='xla' is not allowed"):
        load_config(None, ["train.attn_backend=xla"])
    with pytest.raises(ConfigError, match=r"eval\.every must be >= 0"):
        load_config(None, ["eval.every=-1"])


def test_an_old_checkpoint_config_is_migrated_silently() -> None:
    old = _old_saved_config()
    before = copy.deepcopy(old)
    cfg = config_from_dict(old)
    assert old == before  # the saved dict is not edited
    t = cfg.train
    assert (t.bp_min_steps, t.bp_max_steps, t.bp_warmup_ratio, t.looped_bp_steps, t.rins_bp_steps, t.attn_backend) == (
        3, 4, 0.5, 3, 5, "sdpa")
    assert (cfg.eval.every, cfg.eval.heldout_limit, cfg.eval.heldout_jsonl) == (7, 9, "held/out.jsonl")
    assert cfg.model == model_config("tiny")
    # a value already at the new place wins over the old one
    both = migrate_saved_config({"model": {"bp_max_steps": 4}, "train": {"bp_max_steps": 5}})
    assert both == {"model": {}, "train": {"bp_max_steps": 5}}


def test_the_baselines_read_their_recorded_calls_from_bp_steps() -> None:
    looped = build_schedule(model_config("tiny", arch="looped"))  # 4 calls
    assert looped.recorded(2) == (False, False, True, True)
    assert looped.recorded(9) == (True,) * 4 and looped.recorded(None) == (True,) * 4
    rins = build_schedule(model_config("tiny", arch="rins"))  # 7 L calls, then H
    assert rins.recorded(3) == (False,) * 4 + (True,) * 3 + (True,)
    t = TrainConfig()
    assert [t.final_bp_steps(a) for a in ("hrm", "trm", "looped", "rins", "transformer")] == [5, 5, 2, 4, 1]


def test_the_model_runs_the_training_attention_backend(tmp_path: Path) -> None:
    # flex is not the CPU default (auto picks sdpa there), so the mask's kind shows the setting arrived
    cfg = load_config(None, ["model.preset=tiny", "train.attn_backend=flex", f"train.out_dir={tmp_path}"])
    model = build_model(cfg, 64, torch.device("cpu"), None)
    assert model.attn_backend == "flex"
    mask = model.build_mask(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[True, True, False, False]]))
    assert mask.kind == "flex"
    assert HRMTextLM(model_config("tiny", vocab_size=64)).attn_backend == "auto"
    with pytest.raises(ValueError, match="attn_backend='xla' is not one of"):
        HRMTextLM(model_config("tiny", vocab_size=64), attn_backend="xla")


@pytest.fixture(scope="module")
def tiny_model() -> HRMTextLM:
    torch.manual_seed(0)
    return HRMTextLM(model_config("tiny", vocab_size=64), attn_backend="sdpa").eval()


def test_infer_config_reaches_the_engine(tiny_model: HRMTextLM) -> None:
    opts = InferConfig(compile=True, compile_mode="max-autotune-no-cudagraphs", fused_attention=False, gemv_rows=0,
                       cuda_graphs=False)
    eng = Engine(tiny_model, eoa_id=63, max_batch=2, max_len=32, options=opts)
    assert eng.options == opts
    assert isinstance(eng._block_fn, CompiledDecodeBlock) and not eng._block_fn.fused
    assert eng._block_fn.mode == "max-autotune-no-cudagraphs"
    eager = Engine(tiny_model, eoa_id=63, max_batch=2, max_len=32, options=InferConfig(compile=False))
    assert eager._block_fn is eager_block and not eager._use_graphs
    # keyword switches override the options' fields, and the caller's object is not changed
    kw = Engine(tiny_model, eoa_id=63, max_batch=2, max_len=32, options=opts, compile=False, gemv_rows=4)
    assert kw.options.compile is False and kw.options.gemv_rows == 4 and kw._block_fn is eager_block
    assert opts.compile is True and opts.gemv_rows == 0
    prompts = [[1, 5, 6, 2], [1, 7, 2]]
    assert greedy(eager, prompts, 4) == greedy(Engine(tiny_model, eoa_id=63, max_batch=2, max_len=32), prompts, 4)


def test_bad_infer_options_and_retired_environment_switches(tiny_model: HRMTextLM, monkeypatch, caplog) -> None:
    with pytest.raises(ConfigError, match="gemv_rows must be >= 0"):
        Engine(tiny_model, eoa_id=63, max_batch=1, max_len=16, options=InferConfig(gemv_rows=-1))
    with pytest.raises(ConfigError, match=r"infer\.compile_mode='fast' is not allowed"):
        infer_config(compile_mode="fast")
    assert infer_config(gemv_rows="2").gemv_rows == 2  # CLI strings are coerced
    monkeypatch.setenv("HRM_TEXT_DECODE_GEMV_ROWS", "8")
    monkeypatch.setattr(engine_module, "_warned_env", set())  # the warning is once per process
    with caplog.at_level(logging.WARNING, logger="hrm_text.infer.engine"):
        eng = Engine(tiny_model, eoa_id=63, max_batch=1, max_len=16)
    assert eng.options.gemv_rows == 1  # no longer read
    assert "HRM_TEXT_DECODE_GEMV_ROWS is no longer read; pass InferConfig(gemv_rows=...)" in caplog.text
    res = eng.generate([Request([1, 5, 2], SamplingParams(max_tokens=2))])
    assert len(res[0].token_ids) <= 2


def test_generate_refuses_a_bad_engine_option_before_loading(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "missing"), "hi", "--gemv-rows", "-1"])
    assert r.exit_code == 2 and "gemv_rows must be >= 0" in r.output
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "missing"), "hi", "--compile-mode", "fast"])
    assert r.exit_code == 2 and "compile_mode" in r.output
