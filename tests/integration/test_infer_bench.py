"""benchmarks/bench_decode.py imports, documents itself, and runs end to end on CPU (tiny preset)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decode.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--preset" in out.stdout and "--out" in out.stdout


def test_tiny_cpu_run_writes_json(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "decode.json"
    res = _module().main(["--preset", "tiny", "--device", "cpu", "--batches", "2", "--prompt-len", "8",
                          "--new-tokens", "3", "--hf-new-tokens", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    r = data["batches"]["2"]
    assert r["ours"]["prefill_tok_s"] > 0 and r["ours"]["e2e_tok_s"] > 0 and r["hf"]["e2e_tok_s"] > 0
    assert r["speedup_e2e"] > 0
