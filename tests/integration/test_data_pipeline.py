"""Tokenize -> sample -> PackedLoader: every rule of docs/ARCHITECTURE.md#data-pipeline
and the batch layout of #sequence-layout-and-objective."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from data_helpers import arith_rows, tiny_tokenizer, write_jsonl

from hrm_text.data.batch import IGNORE_INDEX, layout_row, pack_rows
from hrm_text.data.loader import PackedLoader, SampledData, plan_steps
from hrm_text.data.sample import RulesError, parse_rules, sample_corpus, select_epochs
from hrm_text.data.tokenize import Options, TokenizedEntry, smallest_uint, tokenize_sources
from hrm_text.data.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    tokdir = tiny_tokenizer(root)
    src = root / "src"
    write_jsonl(src / "big/a.jsonl", arith_rows(600, seed=1, long_every=7))
    write_jsonl(src / "big/b.jsonl", arith_rows(300, seed=2))
    write_jsonl(src / "small.jsonl", arith_rows(40, seed=3) + ["{broken"])
    tokenize_sources([src], tokdir, root / "tk", workers=2)
    return root, tokdir, src


def test_tokenized_layout(world):
    root, tokdir, _ = world
    tok = TextTokenizer.load(tokdir)
    e = TokenizedEntry(root / "tk", "big/b")
    assert len(e) == 300 and e.tokens.dtype == smallest_uint(tok.vocab_size - 1) == np.uint16
    assert e.inst_len.dtype == np.uint8  # smallest dtype that holds the values
    r = arith_rows(300, seed=2)[5]
    p, q = tok.encode_example(r["condition"], r["instruction"], r["response"])
    s, n = int(e.inst_start[5]), int(e.inst_len[5])
    assert e.tokens[s : s + n].tolist() == p
    assert int(e.resp_start[5]) == s + n and e.tokens[s + n : s + n + int(e.resp_len[5])].tolist() == q
    meta = json.loads((root / "tk/files/small/meta.json").read_text())
    assert meta["rows"] == 40 and meta["report"]["skipped"] == {"malformed_json": 1}


def test_incremental_and_orphans(tmp_path):
    tokdir = tiny_tokenizer(tmp_path)
    src = tmp_path / "src"
    write_jsonl(src / "a.jsonl", arith_rows(20, 1))
    write_jsonl(src / "b.jsonl", arith_rows(20, 2))
    out = tmp_path / "tk"
    r1 = tokenize_sources([src], tokdir, out, workers=1)
    assert sorted(r1["tokenized"]) == ["a", "b"]
    r2 = tokenize_sources([src], tokdir, out, workers=1)
    assert r2["tokenized"] == [] and r2["skipped_unchanged"] == 2
    time.sleep(0.01)
    write_jsonl(src / "b.jsonl", arith_rows(25, 3))
    (src / "a.jsonl").unlink()
    write_jsonl(src / "c.jsonl", arith_rows(5, 4))
    r3 = tokenize_sources([src], tokdir, out, workers=2)
    assert sorted(r3["tokenized"]) == ["b", "c"] and r3["removed_orphans"] == ["a"]
    assert not (out / "files/a").exists() and len(TokenizedEntry(out, "b")) == 25
    r4 = tokenize_sources([src], tokdir, out, workers=1, opts=Options(think=True))
    assert sorted(r4["tokenized"]) == ["b", "c"]  # options are part of the fingerprint


def test_strict_stops(tmp_path):
    from hrm_text.data.records import RecordError

    tokdir = tiny_tokenizer(tmp_path)
    write_jsonl(tmp_path / "s/a.jsonl", arith_rows(3) + ['{"instruction": "x"}'])
    with pytest.raises(RecordError, match="a.jsonl:4: missing field"):
        tokenize_sources([tmp_path / "s"], tokdir, tmp_path / "tk", opts=Options(strict=True))


def test_rules_validation():
    r = parse_rules({"rules": [{"prefix": "big/", "max_per_file": 5}, {"prefix": "big/a", "repeat": 3}]})
    assert r.match("big/a")[0] == 0  # first match wins, even if a later prefix is longer
    assert r.match("other") == (-1, r.default)
    for bad, msg in [
        ({"rules": [{"prefix": "x", "long_context": "cut"}]}, "long_context"),
        ({"rules": [{"max_per_file": 3}]}, "prefix"),
        ({"rules": [{"prefix": "x", "repeat": 0}]}, "repeat"),
        ({"contxt": 5}, "contxt"),
    ]:
        with pytest.raises(RulesError, match=msg):
            parse_rules(bad)


def test_truncate_vs_drop(world, tmp_path):
    root, _, _ = world
    e = TokenizedEntry(root / "tk", "big/a")
    lens = np.asarray(e.inst_len, dtype=int) + np.asarray(e.resp_len, dtype=int)
    ctx = 40
    n_long = int((lens > ctx + 1).sum())
    assert n_long > 0
    m_drop = sample_corpus(root / "tk", tmp_path / "d", parse_rules({"context": ctx, "default": {"long_context": "drop"}}), 1)
    m_trunc = sample_corpus(root / "tk", tmp_path / "t", parse_rules({"context": ctx}), 1)
    sd = {s["name"]: s for s in m_drop["sources"]}["big/a"]
    st = {s["name"]: s for s in m_trunc["sources"]}["big/a"]
    assert sd["eligible"] == 600 - n_long and sd["dropped_long"] == n_long and sd["truncated"] == 0
    assert st["eligible"] == 600 and st["truncated"] == n_long
    data = SampledData(tmp_path / "t")
    assert int(np.max(data.lengths)) == ctx + 1
    eoa = data.metadata["eoa_id"]
    for i in range(len(data)):
        inst, resp = data.example(i)
        full = len(inst) + len(resp)
        assert full <= ctx + 1
        # a cut response has no <eoa>; an intact one ends with it
        assert (resp[-1] == eoa) == (full < ctx + 1 or resp[-1] == eoa)
    cut = [i for i in range(len(data)) if data.lengths[i] == ctx + 1 and data.example(i)[1][-1] != eoa]
    assert len(cut) == n_long


def test_min_response_length(tmp_path):
    tokdir = tiny_tokenizer(tmp_path)
    rows = [{"instruction": "1+1=", "response": "2"}, {"instruction": "q", "response": "22"}]
    write_jsonl(tmp_path / "s/x.jsonl", rows)
    tokenize_sources([tmp_path / "s"], tokdir, tmp_path / "tk")
    m = sample_corpus(tmp_path / "tk", tmp_path / "o", parse_rules({"min_response_tokens": 3}), 1)
    assert m["sources"][0]["dropped_short_response"] == 1 and m["num_examples"] == 1  # "2"+<eoa> = 2 tokens
    m = sample_corpus(tmp_path / "tk", tmp_path / "o", parse_rules({}), 1)
    assert m["num_examples"] == 2  # default 2 (counted with <eoa>) keeps one-digit answers


def test_cap_repeat_and_coverage(world, tmp_path):
    root, _, _ = world
    rules = parse_rules({"rules": [{"prefix": "big/a", "max_per_file": 250}, {"prefix": "small", "repeat": "auto"}, {"prefix": "big/b", "repeat": 2}]})
    m = sample_corpus(root / "tk", tmp_path / "s", rules, epochs=3)
    src = {s["name"]: s for s in m["sources"]}
    assert src["big/a"]["rows_per_epoch"] == 250 and src["big/a"]["coverage"] == 1.0  # 3*250 >= 600
    assert src["small"]["repeat"] == 10 and src["small"]["rows_per_epoch"] == 400
    assert src["big/b"]["rows_per_epoch"] == 600
    data = SampledData(tmp_path / "s")
    names = [s["name"] for s in m["sources"]]
    seen: set[int] = set()
    a_id = names.index("big/a")
    for e in range(3):
        idx = np.asarray(data.epoch_indices(e))
        a = idx[np.asarray(data.source)[idx] == a_id]
        assert len(a) == 250 and len(set(a.tolist())) == 250
        if e < 2:
            assert not seen & set(a.tolist())  # unseen rows first: epochs 0 and 1 are disjoint
        seen |= set(a.tolist())
    assert len(seen) == 600
    counts = np.bincount(np.asarray(data.epoch_indices(0)))
    small_ids = np.flatnonzero(np.asarray(data.source) == names.index("small"))
    assert set(counts[small_ids].tolist()) == {10}
    assert "| big/a |" in (tmp_path / "s/report.md").read_text()


def test_select_epochs_fresh_and_deterministic():
    a = select_epochs(10, 4, 5, seed=7)
    assert [len(set(x.tolist())) for x in a] == [4] * 5
    assert set(np.concatenate(a[:2]).tolist()).isdisjoint(set()) and len(set(np.concatenate(a[:2]).tolist())) == 8
    assert set(np.concatenate(a[:3]).tolist()) == set(range(10))  # 2 unseen left, taken first in epoch 2
    b = select_epochs(10, 4, 5, seed=7)
    assert all((x == y).all() for x, y in zip(a, b))
    c = select_epochs(10, 4, 5, seed=8)
    assert any((x != y).any() for x, y in zip(a, c))


@pytest.fixture(scope="module")
def sampled(world, tmp_path_factory):
    root, _, _ = world
    out = tmp_path_factory.mktemp("s") / "smp"
    sample_corpus(root / "tk", out, parse_rules({"context": 64}), epochs=2)
    return SampledData(out)


def test_label_shift_at_eoq(sampled):
    loader = PackedLoader(sampled, 256, seed=0, epochs=1, prefetch=False)
    b = next(loader)
    ids = loader.rows_for_step(0, 0)[0]
    eoq = sampled.metadata["eoq_id"]
    cur = 0
    for i in ids:
        inst, resp = sampled.example(int(i))
        p, n = len(inst), len(inst) + len(resp)
        assert b.input_ids[0, cur + p - 1] == eoq and b.is_prefix[0, cur + p - 1]
        assert b.labels[0, cur + p - 1] == int(resp[0])  # <eoq> predicts the first response token
        assert (b.labels[0, cur : cur + p - 1] == IGNORE_INDEX).all()
        assert b.labels[0, cur + n - 2] == int(resp[-1])  # token before <eoa> predicts <eoa>
        assert b.labels[0, cur + n - 1] == IGNORE_INDEX  # nothing after the example's last token
        assert b.position_ids[0, cur : cur + n].tolist() == list(range(n))
        assert not b.is_prefix[0, cur + p : cur + n].any()
        cur += n
    assert (b.doc_ids[0, cur:] == -1).all() and (b.input_ids[0, cur:] == sampled.pad_id).all()
    # identical to the reference layout
    ref = pack_rows([[tuple(map(lambda a: a.tolist(), sampled.example(int(i)))) for i in ids]], 256, sampled.pad_id)
    for f in ("input_ids", "labels", "position_ids", "doc_ids", "is_prefix"):
        assert torch.equal(getattr(b, f), getattr(ref, f)), f


def test_edge_rows():
    # a 1-token response (only <eoa>), an example that fills the whole row
    r = layout_row([(np.array([1, 4, 9, 2]), np.array([3]))], 4 + 1, 0)
    assert r["labels"].tolist() == [-100, -100, -100, 3, -100] and r["doc_ids"].tolist() == [0] * 5


def test_rank_balance_and_coverage(sampled):
    W, T = 4, 512
    loaders = [PackedLoader(sampled, T, rank=r, world_size=W, seed=3, epochs=1, prefetch=False) for r in range(W)]
    assert len({ld.steps_per_epoch for ld in loaders}) == 1
    batches = [list(ld) for ld in loaders]
    assert all(len(b) == loaders[0].steps_per_epoch for b in batches)
    steps = loaders[0]._plan(0)
    lens = np.asarray(sampled.lengths)
    loads = np.array([[int(lens[ids].sum()) for ids in s] for s in steps])
    assert (loads <= T).all() and (loads[:-1].min(1) > 0).all()
    assert (loads[:-1].max(1) - loads[:-1].min(1)).max() <= 64  # LPT: ranks within one example of each other
    used = np.concatenate([ids for s in steps for ids in s])
    epoch = np.asarray(sampled.epoch_indices(0))
    assert len(used) + loaders[0]._dropped[0] == len(epoch)  # every sampled example packed once
    assert np.array_equal(np.sort(used), np.sort(epoch)[: len(used)]) or loaders[0]._dropped[0] > 0
    for r in range(W):  # each rank's batch holds exactly its planned examples
        b = batches[r][0]
        assert int(b.num_tokens) == loads[0, r]


def test_deterministic_and_prefetch_equivalent(sampled):
    a = [b.input_ids for b in PackedLoader(sampled, 300, rank=1, world_size=2, seed=5, epochs=2, prefetch=True)]
    b = [b.input_ids for b in PackedLoader(sampled, 300, rank=1, world_size=2, seed=5, epochs=2, prefetch=False)]
    c = [b.input_ids for b in PackedLoader(sampled, 300, rank=1, world_size=2, seed=6, epochs=1, prefetch=False)]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("prefetch", [True, False])
def test_resume_round_trip(sampled, prefetch):
    ref = PackedLoader(sampled, 200, rank=0, world_size=2, seed=1, epochs=3, prefetch=prefetch)
    spe = ref.steps_per_epoch
    cut = spe + 3  # mid-epoch 1
    it = iter(ref)
    for _ in range(cut):
        next(it)
    state = ref.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 3 and ref.epoch == 1
    rest = [b.labels for b in it]
    new = PackedLoader(sampled, 200, rank=0, world_size=2, seed=1, epochs=3, prefetch=prefetch)
    new.load_state_dict(json.loads(json.dumps(state)))
    again = [b.labels for b in new]
    assert len(again) == len(rest) > 0 and all(torch.equal(x, y) for x, y in zip(again, rest))
    with pytest.raises(ValueError, match="world_size"):
        PackedLoader(sampled, 200, world_size=4, seed=1).load_state_dict(state)


def test_long_examples_in_loader(sampled):
    T = 30
    ld = PackedLoader(sampled, T, epochs=1, prefetch=False)
    lens = np.asarray(sampled.lengths)
    assert ld.num_truncated_long + ld.num_skipped_long == int((lens > T).sum()) > 0
    for b in ld:
        assert b.num_tokens <= T and b.num_loss_tokens >= 1


def test_packing_fill(tmp_path):
    rng = np.random.default_rng(0)
    lens = np.clip(rng.lognormal(5.5, 1.0, 20000).astype(int), 8, 4097)
    steps, dropped = plan_steps(np.arange(len(lens)), lens, 16384, 2)
    loads = np.array([[lens[i].sum() for i in s] for s in steps])
    assert loads[:-1].sum() / ((len(steps) - 1) * 2 * 16384) >= 0.99
    assert dropped == 0 and sum(len(i) for s in steps for i in s) == len(lens)
