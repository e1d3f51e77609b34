"""Decontamination removes planted rows that share 13 words with an evaluation item (paper suite
files or built-in held-out sets), keeps the rest byte for byte, and reports per source."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.data.decontaminate import EvalIndex, decontaminate_dir, index_from_pairs

GSM_Q = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four."
MATH_Q = "Find the number of ordered pairs of positive integers whose product is exactly one thousand and whose sum is even."
HELD = "Let q be the remainder when 187 is divided by 13 and then compute the value of q plus 11 times 3."


def _jsonl(p, rows):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _eval_dir(root):
    _jsonl(root / "gsm8k" / "test.jsonl", [{"question": GSM_Q, "answer": "She sells 9 eggs.\n#### 18"}])
    _jsonl(root / "math" / "test.jsonl", [{"problem": MATH_Q, "solution": "\\boxed{8}", "type": "Number Theory", "level": "Level 3"}])
    return root


def _train_dir(root):
    planted_gsm = "Question: JANET'S ducks lay 16 eggs per day; she eats three for breakfast every morning -- how many are left?"
    twelve = "ducks lay 16 eggs per day. She eats three for breakfast every"  # 12 words of the item: not enough
    _jsonl(root / "data" / "gsm8k_train.jsonl", [
        {"condition": "direct", "instruction": "What is 2 + 2?", "response": "4"},
        {"condition": "direct", "instruction": planted_gsm, "response": "9"},
        {"condition": "direct", "instruction": twelve + " zebra", "response": "ok"},
    ])
    (root / "data" / "gsm8k_train.jsonl").open("a").write("{not json\n")
    rows = [{"condition": "cot", "instruction": f"Problem {i}", "response": f"Solution {i}"} for i in range(5)]
    rows[3]["response"] = "As asked: " + MATH_Q.lower()
    p = root / "data_clustered" / "openmathinstruct2" / "cot.parquet"
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=2)
    _jsonl(root / "data" / "held.jsonl", [{"condition": "direct", "instruction": HELD.upper(), "response": "x"},
                                          {"condition": "direct", "instruction": "unrelated", "response": "y"}])
    return root


def test_index_words_and_short_texts():
    idx = index_from_pairs([("a", GSM_Q), ("b", "What is the capital city of the country France?"), ("c", "too short")])
    assert idx.match("xx " + GSM_Q.upper().replace(" ", "  ")) [0] == "a"  # case and spacing do not hide it
    assert idx.match("so: what is the capital city of the country france? paris")[0] == "b"  # 9 words, matched whole
    assert idx.match("too short") is None
    assert EvalIndex().n == 13


def test_planted_rows_removed_rest_kept(tmp_path):
    ev, tr = _eval_dir(tmp_path / "eval"), _train_dir(tmp_path / "train")
    (tmp_path / "corpus" / "heldout").mkdir(parents=True)
    _jsonl(tmp_path / "corpus" / "heldout" / "dm_math_interpolate.jsonl", [{"condition": "direct", "instruction": HELD, "response": "22"}])
    r = CliRunner().invoke(app, ["data", "decontaminate", str(tr), "--out", str(tmp_path / "out"), "--data-dir", str(ev),
                                 "--benchmarks", "gsm8k,math", "--builtin", str(tmp_path / "corpus")])
    assert r.exit_code == 0, r.output
    assert "3 of 11 rows removed" in r.output
    kept = [json.loads(x) if x.startswith("{\"") else x for x in (tmp_path / "out/data/gsm8k_train.jsonl").read_text().splitlines()]
    assert [k["response"] if isinstance(k, dict) else k for k in kept] == ["4", "ok", "{not json"]
    t = pq.read_table(tmp_path / "out/data_clustered/openmathinstruct2/cot.parquet")
    assert t.column("instruction").to_pylist() == ["Problem 0", "Problem 1", "Problem 2", "Problem 4"]
    assert t.schema == pq.read_schema(tr / "data_clustered/openmathinstruct2/cot.parquet")
    assert [json.loads(x)["response"] for x in open(tmp_path / "out/data/held.jsonl")] == ["y"]
    rep = json.loads((tmp_path / "out/decontamination.json").read_text())
    assert rep["sources"]["data_clustered/openmathinstruct2"]["by_label"] == {"math": 1}
    assert rep["sources"]["data/gsm8k_train"]["removed"] == 1
    assert rep["sources"]["data/held"]["by_label"] == {"builtin/dm_math_interpolate": 1}
    files = {f["path"]: f for f in rep["files"]}
    assert files["data/gsm8k_train.jsonl"]["unreadable_kept"] == 1
    assert files["data/gsm8k_train.jsonl"]["examples"][0]["row"] == 2
    assert "| data/gsm8k_train | 1 | 4 | 1 |" in (tmp_path / "out/decontamination.md").read_text()


def test_errors(tmp_path):
    tr = _train_dir(tmp_path / "train")
    r = CliRunner().invoke(app, ["data", "decontaminate", str(tr), "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "none"),
                                 "--benchmarks", "gsm8k"])
    assert r.exit_code == 2 and "--skip-missing" in r.output
    r = CliRunner().invoke(app, ["data", "decontaminate", str(tr), "--out", str(tmp_path / "o"), "--against", "builtin"])
    assert r.exit_code == 2 and "--builtin" in r.output
    idx = index_from_pairs([("a", GSM_Q)])
    try:
        decontaminate_dir(tr, tr / "inside", idx)
    except ValueError as e:
        assert "must not be" in str(e)
    else:
        raise AssertionError("an output inside the input must be refused")
