"""The training loop: fresh runs, exact resume, bad input caught before work."""

import json

import pytest

from hrm_text.config import ConfigError, load_config
from hrm_text.train.trainer import train

from conftest import tiny_train_overrides


def test_trained_tiny_checkpoint_exists_and_learns(trained_tiny):
    assert (trained_tiny / "COMPLETE").is_file()
    lines = [json.loads(l) for l in (trained_tiny.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [l["train/loss"] for l in lines if "train/loss" in l]
    assert losses[-1] < losses[0] - 1.0, losses


import os
import subprocess
import sys
from pathlib import Path

DRIVER = str(Path(__file__).with_name("train_driver.py"))


def _env():
    """The subprocess imports the same hrm_text as this process (a PYTHONPATH=src run included)."""
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _run(args, env_extra=None, check=True):
    env = _env()
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _losses(out_dir):
    recs = [json.loads(l) for l in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    _run([DRIVER, "0", "KILL", "--", *tiny_train_overrides(tiny_data, out, 8, **{"train.log_every": 1, "train.ckpt_every": 3})])
    return _losses(out)


@pytest.mark.parametrize("sig", ["KILL", "TERM"])
def test_exact_resume_after_kill_or_term(sig, uninterrupted, tiny_data, tmp_path):
    over = tiny_train_overrides(tiny_data, tmp_path, 8, **{"train.log_every": 1, "train.ckpt_every": 3})
    p = _run([DRIVER, "5", sig, "--", *over], check=False)
    if sig == "KILL":
        assert p.returncode == -9
        assert (tmp_path / "step_000003").is_dir() and not (tmp_path / "step_000005").exists()
    else:  # SIGTERM: checkpoint at the step in progress, clean exit 0
        assert p.returncode == 0, p.stderr[-2000:]
        assert "interrupted=True" in p.stdout
        assert (tmp_path / "step_000005" / "COMPLETE").is_file()
    _run([DRIVER, "0", "KILL", "--", *over])
    resumed = _losses(tmp_path)
    assert sorted(resumed) == list(range(1, 9))
    assert resumed == uninterrupted  # bitwise: same floats at every step


def test_damaged_newest_checkpoint_is_skipped(uninterrupted, tiny_data, tmp_path):
    over = tiny_train_overrides(tiny_data, tmp_path, 8, **{"train.log_every": 1, "train.ckpt_every": 3, "train.ckpt_keep": 5})
    _run([DRIVER, "7", "KILL", "--", *over], check=False)  # leaves step_000003 and step_000006
    shard = sorted((tmp_path / "step_000006" / "state").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncate
    p = _run([DRIVER, "0", "KILL", "--", *over])
    assert "skipping damaged checkpoint" in p.stderr and "step_000006" in p.stderr  # warned, fell back to step 3
    assert _losses(tmp_path) == uninterrupted


@pytest.mark.parametrize("keep_gathered", [False, True])
def test_two_processes_match_one(keep_gathered, tiny_data, tmp_path):
    """2 FSDP2 processes give the losses of 1 process. With train.fsdp_keep_gathered the weights stay
    gathered for the whole step and are resharded before each optimizer step, so later steps must
    still see the updated weights."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    base = {"train.log_every": 1, "train.ckpt_every": 0}
    _run([DRIVER, "0", "KILL", "--", *tiny_train_overrides(tiny_data, one, 4, **base)])
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29517 + keep_gathered), DRIVER,
          "0", "KILL", "--", *tiny_train_overrides(tiny_data, two, 4, **base, **{"train.fsdp_keep_gathered": keep_gathered})])
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-4 * abs(l1[s]), (s, l1[s], l2[s])


def test_four_processes_match_one_resume_on_two_and_hsdp(tiny_data, tmp_path):
    """4 gloo processes (FSDP2) give the losses of 1 process with 4 micro-steps; their checkpoint
    resumes on 2 processes (2 micro-steps each); HSDP (2 replica groups x 2 shards) matches too."""
    base = {"train.log_every": 1, "train.global_batch_tokens": 1024}
    one, four, hsdp = tmp_path / "one", tmp_path / "four", tmp_path / "hsdp"
    _run([DRIVER, "0", "KILL", "--", *tiny_train_overrides(tiny_data, one, 4, **base, **{"train.ckpt_every": 0})])
    torchrun = ["-m", "torch.distributed.run", "--master_port", "29519"]
    _run([*torchrun, "--nproc_per_node", "4", DRIVER, "0", "KILL", "--",
          *tiny_train_overrides(tiny_data, four, 2, **base, **{"train.ckpt_every": 0})])
    _run([*torchrun, "--nproc_per_node", "2", DRIVER, "0", "KILL", "--",
          *tiny_train_overrides(tiny_data, four, 4, **base, **{"train.ckpt_every": 0})])  # resumes at step 2
    _run([*torchrun, "--nproc_per_node", "4", DRIVER, "0", "KILL", "--",
          *tiny_train_overrides(tiny_data, hsdp, 2, **base, **{"train.ckpt_every": 0, "train.fsdp_replicate": 2})])
    l1, l4, lh = _losses(one), _losses(four), _losses(hsdp)
    assert sorted(l1) == sorted(l4) == [1, 2, 3, 4] and sorted(lh) == [1, 2]
    for s in l1:
        assert abs(l1[s] - l4[s]) <= 1e-4 * abs(l1[s]), (s, l1[s], l4[s])
    for s in lh:
        assert abs(l1[s] - lh[s]) <= 1e-4 * abs(l1[s]), (s, l1[s], lh[s])


def test_bad_config_key_stops_before_work(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        load_config(None, tiny_train_overrides(tiny_data, tmp_path, 2) + ["train.lrr=1"])
    assert not any(tmp_path.iterdir())


def test_missing_data_folder_stops_before_work(tiny_data, tmp_path):
    cfg = load_config(None, tiny_train_overrides(tiny_data, tmp_path / "run", 2) + [f"data.sampled_dir={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="not a sampled data folder"):
        train(cfg, resume=None, progress=False)
    assert not (tmp_path / "run").exists()


def test_tokenizer_data_vocab_mismatch_stops_before_work(tiny_data, tmp_path):
    from hrm_text.data.tokenizer import train_tokenizer

    other = tmp_path / "tok_words"
    words = [f"word{i} other{i * 7} thing{i % 13}" for i in range(2000)]  # more merges than the digits corpus has
    train_tokenizer(words, vocab_size=400, out_dir=other)
    cfg = load_config(None, tiny_train_overrides(tiny_data, tmp_path / "run", 2) + [f"data.tokenizer_dir={other}"])
    with pytest.raises(ConfigError, match="re-tokenize"):
        train(cfg, resume=None, progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_config_errors_cleanly(tmp_path):
    from typer.testing import CliRunner

    from hrm_text.cli import app

    r = CliRunner().invoke(app, ["train", "model.preset=tiny", "train.bogus=1"])
    assert r.exit_code == 2
    assert "unknown key train.bogus" in r.output
    r = CliRunner().invoke(app, ["train", "model.preset=tiny", f"data.sampled_dir={tmp_path}", "train.max_steps=1"])
    assert r.exit_code == 2 and "sampled data folder" in r.output


def test_sft_starts_from_pretrained_ema_weights(trained_tiny, tiny_data, tmp_path):
    """SFT config: init_from a checkpoint (EMA weights, fresh optimizer), full K from step 1."""
    from hrm_text.train.schedule import bp_steps_at

    sft = load_config("src/hrm_text/configs/sft.yaml", tiny_train_overrides(tiny_data, tmp_path / "sft", 3) + [
        f"train.init_from={trained_tiny}", "train.global_batch_tokens=512", "data.tokens_per_rank=256", "train.lr_warmup_steps=1"])
    assert sft.train.full_bp_from_start and bp_steps_at(1, 3, sft.train, sft.model.arch) == sft.train.bp_max_steps
    fresh = load_config(None, tiny_train_overrides(tiny_data, tmp_path / "fresh", 3))
    r_sft = train(sft, resume=None, progress=False)
    r_fresh = train(fresh, resume=None, progress=False)
    assert r_sft.losses[0] < r_fresh.losses[0] - 1.0  # pretrained weights were really loaded
    assert (r_sft.final_checkpoint / "COMPLETE").is_file()


def test_sft_refuses_model_overrides_the_checkpoint_contradicts_and_keeps_the_callers_config(trained_tiny, tiny_data, tmp_path):
    over = tiny_train_overrides(tiny_data, tmp_path / "sft_bad", 1) + [f"train.init_from={trained_tiny}"]
    bad = load_config(None, over + ["model.hidden_size=64"])
    with pytest.raises(ConfigError, match=r"model\.hidden_size=64 \(the checkpoint has 128\)"):
        train(bad, resume=None, progress=False)
    ok = load_config(None, over)
    before = ok.to_dict()
    train(ok, resume=None, progress=False)
    assert ok.to_dict() == before  # train() works on its own copy


def test_eval_during_training_logs_heldout_loss_and_exact_match(tiny_data, tmp_path):
    cfg = load_config(None, tiny_train_overrides(tiny_data, tmp_path / "run", 4) + [
        f"eval.heldout_dir={tiny_data['sampled']}", f"eval.heldout_jsonl={tiny_data['heldout']}",
        "eval.every=2", "eval.heldout_limit=4"])
    from hrm_text.eval.during_training import make_eval_fn  # evaluation sits a floor above training

    with pytest.raises(ConfigError, match="no eval_fn"):  # asked for, not given: refused, not skipped
        train(cfg, resume=None, progress=False)
    res = train(cfg, resume=None, progress=False, eval_fn=make_eval_fn(cfg))
    assert [e["step"] for e in res.eval_history] == [2, 4]
    for e in res.eval_history:
        assert 0 < e["heldout_loss"] < 10 and 0 <= e["exact_match"] <= 100
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/heldout_loss" in r for r in recs) and any("eval/exact_match" in r for r in recs)


def test_sigterm_mid_long_step_exits_fast_and_resumes_exactly(tiny_data, tmp_path):
    """A step of 96 micro-steps (several seconds on CPU) and a SIGTERM early in step 3: the run
    must not finish the step (spot notice can be shorter than a step), but drop it, save step 2
    and exit 0 within a fraction of the step time; the resume then replays step 3 bit-exactly."""
    import signal
    import time

    extra = {"train.log_every": 1, "train.ckpt_every": 0, "train.global_batch_tokens": 256 * 96}
    full = tmp_path / "full"
    _run([DRIVER, "0", "KILL", "--", *tiny_train_overrides(tiny_data, full, 4, **extra)])
    want = _losses(full)
    run = tmp_path / "run"
    over = tiny_train_overrides(tiny_data, run, 4, **extra)
    env = _env()
    p = subprocess.Popen([sys.executable, DRIVER, "0", "KILL", "--", *over], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while 2 not in (_losses(run) if (run / "metrics.jsonl").is_file() else {}):
            assert p.poll() is None and time.monotonic() < deadline, "step 2 never finished"
            time.sleep(0.02)
        recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        step_s = next(r["train/step_time_s"] for r in recs if r["step"] == 2)
        time.sleep(0.1 * step_s)  # early in step 3
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=300)
        exit_s = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-2000:]
    assert "interrupted=True" in out and "dropped the step in progress" in err
    assert (run / "step_000002" / "COMPLETE").is_file() and not (run / "step_000003").exists()
    print(f"SIGTERM: exit after {exit_s:.2f} s, step time {step_s:.2f} s")
    assert exit_s < 0.5 * step_s, (exit_s, step_s)  # finishing the step would take ~0.9 step_s
    _run([DRIVER, "0", "KILL", "--", *over])
    assert _losses(run) == want  # bitwise, steps 1-4


def _cfg(tiny_data, out, steps, drop=(), **extra):
    over = [o for o in tiny_train_overrides(tiny_data, out, steps, **extra) if not o.startswith(tuple(drop))]
    return load_config(None, over)


def test_cpu_default_batch_when_unset_and_start_line(tiny_data, tmp_path, caplog):
    """Neither batch key set: a CPU run uses 2,048-token rows, no accumulation, and says so before
    the first step; explicit values are kept as given."""
    import logging

    caplog.set_level(logging.INFO, logger="hrm_text.train.trainer")
    unset = ("train.global_batch_tokens", "data.tokens_per_rank")
    cfg = _cfg(tiny_data, tmp_path / "a", 2, drop=unset)
    train(cfg, resume=None, progress=False)
    assert (cfg.data.tokens_per_rank, cfg.train.global_batch_tokens) == (16384, 196608)  # the caller's copy is untouched
    line = next(r.getMessage() for r in caplog.records if "batch:" in r.getMessage())
    assert "batch: 2,048 tokens per optimizer step = 1 process(es) x 1 micro-step(s) of accumulation x 2,048-token rows" in line
    assert "CPU default for preset tiny" in line and "196,608" in line and "steps per epoch, 2 steps in this run" in line
    saved = json.loads((tmp_path / "a" / "step_000002" / "config.json").read_text())
    assert saved["train"]["global_batch_tokens"] == 2048 and saved["data"]["tokens_per_rank"] == 2048
    assert "set_keys" not in saved
    caplog.clear()
    cfg = _cfg(tiny_data, tmp_path / "b", 1)  # both set (512 = 2 x 256): untouched
    train(cfg, resume=None, progress=False)
    assert (cfg.data.tokens_per_rank, cfg.train.global_batch_tokens) == (256, 512)
    line = next(r.getMessage() for r in caplog.records if "batch:" in r.getMessage())
    assert "512 tokens per optimizer step = 1 process(es) x 2 micro-step(s)" in line and "as configured" in line


def test_resume_after_batch_change_names_the_setting_and_fresh_data_works(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_data, run, 2), resume=None, progress=False)  # 512-token batch
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_data, run, 4, **{"train.global_batch_tokens": 1024}), resume="auto", progress=False)
    msg = str(e.value)
    assert "train.global_batch_tokens 512 -> 1,024" in msg and "world_size" not in msg
    assert "train.global_batch_tokens=512" in msg and "--resume-data fresh" in msg
    res = train(_cfg(tiny_data, run, 4, **{"train.global_batch_tokens": 1024}), resume="auto", progress=False,
                resume_data="fresh")
    assert res.steps == 4 and len(res.losses) == 2


def test_bar_advances_every_step(tiny_data, tmp_path, capsys):
    train(_cfg(tiny_data, tmp_path, 3, **{"train.log_every": 100}), resume=None, progress=True)
    err = capsys.readouterr().err
    assert "1/3" in err and "2/3" in err and "tok/s" in err and "ETA" in err


def test_two_nodes_on_one_host_rendezvous_shard_and_checkpoint(tiny_data, tmp_path):
    """Two "nodes" of one process each, started as a 2-node cluster starts them (one torchrun per
    node, `--nnodes 2 --node_rank R`, rendezvous on loopback), with HSDP replicating across the
    nodes: the losses equal 1 process with 2 micro-steps, and the 2-node checkpoint resumes on
    1 process on the same trajectory."""
    base = {"train.log_every": 1, "train.global_batch_tokens": 512, "train.ckpt_every": 0}
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    _run([DRIVER, "0", "KILL", "--", *tiny_train_overrides(tiny_data, one, 4, **base)])
    over = tiny_train_overrides(tiny_data, nodes, 2, **base, **{"train.fsdp_replicate": 2})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", "29523",
             DRIVER, "0", "KILL", "--", *over],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for rank in (0, 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert (nodes / "step_000002" / "COMPLETE").is_file()
    _run([DRIVER, "0", "KILL", "--", *tiny_train_overrides(tiny_data, nodes, 4, **base)])  # resumes at step 2
    l1, ln = _losses(one), _losses(nodes)
    assert sorted(l1) == sorted(ln) == [1, 2, 3, 4]
    for s in l1:
        assert abs(l1[s] - ln[s]) <= 1e-4 * abs(l1[s]), (s, l1[s], ln[s])


def test_keep_gathered_all_gathers_each_block_once_per_step(tmp_path):
    """Without train.fsdp_keep_gathered a block is all-gathered at every call and again between
    the recorded calls' backwards; with it, once per step (benchmarks/fsdp_collectives.py)."""
    script = str(Path(__file__).resolve().parents[2] / "benchmarks" / "fsdp_collectives.py")
    counts = {}
    for flag in ([], ["--keep-gathered"]):
        out = tmp_path / f"c{len(flag)}.json"
        _run([script, *flag, "--port", str(29531 + len(flag)), "--out", str(out)])
        ev = json.loads(out.read_text())["fsdp_events_per_step"]
        counts[bool(flag)] = {k: v for k, v in ev.items() if k.startswith("FSDP::all_gather (model.")}
    assert counts[True] and set(counts[True].values()) == {1}
    assert all(v > 1 for v in counts[False].values())


def test_out_of_memory_names_the_settings_that_fit_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    """An accelerator OOM in a step is a message with the settings that need less memory and the
    newest checkpoint (exit status 1), not a traceback."""
    import torch
    from typer.testing import CliRunner

    from hrm_text.checkpoint.store import checkpoint_name
    from hrm_text.cli import app
    from hrm_text.train import trainer

    calls = []
    real = trainer.forward_backward

    def fails_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:  # two micro-steps per step: steps 1 and 2 complete
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "forward_backward", fails_at_step_3)
    over = tiny_train_overrides(tiny_data, tmp_path / "run", 6, **{"data.tokens_per_rank": 1024,
                                                                   "train.global_batch_tokens": 2048, "train.ckpt_every": 2})
    res = CliRunner().invoke(app, ["train", *over])
    assert res.exit_code == 1, res.output
    out = res.output
    assert "out of memory on cpu" in out and "1,024-token rows (2 micro-step(s)" in out, out
    assert "train.recompute_calls=1" in out and "data.tokens_per_rank=512" in out
    assert "train.fp8" not in out and "activation_memory_budget" not in out  # neither works on a CPU
    assert checkpoint_name(2) in out.split("newest checkpoint:")[1] and "Traceback" not in out, out
    calls.clear()
    with pytest.raises(trainer.OutOfMemory, match="train.recompute_calls=1"):
        trainer.train(load_config(None, over), resume=None, progress=False)


def test_out_of_memory_while_placing_the_model_names_sharding_not_step_settings(tiny_data, tmp_path, monkeypatch):
    """An OOM before the first step (the model, its optimizer and EMA do not fit) is a message
    naming the model's size and the way out (more ranks, a smaller preset), exit status 1."""
    import torch
    from typer.testing import CliRunner

    from hrm_text.cli import app
    from hrm_text.model.flops import count_params
    from hrm_text.train import trainer

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(trainer, "prepare_model", no_room)
    over = tiny_train_overrides(tiny_data, tmp_path / "run", 2)
    res = CliRunner().invoke(app, ["train", *over])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    n = count_params(load_config(None, over).model).total
    out = " ".join(res.output.split())  # the terminal may wrap the message
    assert "out of memory on cpu while placing the model" in out and f"{n / 1e6:,.0f}M parameters" in out, out
    assert f"{n * 20 / 2**30:,.1f} GiB per process over 1 process(es)" in out and "torchrun" in out, out
    assert "train.recompute_calls" not in out  # no step setting helps here


def test_memory_settings_leave_out_what_is_already_on():
    from hrm_text.train.trainer import memory_settings

    def names(cuda, float8, *over):
        return [k.split("=")[0] for k, _ in memory_settings(load_config(None, ["model.preset=tiny", *over]), cuda, float8)]

    assert names(True, True) == ["train.fp8", "train.activation_memory_budget", "train.recompute_calls", "data.tokens_per_rank"]
    assert [k for k, _ in memory_settings(load_config(None, ["model.preset=tiny"]), True, True)][1] == "train.activation_memory_budget=0.8"
    assert names(True, False) == ["train.activation_memory_budget", "train.recompute_calls", "data.tokens_per_rank"]  # an A100
    assert names(False, False) == ["train.recompute_calls", "data.tokens_per_rank"]
    assert names(True, True, "train.fp8=true", "train.activation_memory_budget=0.5", "data.tokens_per_rank=512") == ["train.recompute_calls"]
    assert names(True, True, "train.compile=false") == ["train.fp8", "train.recompute_calls", "data.tokens_per_rank"]
    assert "train.recompute_calls" not in names(True, True, "train.bp_max_steps=3", "train.recompute_calls=3")
    cfg = load_config(None, ["model.preset=tiny", "train.activation_memory_budget=0.8", "train.recompute_calls=2"])
    assert [k for k, _ in memory_settings(cfg, True, True)][1:3] == ["train.activation_memory_budget=0.5", "train.recompute_calls=3"]
