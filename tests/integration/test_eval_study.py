"""`hrm-text study`: a tiny 2-run grid end to end on CPU (the smoke test the issue asks for)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.config import model_config
from hrm_text.eval.study import EXIT_INCOMPLETE, aggregate, load_grid
from hrm_text.model.flops import run_flops

pytest.importorskip("matplotlib")

MODEL = {"hidden_size": 64, "num_heads": 2, "head_dim": 32, "mlp_multiple": 64, "max_seq_len": 256}


def _corpus(root: Path) -> Path:
    """A hand-made built-in corpus folder: padded 2-digit sums (train, held-out) and a text split."""
    rng = random.Random(0)

    def rows(n: int, lo: int, hi: int) -> list[dict[str, str]]:
        out = []
        for _ in range(n):
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            out.append({"condition": "direct", "instruction": f"{a:03d}+{b:03d}=", "response": f"{a + b:04d}"})
        return out

    (root / "train").mkdir(parents=True)
    (root / "heldout").mkdir()
    for name, data in (("train/arith.jsonl", rows(3000, 0, 99)), ("heldout/arith_test.jsonl", rows(24, 0, 99)),
                       ("heldout/arith_long.jsonl", rows(24, 100, 999))):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    text = [{"condition": "direct", "instruction": f"What does `m.f{i}` do?", "response": f"Return the value number {i}."} for i in range(300)]
    (root / "train/nl_docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text[:280]))
    (root / "heldout/nl_docs_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text[280:]))
    (root / "builtin.json").write_text("{}\n")
    return root


def _grid(tmp: Path, steps_hrm: int = 40) -> Path:
    hrm = model_config(None, arch="hrm", n_layers=2, vocab_size=384, **MODEL)
    budget = steps_hrm * 256 * 0.9 * run_flops(hrm, 1.0)  # ~40 HRM steps of ~90%-full 256-token rows
    grid = {
        "name": "smoke", "seed": 0,
        "data": {"corpus_dir": str(_corpus(tmp / "corpus")), "vocab_size": 384, "context": 256, "epochs": 1},
        "eval": {"limit": 8, "max_new_tokens": 12, "batch": 16},
        "base": {"model": MODEL, "data": {"tokens_per_rank": 256, "num_workers": 0},
                 "train": {"attn_backend": "sdpa", "global_batch_tokens": 256, "lr": 3e-3, "lr_warmup_steps": 5, "ema_decay": 0.99,
                           "ema_warmup": True, "log_every": 5, "compile": False, "tensorboard": False, "dtype": "fp32"}},
        "budgets": [budget],
        "runs": [
            {"name": "hrm", "label": "HRM", "model": {"arch": "hrm", "n_layers": 2}},
            {"name": "tf_full", "label": "Transformer full-text", "model": {"arch": "transformer", "n_layers": 2},
             "train": {"objective": "causal_full"}},
        ],
    }
    p = tmp / "grid.yaml"
    p.write_text(yaml.safe_dump(grid))
    return p


def test_smoke_grid_writes_table_and_plots_with_matched_flops(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)  # tiny matrices: one thread is faster and leaves the other core alone
    grid = _grid(tmp_path)
    out = tmp_path / "study"
    res = CliRunner().invoke(app, ["study", str(grid), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for f in ("results.json", "results.md", "loss_curves.png", "bars.png", "plan.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] and len(data["runs"]) == 2
    by = {r["name"]: r for r in data["runs"]}
    f_hrm, f_tf = by["hrm"]["flops"], by["tf_full"]["flops"]
    assert abs(f_hrm - f_tf) / max(f_hrm, f_tf) < 0.05, (f_hrm, f_tf)
    for r in data["runs"]:
        assert 0.95 < r["flops_vs_budget"] < 1.05
        assert set(r["heldout_loss"]) == {"arith_test", "arith_long", "nl_docs_test"} == set(r["exact_match"])
        assert all(v == v and v > 0 for v in r["heldout_loss"].values())
        assert (Path(r["checkpoint"]) / "COMPLETE").is_file()
    # matched FLOPs, not steps: the transformer is cheaper per token so it runs more steps
    assert by["tf_full"]["steps"] > by["hrm"]["steps"]
    assert by["tf_full"]["tokens"] > 1.5 * by["hrm"]["tokens"]
    md = (out / "results.md").read_text()
    assert "| HRM |" in md and "| Transformer full-text |" in md and "hrm-text train" in md
    # rerun: every run is finished, nothing trains again
    mtime = (out / "runs" / data["runs"][0]["run_id"] / "study_result.json").stat().st_mtime
    res2 = CliRunner().invoke(app, ["study", str(grid), "--out", str(out)])
    assert res2.exit_code == 0, res2.output
    assert (out / "runs" / data["runs"][0]["run_id"] / "study_result.json").stat().st_mtime == mtime
    # --report-only rebuilds the table and plots from the runs' study_result.json alone
    for f in ("results.md", "loss_curves.png", "bars.png"):
        (out / f).unlink()
    res3 = CliRunner().invoke(app, ["study", str(grid), "--out", str(out), "--report-only"])
    assert res3.exit_code == 0, res3.output
    assert all((out / f).is_file() for f in ("results.md", "loss_curves.png", "bars.png"))
    assert (out / "results.md").read_text().count("| HRM |") == 3  # compute, loss and exact-match tables
    # each run is a normal checkpoint: `hrm-text eval` takes it
    ev = CliRunner().invoke(app, ["eval", data["runs"][0]["checkpoint"], "--suite", "builtin", "--corpus",
                                  str(tmp_path / "corpus"), "--out", str(tmp_path / "ev"), "--limit", "4"])
    assert ev.exit_code == 0, ev.output


def test_grid_seeds_per_budget_and_aggregate(tmp_path: Path) -> None:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"budgets": [1e15, 4e15], "runs": [
        {"name": "hrm", "seeds": {"4e15": [0, 1, 2]}}, {"name": "tf", "budgets": [4e15]}]}))
    g = load_grid(p)
    assert [(s.name, s.budget, s.seed) for s in g.runs] == [
        ("hrm", 1e15, 0), ("hrm", 4e15, 0), ("hrm", 4e15, 1), ("hrm", 4e15, 2), ("tf", 4e15, 0)]
    fake = [{"name": "hrm", "label": "HRM", "budget_flops": 4e15, "seed": s, "arch": "hrm", "objective": "prefix_lm",
             "n_layers": 2, "params_non_embedding": 1, "device": "cpu", "tokens": 1.0, "flops": 1.0, "train_wall_s": 1.0,
             "final_train_loss": 1.0, "heldout_loss": {"a": v}, "exact_match": {"a": 10 * v}} for s, v in enumerate([1.0, 2.0, 3.0])]
    (row,) = aggregate(fake)
    assert row["heldout_loss"]["a"] == (2.0, 1.0) and row["seeds"] == [0, 1, 2]
    p.write_text(yaml.safe_dump({"budgets": [1e15], "runs": [{"name": "x", "train": {"max_steps": 3}}]}))
    assert load_grid(p).runs[0].sections["train"] == {"max_steps": 3}  # refused later, when the run is planned
    p.write_text(yaml.safe_dump({"budgets": [], "runs": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="budgets"):
        load_grid(p)


def test_time_limit_stops_cleanly_and_the_rerun_finishes(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    grid = _grid(tmp_path, steps_hrm=30)
    out = tmp_path / "study"
    run = CliRunner()
    res = run.invoke(app, ["study", str(grid), "--out", str(out), "--prepare-only"])
    assert res.exit_code == 0, res.output
    plan = json.loads((out / "plan.json").read_text())["runs"]
    assert [r["arch"] for r in plan] == ["hrm", "transformer"] and not (out / "runs").exists()
    # a limit far shorter than the run (0.06 s): it falls in set-up or in the first training steps,
    # and the call stops cleanly with exit 75 (a 1.2 s limit let a fast machine finish training and
    # evaluation first, and that call was rightly complete)
    res = run.invoke(app, ["study", str(grid), "--out", str(out), "--only", "hrm", "--time-limit", "0.001"])
    assert res.exit_code == EXIT_INCOMPLETE, res.output
    data = json.loads((out / "results.json").read_text())
    assert not data["complete"] and data["pending_runs"] == [plan[0]["run_id"]]
    res = run.invoke(app, ["study", str(grid), "--out", str(out), "--only", "hrm"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] and [r["name"] for r in data["runs"]] == ["hrm"]
    assert data["runs"][0]["steps"] == data["runs"][0]["planned_steps"] == plan[0]["steps"]


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A run stopped mid-way (SIGTERM at step 10, as a time-limit stop does) continues from step 10."""
    import os
    import signal

    import torch

    from hrm_text.eval.study import plan_steps, prepare_data, real_tokens_per_step, run_config
    from hrm_text.train.trainer import train

    torch.set_num_threads(1)
    grid_path = _grid(tmp_path, steps_hrm=30)
    out = tmp_path / "study"
    g = load_grid(grid_path)
    spec = g.runs[0]
    cfg = run_config(g, spec, prepare_data(g, out), out)
    cfg.train.max_steps, _ = plan_steps(cfg, spec.budget, real_tokens_per_step(cfg))

    def stop_at_10(step: int, _loss: float) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: finish the step, save, return

    first = train(cfg, resume="auto", on_step=stop_at_10, progress=False)
    assert first.interrupted and first.steps == 10
    res = CliRunner().invoke(app, ["study", str(grid_path), "--out", str(out), "--only", "hrm"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())["runs"][0]
    assert r["steps"] == r["planned_steps"] == cfg.train.max_steps > 10
    steps = [json.loads(x)["step"] for x in (out / "runs" / spec.run_id / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 5 and len(steps) == len(set(steps))  # the first part's records kept, none twice
    assert 0.95 < r["flops_vs_budget"] < 1.05
