"""LoRA SFT through `train` (train.lora), exact resume, merged export and the PEFT adapter folder.

Task design: the base (`trained_tiny`) learned addition for 40 steps ("a+b=" -> the sum). The LoRA
task gives the same prompts another, fixed answer ("a+b=" -> "00"), which the base never produces:
its held-out exact-match is 0 and only the adapters can move it. The answer is deliberately
trivial so that ~30 CPU steps learn it every time: a copy task ("a+b=" -> "b+a") stayed at 0%
held-out after 40 LoRA steps (loss plateau 2.45), because a 40-step base cannot copy yet.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hrm_text.config import load_config
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.infer.export import export_hf
from hrm_text.checkpoint.loading import load_model
from hrm_text.model.lora import has_lora, lora_layers
from hrm_text.eval.during_training import exact_match
from hrm_text.train.trainer import train

from conftest import tiny_train_overrides

pytest.importorskip("peft")


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def swap_data(tiny_data, tmp_path_factory):
    """Corpus of the swap task tokenized with the base's tokenizer, plus a held-out file."""
    from hrm_text.data.sample import parse_rules, sample_corpus
    from hrm_text.data.tokenize import tokenize_sources

    root = tmp_path_factory.mktemp("swap")
    rng = random.Random(1)
    pairs = sorted({(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(2600)})
    rng.shuffle(pairs)
    rows = [{"condition": "direct", "instruction": f"{a}+{b}=", "response": "00"} for a, b in pairs]
    _write(root / "corpus" / "train" / "swap.jsonl", rows[:-64])
    _write(root / "corpus" / "heldout" / "swap_test.jsonl", rows[-64:])
    tokenize_sources([root / "corpus" / "train"], tiny_data["tokenizer"], root / "tokens", workers=1)
    sample_corpus(root / "tokens", root / "sampled", parse_rules({"context": 256}), epochs=2)
    return {**tiny_data, "sampled": root / "sampled", "heldout": root / "corpus" / "heldout" / "swap_test.jsonl"}


def _lora_overrides(data, base, out, steps: int, **extra) -> list[str]:
    return tiny_train_overrides(data, out, steps, **{
        "train.init_from": str(base), "train.lora.rank": 8, "train.lora.alpha": 16, "train.lr": 1e-2,
        "train.lr_warmup_steps": 3, "train.weight_decay": 0.0, "train.full_bp_from_start": "true", **extra})


def _em(model, tok, heldout) -> float:
    from hrm_text.eval.runner import builtin_items

    res = exact_match(model.eval(), tok, builtin_items(heldout), max_new_tokens=8)
    return next(iter(res.benchmarks.values())).score


@pytest.fixture(scope="module")
def lora_run(swap_data, trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    cfg = load_config(None, _lora_overrides(swap_data, trained_tiny, out, steps=30))
    res = train(cfg, resume=None, progress=False)
    return res.final_checkpoint


def test_lora_sft_moves_exact_match_on_a_split_the_base_fails(lora_run, trained_tiny, swap_data):
    tok = TextTokenizer.load(swap_data["tokenizer"])
    before = _em(load_model(trained_tiny).model, tok, swap_data["heldout"])
    loaded = load_model(lora_run)  # merged on load: generate/chat/serve see base + adapter
    assert not has_lora(loaded.model)
    after = _em(loaded.model, tok, swap_data["heldout"])
    assert before == 0.0
    assert after >= 90.0, (before, after)


def test_lora_checkpoint_trains_adapters_only(lora_run, trained_tiny):
    unmerged = load_model(lora_run, merge_lora=False).model
    assert has_lora(unmerged) and len(lora_layers(unmerged)) == 4 * 4  # 4 blocks x 4 projections
    base = load_model(trained_tiny).model.state_dict()
    sd = unmerged.state_dict()
    # frozen base: every base tensor is the starting checkpoint's, bit for bit
    for k, v in base.items():
        k2 = k if k in sd else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(sd[k2], v), k
    # the adapters moved (B starts at zero)
    assert any(float(v.abs().max()) > 0 for k, v in sd.items() if "lora_B" in k)


def test_lora_exact_resume(swap_data, trained_tiny, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume for 2 (losses and adapter weights)."""
    full = train(load_config(None, _lora_overrides(swap_data, trained_tiny, tmp_path / "a", 4)), resume=None, progress=False)
    over = _lora_overrides(swap_data, trained_tiny, tmp_path / "b", 4, **{"train.ckpt_every": 2})
    part = train(load_config(None, over[:] + ["train.max_steps=2"]), resume=None, progress=False)
    assert part.steps == 2
    rest = train(load_config(None, over), resume="auto", progress=False)
    assert rest.steps == 4
    assert part.losses + rest.losses == full.losses
    a = load_model(full.final_checkpoint, merge_lora=False, use_ema=False).model.state_dict()
    b = load_model(rest.final_checkpoint, merge_lora=False, use_ema=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def synthetic_lora(tiny_data, tmp_path_factory):
    """A LoRA checkpoint with random (non-zero) adapters and per-stack rank/scale, without training:
    the export tests then do not depend on how far a short CPU run gets."""
    from hrm_text.config import Config, LoraConfig, model_config
    from hrm_text.model.lm import HRMTextLM
    from hrm_text.model.lora import apply_lora
    from hrm_text.checkpoint.store import save_checkpoint

    tok = TextTokenizer.load(tiny_data["tokenizer"])
    lcfg = LoraConfig(rank=4, alpha=8, L_rank=2, L_scale=0.5)
    cfg = Config(model=model_config("tiny", vocab_size=tok.vocab_size))
    cfg.train.lora = lcfg
    model = HRMTextLM(cfg.model)
    apply_lora(model, lcfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("synthetic_lora")
    return save_checkpoint(out, 0, model, None, None, None, cfg.to_dict(), tiny_data["tokenizer"], keep=0)


def _hf_logits(model, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    tt = torch.zeros_like(ids)
    tt[:, :n_prompt] = 1
    with torch.no_grad():
        return model(input_ids=ids, token_type_ids=tt).logits


def _our_logits(model, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    T = ids.shape[1]
    pos = torch.arange(T)[None]
    doc = torch.zeros(1, T, dtype=torch.int32)
    pre = torch.zeros(1, T, dtype=torch.bool)
    pre[:, :n_prompt] = True
    with torch.no_grad():
        return model(ids, pos, model.build_mask(doc, pre))


@pytest.mark.parametrize("which", ["synthetic", "trained"])
def test_merged_export_equals_base_plus_adapter_and_peft_loads_it(which, request, swap_data, tmp_path):
    lora_run = request.getfixturevalue("synthetic_lora" if which == "synthetic" else "lora_run")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    tok = TextTokenizer.load(swap_data["tokenizer"])
    merged_dir = export_hf(lora_run, tmp_path / "merged", merge_lora=True)
    split_dir = export_hf(lora_run, tmp_path / "split")
    assert not (merged_dir / "adapter").exists() and (split_dir / "adapter" / "adapter_config.json").is_file()

    prompt = tok.encode_prompt("12+34=", "direct")
    ids = torch.tensor([prompt + tok.encode("46")])
    n = len(prompt)
    ours = _our_logits(load_model(lora_run).model, ids, n)
    base_only = _our_logits(load_model(split_dir).model, ids, n)  # the exported base, no adapter

    merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, attn_implementation="sdpa").eval()
    m_logits = _hf_logits(merged, ids, n)
    base = transformers.AutoModelForCausalLM.from_pretrained(split_dir, attn_implementation="sdpa").eval()
    with_adapter = peft.PeftModel.from_pretrained(base, str(split_dir / "adapter")).eval()
    a_logits = _hf_logits(with_adapter, ids, n)

    V = ours.shape[-1]
    assert torch.allclose(m_logits[..., :V], a_logits[..., :V], atol=1e-4), (m_logits - a_logits).abs().max()
    assert torch.allclose(a_logits[..., :V], ours, atol=1e-4), (a_logits[..., :V] - ours).abs().max()
    # the adapter matters: without it the logits differ (so the checks above can fail)
    assert (base_only - ours).abs().max() > 1e-2


def test_peft_adapter_loads_with_no_missing_keys(synthetic_lora, tmp_path):
    lora_run = synthetic_lora
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    out = export_hf(lora_run, tmp_path / "hf")
    base = transformers.AutoModelForCausalLM.from_pretrained(out)
    cfg = peft.PeftConfig.from_pretrained(str(out / "adapter"))
    model = peft.get_peft_model(base, cfg)
    sd = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    res = set_peft_model_state_dict(model, sd)
    missing_lora = [k for k in res.missing_keys if "lora_" in k]
    assert not missing_lora, missing_lora[:5]
    assert not res.unexpected_keys, res.unexpected_keys[:5]
    # 16 fused/plain projections -> 2 stacks x 2 blocks x (4 + 1 + 2 + 1) split modules, A and B each
    assert len(sd) == 2 * 2 * 8 * 2


def test_generate_cli_and_merge_flag_on_a_lora_checkpoint(synthetic_lora, tmp_path):
    from typer.testing import CliRunner

    from hrm_text.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["generate", str(synthetic_lora), "12+34=", "-n", "3", "--device", "cpu", "--no-stream"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export-hf", str(synthetic_lora), str(tmp_path / "m"), "--merge-lora"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "model.safetensors").is_file() and not (tmp_path / "m" / "adapter").exists()


def test_lora_config_errors():
    from hrm_text.config import ConfigError

    with pytest.raises(ConfigError, match="targets"):
        load_config(None, ["train.lora.targets=[qkv]"])
    with pytest.raises(ConfigError, match="rank"):
        load_config(None, ["train.lora.rank=0"])
    cfg = load_config(None, ["train.lora.L_scale=0.5"])  # a nested key alone enables LoRA with defaults
    assert cfg.train.lora is not None and cfg.train.lora.rank == 8 and cfg.train.lora.L_scale == 0.5
