"""Benchmark loading, prompts, the runner and the report, end to end on few-row fixtures in each
dataset's published format (tests/fixtures/eval/original: the original releases; the Hugging Face
Parquet layouts are written to a temporary folder with the Hub's schemas)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hrm_text.eval import report as R
from hrm_text.eval import scoring as S
from hrm_text.eval.runner import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    EvalItem,
    MissingBenchmarkData,
    benchmark_items,
    builtin_items,
    load_benchmark_rows,
    paper_items,
    run_suite,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval"
ORIGINAL = FIXTURES / "original"


def oracle_answer(item: EvalItem) -> str:
    """What a perfect model would write, in the format each benchmark's protocol expects."""
    if item.n_choices:
        return S.LETTERS[item.reference]
    if item.benchmark == "gsm8k":
        return f"Adding up gives {item.reference:,}. So the answer is \\boxed{{{item.reference:,}}}."
    if item.benchmark == "math":
        return f"Hence the answer is $\\boxed{{{item.reference}}}$."
    if item.benchmark == "drop":
        return ", ".join(item.reference[0])
    return str(item.reference)


def make_oracle(items: Sequence[EvalItem]) -> Callable[[list[tuple[str, str]]], list[str]]:
    by_prompt = {(it.condition, it.instruction): it for it in items}
    return lambda pairs: [oracle_answer(by_prompt[p]) for p in pairs]


def garbage(pairs: list[tuple[str, str]]) -> list[str]:
    return ["}} \\boxed{ I am not sure" for _ in pairs]


@pytest.fixture(scope="module")
def original_items() -> list[EvalItem]:
    return paper_items(ORIGINAL, source="local")


# Expected references, read by hand from the fixture files: proves the readers parse each format
# (a reader that, say, took the wrong column would still let an oracle built from items score 100).
EXPECTED_REFERENCES = {
    "gsm8k": [72, 10, 1250000],
    "math": ["\\frac{3}{4}", "2", "\\{-2, 2\\}"],
    "drop": [[["Chaz Schilens"]], [["2"]], [["Chaz Schilens", "Vonta Leach"]], [["12 March 1881"]]],
    "mmlu": [1, 3, 0, 2],  # abstract_algebra B; astronomy D, A, C
    "arc_challenge": [0, 2, 1],  # A, C, and "2" among numeric labels
    "hellaswag": [3, 3, 0],
    "winogrande": [0, 1],
    "boolq": [1, 0, 0],  # False -> "no" (B), True -> "yes" (A)
}


@pytest.mark.parametrize("bench", PAPER_BENCHMARKS)
def test_paper_benchmark_end_to_end(bench: str, original_items: list[EvalItem]) -> None:
    items = [it for it in original_items if it.benchmark == bench]
    spec = BENCHMARKS[bench]
    assert [it.reference for it in items] == EXPECTED_REFERENCES[bench]
    for it in items:
        assert it.condition == spec.condition
        assert it.max_context == spec.max_context
        assert it.instruction.strip()
    # a perfect model scores 100
    perfect = run_suite(items, make_oracle(items), batch_size=2)
    assert perfect.benchmarks[bench].score == pytest.approx(100.0)
    # garbage: 1/n credit for multiple choice, 0 for the generative benchmarks
    bad = run_suite(items, garbage, batch_size=2).benchmarks[bench]
    if spec.scoring == "mc":
        expected = 100.0 * sum(1.0 / it.n_choices for it in items) / len(items)
        assert bad.score == pytest.approx(expected)
        assert bad.metrics["invalid"] == pytest.approx(100.0)
    else:
        assert bad.score == 0.0


def test_protocol_conditions_and_shots(original_items: list[EvalItem]) -> None:
    got = {}
    for it in original_items:
        got.setdefault(it.benchmark, set()).add((it.condition, it.n_shots))
    assert got["gsm8k"] == {("synth,cot", 0)}
    assert got["math"] == {("synth,cot", 0)}
    assert got["drop"] == {("direct", 3)}
    assert got["arc_challenge"] == {("direct", 25)}
    assert got["hellaswag"] == {("direct", 10)}
    assert got["winogrande"] == {("direct", 5)}
    assert got["boolq"] == {("direct", 5)}
    # MMLU: 5 dev shots of the same subject, or all there are (abstract_algebra has 2 in the fixture)
    mmlu = {it.group: it.n_shots for it in original_items if it.benchmark == "mmlu"}
    assert mmlu == {"astronomy": 5, "abstract_algebra": 2}


def test_multiple_choice_prompt_shape(original_items: list[EvalItem]) -> None:
    it = next(i for i in original_items if i.benchmark == "mmlu" and i.group == "astronomy")
    text = it.instruction
    assert text.startswith("The following are multiple choice questions (with answers) about astronomy.")
    assert text.rstrip().endswith("Answer:")  # the response is the letter alone
    assert text.count("Answer:") == 6  # 5 solved shots + the open question
    assert "Extra dev question" not in text  # MMLU uses the first k dev questions, in order
    assert "\nA. " in text and "\nD. " in text
    arc = [i for i in original_items if i.benchmark == "arc_challenge"]
    assert all("easy question" not in i.instruction for i in arc)  # ARC-Easy files are excluded
    wg = [i for i in original_items if i.benchmark == "winogrande"]
    assert all("SUBSET ROW" not in i.instruction for i in wg)  # train_xs is inside train_xl
    hs = next(i for i in original_items if i.benchmark == "hellaswag" and i.id == "106")
    assert "[header]" not in hs.instruction and "[step]" not in hs.instruction


def test_drop_shots_show_answers(original_items: list[EvalItem]) -> None:
    it = next(i for i in original_items if i.benchmark == "drop")
    assert it.instruction.count("Passage:") == 4
    assert it.instruction.rstrip().endswith("Answer:")
    assert "Answer: 10" in it.instruction  # a solved shot: "Answer: 10x" houses


def test_shots_reproducible_and_limit_independent() -> None:
    a = paper_items(ORIGINAL, benchmarks=["hellaswag"], source="local")
    b = paper_items(ORIGINAL, benchmarks=["hellaswag"], source="local", limit=1)
    c = paper_items(ORIGINAL, benchmarks=["hellaswag"], source="local", seed=7)
    assert a[0].instruction == b[0].instruction
    assert [i.instruction for i in a] != [i.instruction for i in c]
    assert len(b) == 1


def test_mmlu_macro_average(original_items: list[EvalItem]) -> None:
    """MMLU averages subjects, not questions: 'always D' gets 1/3 on astronomy, 0 on algebra."""
    items = [it for it in original_items if it.benchmark == "mmlu"]
    res = run_suite(items, lambda pairs: ["D"] * len(pairs)).benchmarks["mmlu"]
    assert res.groups["astronomy"]["acc"] == pytest.approx(100 / 3)
    assert res.groups["abstract_algebra"]["acc"] == 0.0
    assert res.score == pytest.approx(100 / 6)  # macro; the micro average would be 25


def test_mmlu_long_subjects_use_three_shots_and_count_tokens_trims() -> None:
    test_rows = [{"question": "Q?", "subject": "high_school_us_history", "choices": ["a", "b", "c", "d"], "answer": 0},
                 {"question": "R?", "subject": "astronomy", "choices": ["a", "b", "c", "d"], "answer": 1}]
    dev_rows = [{"question": f"D{i}?", "subject": s, "choices": ["a", "b", "c", "d"], "answer": i % 4}
                for s in ("high_school_us_history", "astronomy") for i in range(5)]
    items = benchmark_items("mmlu", test_rows, dev_rows)
    assert {it.group: it.n_shots for it in items} == {"high_school_us_history": 3, "astronomy": 5}
    # a tokenizer stand-in: 1 token per character; the context then fits only a couple of shots
    budget = BENCHMARKS["mmlu"].max_context - BENCHMARKS["mmlu"].max_new_tokens
    full = len(items[1].instruction)
    per_shot = (full - len(benchmark_items("mmlu", test_rows[1:], dev_rows[:1] + dev_rows[5:6])[0].instruction)) // 4
    trimmed = benchmark_items("mmlu", test_rows, dev_rows, count_tokens=lambda s: len(s) + budget - full + 2 * per_shot)
    assert 0 < trimmed[1].n_shots < 5


def test_limit_and_only(original_items: list[EvalItem]) -> None:
    res = run_suite(original_items, make_oracle(original_items), limit=1)
    assert {b: r.n for b, r in res.benchmarks.items()} == {b: 1 for b in PAPER_BENCHMARKS}
    res = run_suite(original_items, make_oracle(original_items), only="ARC-C,gsm8k")
    assert set(res.benchmarks) == {"arc_challenge", "gsm8k"}
    res = run_suite(original_items, make_oracle(original_items), only=["astronomy"])  # a group
    assert set(res.benchmarks) == {"mmlu"} and res.benchmarks["mmlu"].n == 3
    res = run_suite(original_items, make_oracle(original_items), only="mmlu", limit=2)
    assert set(res.benchmarks["mmlu"].groups) == {"astronomy", "abstract_algebra"}  # round-robin
    with pytest.raises(ValueError, match="matches no benchmark"):
        run_suite(original_items, garbage, only="squad")


def test_runner_batches_and_checks_counts(original_items: list[EvalItem]) -> None:
    sizes: list[int] = []

    def gen(pairs: list[tuple[str, str]]) -> list[str]:
        sizes.append(len(pairs))
        assert all(isinstance(c, str) and isinstance(i, str) for c, i in pairs)
        return ["A"] * len(pairs)

    res = run_suite(original_items, gen, batch_size=4)
    assert max(sizes) == 4 and sum(sizes) == len(original_items) == res.meta["n_items"]
    with pytest.raises(ValueError, match="returned 1 texts"):
        run_suite(original_items, lambda pairs: ["A"], batch_size=3)
    # non-string outputs are scored as empty answers, not crashes
    res = run_suite(original_items, lambda pairs: [None] * len(pairs), only="boolq")  # type: ignore[list-item]
    assert res.benchmarks["boolq"].score == pytest.approx(50.0)


# ---------------------------------------------------------------------------------------------
# Hugging Face layouts (Parquet, the schemas `datasets` publishes)


HF_ROWS: dict[str, dict[str, list[dict]]] = {
    "gsm8k/main/test-00000-of-00001.parquet": [
        {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}],
    "math/algebra/test-00000-of-00001.parquet": [
        {"problem": "Solve $2x = 1$.", "level": "Level 1", "type": "Algebra", "solution": "$x = \\boxed{\\frac12}$"}],
    "drop/data/validation-00000-of-00001.parquet": [
        {"section_id": "s1", "query_id": "v1", "passage": "Ann and Bob came.", "question": "Who came?",
         "answers_spans": {"spans": ["Ann", "Bob"], "types": ["span", "span"]}}],
    "drop/data/train-00000-of-00001.parquet": [
        {"section_id": f"t{i}", "query_id": f"t{i}", "passage": f"There were {i} cats.", "question": "How many cats?",
         "answers_spans": {"spans": [str(i)], "types": ["number"]}} for i in range(4)],
    "mmlu/all/test-00000-of-00001.parquet": [
        {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}],
    "mmlu/all/dev-00000-of-00001.parquet": [
        {"question": f"{i}+0?", "subject": "elementary_mathematics", "choices": [str(i), "x", "y", "z"], "answer": 0}
        for i in range(5)],
    "mmlu/abstract_algebra/test-00000-of-00001.parquet": [  # a per-subject copy: `all/` must win
        {"question": "DUPLICATE", "subject": "abstract_algebra", "choices": ["a", "b", "c", "d"], "answer": 0}],
    "arc_challenge/ARC-Challenge/test-00000-of-00001.parquet": [
        {"id": "a1", "question": "Sky colour?", "choices": {"text": ["red", "blue", "green"], "label": ["A", "B", "C"]},
         "answerKey": "B"}],
    "arc_challenge/ARC-Challenge/train-00000-of-00001.parquet": [
        {"id": f"tr{i}", "question": f"T{i}?", "choices": {"text": ["p", "q", "r", "s"], "label": ["A", "B", "C", "D"]},
         "answerKey": "D"} for i in range(3)],
    "hellaswag/data/validation-00000-of-00001.parquet": [
        {"ind": 1, "activity_label": "Cooking", "ctx_a": "A chef cracks an egg.", "ctx_b": "she", "ctx": "A chef cracks an egg. she",
         "endings": ["whisks it.", "flies.", "sings.", "sleeps."], "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"}],
    "hellaswag/data/train-00000-of-00001.parquet": [
        {"ind": 10 + i, "activity_label": "Run", "ctx_a": "A man runs.", "ctx_b": "he", "ctx": "A man runs. he",
         "endings": ["stops.", "x", "y", "z"], "source_id": "y", "split": "train", "split_type": "indomain", "label": "0"}
        for i in range(3)],
    "winogrande/winogrande_xl/validation-00000-of-00001.parquet": [
        {"sentence": "The trophy didn't fit in the case because _ was too big.", "option1": "the trophy",
         "option2": "the case", "answer": "1"}],
    "winogrande/winogrande_xl/train-00000-of-00001.parquet": [
        {"sentence": f"S{i} _.", "option1": "a", "option2": "b", "answer": "2"} for i in range(3)],
    "boolq/data/validation-00000-of-00001.parquet": [
        {"question": "is water wet", "answer": True, "passage": "Water is wet."},
        {"question": "is fire cold", "answer": False, "passage": "Fire is hot."}],
    "boolq/data/train-00000-of-00001.parquet": [
        {"question": f"is {i} even", "answer": i % 2 == 0, "passage": "Numbers."} for i in range(3)],
}

HF_EXPECTED = {
    "gsm8k": [5], "math": ["\\frac12"], "drop": [[["Ann", "Bob"]]], "mmlu": [1], "arc_challenge": [1],
    "hellaswag": [0], "winogrande": [0], "boolq": [0, 1],
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_layout")
    for rel, rows in HF_ROWS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    return root


@pytest.mark.parametrize("bench", PAPER_BENCHMARKS)
def test_hf_parquet_layout(bench: str, hf_dir: Path) -> None:
    items = paper_items(hf_dir, benchmarks=[bench], source="local")
    assert [it.reference for it in items] == HF_EXPECTED[bench]
    assert "DUPLICATE" not in "".join(it.instruction for it in items)
    res = run_suite(items, make_oracle(items))
    assert res.benchmarks[bench].score == pytest.approx(100.0)


def test_math500_jsonl_layout() -> None:
    items = paper_items(FIXTURES / "math500", benchmarks=["math"], source="local")
    assert [it.reference for it in items] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\sqrt{53}"]
    assert [it.group for it in items] == ["precalculus", "prealgebra"]
    gens = ["so $\\boxed{(3, \\frac{\\pi}{2})}$", "\\boxed{\\sqrt{53}}"]
    res = run_suite(items, lambda pairs: gens[: len(pairs)], batch_size=2)
    assert res.benchmarks["math"].score == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# Missing data


def test_missing_files_error_names_files_and_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "gsm8k").mkdir()  # present but empty: still missing
    with pytest.raises(MissingBenchmarkData) as exc:
        paper_items(tmp_path)  # source="auto", offline -> must not try the network
    msg = str(exc.value)
    for bench in PAPER_BENCHMARKS:
        assert f"{tmp_path}/{bench}/" in msg
    assert "test.jsonl" in msg and "#### N" in msg  # GSM8K's file and format
    assert "dev/<subject>_dev.csv" in msg and "cais/mmlu" in msg
    assert "ARC-Challenge-Test.jsonl" in msg and "hellaswag_val.jsonl" in msg
    assert "HF_DATASETS_OFFLINE" in msg and "EVALUATION.md" in msg
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_shot_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "dev.jsonl").write_text(
        json.dumps({"question": "q", "answer": True, "passage": "p"}) + "\n")
    with pytest.raises(MissingBenchmarkData, match="train"):
        paper_items(tmp_path, benchmarks=["boolq"], source="local")
    assert len(load_benchmark_rows("boolq", "validation", tmp_path, source="local")) == 1


def test_unknown_benchmark() -> None:
    with pytest.raises(ValueError, match="unknown benchmark"):
        paper_items(ORIGINAL, benchmarks=["squad"], source="local")


# ---------------------------------------------------------------------------------------------
# Built-in suite


def test_builtin_suite_per_module(tmp_path: Path) -> None:
    items = builtin_items(FIXTURES / "builtin")
    groups = {it.group for it in items}
    assert groups == {"arithmetic__add_long", "sudoku"}
    for it in items:
        assert it.max_new_tokens >= len(it.reference.encode()) + 1
    answers = {(it.condition, it.instruction): it.reference for it in items}
    wrong_sum = {"What is 5 + 7?"}

    def gen(pairs: list[tuple[str, str]]) -> list[str]:
        return ["13" if i in wrong_sum else answers[(c, i)] + "\n" for c, i in pairs]

    res = run_suite(items, gen).benchmarks["builtin"]
    assert res.groups["sudoku"]["exact"] == 100.0
    assert res.groups["arithmetic__add_long"]["exact"] == pytest.approx(200 / 3)
    assert res.score == pytest.approx((100 + 200 / 3) / 2)  # macro over modules
    # a mapping name -> path (what the corpus generator returns) and a row limit
    one = builtin_items({"sums": FIXTURES / "builtin" / "arithmetic__add_long.jsonl"}, limit=2)
    assert [it.id for it in one] == ["sums:0", "sums:1"]
    with pytest.raises(MissingBenchmarkData):
        builtin_items(tmp_path / "nope")
    with pytest.raises(MissingBenchmarkData, match="no held-out"):
        builtin_items(tmp_path)


# ---------------------------------------------------------------------------------------------
# Report


def test_report_json_roundtrip_and_compare(tmp_path: Path, original_items: list[EvalItem]) -> None:
    res = run_suite(original_items, make_oracle(original_items), meta={"ckpt": "fake"})
    json_path, md_path = R.write_report(res, tmp_path, compare=["paper"])
    back = R.load_results(json_path)
    assert back.scores() == res.scores() and back.meta["ckpt"] == "fake"
    assert len(back.items) == len(original_items)
    md = md_path.read_text()
    assert "| GSM8K | acc | 3 | 100.0 | 84.5 | 15.5 |" in md
    assert "Average (8)" in md and f"{R.PAPER_HRM}" in md
    # another run as the reference column
    worse = run_suite(original_items, garbage)
    other = R.save_results(worse, tmp_path / "garbage.json", include_items=False)
    table = R.markdown_table(res, R.load_reference(str(other)))
    assert "| MMLU | acc | 4 | 100.0 | 25.0 | 75.0 |" in table
    assert len(R.load_reference("paper:all")) == 5


def test_report_paper_reference_matches_spec() -> None:
    hrm = R.PAPER_REFERENCE[R.PAPER_HRM]
    assert hrm == {"mmlu": 60.7, "arc_challenge": 81.9, "hellaswag": 63.4, "winogrande": 72.4,
                   "boolq": 86.2, "drop": 82.2, "gsm8k": 84.5, "math": 56.2}
    assert set(R.PAPER_ORDER) == set(PAPER_BENCHMARKS)


def test_report_cli(tmp_path: Path, original_items: list[EvalItem], capsys: pytest.CaptureFixture[str]) -> None:
    items = [it for it in original_items if it.benchmark == "boolq"]
    path = R.save_results(run_suite(items, make_oracle(items)), tmp_path / "r.json")
    assert R.main([str(path), "--compare", "paper"]) == 0
    out = capsys.readouterr().out
    assert "| BoolQ | acc | 3 | 100.0 | 86.2 | 13.8 |" in out
    assert "Average (8)" not in out  # partial runs get no average
    with pytest.raises(FileNotFoundError):
        R.load_reference(str(tmp_path / "missing.json"))


def test_builtin_corpus_folder_uses_heldout_per_module() -> None:
    """A corpus folder: only heldout/ files count, and DeepMind-math files split by `module`."""
    items = builtin_items(FIXTURES / "builtin_corpus")
    assert {it.group for it in items} == {
        "arith_long", "dm_math_interpolate/algebra__linear_1d", "dm_math_interpolate/numbers__div_remainder"}
    assert all("TRAIN ROW" not in it.instruction for it in items)
    limited = builtin_items(FIXTURES / "builtin_corpus", limit=2)
    dm = [it.group for it in limited if it.group.startswith("dm_math")]
    assert sorted(dm) == ["dm_math_interpolate/algebra__linear_1d", "dm_math_interpolate/numbers__div_remainder"]
    res = run_suite(items, lambda pairs: ["3"] * len(pairs)).benchmarks["builtin"]
    assert res.groups["dm_math_interpolate/algebra__linear_1d"]["exact"] == 50.0
    assert res.score == pytest.approx(50.0 / 3)


def test_hub_path_uses_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no local files and the Hub allowed, rows come from `datasets.load_dataset` (faked here:
    no network in tests), one call per config, with MATH's config as the subject."""
    import datasets

    calls: list[tuple[str, str | None, str]] = []

    def fake_load(path: str, name: str | None = None, split: str = "") -> list[dict]:
        calls.append((path, name, split))
        return [{"problem": f"{name} problem", "solution": "\\boxed{1}", "level": "Level 1", "type": "X"}]

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    items = paper_items(tmp_path, benchmarks=["math"], source="auto")
    assert len(calls) == 7 and {c[0] for c in calls} == {"EleutherAI/hendrycks_math"}
    assert all(c[2] == "test" for c in calls)
    assert {it.group for it in items} == {c[1] for c in calls}  # subject = config name

    def failing_load(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", failing_load)
    with pytest.raises(MissingBenchmarkData, match="ConnectionError: no network"):
        paper_items(tmp_path, benchmarks=["gsm8k"], source="auto")
