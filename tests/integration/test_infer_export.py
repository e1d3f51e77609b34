"""export-hf / import-hf: transformers loads the export, and import -> export is bit-exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.config import model_config
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.infer.export import export_hf, import_hf
from hrm_text.checkpoint.loading import load_model
from hrm_text.model.hf_adapter import save_hf_folder
from hrm_text.model.lm import HRMTextLM

runner = CliRunner()


def assert_same_safetensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        assert torch.equal(x[k], y[k]), k


@pytest.fixture(scope="module")
def exported(trained_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    res = runner.invoke(app, ["export-hf", str(trained_tiny), str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_export_folder_contents(exported, trained_tiny):
    tok = TextTokenizer.load(Path(trained_tiny) / "tokenizer")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"):
        assert (exported / name).is_file(), name
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eoa_id and gen["pad_token_id"] == tok.pad_id
    readme = (exported / "README.md").read_text()
    assert "token_type_ids" in readme and "generate(" in readme
    # EMA weights by default: the exported tensors are the checkpoint's EMA weights, not the raw ones
    ema = load_model(trained_tiny).model.state_dict()
    raw = load_model(trained_tiny, use_ema=False).model.state_dict()
    sd = load_file(str(exported / "model.safetensors"))
    k = "lm_head.weight"
    assert torch.equal(sd[k], ema[k]) and not torch.equal(sd[k], raw[k])


def test_transformers_loads_export_and_tokenizer_matches(exported, trained_tiny):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    ours = TextTokenizer.load(Path(trained_tiny) / "tokenizer")
    for text in ("12+30=", "what is 40 + 2?\nanswer: 42", "héllo wörld 123"):
        assert hf_tok.encode(text) == ours.encode(text)
        assert hf_tok(text, add_special_tokens=False).input_ids == ours.encode(text)
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    assert type(model).__name__ == "HrmTextForCausalLM"
    assert model.generation_config.eos_token_id == ours.eoa_id


def test_import_export_round_trip_bit_exact(exported, tmp_path):
    ckpt = import_hf(exported, tmp_path / "imported")
    assert (ckpt / "tokenizer" / "tokenizer.json").is_file()
    again = export_hf(tmp_path / "imported", tmp_path / "again")
    assert_same_safetensors(exported, again)
    assert json.loads((exported / "config.json").read_text()) == json.loads((again / "config.json").read_text())
    assert (exported / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_bf16_folder_round_trip_keeps_dtype_and_bits(tmp_path):
    model = HRMTextLM(model_config("tiny", vocab_size=300))
    save_hf_folder(model, tmp_path / "src", dtype=torch.bfloat16)
    res = runner.invoke(app, ["import-hf", str(tmp_path / "src"), str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export-hf", str(tmp_path / "ck"), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert_same_safetensors(tmp_path / "src", tmp_path / "out")


def test_cli_errors_are_one_line_exit_2(trained_tiny, tmp_path):
    res = runner.invoke(app, ["export-hf", str(tmp_path / "missing"), str(tmp_path / "o1")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_tiny, damaged)
    victim = max((p for p in (damaged / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:100])
    res = runner.invoke(app, ["export-hf", str(damaged), str(tmp_path / "o2")])
    assert res.exit_code == 2 and "damaged" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["import-hf", str(trained_tiny), str(tmp_path / "o3")])
    assert res.exit_code == 2 and "not a transformers hrm_text folder" in res.output
