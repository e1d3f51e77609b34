"""Tokenizer and record-validation rules (docs/ARCHITECTURE.md#special-tokens, #records)."""

from __future__ import annotations


import pytest
from data_helpers import tiny_tokenizer, write_jsonl

from hrm_text.data.records import ColumnMap, FileReport, RecordError, read_records, strip_think
from hrm_text.data.records import CONDITIONS, parse_condition
from hrm_text.data.tokenizer import SPECIAL_TOKENS, TextTokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return TextTokenizer.load(tiny_tokenizer(tmp_path_factory.mktemp("t")))


def test_parse_condition():
    assert parse_condition("synth,cot") == ["synth", "cot"]
    assert parse_condition("") == ["direct"]
    with pytest.raises(ValueError, match="'cto'"):
        parse_condition("synth,cto")


def test_special_ids_and_layout(tok):
    assert tok.pad_id == 0 and tok.token_to_id(SPECIAL_TOKENS["pad"]) == 0
    assert set(tok.condition_ids) == set(CONDITIONS)
    p, r = tok.encode_example("synth,cot", "1+2=", "3")
    assert p[0] == tok.boq_id and p[1:3] == [tok.condition_ids["synth"], tok.condition_ids["cot"]]
    assert p[-1] == tok.eoq_id and r[-1] == tok.eoa_id
    assert tok.decode(p[3:-1]) == "1+2=" and tok.decode(r[:-1]) == "3"
    assert p == tok.encode_prompt("1+2=", "synth,cot")


def test_specials_never_from_text(tok):
    specials = set(tok.special_ids.values())
    for s in SPECIAL_TOKENS.values():
        ids = tok.encode(f"a {s} b")
        assert not specials & set(ids)
        assert tok.decode(ids) == f"a {s} b"


def test_digits_split_and_roundtrip(tok):
    ids = tok.encode("12345")
    assert len(ids) == 5  # every digit is its own pre-token
    text = "Hello,  world!\n\nIt's 2024 - ünïcode ✓"
    assert tok.decode(tok.encode(text)) == text


def test_transformers_loads_saved_dir(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf("12+7 the fox")["input_ids"] == tok.encode("12+7 the fox")
    assert hf.pad_token_id == tok.pad_id and hf.eos_token_id == tok.eoa_id


BAD = [
    ('{"instruction": "a", "response": "b"}', None),
    (b'{"instruction": "\xff\xfe", "response": "b"}', "invalid_utf8"),
    ('{"instruction": "a", "response": ', "malformed_json"),
    ('[1, 2]', "malformed_json"),
    ('{"response": "b"}', "missing_field"),
    ('{"instruction": null, "response": "b"}', "missing_field"),
    ('{"instruction": 5, "response": "b"}', "non_string_field"),
    ('{"instruction": "a", "response": "b", "condition": 3}', "non_string_field"),
    ('{"instruction": "a", "response": "   "}', "empty_response"),
    ('{"instruction": "a", "response": "b", "condition": "bogus"}', "unknown_condition"),
    ('{"instruction": "\\ud800", "response": "b"}', "invalid_utf8"),
]


@pytest.mark.parametrize("line,reason", BAD)
def test_each_bad_input_is_counted_with_line(tmp_path, line, reason):
    f = tmp_path / "d.jsonl"
    good = b'{"instruction": "x", "response": "y", "condition": "cot"}\n'
    raw = line if isinstance(line, bytes) else line.encode()
    f.write_bytes(good + raw + b"\n" + good)
    rep = FileReport(str(f))
    recs = list(read_records(f, rep))
    if reason is None:
        assert len(recs) == 3 and rep.num_skipped == 0
        assert recs[1].condition == "direct"  # missing condition -> default
        return
    assert len(recs) == 2 and [r.line for r in recs] == [1, 3]
    assert rep.skipped == {reason: 1} and rep.first_lines[reason] == [2]
    assert f"{f}: 1 {reason} (lines 2)" in rep.summary()
    with pytest.raises(RecordError, match=rf"d.jsonl:2: {reason.replace('_', ' ')}"):
        list(read_records(f, FileReport(str(f)), strict=True))


def test_first_lines_are_capped(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ["nope"] * 9)
    rep = FileReport(str(f))
    assert list(read_records(f, rep)) == []
    assert rep.skipped["malformed_json"] == 9 and rep.first_lines["malformed_json"] == [1, 2, 3, 4, 5]
    assert "..." in rep.summary()


def test_parquet_and_column_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    t = pa.table({"q": ["a", "b", None], "a": ["1", "", "3"], "c": ["cot", "direct", "direct"]})
    pq.write_table(t, tmp_path / "x.parquet")
    rep = FileReport("x")
    recs = list(read_records(tmp_path / "x.parquet", rep, ColumnMap.parse("instruction=q,response=a,condition=c")))
    assert [(r.condition, r.instruction, r.response, r.line) for r in recs] == [("cot", "a", "1", 1)]
    assert rep.skipped == {"empty_response": 1, "missing_field": 1}
    with pytest.raises(ValueError, match="unknown field"):
        ColumnMap.parse("question=q")


def test_datasets_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    from hrm_text.data.records import load_dataset_rows

    datasets.Dataset.from_dict({"instruction": ["a", "b"], "response": ["1", "2"]}).save_to_disk(str(tmp_path / "ds"))
    ds = load_dataset_rows(str(tmp_path / "ds"))
    assert [r.response for r in read_records(ds)] == ["1", "2"]


def test_think_stripping(tmp_path):
    assert strip_think("<think>long\nreasoning</think>\nAnswer: 4") == "Answer: 4"
    assert strip_think("A <think>unfinished") == "A "
    f = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "q", "response": "<think>x</think>"}, {"instruction": "q", "response": "<think>x</think>ok"}])
    rep = FileReport("t")
    assert [r.response for r in read_records(f, rep, think=True)] == ["ok"]
    assert rep.skipped == {"empty_response": 1}
    assert len(list(read_records(f, FileReport("t"), think=False))) == 2
