"""MetricsLogger arithmetic (throughput, MFU, cost, ETA), sinks, resume truncation; peak FLOPs table."""

from __future__ import annotations

import json

import pytest
import torch

from hrm_text.train.metrics import (
    MetricsLogger,
    device_peak_flops,
    format_duration,
    measure_matmul_flops,
    peak_flops_for_name,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_train_derives_throughput_mfu_cost_eta(tmp_path):
    clock = FakeClock()
    lg = MetricsLogger(tmp_path, total_steps=100, price_per_gpu_hour=2.0, num_gpus=4, peak_flops=1e12,
                       tensorboard=False, progress=True, clock=clock)
    clock.t += 36.0  # 10 steps in 36 s
    m = lg.log_train(10, loss=2.5, accuracy=0.25, tokens=40_000, flops=72e12, lr=1e-3, bp_steps=2)
    assert m["tokens_per_s"] == pytest.approx(40_000 / 36)
    assert m["tokens_per_s_per_gpu"] == pytest.approx(40_000 / 36 / 4)
    assert m["mfu"] == pytest.approx(72e12 / 36 / 4e12)  # 0.5
    assert m["elapsed_s"] == pytest.approx(36.0)
    assert m["gpu_hours"] == pytest.approx(0.04)
    assert m["cost"] == pytest.approx(0.08)
    assert m["eta_s"] == pytest.approx(90 * 3.6)
    assert m["projected_cost"] == pytest.approx(100 * 3.6 / 3600 * 4 * 2.0)
    assert m["step_time_s"] == pytest.approx(3.6)
    assert m["lr"] == 1e-3 and m["bp_steps"] == 2
    text = lg.summary(m)
    for piece in ("loss 2.5000", "acc 25.0%", "1.1k tok/s", "MFU 50.0%", "elapsed 0:36", "$0.08/$0.80", "ETA 5:24"):
        assert piece in text, (piece, text)
    clock.t += 10.0
    m2 = lg.log_train(20, loss=2.0, accuracy=0.5, tokens=1000, flops=0.0)
    assert m2["tokens_per_s"] == pytest.approx(100.0)  # interval timing: 10 s since the last call
    lg.log(20, {"loss": 2.2, "exact_match": 0.4}, prefix="eval/")
    lg.close()
    recs = read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20, 20]
    assert recs[0]["train/loss"] == 2.5 and recs[2]["eval/exact_match"] == 0.4


def test_resume_continues_clock_and_truncates_replayed_steps(tmp_path):
    clock = FakeClock()
    with MetricsLogger(tmp_path, total_steps=10, price_per_gpu_hour=1.0, num_gpus=1, peak_flops=1.0,
                       tensorboard=False, progress=False, clock=clock) as lg:
        for s in range(1, 6):
            clock.t += 1.0
            lg.log_train(s, loss=1.0, accuracy=0.0, tokens=1, flops=1)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "tor')  # torn write of a killed run
    clock2 = FakeClock()
    lg = MetricsLogger(tmp_path, total_steps=10, price_per_gpu_hour=3600.0, num_gpus=1, peak_flops=1.0,
                       tensorboard=False, progress=False, start_step=3, elapsed_offset=3.0, clock=clock2)
    clock2.t += 2.0
    m = lg.log_train(4, loss=1.0, accuracy=0.0, tokens=1, flops=1)
    lg.close()
    assert m["elapsed_s"] == pytest.approx(5.0) and m["cost"] == pytest.approx(5.0)
    assert m["eta_s"] == pytest.approx(6 * 2.0)
    assert [r["step"] for r in read(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_fresh_run_sets_an_earlier_runs_metrics_aside(tmp_path, caplog):
    def run(losses: list[float]) -> None:
        with MetricsLogger(tmp_path, total_steps=5, price_per_gpu_hour=1.0, num_gpus=1, peak_flops=1.0,
                           tensorboard=False, progress=False) as lg:
            for s, loss in enumerate(losses, 1):
                lg.log_train(s, loss=loss, accuracy=0.0, tokens=1, flops=1, dt=1.0)

    run([9.0, 8.0, 7.0])  # e.g. a run that died before its first checkpoint
    run([5.0, 4.0])
    assert "kept as metrics.jsonl.1" in caplog.text
    run([3.0])
    assert [r["train/loss"] for r in read(tmp_path / "metrics.jsonl")] == [3.0]
    assert [r["train/loss"] for r in read(tmp_path / "metrics.jsonl.1")] == [9.0, 8.0, 7.0]
    assert [r["train/loss"] for r in read(tmp_path / "metrics.jsonl.2")] == [5.0, 4.0]


def test_non_main_rank_writes_nothing(tmp_path):
    lg = MetricsLogger(tmp_path / "x", total_steps=5, price_per_gpu_hour=1.0, num_gpus=2, peak_flops=1.0, is_main=False)
    lg.log_train(1, loss=1.0, accuracy=1.0, tokens=1, flops=1, dt=1.0)
    lg.log(1, {"a": 1.0})
    lg.close()
    assert not (tmp_path / "x").exists()


def test_tensorboard_events_written(tmp_path):
    pytest.importorskip("tensorboard")
    lg = MetricsLogger(tmp_path, total_steps=5, price_per_gpu_hour=1.0, num_gpus=1, peak_flops=1.0, progress=False)
    lg.log_train(1, loss=1.0, accuracy=1.0, tokens=1, flops=1, dt=1.0)
    lg.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "train/mfu" in acc.Tags()["scalars"]
    assert acc.Scalars("train/loss")[0].value == 1.0


def test_wandb_missing_is_a_warning_not_an_error(tmp_path, caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    lg = MetricsLogger(tmp_path, total_steps=5, price_per_gpu_hour=1.0, num_gpus=1, peak_flops=1.0,
                       tensorboard=False, wandb=True, progress=False)
    lg.close()
    assert "wandb is not installed" in caplog.text


def test_peak_flops_table_and_measurement():
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe")[0] == 756e12
    assert peak_flops_for_name("NVIDIA H200")[0] == 989e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert peak_flops_for_name("Some Future GPU") is None
    rate = measure_matmul_flops("cpu", n=128, seconds=0.05)
    assert 1e7 < rate < 1e14
    flops, source = device_peak_flops(torch.device("cpu"))
    assert flops > 0 and "measured" in source


def test_format_duration():
    assert format_duration(5) == "0:05"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(float("inf")) == "?"


def test_bar_moves_every_step_with_rate_and_eta(tmp_path):
    """With log_every=10 the bar still advances after each step, showing tokens/s and an ETA, and
    writes no metric records between logs."""
    clock = FakeClock()
    lg = MetricsLogger(tmp_path, total_steps=20, price_per_gpu_hour=0.0, num_gpus=1, peak_flops=1e12,
                       tensorboard=False, progress=True, clock=clock)
    for step in (1, 2, 3):
        clock.t += 2.0  # 2 s per step, 1,000 tokens each
        lg.step_done(step, tokens=1000, loss=3.0 - step / 10)
        assert lg._bar.n == step
    text = lg._bar.postfix
    assert "500 tok/s" in text and "loss 2.7000" in text
    assert "ETA 0:34" in text  # 17 steps left at 2 s
    clock.t += 2.0
    lg.step_done(4, tokens=1000, loss=2.6)
    lg.log_train(4, loss=2.6, accuracy=0.5, tokens=4000, flops=1e12)  # the periodic log keeps n at 4
    assert lg._bar.n == 4
    clock.t += 2.0
    lg.step_done(5, tokens=1000, loss=2.5)
    assert "last log: loss 2.6000" in lg._bar.postfix
    lg.close()
    assert [r["step"] for r in read(tmp_path / "metrics.jsonl")] == [4]
