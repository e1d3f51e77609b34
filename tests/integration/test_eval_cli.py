"""`hrm-text eval` end to end on the tiny trained model: builtin suite, the paper suite on the
published-format fixtures, and the offline missing-data path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hrm_text.cli import app

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval"


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
    assert "item-weighted exact match" in r.output and "unweighted group mean" in r.output  # printed too


def test_eval_builtin_prints_split_table_and_writes_beside_the_run(
        runner: CliRunner, trained_tiny: Path, tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per held-out file: n, item-weighted exact, groups, unweighted group mean; the `all` row has
    both averages and they are the ones recomputed from the items. Without --out the results land
    in RUN/eval/<step>-builtin, nothing in the current directory."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_tiny.parent, run)
    heldout = tmp_path / "corpus" / "heldout"
    heldout.mkdir(parents=True)
    rows = [json.loads(line) for line in tiny_data["heldout"].read_text().splitlines()]
    (heldout / "arith_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    mods = [dict(r, module=f"m{i % 3}") for i, r in enumerate(rows[6:10])]  # groups of 2, 1, 1 items
    (heldout / "dm_math_interpolate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mods))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = runner.invoke(app, ["eval", str(run), "--suite", "builtin", "--corpus", str(tmp_path / "corpus"),
                            "--batch-size", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = run / "eval" / f"{trained_tiny.name}-builtin"
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    assert list(cwd.iterdir()) == []
    items = json.loads((out / "results.json").read_text())["items"]
    ex = {i["id"]: i["scores"]["exact"] for i in items}
    groups: dict[str, list[float]] = {}
    for i in items:
        groups.setdefault(i["group"], []).append(i["scores"]["exact"])
    want_items = 100 * sum(ex.values()) / len(ex)
    want_groups = sum(100 * sum(v) / len(v) for v in groups.values()) / len(groups)
    assert len(groups) == 4
    lines = {ln.split()[0]: ln.split() for ln in r.output.splitlines() if ln.split()}
    assert lines["arith_test"][1] == "6" and lines["dm_math_interpolate"][1] == "4" and lines["dm_math_interpolate"][3] == "3"
    assert lines["all"][1:5] == ["10", f"{want_items:.1f}%", "4", f"{want_groups:.1f}%"]
    assert f"item-weighted exact match (every item counts once):            {want_items:.1f}%" in r.output
    assert f"unweighted group mean (each of 4 groups counts once; headline): {want_groups:.1f}%" in r.output
    data = json.loads((out / "results.json").read_text())
    assert data["benchmarks"]["builtin"]["metrics"]["exact"] == pytest.approx(want_groups)
    assert "item-weighted exact match" in (out / "results.md").read_text()


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


def test_builtin_split_rows_weights_items_and_groups_differently() -> None:
    """Split a: groups g1 (3 items, all right) and g2 (1 item, wrong); split b: 1 group of 2, one
    right. Item-weighted: 4/6; group mean over the 3 groups: (100 + 0 + 50) / 3."""
    from hrm_text.eval.report import builtin_split_rows, builtin_split_table
    from hrm_text.eval.runner import ItemResult, SuiteResult, aggregate

    def it(split: str, k: int, group: str, ok: bool) -> ItemResult:
        return ItemResult("builtin", f"{split}:{k}", group, "", {"exact": float(ok)})

    items = [it("a", 0, "a/g1", True), it("a", 1, "a/g1", True), it("a", 2, "a/g1", True), it("a", 3, "a/g2", False),
             it("b", 0, "b", True), it("b", 1, "b", False)]
    res = SuiteResult(benchmarks=aggregate(items), items=items)
    rows = {r["split"]: r for r in builtin_split_rows(res)}
    assert rows["a"] == {"split": "a", "n": 4, "items_exact": 75.0, "groups": 2, "group_mean": 50.0}
    assert rows["b"] == {"split": "b", "n": 2, "items_exact": 50.0, "groups": 1, "group_mean": 50.0}
    assert rows["all"]["items_exact"] == pytest.approx(400 / 6) and rows["all"]["group_mean"] == pytest.approx(50.0)
    assert res.benchmarks["builtin"].score == pytest.approx(rows["all"]["group_mean"])  # the headline
    table = builtin_split_table(res)
    assert "item-weighted exact match (every item counts once):            66.7%" in table
    assert "unweighted group mean (each of 3 groups counts once; headline): 50.0%" in table


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
