"""A checkpoint saved while K = 2 (the embedding has had no gradient yet) must resume."""

from __future__ import annotations

from pathlib import Path

import torch

from hrm_text.config import model_config
from hrm_text.data.batch import pack_rows
from hrm_text.model.lm import HRMTextLM
from hrm_text.checkpoint import store as ckpt
from hrm_text.train.optim import AdamAtan2, ModelEMA


def _setup(seed: int = 0) -> tuple[HRMTextLM, AdamAtan2, ModelEMA]:
    torch.manual_seed(seed)
    model = HRMTextLM(model_config("tiny", vocab_size=64), attn_backend="sdpa")
    opt = AdamAtan2(model.parameters(), lr=1e-3)
    return model, opt, ModelEMA(model, decay=0.9)


def test_resume_a_checkpoint_saved_at_k2(tmp_path: Path) -> None:
    model, opt, ema = _setup()
    batch = pack_rows([[([1, 5, 6, 2], [7, 8, 3])]], 8)
    model.loss(batch, bp_steps=2).loss_sum.backward()
    assert model.model.embed_tokens.weight.grad is None  # K = 2: no gradient reaches the embedding
    opt.step()
    opt.zero_grad(set_to_none=True)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, ema, None, {}, None, keep=0)
    model2, opt2, ema2 = _setup(seed=1)
    state = ckpt.load_checkpoint(path, model2, opt2, ema2)
    assert state["step"] == 1
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), n
    # the next step (K = 5, the embedding now gets a gradient) is the same in both
    for m, o in ((model, opt), (model2, opt2)):
        m.loss(batch, bp_steps=5).loss_sum.backward()
        o.step()
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.allclose(p, p2, atol=1e-6), n
