"""The float8 loss-curve check's arithmetic (benchmarks/fp8_loss_curve.py), on made-up curves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fp8_loss_curve.py"
spec = importlib.util.spec_from_file_location("fp8_loss_curve", SCRIPT)
assert spec is not None and spec.loader is not None
flc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flc)

STEPS = range(10, 110, 10)


def curve(scale: float = 1.0, bump_at: int | None = None, bump: float = 0.0) -> dict[int, float]:
    return {s: scale * (3.0 - s / 100) * (1 + (bump if s == bump_at else 0.0)) for s in STEPS}


def test_rel_diffs_finds_the_worst_step_and_the_last():
    d = flc.rel_diffs(curve(bump_at=50, bump=0.05), curve(), skip=20, window=3)
    assert d["at_step"] == 50 and d["max_abs_rel_diff"] == pytest.approx(0.05)
    assert d["final_rel_diff"] == pytest.approx(0.0)
    assert d["max_abs_windowed_rel_diff"] == pytest.approx(0.05 / 3)


def test_rel_diffs_leaves_out_the_warm_up():
    d = flc.rel_diffs(curve(bump_at=20, bump=0.5), curve(), skip=20, window=1)
    assert d["max_abs_rel_diff"] == pytest.approx(0.0)


def test_seed_means_pass_within_tol_and_fail_outside():
    bf16 = {0: curve(1.0), 1: curve(1.1)}  # the seeds differ by 10%
    close = {0: curve(1.004), 1: curve(1.104)}
    far = {0: curve(1.0, bump_at=70, bump=0.05), 1: curve(1.1, bump_at=70, bump=0.05)}
    rep = flc.analyse({"bf16": bf16, "close": close, "far": far}, skip=0, window=2, tol=0.01)
    assert rep["passed"] == {"close": True, "far": False}
    far_mean = rep["seed_mean"]["far"]
    assert far_mean["at_step"] == 70 and far_mean["max_abs_rel_diff"] == pytest.approx(0.05)
    assert far_mean["bf16_seed_spread_max"] == pytest.approx(0.1 / 1.05)
    assert set(rep["per_seed"]["far"]) == {"0", "1"}


def test_one_seed_has_no_spread_and_missing_seeds_are_left_out():
    rep = flc.analyse({"bf16": {0: curve()}, "fp8": {0: curve(1.02), 3: curve()}}, skip=0, window=2, tol=0.01)
    assert rep["seed_mean"]["fp8"]["seeds"] == 1 and "bf16_seed_spread_max" not in rep["seed_mean"]["fp8"]
    assert rep["passed"]["fp8"] is False


def test_variants_parse_and_refuse_a_second_reference():
    assert flc.parse_variants(["fp8p:fp8=true,fp8_recipe=fused_precise"]) == {
        "bf16": ["train.fp8=false"], "fp8p": ["train.fp8=true", "train.fp8_recipe=fused_precise"]}
    with pytest.raises(SystemExit, match="bf16"):
        flc.parse_variants(["bf16:lr=1e-3"])


def test_bf16_replica_gap_is_reported_beside_the_literal_check(tmp_path):
    """An earlier call's bf16 curves give bf16's own call-to-call gap; a float8 gap no larger than it
    is reported as such, while `passed` stays the literal 1% check."""
    bf16 = {0: curve(1.0), 1: curve(1.1)}
    old = {0: curve(1.0, bump_at=50, bump=0.02), 1: curve(1.1, bump_at=50, bump=0.02)}  # 2% apart at step 50
    report = {"curves": {"bf16": {str(s): [[k, c[k]] for k in sorted(c)] for s, c in old.items()}}}
    path = tmp_path / "old.json"
    path.write_text(__import__("json").dumps(report))
    replica = flc.read_curves(path)
    assert replica == old
    fp8 = {0: curve(1.015), 1: curve(1.115)}  # 1.5% off everywhere: fails 1%, inside the 2% floor
    far = {0: curve(1.03), 1: curve(1.13)}
    rep = flc.analyse({"bf16": bf16, "fp8": fp8, "far": far}, skip=0, window=2, tol=0.01, replica=replica)
    assert rep["bf16_replica"]["max_abs_rel_diff"] == pytest.approx(0.02 / 1.02) and rep["bf16_replica"]["at_step"] == 50
    assert rep["passed"] == {"fp8": False, "far": False}
    assert rep["within_bf16_replica_gap"] == {"fp8": True, "far": False}
    assert "bf16_replica" not in flc.analyse({"bf16": bf16, "fp8": fp8}, skip=0, window=2, tol=0.01)
    path.write_text("{}")
    with pytest.raises(SystemExit, match="not a report of this script"):
        flc.read_curves(path)


class FakeRun:
    """A finished training process as `train_runs` sees it."""

    def __init__(self, live: set, key: tuple[str, int], returncode: int, err: str) -> None:
        self.live, self.key, self.returncode, self.err = live, key, returncode, err

    def communicate(self) -> tuple[str, str]:
        self.live.discard(self.key)
        return "", self.err


def test_a_run_out_of_memory_beside_others_runs_again_alone_and_other_errors_do_not():
    live: set = set()
    starts: list[tuple[tuple[str, int], int]] = []  # (job, runs already on the GPU when it started)
    fails = {("fp8", 0): ["error: out of memory on NVIDIA H100 80GB HBM3", ""], ("bf16", 1): ["KeyError: boom"]}

    def start(name: str, seed: int) -> FakeRun:
        key = (name, seed)
        starts.append((key, len(live)))
        live.add(key)
        err = fails[key].pop(0) if fails.get(key) else ""
        return FakeRun(live, key, 1 if err else 0, err)

    jobs = [(n, s) for s in range(2) for n in ("bf16", "fp8")]
    ended = list(flc.train_runs(jobs, 3, start))
    assert [(n, s, rc) for n, s, rc, _err, _wall in ended] == [("bf16", 0, 0), ("bf16", 1, 1), ("fp8", 1, 0), ("fp8", 0, 0)]
    assert starts[-1] == (("fp8", 0), 0)  # the second try had the GPU to itself
    assert [k for k, _ in starts].count(("fp8", 0)) == 2 and [k for k, _ in starts].count(("bf16", 1)) == 1
    # one at a time, nothing is retried: an out-of-memory run is not a neighbour's fault there
    fails[("fp8", 0)] = ["error: out of memory on NVIDIA H100 80GB HBM3"]
    ended = list(flc.train_runs([("fp8", 0)], 1, start))
    assert [(n, s, rc) for n, s, rc, _err, _wall in ended] == [("fp8", 0, 1)]
