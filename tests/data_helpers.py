"""Shared tiny fixtures for the data tests (imported by the data tests; tests/ is on sys.path through conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from hrm_text.data.tokenizer import TextTokenizer, train_tokenizer

_TOK_CACHE: dict[str, TextTokenizer] = {}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def arith_rows(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rnd.randint(0, 999), rnd.randint(0, 999)
        resp = str(a + b)
        if long_every and i % long_every == 0:
            resp = " ".join([resp] * 40)
        rows.append({"condition": "direct", "instruction": f"{a}+{b}=", "response": resp})
    return rows


def tiny_tokenizer(tmp_root: Path) -> Path:
    """Train (once per test session) a small tokenizer on arithmetic + English text."""
    d = tmp_root / "tok"
    if not (d / "tokenizer.json").exists():
        texts = [r["instruction"] + r["response"] for r in arith_rows(300)]
        texts += ["the quick brown fox jumps over the lazy dog's back, doesn't it?"] * 20
        train_tokenizer(texts, vocab_size=300, out_dir=d)
    return d
