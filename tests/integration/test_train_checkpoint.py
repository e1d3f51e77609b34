"""Checkpoint round trip, exact continuation, damage detection, retention, and a 2-rank FSDP2 save
loaded by a single process (DCP resharding)."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hrm_text.checkpoint.store import (
    MARKER,
    CheckpointError,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    read_checkpoint_config,
    restore_rng,
    save_checkpoint,
    verify_checkpoint,
)
from hrm_text.train.optim import AdamAtan2, ModelEMA


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8, bias=False) for _ in range(2)])
        self.head = nn.Linear(8, 16)
        self.register_buffer("z_init", torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.z_init
        for b in self.blocks:
            h = h + torch.tanh(b(h))
        return self.head(h)


def make(seed: int = 0):
    torch.manual_seed(seed)
    net = Net()
    opt = AdamAtan2(net.parameters(), lr=1e-2)
    ema = ModelEMA(net, decay=0.9)
    return net, opt, ema


def train_steps(net, opt, ema, n, seed):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n):
        x = torch.randint(0, 16, (4, 5), generator=g)
        loss = nn.functional.cross_entropy(net(x).flatten(0, 1), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net)
        losses.append(loss.item())
    return losses


@pytest.fixture
def tok_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text('{"fake": true}')
    return d


def save(out, step, net, opt, ema, tok, keep=3, **kw):
    return save_checkpoint(out, step, net, opt, ema, {"epoch": 1, "pos": step * 10}, {"train": {"lr": 0.01}}, tok, keep, **kw)


def test_round_trip_and_exact_continuation(tmp_path, tok_dir):
    net, opt, ema = make(0)
    train_steps(net, opt, ema, 3, seed=1)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save(tmp_path / "run", 3, net, opt, ema, tok_dir, extra={"elapsed_s": 12.5})
    assert path.name == "step_000003" and (path / MARKER).is_file()
    assert (path / "tokenizer" / "tokenizer.json").read_text() == '{"fake": true}'
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))

    net2, opt2, ema2 = make(1)  # different init: everything must come from the checkpoint
    state = load_checkpoint(path, net2, opt2, ema2)
    assert state["step"] == 3
    assert state["loader_state"] == {"epoch": 1, "pos": 30}
    assert state["config"] == {"train": {"lr": 0.01}}
    assert state["extra"] == {"elapsed_s": 12.5}
    assert state["world_size"] == 1
    for (n1, p1), (n2, p2) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    for n in ema.shadow:
        assert torch.equal(ema.shadow[n], ema2.shadow[n])
    assert ema2.num_updates == 3
    restore_rng(state)
    assert (random.random(), float(np.random.rand())) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])

    # resumed training is bitwise the uninterrupted one (optimizer moments and step counts restored)
    assert train_steps(net, opt, ema, 3, seed=2) == train_steps(net2, opt2, ema2, 3, seed=2)
    for p1, p2 in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p1, p2)
    for n in ema.shadow:
        assert torch.equal(ema.shadow[n], ema2.shadow[n])


def test_load_model_weights_ema_or_raw_and_dtype(tmp_path, tok_dir):
    net, opt, ema = make(0)
    train_steps(net, opt, ema, 4, seed=1)
    path = save(tmp_path / "run", 4, net, opt, ema, tok_dir)
    assert read_checkpoint_config(path) == {"train": {"lr": 0.01}}

    plain = make(3)[0]
    assert load_model_weights(path, plain, use_ema=True) == "ema"
    for n, p in plain.named_parameters():
        assert torch.equal(p, ema.shadow[n])
    assert torch.equal(plain.z_init, net.z_init)  # buffers come from the model part

    raw = make(3)[0].to(torch.bfloat16)
    assert load_model_weights(path, raw, use_ema=False) == "model"
    for (n, p), q in zip(raw.named_parameters(), net.parameters()):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q.detach().to(torch.bfloat16))


def test_checkpoint_without_optimizer_or_ema(tmp_path, tok_dir, caplog):
    net, opt, ema = make(0)
    path = save_checkpoint(tmp_path / "run", 1, net, None, None, None, {}, None, keep=0)
    assert not (path / "tokenizer").exists()
    with pytest.raises(CheckpointError, match="no optimizer"):
        load_checkpoint(path, make(1)[0], opt)
    other = make(1)[0]
    with caplog.at_level(logging.WARNING):
        assert load_model_weights(path, other, use_ema=True) == "model"
    assert "no EMA" in caplog.text
    assert torch.equal(other.head.weight, net.head.weight)
    assert load_checkpoint(path, make(2)[0])["loader_state"] is None


def test_damaged_newest_is_skipped(tmp_path, tok_dir, caplog):
    out = tmp_path / "run"
    net, opt, ema = make(0)
    good = save(out, 1, net, opt, ema, tok_dir)
    train_steps(net, opt, ema, 1, seed=1)
    bad = save(out, 2, net, opt, ema, tok_dir)
    assert find_latest(out) == bad
    shard = next((bad / "state").glob("*.distcp"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        assert find_latest(out) == good
    assert "skipping damaged checkpoint" in caplog.text and "truncated" in caplog.text
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(bad, make(1)[0])
    # a missing marker is also "not complete"
    (good / MARKER).unlink()
    assert find_latest(out) is None


def test_checksum_catches_same_size_corruption(tmp_path, tok_dir):
    net, opt, ema = make(0)
    path = save(tmp_path / "run", 1, net, opt, ema, tok_dir)
    shard = next((path / "state").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_checkpoint(path, "size")[0]
    ok, reason = verify_checkpoint(path, "checksum")
    assert not ok and "CRC32" in reason
    assert find_latest(tmp_path / "run", verify="checksum") is None


def test_temp_dirs_never_picked_and_keep_last_k(tmp_path, tok_dir):
    out = tmp_path / "run"
    net, opt, ema = make(0)
    for step in range(1, 6):
        save(out, step, net, opt, ema, tok_dir, keep=2)
    assert [s for s, _ in list_checkpoints(out)] == [4, 5]
    # a crashed write leaves a temp dir (even with a marker inside): never listed, never returned
    crashed = out / ".tmp-step_000009"
    crashed.mkdir()
    (crashed / MARKER).write_text(json.dumps({"files": {}}))
    assert find_latest(out).name == "step_000005"
    assert [s for s, _ in list_checkpoints(out)] == [4, 5]
    # the next save clears the leftover temp dir and keeps retention at 2
    save(out, 6, net, opt, ema, tok_dir, keep=2)
    assert not crashed.exists()
    assert sorted(p.name for p in out.iterdir()) == ["step_000005", "step_000006"]


def test_resaving_a_step_replaces_it(tmp_path, tok_dir):
    out = tmp_path / "run"
    net, opt, ema = make(0)
    save(out, 3, net, opt, ema, tok_dir)
    train_steps(net, opt, ema, 1, seed=4)
    path = save(out, 3, net, opt, ema, tok_dir)
    other = make(1)[0]
    load_model_weights(path, other, use_ema=False)
    assert torch.equal(other.head.weight, net.head.weight)
    assert [p.name for p in out.iterdir()] == ["step_000003"]


def test_missing_tokenizer_folder_fails_before_writing(tmp_path):
    net, opt, ema = make(0)
    with pytest.raises(CheckpointError, match="tokenizer"):
        save(tmp_path / "run", 1, net, opt, ema, tmp_path / "nope")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# Two gloo ranks with FSDP2 write a sharded checkpoint; one plain process loads it.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from hrm_text.train.distributed import apply_fsdp2, cleanup, init_distributed

    info = init_distributed(device="cpu")
    try:
        net, _, _ = make(0)
        apply_fsdp2(net, list(net.blocks), mp_dtype=None)
        opt = AdamAtan2(net.parameters(), lr=1e-2, foreach=True)  # multi-tensor path on DTensor shards
        ema = ModelEMA(net, decay=0.9)
        train_steps(net, opt, ema, 2, seed=1)  # same data on both ranks
        save_checkpoint(out, 2, net, opt, ema, {"rank": info.rank}, {"k": 1}, None, keep=2)
        # resume under FSDP as well: a fresh sharded model+optimizer loads it
        net2, _, _ = make(5)
        apply_fsdp2(net2, list(net2.blocks), mp_dtype=None)
        opt2 = AdamAtan2(net2.parameters(), lr=1e-2)
        state = load_checkpoint(Path(out) / "step_000002", net2, opt2, ModelEMA(net2))
        assert state["loader_state"] == {"rank": info.rank}
        for p, q in zip(net.parameters(), net2.parameters()):
            assert torch.equal(p.full_tensor(), q.full_tensor())
    finally:
        cleanup()


def test_fsdp2_two_ranks_save_then_single_process_load(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "run")
    mp.start_processes(_fsdp_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="forkserver")
    path = find_latest(out)
    assert path is not None and json.loads((path / "meta.json").read_text())["world_size"] == 2
    assert len(list((path / "state").glob("*.distcp"))) == 2

    # reference: the same 2 steps in one process (summed grads == identical data on 2 ranks)
    ref, ropt, rema = make(0)
    train_steps(ref, ropt, rema, 2, seed=1)
    net = make(7)[0]
    assert load_model_weights(path, net, use_ema=False) == "model"
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    load_model_weights(path, net, use_ema=True)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p, rema.shadow[n], rtol=1e-5, atol=1e-6)
    # the full training state also loads into a single plain process (world size 2 -> 1)
    net3, opt3, ema3 = make(9)
    state = load_checkpoint(path, net3, opt3, ema3)
    assert state["step"] == 2 and state["loader_state"] == {"rank": 0} and state["world_size"] == 2
    for p, q in zip(net3.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # moments: gradients are *summed* over the 2 ranks (same data on both), so m is 2x and v is 4x the
    # single-process values, while the atan2 update is scale invariant (parameters match above)
    for p, q in zip(net3.parameters(), ref.parameters()):
        torch.testing.assert_close(opt3.state[p]["exp_avg"], 2 * ropt.state[q]["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(opt3.state[p]["exp_avg_sq"], 4 * ropt.state[q]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
        assert int(opt3.state[p]["step"]) == 2


def test_hrm_model_resume_is_bitwise(tmp_path):
    """The real model (recurrent schedule, z_L_init buffer, truncated backprop) through save/load."""
    from hrm_text.config import model_config
    from hrm_text.data.batch import pack_rows
    from hrm_text.model.lm import HRMTextLM

    cfg = model_config("tiny", vocab_size=128, hidden_size=64, num_heads=1, max_seq_len=64)
    g = torch.Generator().manual_seed(0)
    data = [
        pack_rows([[(torch.randint(1, 128, (5,), generator=g).tolist(), torch.randint(1, 128, (3,), generator=g).tolist())] * 2], 24)
        for _ in range(4)
    ]

    def run(model, opt, ema, batches):
        out = []
        for b in batches:
            res = model.loss(b, bp_steps=3)
            (res.loss_sum / res.num_tokens).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model)
            out.append(res.loss_sum.item())
        return out

    def build(seed):
        torch.manual_seed(seed)
        m = HRMTextLM(cfg, attn_backend="sdpa")
        return m, AdamAtan2(m.parameters(), lr=1e-3), ModelEMA(m, decay=0.9)

    m1, o1, e1 = build(0)
    run(m1, o1, e1, data[:2])
    path = save_checkpoint(tmp_path, 2, m1, o1, e1, None, {"model": {"preset": "tiny"}}, None, keep=1)
    m2, o2, e2 = build(1)
    load_checkpoint(path, m2, o2, e2)
    assert torch.equal(m1.model.z_L_init, m2.model.z_L_init)
    assert run(m1, o1, e1, data[2:]) == run(m2, o2, e2, data[2:])
    m3 = build(2)[0]
    assert load_model_weights(path, m3) == "ema"


def test_single_process_distributed_helpers(monkeypatch):
    from hrm_text.train.distributed import all_reduce_sum, apply_fsdp2, barrier, init_distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert info.device == torch.device("cpu") and not info.distributed
    t = torch.tensor([3.0])
    assert all_reduce_sum(t) is t and t.item() == 3.0
    barrier()
    with pytest.raises(RuntimeError, match="process group"):
        apply_fsdp2(Net(), [], mp_dtype=None)


def test_checkpoint_before_first_step_keeps_optimizer_fresh(tmp_path):
    net, opt, ema = make(0)
    path = save(tmp_path / "run", 0, net, opt, ema, None)
    assert not opt.state  # saving did not run a zero-LR step on the live optimizer
    net2, opt2, ema2 = make(0)
    assert load_checkpoint(path, net2, opt2, ema2)["step"] == 0
    assert not opt2.state
    assert train_steps(net, opt, ema, 2, seed=3) == train_steps(net2, opt2, ema2, 2, seed=3)
