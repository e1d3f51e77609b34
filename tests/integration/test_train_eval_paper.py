"""Evaluation during training with a --limit-ed paper suite from local files (config keys
eval.paper_data_dir / eval.paper_limit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrm_text.config import load_config
from hrm_text.eval.runner import MissingBenchmarkData
from hrm_text.model.lm import HRMTextLM
from hrm_text.eval.during_training import make_eval_fn

ORIGINAL = Path(__file__).parents[1] / "fixtures" / "eval" / "original"


def test_eval_fn_runs_builtin_and_limited_paper_suite(tiny_data: dict) -> None:
    cfg = load_config(None, ["model.preset=tiny", f"data.tokenizer_dir={tiny_data['tokenizer']}",
                             f"eval.heldout_jsonl={tiny_data['heldout']}", "eval.heldout_limit=4",
                             f"eval.paper_data_dir={ORIGINAL}", "eval.paper_limit=1", "eval.max_new_tokens=4",
                             "eval.batch_size=8"])
    fn = make_eval_fn(cfg)
    model = HRMTextLM(cfg.model).eval()
    out = fn(model, 10)
    assert 0.0 <= out["exact_match"] <= 100.0
    paper = {k for k in out if k.startswith("paper_")}
    assert paper == {"paper_gsm8k", "paper_math", "paper_drop", "paper_mmlu", "paper_arc_challenge",
                     "paper_hellaswag", "paper_winogrande", "paper_boolq"}
    assert all(0.0 <= out[k] <= 100.0 for k in paper)


def test_missing_paper_files_fail_at_start(tiny_data: dict, tmp_path: Path) -> None:
    cfg = load_config(None, ["model.preset=tiny", f"data.tokenizer_dir={tiny_data['tokenizer']}",
                             f"eval.paper_data_dir={tmp_path}", "eval.paper_limit=2"])
    with pytest.raises(MissingBenchmarkData):
        make_eval_fn(cfg)
