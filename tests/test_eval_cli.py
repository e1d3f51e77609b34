"""`hrm-text eval` end to end on the tiny trained model: builtin suite, the paper suite on the
published-format fixtures, and the offline missing-data path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hrm_text.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_eval_builtin_writes_json_and_markdown(runner: CliRunner, trained_tiny: Path, tiny_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = runner.invoke(app, ["eval", str(trained_tiny), "--suite", "builtin", "--corpus", str(tiny_data["corpus"]),
                            "--limit", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    b = data["benchmarks"]["builtin"]
    assert b["n"] == 6 and b["primary"] == "exact" and 0.0 <= b["metrics"]["exact"] <= 100.0
    assert len(data["items"]) == 6 and all(isinstance(i["generation"], str) for i in data["items"])
    meta = data["meta"]
    assert meta["suite"] == "builtin" and meta["weights"] == "checkpoint:ema" and meta["decoding"] == "greedy"
    assert meta["device"] == "cpu" and meta["dtype"] == "float32"
    md = (out / "results.md").read_text()
    assert md.startswith("| benchmark |") and "builtin" in md
    assert "| benchmark |" in r.output  # the table is printed too


def test_eval_builtin_matches_direct_generation(runner: CliRunner, trained_tiny: Path, tiny_data: dict, tmp_path: Path) -> None:
    """The command's generations are the engine's greedy answers for the items' prompts."""
    import torch

    from hrm_text.checkpoint.loading import load_model
    from hrm_text.infer.textgen import make_engine, text_generate_fn

    out = tmp_path / "res"
    r = runner.invoke(app, ["eval", str(trained_tiny), "--suite", "builtin", "--corpus", str(tiny_data["heldout"]),
                            "--limit", "3", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    items = json.loads((out / "results.json").read_text())["items"]
    rows = [json.loads(line) for line in tiny_data["heldout"].read_text().splitlines()][:3]
    lm = load_model(trained_tiny)
    gen = text_generate_fn(make_engine(lm.model, lm.tokenizer, max_batch=3, max_len=512), lm.tokenizer,
                           max_new_tokens=len(rows[0]["response"]) + 8)
    with torch.no_grad():
        want = gen([(row["condition"], row["instruction"]) for row in rows])
    assert [i["generation"] for i in items][:1] == want[:1]


def test_eval_paper_offline_without_files_exits_2(runner: CliRunner, trained_tiny: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["eval", str(trained_tiny), "--suite", "paper", "--data-dir", str(empty),
                            "--device", "cpu", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    msg = r.output
    for folder, fname in [("gsm8k", "test.jsonl"), ("mmlu", "dev"), ("arc_challenge", "ARC-Challenge-Test.jsonl"),
                          ("drop", "drop_dataset_dev.json"), ("winogrande", "dev.jsonl")]:
        assert folder in msg and fname in msg, (folder, fname, msg)
    assert str(empty) in msg
    assert not (tmp_path / "o").exists()


def test_eval_builtin_without_corpus_exits_2(runner: CliRunner, trained_tiny: Path) -> None:
    r = runner.invoke(app, ["eval", str(trained_tiny), "--suite", "builtin", "--device", "cpu"])
    assert r.exit_code == 2 and "--corpus" in r.output


def test_eval_paper_fixtures_end_to_end(runner: CliRunner, trained_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    r = runner.invoke(app, ["eval", str(trained_tiny), "--suite", "paper", "--data-dir", str(FIXTURES / "original"),
                            "--limit", "2", "--max-new-tokens", "8", "--batch-size", "8", "--device", "cpu",
                            "--out", str(out), "--compare", "paper"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    benches = data["benchmarks"]
    assert set(benches) == {"gsm8k", "math", "drop", "mmlu", "arc_challenge", "hellaswag", "winogrande", "boolq"}
    for name, b in benches.items():
        assert 1 <= b["n"] <= 2, name
        assert 0.0 <= b["metrics"][b["primary"]] <= 100.0
    # context capped by the tiny model's 512 positions; the paper's is recorded as the request
    assert data["meta"]["model_max_seq_len"] == 512
    md = (out / "results.md").read_text()
    assert "HRM-Text 1B (paper)" in md and "Average (8)" in md
    # --only narrows, and a name matching nothing is a clean error
    r2 = runner.invoke(app, ["eval", str(trained_tiny), "--suite", "paper", "--data-dir", str(FIXTURES / "original"),
                             "--limit", "1", "--only", "nosuchbench", "--device", "cpu", "--out", str(tmp_path / "x")])
    assert r2.exit_code == 2 and "nosuchbench" in r2.output
