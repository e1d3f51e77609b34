"""A checkpoint written before the config was grouped by lifetime (model.bp_*, model.attn_backend,
data.heldout_*, train.eval_* in its config.json) still loads, resumes and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hrm_text.checkpoint import store as ckpt
from hrm_text.checkpoint.loading import load_model, model_config_of
from hrm_text.config import ConfigError, config_from_dict, load_config
from hrm_text.infer.export import export_hf
from hrm_text.train.trainer import train
from conftest import tiny_train_overrides

OLD_MODEL = {"bp_min_steps": 2, "bp_max_steps": 4, "bp_warmup_ratio": 0.2, "looped_bp_steps": 2,
             "rins_bp_steps": 4, "attn_backend": "sdpa"}


def _make_old(path: Path) -> None:
    """Rewrite a checkpoint's config.json in the earlier layout, and its manifest to match (as that
    version wrote it)."""
    d = json.loads((path / "config.json").read_text())
    for key in OLD_MODEL:
        d["train"].pop(key)
    d["model"].update(OLD_MODEL)
    ev = d["eval"]
    d["data"].update(heldout_dir=ev.pop("heldout_dir"), heldout_jsonl=ev.pop("heldout_jsonl"))
    d["train"].update(eval_every=ev.pop("every"), eval_limit=ev.pop("heldout_limit"))
    (path / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True))
    marker = path / ckpt.MARKER
    manifest = json.loads(marker.read_text())
    manifest["files"]["config.json"] = {"size": (path / "config.json").stat().st_size}
    marker.write_text(json.dumps(manifest))


def test_an_old_checkpoint_loads_resumes_and_exports(tiny_data, tmp_path):
    run = tmp_path / "run"
    first = train(load_config(None, tiny_train_overrides(tiny_data, run, 2)), resume=None, progress=False)
    old = first.final_checkpoint
    _make_old(old)
    assert ckpt.verify_checkpoint(old)[0]
    saved = json.loads((old / "config.json").read_text())
    assert saved["model"]["bp_max_steps"] == 4 and "bp_max_steps" not in saved["train"]

    # load: the shape comes back, the old keys land in train/eval
    cfg = config_from_dict(ckpt.read_checkpoint_config(old))
    assert cfg.train.bp_max_steps == 4 and cfg.train.attn_backend == "sdpa"
    assert model_config_of(old) == cfg.model
    loaded = load_model(old)
    assert loaded.model.attn_backend == "auto"  # a run-time choice: the saved one is not imposed
    ids = torch.tensor([[1, 5, 6, 2]])
    with torch.no_grad():
        logits = loaded.model(ids, torch.arange(4)[None], loaded.model.build_mask(torch.zeros_like(ids), ids > 0))
    assert torch.isfinite(logits).all()

    # resume: the old checkpoint continues to step 3 with the current spelling of the config
    res = train(load_config(None, tiny_train_overrides(tiny_data, run, 3)), resume=str(old), progress=False)
    assert res.steps == 3 and len(res.losses) == 1

    # export: a transformers folder from the old checkpoint
    out = export_hf(old, tmp_path / "hf")
    assert (out / "config.json").is_file()

    # the same old key typed by a user stops with the new spelling
    with pytest.raises(ConfigError, match=r"model\.bp_max_steps is now train\.bp_max_steps"):
        load_config(None, tiny_train_overrides(tiny_data, run, 3) + ["model.bp_max_steps=4"])
