"""Files that start with a UTF-8 byte-order mark (Windows editors, PowerShell's `Out-File`) keep
their first row in every reader of records: validation, tokenizer training, tokenize, eval files."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from data_helpers import arith_rows, tiny_tokenizer

from hrm_text.data.records import FileReport, read_records
from hrm_text.data.tokenize import Options, tokenize_sources
from hrm_text.data.tokenizer import _iter_texts
from hrm_text.eval.runner import builtin_items
from hrm_text.eval.tasks.files import read_rows as _read_rows

BOM = codecs.BOM_UTF8


def _bom_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    return path


ROWS = [{"condition": "direct", "instruction": f"{a}+{a}=", "response": str(2 * a)} for a in (11, 22, 33)]


def test_records_keep_first_row_strict_too(tmp_path: Path) -> None:
    f = _bom_jsonl(tmp_path / "d.jsonl", ROWS)
    rep = FileReport(str(f))
    recs = list(read_records(f, rep))
    assert [r.instruction for r in recs] == ["11+11=", "22+22=", "33+33="]
    assert rep.kept == 3 and rep.num_skipped == 0
    assert len(list(read_records(f, FileReport(str(f)), strict=True))) == 3  # no RecordError on line 1


def test_tokenizer_texts_keep_first_row_without_bom(tmp_path: Path) -> None:
    f = _bom_jsonl(tmp_path / "d.jsonl", ROWS)
    txt = tmp_path / "notes.txt"
    txt.write_bytes(BOM + b"plain text line\n")
    texts = list(_iter_texts([f, txt]))
    assert texts[:2] == ["11+11=", "22"]
    assert texts[-1] == "plain text line\n"
    assert not any("\ufeff" in t for t in texts)


def test_tokenize_counts_every_row_kept(tmp_path: Path) -> None:
    rows = arith_rows(20)
    _bom_jsonl(tmp_path / "src" / "a.jsonl", rows)
    summary = tokenize_sources([tmp_path / "src"], tiny_tokenizer(tmp_path), tmp_path / "tokens",
                               opts=Options(strict=True))
    (rep,) = summary["reports"]
    assert rep["kept"] == 20 and rep["skipped"] == {}


def test_eval_files_keep_first_row(tmp_path: Path) -> None:
    f = _bom_jsonl(tmp_path / "heldout" / "arith_test.jsonl", ROWS)
    items = builtin_items(f)
    assert [it.instruction for it in items] == ["11+11=", "22+22=", "33+33="]
    csv_file = tmp_path / "mmlu_test.csv"
    csv_file.write_bytes(BOM + b"What is 1+1?,1,2,3,4,B\n")
    (row,) = _read_rows(csv_file)
    assert row["_csv"][0] == "What is 1+1?"
    js = tmp_path / "rows.json"
    js.write_bytes(BOM + json.dumps(ROWS).encode())
    assert len(_read_rows(js)) == 3


def test_bom_in_the_middle_of_a_line_is_still_bad(tmp_path: Path) -> None:
    """Only a leading mark is dropped: one inside the JSON text stays a counted malformed row."""
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"instruction": "a", "response": "b"}' + BOM + b"\n")
    rep = FileReport(str(f))
    assert list(read_records(f, rep)) == [] and rep.skipped == {"malformed_json": 1}
