"""The paper recipe: rules sample a copy of the published layout with the reference's caps;
`data download paper` works offline from a local folder and fails cleanly without one."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.data.paper import category_of, download_paper_data, paper_rules, write_recipe
from hrm_text.data.sample import load_rules, sample_corpus
from hrm_text.data.tokenize import tokenize_sources
from hrm_text.data.tokenizer import train_tokenizer

# Relative paths in the layout of sapientinc/HRM-Text-data-io-cleaned-20260515 (names from the
# reference's cleaning scripts; the FLAN and Platypus/openbookqa names are seen in public users'
# download lists) -> rows in the fixture.
LAYOUT = {
    "data_clustered/SYNTH/synth_0.parquet": 40,
    "data_clustered/flan/cot_fsopt_data__cot_gsm8k.parquet": 12,
    "data_clustered/flan/flan_fsopt_data__ai2_arc_ARC-Challenge_1.0.0.parquet": 12,
    "data_clustered/dmmath/train-easy__algebra__linear_1d.parquet": 12,
    "data_clustered/ampsmathematica/algebra_w_steps.parquet": 12,
    "data_clustered/tasksource/WANLI.parquet": 12,
    "data_clustered/openmathinstruct2/cot.parquet": 12,
    "data_clustered/acereason/all.parquet": 12,
    "data_clustered/openthoughts2/all.parquet": 12,
    "data_clustered/sudoku_extreme/all.parquet": 12,
    "data_clustered/textbookreasoning/cot.parquet": 6,
    "data/gsm8k_train.jsonl": 3,
    "data/math_train.jsonl": 3,
    "data/no_robots.jsonl": 3,
    "data/omnimath.jsonl": 3,
    "data/webinstruct_verified.jsonl": 3,
    "data/numinamath.jsonl": 4,
    "data/Platypus/openbookqa.jsonl": 2,
}
SCALE = 1e-3  # caps: SYNTH 20, flan 5, dmmath 100, amps 10, tasksource 10, omi2 2000, acereason 2000, ot2 500, sudoku 1000


def make_layout(root):
    for rel, n in LAYOUT.items():
        rows = [{"condition": "direct", "instruction": f"{rel} question {i}", "response": f"answer {i} of {rel}"} for i in range(n)]
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), p)
        else:
            p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "README.md").write_text("not a record file\n")
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("paper_layout"))


def test_rules_match_entry_names(layout, tmp_path):
    write_recipe(tmp_path / "recipe", scale=SCALE)
    rules = load_rules(tmp_path / "recipe" / "rules.yaml")
    assert rules.context == 4096 and rules.max_len == 4097 and rules.min_response_tokens == 2
    tok = tmp_path / "tok"
    train_tokenizer([layout / "data", layout / "data_clustered"], vocab_size=300, out_dir=tok)
    tokenize_sources([layout / "data", layout / "data_clustered"], tok, tmp_path / "tk", workers=1)
    meta = sample_corpus(tmp_path / "tk", tmp_path / "s", rules, epochs=2)
    by = {s["name"]: s for s in meta["sources"]}
    assert len(by) == len(LAYOUT)
    expected = {  # entry -> (matched prefix, rows per epoch)
        "SYNTH/synth_0": ("SYNTH/", 20),
        "flan/cot_fsopt_data__cot_gsm8k": ("flan/cot_", 12),
        "flan/flan_fsopt_data__ai2_arc_ARC-Challenge_1.0.0": ("flan/", 5),
        "dmmath/train-easy__algebra__linear_1d": ("dmmath/", 12),
        "ampsmathematica/algebra_w_steps": ("ampsmathematica/", 10),
        "tasksource/WANLI": ("tasksource/", 10),
        "openmathinstruct2/cot": ("openmathinstruct2/", 12),
        "acereason/all": ("acereason/", 12),
        "openthoughts2/all": ("openthoughts2/", 12),
        "sudoku_extreme/all": ("sudoku_extreme/", 12),
        "textbookreasoning/cot": ("(default)", 6),
        "gsm8k_train": ("gsm8k_train", 30),
        "math_train": ("math_train", 30),
        "no_robots": ("no_robots", 30),
        "omnimath": ("omnimath", 30),
        "webinstruct_verified": ("webinstruct_verified", 30),
        "numinamath": ("(default)", 4),
        "Platypus/openbookqa": ("Platypus/", 20),
    }
    for name, (prefix, per_epoch) in expected.items():
        s = by[name]
        assert (s["rule_prefix"], s["rows_per_epoch"]) == (prefix, per_epoch), name
    assert meta["epoch_examples"][0] == sum(v for _, v in expected.values())
    # capped sources widen coverage: SYNTH 20 of 40 per epoch, all 40 after two epochs
    assert by["SYNTH/synth_0"]["unique_rows"] == 40
    report = (tmp_path / "s" / "report.md").read_text()
    assert "Mixture vs the paper" in report and "| general |" in report and "138.7" in report


def test_recipe_cli_and_readme(tmp_path):
    r = CliRunner().invoke(app, ["data", "recipe", "paper", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    obj = yaml.safe_load((tmp_path / "r" / "rules.yaml").read_text())
    assert obj == paper_rules(1.0)
    assert [x["prefix"] for x in obj["rules"]][:3] == ["SYNTH/", "flan/cot_", "flan/"]
    assert obj["rules"][0]["max_per_file"] == 20_000 and "max_per_file" not in obj["rules"][1]
    readme = (tmp_path / "r" / "README.md").read_text()
    for word in ("FLAN", "SYNTH", "OpenThoughts2", "hrm-text data tokenize", "138.7", "estimate"):
        assert word in readme
    bad = CliRunner().invoke(app, ["data", "recipe", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown recipe" in bad.output


def test_categories():
    assert category_of("flan/cot_fsopt_data__x") == "general"
    assert category_of("SYNTH/a") == "synth"
    assert category_of("sudoku_extreme/all") == "symbolic"
    assert category_of("gsm8k_train") == "math"
    assert category_of("arith") is None


def test_download_from_local_copy(layout, tmp_path):
    r = download_paper_data(tmp_path / "out", source=layout)
    assert r["files"] == len(LAYOUT)
    for rel in LAYOUT:
        assert (tmp_path / "out" / rel).read_bytes() == (layout / rel).read_bytes()
    assert not (tmp_path / "out" / "README.md").exists()
    cli = CliRunner().invoke(app, ["data", "download", "paper", "--out", str(tmp_path / "o2"), "--from", str(layout)])
    assert cli.exit_code == 0, cli.output
    assert f"{len(LAYOUT)} files" in cli.output


def test_download_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["data", "download", "paper", "--out", str(tmp_path / "o"), "--from", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "neither data/ nor data_clustered/" in r.output
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: a clear error, not a traceback
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    r = CliRunner().invoke(app, ["data", "download", "paper", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "could not download" in r.output and "--from" in r.output
