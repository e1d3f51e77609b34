"""Every raw-source converter turns its fixture (a few rows in the source's real schema) into valid
rows with the expected kept / dropped counts, output files and condition tags."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.data.records import FileReport, read_records
from hrm_text.data.sources import SOURCES, ConvertError, convert, get_source

FIX = Path(__file__).parents[1] / "fixtures" / "sources"

# source -> (rows read, {output key: rows}, {drop reason: count})
EXPECTED = {
    "flan": (7, {"data_clustered/flan/cot_fsopt_data__cot_gsm8k": 2, "data_clustered/flan/flan_zsopt_data__glue_sst2_2.0.0": 2,
                 "data_clustered/flan/flan_zsopt_data__ai2_arc_ARC-Challenge_1.0.0": 1},
             {"empty_response": 1, "excluded_subset": 1}),
    "tasksource": (4, {"data_clustered/tasksource/WANLI": 1, "data_clustered/tasksource/recast_recast_ner": 1},
                   {"excluded_task": 1, "missing_field": 1}),
    "no_robots": (4, {"data/no_robots": 2}, {"not_user_assistant": 1, "malformed_json": 1}),
    "synth": (7, {"data_clustered/SYNTH/synth_001": 3},
              {"not_english": 1, "cooking": 1, "self_knowledge": 1, "unknown_exercise": 1}),
    "openthoughts2": (5, {"data_clustered/openthoughts2/all": 1},
                      {"removed_source": 1, "code": 1, "not_single_turn": 1, "empty_response": 1}),
    "acereason": (3, {"data_clustered/acereason/all": 1}, {"not_math": 1, "not_one_think": 1}),
    "natural_reasoning": (3, {"data/natural_reasoning": 1}, {"no_reference_answer": 1, "proof": 1}),
    "principia": (3, {"data/principia_collection": 2}, {"missing_field": 1}),
    "textbookreasoning": (2, {"data_clustered/textbookreasoning/cot": 2, "data_clustered/textbookreasoning/direct": 1}, {"proof": 1}),
    "openmathinstruct2": (3, {"data_clustered/openmathinstruct2/cot": 2, "data_clustered/openmathinstruct2/direct": 1},
                          {"empty_response": 1}),
    "gsm8k": (3, {"data/gsm8k_train": 2}, {"no_final_answer": 1}),
    "math": (3, {"data/math_train": 5}, {"no_boxed_answer": 1}),
    "omnimath": (2, {"data/omnimath": 4}, {}),
    "webinstruct_verified": (3, {"data/webinstruct_verified": 2}, {"degenerate": 1}),
    "numinamath": (5, {"data/numinamath": 3}, {"synthetic": 1, "not_valid": 1, "link_or_translation": 1}),
    "dmmath": (5, {"data_clustered/dmmath/train-easy__algebra__linear_1d": 2, "data_clustered/dmmath/train-medium__arithmetic__add_or_sub": 1},
               {"excluded_subset": 1, "unpaired_line": 1}),
    "amps_khan": (2, {"data/amps_khan": 1}, {"empty_response": 1}),
    "ampsmathematica": (3, {"data_clustered/ampsmathematica/algebra_polynomial_w_steps": 1, "data_clustered/ampsmathematica/algebra_factor": 1},
                        {"no_answer_tag": 1}),
    "platypus_arb": (4, {"data/Platypus/arb_math": 2, "data/Platypus/arb_law": 1}, {"unknown_arb_file": 1}),
    "platypus_openbookqa": (2, {"data/Platypus/openbookqa": 2}, {}),
    "platypus_reclor": (3, {"data/Platypus/reclor": 2}, {"missing_field": 1}),
    "platypus_scibench": (2, {"data/Platypus/scibench": 3}, {}),
    "platypus_scienceqa": (2, {"data/Platypus/scienceqa": 3}, {}),
    "platypus_theoremqa": (2, {"data/Platypus/theoremqa": 1}, {"has_picture": 1}),
    "sudoku_extreme": (3, {"data_clustered/sudoku_extreme/all": 2}, {"bad_grid": 1}),
}


def test_every_source_has_a_fixture_and_expectation():
    assert set(EXPECTED) == set(SOURCES)
    for name in SOURCES:
        assert (FIX / name).is_dir(), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converter_counts(name, tmp_path):
    rows_read, outputs, drops = EXPECTED[name]
    rep = convert(get_source(name), FIX / name, tmp_path)
    assert rep.rows_read == rows_read
    assert rep.outputs == outputs
    assert dict(rep.dropped) == drops
    assert rep.rows_written == sum(outputs.values())
    # the files hold valid records (our reader finds nothing to skip), and nothing else was written
    written = sorted(p.relative_to(tmp_path).with_suffix("").as_posix() for p in tmp_path.rglob("*.jsonl"))
    assert written == sorted(outputs)
    assert not list(tmp_path.rglob("*.tmp"))
    for key, n in outputs.items():
        fr = FileReport(key)
        recs = list(read_records(tmp_path / f"{key}.jsonl", fr))
        assert len(recs) == n and fr.num_skipped == 0, (key, fr.summary())
    saved = json.loads((tmp_path / "convert_reports" / f"{name}.json").read_text())
    assert saved["rows_written"] == rep.rows_written and saved["dropped"] == drops


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_mapping_details(tmp_path):
    convert(get_source("synth"), FIX / "synth", tmp_path)
    rows = _rows(tmp_path / "data_clustered/SYNTH/synth_001.jsonl")
    assert [r["condition"] for r in rows] == ["synth,cot", "synth,direct", "synth,noisy,cot"]
    assert rows[0]["instruction"] == "Why does it rain?\nAnswer in one sentence."  # rag: query + constraints
    convert(get_source("openthoughts2"), FIX / "openthoughts2", tmp_path)
    [ot] = _rows(tmp_path / "data_clustered/openthoughts2/all.jsonl")
    assert ot == {"condition": "synth,cot", "instruction": "What is 2+3?", "response": "The answer is 5."}  # <think> stripped
    convert(get_source("math"), FIX / "math", tmp_path)
    m = _rows(tmp_path / "data/math_train.jsonl")
    assert [(r["condition"], r["response"]) for r in m if r["condition"] == "direct"] == [("direct", "2"), ("direct", "\\frac{1}{2}")]
    convert(get_source("gsm8k"), FIX / "gsm8k", tmp_path)
    g = _rows(tmp_path / "data/gsm8k_train.jsonl")
    assert g[0]["response"] == "72" and not g[0]["instruction"].endswith(" ")
    convert(get_source("tasksource"), FIX / "tasksource", tmp_path)
    assert _rows(tmp_path / "data_clustered/tasksource/WANLI.jsonl")[0]["response"] == "entailment"
    convert(get_source("sudoku_extreme"), FIX / "sudoku_extreme", tmp_path)
    s = _rows(tmp_path / "data_clustered/sudoku_extreme/all.jsonl")[0]
    assert s["instruction"].startswith("Solve this sudoku (0 = empty):\n0000") and len(s["response"]) == 81
    convert(get_source("platypus_scibench"), FIX / "platypus_scibench", tmp_path)
    assert [r["response"] for r in _rows(tmp_path / "data/Platypus/scibench.jsonl")] == ["p = nRT/V = 1 atm", "1", "0.3 m"]
    convert(get_source("ampsmathematica"), FIX / "ampsmathematica", tmp_path)
    [a] = _rows(tmp_path / "data_clustered/ampsmathematica/algebra_polynomial_w_steps.jsonl")
    assert a == {"condition": "noisy,cot", "instruction": "Expand (x+1)^2", "response": "x^2+2x+1"}
    convert(get_source("no_robots"), FIX / "no_robots", tmp_path)
    assert _rows(tmp_path / "data/no_robots.jsonl")[0]["instruction"] == "You are a poet.\n\nWrite a haiku about rain."


def test_parquet_and_jsonl_read_alike(tmp_path):
    """A source published as JSONL converts the same when it comes as Parquet (the Hub's format)."""
    rows = [json.loads(x) for x in open(FIX / "gsm8k" / "train.jsonl")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    a = convert(get_source("gsm8k"), FIX / "gsm8k", tmp_path / "a")
    b = convert(get_source("gsm8k"), tmp_path / "train.parquet", tmp_path / "b", batch_rows=1)
    assert a.outputs == b.outputs and a.dropped == b.dropped
    assert (tmp_path / "a/data/gsm8k_train.jsonl").read_text() == (tmp_path / "b/data/gsm8k_train.jsonl").read_text()


def test_writer_handle_pool(tmp_path, monkeypatch):
    """More output files than open handles: rows are appended, never truncated, when a file reopens."""
    import hrm_text.data.sources.base as base

    monkeypatch.setattr(base, "MAX_OPEN_FILES", 1)
    w = base.ShardWriter(tmp_path, max_open=1)
    for i in range(6):
        w.write(f"k{i % 3}", {"condition": "direct", "instruction": str(i), "response": "r"})
    w.close()
    assert [json.loads(x)["instruction"] for x in open(tmp_path / "k0.jsonl")] == ["0", "3"]


def test_cli(tmp_path):
    r = CliRunner().invoke(app, ["data", "convert", "gsm8k", str(FIX / "gsm8k"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "2 rows written" in r.output and "1 no_final_answer" in r.output
    r = CliRunner().invoke(app, ["data", "convert", "nope", str(FIX / "gsm8k"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown source" in r.output and "flan" in r.output
    r = CliRunner().invoke(app, ["data", "convert", "gsm8k", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "does not exist" in r.output
    # right files, wrong source: every row lacks the columns -> counted, and a non-zero exit
    r = CliRunner().invoke(app, ["data", "convert", "webinstruct_verified", str(FIX / "math"), "--out", str(tmp_path / "w")])
    assert r.exit_code == 1 and "missing_field" in r.output and "no rows written" in r.output
    # pointing RAW_PATH at one FLAN subset folder still finds the subset from the shard's folder
    r = convert(get_source("flan"), FIX / "flan" / "cot_fsopt_data", tmp_path / "f")
    assert r.outputs == {"data_clustered/flan/cot_fsopt_data__cot_gsm8k": 2}
    with pytest.raises(ConvertError):
        convert(get_source("dmmath"), FIX / "gsm8k", tmp_path)  # no .txt files there


def test_parquet_opened_without_prebuffer(tmp_path, monkeypatch):
    """pyarrow's default pre_buffer keeps every pre-read chunk until the file ends (RSS grew with the
    file: 2,028 MiB on 2 GB in bench_convert); every streaming Parquet reader must turn it off."""
    from hrm_text.data.decontaminate import decontaminate_dir, index_from_pairs
    from hrm_text.data.records import read_records

    seen = []
    real = pq.ParquetFile

    def spy(*a, **k):
        seen.append(k.get("pre_buffer", True))
        return real(*a, **k)

    monkeypatch.setattr(pq, "ParquetFile", spy)
    convert(get_source("synth"), FIX / "synth", tmp_path / "c")
    list(read_records(FIX / "synth" / "synth_001.parquet"))
    (tmp_path / "d").mkdir()
    pq.write_table(pa.Table.from_pylist([{"condition": "direct", "instruction": "a", "response": "b"}]), tmp_path / "d" / "x.parquet")
    decontaminate_dir(tmp_path / "d", tmp_path / "o", index_from_pairs([("t", "one two three four five six seven eight nine")]))
    assert seen == [False, False, False]
