import os

import pytest
import torch

# Small, deterministic and quick on the 2-core CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _write_jsonl(path, rows):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def make_tiny_corpus(root, n_train: int = 3000, n_test: int = 100, seed: int = 0):
    """A small arithmetic corpus in the built-in layout: root/train/arith.jsonl, root/heldout/arith_test.jsonl."""
    import random

    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_test:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({"condition": "direct", "instruction": f"{a}+{b}=", "response": str(a + b)})
    _write_jsonl(root / "train" / "arith.jsonl", rows[:n_train])
    _write_jsonl(root / "heldout" / "arith_test.jsonl", rows[n_train:])
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Corpus -> tokenizer (vocab 300) -> tokens -> sampled epochs. Returns a dict of paths."""
    from hrm_text.data.sample import parse_rules, sample_corpus
    from hrm_text.data.tokenize import tokenize_sources
    from hrm_text.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_data")
    corpus = make_tiny_corpus(root / "corpus")
    tok = root / "tokenizer"
    train_tokenizer([corpus / "train"], vocab_size=300, out_dir=tok)
    tokenize_sources([corpus / "train"], tok, root / "tokens", workers=1)
    sample_corpus(root / "tokens", root / "sampled", parse_rules({"context": 256}), epochs=2)
    return {"root": root, "corpus": corpus, "tokenizer": tok, "sampled": root / "sampled",
            "heldout": corpus / "heldout" / "arith_test.jsonl"}


def tiny_train_overrides(data, out_dir, steps: int, **extra) -> list:
    over = [
        "model.preset=tiny",
        f"data.sampled_dir={data['sampled']}",
        f"data.tokenizer_dir={data['tokenizer']}",
        "data.tokens_per_rank=256",
        "data.num_workers=0",
        f"train.out_dir={out_dir}",
        "train.global_batch_tokens=512",
        f"train.max_steps={steps}",
        "train.lr=2e-3",
        "train.lr_warmup_steps=5",
        "train.ema_decay=0.99",
        "train.ema_warmup=true",
        "train.compile=false",
        "train.tensorboard=false",
        "train.log_every=5",
    ]
    over += [f"{k}={v}" for k, v in extra.items()]
    return over


@pytest.fixture(scope="session")
def trained_tiny(tiny_data, tmp_path_factory):
    """A tiny HRM trained for a few dozen steps on CPU: returns the checkpoint path (EMA inside)."""
    from hrm_text.config import load_config
    from hrm_text.train.trainer import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(None, tiny_train_overrides(tiny_data, out, steps=40))
    res = train(cfg, resume=None, progress=False)
    return res.final_checkpoint
