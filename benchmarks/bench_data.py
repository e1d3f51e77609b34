"""Data-pipeline benchmark (CPU): tokenization throughput + peak RSS on a generated corpus, and
multipack slot use with a 16k budget on realistic length mixes.

    python benchmarks/bench_data.py --size-gb 1.0 --workers 2 --work /tmp/bench_data

Why generated text: the machine may have no network; the corpus is pseudo-English (Zipf-distributed
words built from syllables, numbers, punctuation) with log-normal instruction/response lengths, so
the BPE merges and row lengths resemble an instruction corpus. Peak RSS is the max resident set of
the main process and of any worker (ru_maxrss), i.e. what bounded-memory streaming must keep flat
regardless of corpus size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from hrm_text.data.loader import PackedLoader, plan_steps
from hrm_text.data.sample import parse_rules, sample_corpus
from hrm_text.data.tokenize import tokenize_sources
from hrm_text.data.tokenizer import train_tokenizer


def make_vocab(rng: np.random.Generator, n: int = 20000) -> list[str]:
    syl = ["ka", "to", "ri", "en", "the", "an", "ing", "ou", "st", "re", "mo", "li", "ver", "pa", "si", "un", "co", "de", "al", "er"]
    words = set()
    while len(words) < n:
        k = rng.integers(1, 5)  # 20 + 400 + 8000 + 160000 possible words
        words.add("".join(rng.choice(syl, k)))
    return sorted(words)


def gen_corpus(out: Path, size_gb: float, files: int, seed: int = 0) -> int:
    """Write `files` JSONL files totalling about `size_gb` GB; returns rows written."""
    rng = np.random.default_rng(seed)
    vocab = np.array(make_vocab(rng))
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    per_file = int(size_gb * 1e9 / files)
    rows = 0
    out.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        path = out / f"src{f:02d}.jsonl"
        written = 0
        with open(path, "w") as fh:
            while written < per_file:
                # a block of 2000 rows at a time, vectorised word sampling
                n_i = np.clip(rng.lognormal(3.5, 0.9, 2000).astype(int), 3, 1500)
                n_r = np.clip(rng.lognormal(4.5, 1.1, 2000).astype(int), 1, 3000)
                words = vocab[rng.choice(len(vocab), int(n_i.sum() + n_r.sum()), p=zipf)]
                pos = 0
                lines = []
                for a, b in zip(n_i, n_r):
                    inst = " ".join(words[pos : pos + a]) + "?"
                    pos += a
                    resp = " ".join(words[pos : pos + b]).capitalize() + f". {rng.integers(0, 10**4)}."
                    pos += b
                    lines.append(json.dumps({"condition": "direct", "instruction": inst, "response": resp}))
                blob = "\n".join(lines) + "\n"
                fh.write(blob)
                written += len(blob)
                rows += len(lines)
    return rows


def packing_mixes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = 200_000
    general = np.clip(rng.lognormal(5.3, 1.0, n).astype(int), 8, 4097)
    reasoning = np.clip(rng.lognormal(7.3, 0.6, n // 4).astype(int), 64, 4097)
    short = np.clip(rng.normal(16, 3, n).astype(int), 8, 40)
    return {
        "general (log-normal, median ~200)": general,
        "general + 20% long reasoning (<=4097)": np.concatenate([general, reasoning]),
        "short arithmetic (~16 tokens)": short,
        "half general / half sudoku-like (~180)": np.concatenate([general[: n // 2], np.full(n // 2, 180)]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=65536)
    ap.add_argument("--tokenizer-texts", type=int, default=200_000, help="texts used to train the BPE")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_data"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    w = args.work
    res: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores", "python": sys.version.split()[0]}
    t = time.time()
    src = w / "src"
    if not src.exists():
        res["rows"] = gen_corpus(src, args.size_gb, args.files)
    res["corpus_bytes"] = sum(p.stat().st_size for p in src.glob("*.jsonl"))
    res["gen_s"] = round(time.time() - t, 1)
    print(f"corpus: {res['corpus_bytes'] / 1e9:.2f} GB ({res['gen_s']} s)", flush=True)

    t = time.time()
    if not (w / "tok/tokenizer.json").exists():
        train_tokenizer([src / "src00.jsonl"], vocab_size=args.vocab_size, out_dir=w / "tok", max_texts=args.tokenizer_texts)
    res["tokenizer_train_s"] = round(time.time() - t, 1)
    print(f"tokenizer: {res['tokenizer_train_s']} s", flush=True)

    shutil.rmtree(w / "tk", ignore_errors=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.time()
    r = tokenize_sources([src], w / "tok", w / "tk", workers=args.workers)
    dt = time.time() - t
    res["tokenize"] = {
        "workers": args.workers,
        "tokens": r["tokens"],
        "seconds": round(dt, 1),
        "tokens_per_s": round(r["tokens"] / dt),
        "MB_per_s": round(res["corpus_bytes"] / dt / 1e6, 2),
        "peak_rss_worker_MB": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "peak_rss_main_MB": round(max(rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024),
    }
    print("tokenize:", res["tokenize"], flush=True)
    t = time.time()
    r2 = tokenize_sources([src], w / "tok", w / "tk", workers=args.workers)
    res["tokenize_rerun_unchanged_s"] = round(time.time() - t, 2)
    assert r2["tokenized"] == []

    t = time.time()
    meta = sample_corpus(w / "tk", w / "smp", parse_rules({"context": 4096}), epochs=1)
    res["sample_s"] = round(time.time() - t, 1)
    fill = {}
    for W in (1, 8):
        ld = PackedLoader(w / "smp", 16384, world_size=W, seed=0, epochs=1, prefetch=False)
        t = time.time()
        st = ld.fill_stats(0)
        st["plan_s"] = round(time.time() - t, 1)
        fill[f"world_size={W}"] = st
    t = time.time()
    ld = PackedLoader(w / "smp", 16384, seed=0, epochs=1, prefetch=True)
    for i, _ in enumerate(ld):
        if i == 200:
            break
    res["loader_batches_per_s"] = round(200 / (time.time() - t), 1)
    res["bench_corpus_packing"] = fill
    res["bench_corpus_examples"] = meta["num_examples"]

    rng = np.random.default_rng(0)
    mixes = {}
    for name, lens in packing_mixes(rng).items():
        lens = lens[rng.permutation(len(lens))]
        for W in (1, 8):
            steps, dropped = plan_steps(np.arange(len(lens)), lens, 16384, W)
            loads = np.array([[int(lens[i].sum()) for i in s] for s in steps])
            mixes[f"{name}, world_size={W}"] = {
                "fill": round(float(loads.sum() / (loads.size * 16384)), 5),
                "fill_excluding_last_step": round(float(loads[:-1].sum() / (loads[:-1].size * 16384)), 5),
                "max_rank_imbalance_tokens": int((loads.max(1) - loads.min(1))[:-1].max()) if len(loads) > 1 else 0,
                "steps": len(steps),
            }
    res["packing_mixes"] = mixes
    print(json.dumps(res, indent=2))
    (w / "result.json").write_text(json.dumps(res, indent=2))
    if not args.keep:
        for d in ("tk", "smp"):
            shutil.rmtree(w / d, ignore_errors=True)


if __name__ == "__main__":
    main()
