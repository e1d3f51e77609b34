"""`hrm-text study GRID.yaml --out DIR`: train a grid of models at matched training FLOPs on one data
order, evaluate each on the held-out splits, and write one results table with plots (docs/STUDIES.md).

Grid file (every key but `runs` and `budgets` has a default):

    name: hrm-vs-transformer
    seed: 0                     # data order of every run (the shuffle); runs differ only in model seed
    data:                       # the built-in corpus, prepared once under DIR/data
      size: study               # hrm_text.data.builtin.SIZES
      parts: [arith, dm_math, sudoku, nl_docs]
      vocab_size: 4096
      context: 1024             # longest example kept (sudoku rows above it are dropped)
      epochs: 3                 # sampled epochs (each a fresh shuffle)
      corpus_dir: null          # an existing `hrm-text data builtin` folder instead of generating one
    eval: {limit: 128, max_new_tokens: 100, batch: 128}
    base:                       # Config sections every run starts from (model/data/train/eval keys)
      model: {hidden_size: 512, num_heads: 4, head_dim: 128, max_seq_len: 1024}
      data: {tokens_per_rank: 8192}
      train: {global_batch_tokens: 8192, lr: 1e-3, lr_warmup_steps: 20}
    budgets: [1e15, 4e15]       # training FLOPs of each run, by model/flops.py's accounting
    runs:
      - name: hrm
        label: HRM
        model: {arch: hrm, n_layers: 8}
        train: {objective: prefix_lm}
        seeds: {4e15: [0, 1, 2]}   # a list (every budget) or budget -> list; default [0]
        # budgets: [4e15]          # optional: only some budgets for this run

The number of optimizer steps of a run is derived, never given: steps = budget / (FLOPs per token of
the model, averaged over its K warm-up x real tokens per step of the shared data plan). FLOPs
actually spent are read back from the run's metrics.jsonl and reported next to the budget.

Each run is a normal training folder (DIR/runs/<name>__<budget>__s<seed>/ with step_N checkpoints,
metrics.jsonl and config.yaml), usable with `hrm-text eval/chat/generate/train`. A run is finished
when its study_result.json exists; rerunning the command skips finished runs and resumes an
interrupted one from its newest checkpoint. `time_limit_s` stops cleanly (checkpoint, exit code
75) so a grid can be driven by calls of a fixed length.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hrm_text.config import Config, ConfigError, load_config, read_yaml_mapping
from hrm_text.data.batch import apply_objective, pack_rows

log = logging.getLogger(__name__)

EXIT_INCOMPLETE = 75  # EX_TEMPFAIL: stopped at the time limit; rerun the same command to resume
RESULT_FILE = "study_result.json"
DEFAULT_RULES = [{"prefix": "sudoku", "long_context": "drop"}]


# ------------------------------------------------------------------------------------------------
# grid file


@dataclass
class RunSpec:
    name: str
    label: str
    budget: float
    seed: int
    sections: dict[str, dict[str, Any]]  # model/data/train/eval overrides on top of the grid's base

    @property
    def run_id(self) -> str:
        return f"{self.name}__{self.budget:.3g}__s{self.seed}".replace("+", "")


@dataclass
class Grid:
    name: str
    seed: int
    data: dict[str, Any]
    eval: dict[str, Any]
    base: dict[str, dict[str, Any]]
    budgets: list[float]
    runs: list[RunSpec] = field(default_factory=list)
    source: str = ""


def _num(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {v!r} is not a number") from None
    if not x > 0 or not math.isfinite(x):
        raise ConfigError(f"{where}: must be a positive number (got {v!r})")
    return x


def _sections(d: Any, where: str) -> dict[str, dict[str, Any]]:
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of sections (model, data, train, eval)")
    out = {}
    for k, v in d.items():
        if k not in ("model", "data", "train", "eval"):
            raise ConfigError(f"{where}.{k}: unknown section; allowed: model, data, train, eval")
        if not isinstance(v, dict):
            raise ConfigError(f"{where}.{k} must be a mapping of keys to values")
        out[k] = dict(v)
    return out


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; errors name the key."""
    p = Path(path)
    raw = read_yaml_mapping(p, "grid file", "a mapping (name, data, base, budgets, runs)")
    allowed = {"name", "seed", "data", "eval", "base", "budgets", "runs"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"grid key {unknown[0]!r} unknown; allowed: {', '.join(sorted(allowed))}")
    budgets = raw.get("budgets")
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError("grid.budgets must be a non-empty list of FLOPs, e.g. [1e15, 4e15]")
    budgets_f = [_num(b, f"budgets[{i}]") for i, b in enumerate(budgets)]
    grid = Grid(name=str(raw.get("name") or p.stem), seed=int(raw.get("seed", 0)), data=dict(raw.get("data") or {}),
                eval=dict(raw.get("eval") or {}), base=_sections(raw.get("base"), "base"), budgets=budgets_f,
                source=str(p))
    runs = raw.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError("grid.runs must be a non-empty list of runs (name, model, train, seeds)")
    names: set[str] = set()
    for i, r in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(r, dict) or not r.get("name"):
            raise ConfigError(f"{where} needs a name")
        name = str(r["name"])
        if name in names or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}.name={name!r} must be unique and use letters, digits, _ or -")
        names.add(name)
        extra = sorted(set(r) - {"name", "label", "seeds", "budgets", "model", "data", "train", "eval"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: unknown key; allowed: name, label, seeds, budgets, model, data, train, eval")
        run_budgets = [_num(b, f"{where}.budgets") for b in r.get("budgets", budgets_f)]
        seeds_raw = r.get("seeds", [0])
        for b in run_budgets:
            if isinstance(seeds_raw, dict):
                match = [v for k, v in seeds_raw.items() if math.isclose(_num(k, f"{where}.seeds key"), b, rel_tol=1e-9)]
                seeds = match[0] if match else [0]
            else:
                seeds = seeds_raw
            if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
                raise ConfigError(f"{where}.seeds must be a list of integers or budget -> list (got {seeds!r})")
            secs = _sections({k: r[k] for k in ("model", "data", "train", "eval") if k in r}, where)
            for s in seeds:
                grid.runs.append(RunSpec(name, str(r.get("label") or name), b, int(s), secs))
    return grid


# ------------------------------------------------------------------------------------------------
# data


@dataclass
class StudyData:
    corpus: Path
    tokenizer: Path
    sampled: Path
    heldout: dict[str, Path]


def prepare_data(grid: Grid, out: Path) -> StudyData:
    """Corpus -> tokenizer -> tokens -> sampled epochs, once for the whole grid (steps already done
    are skipped, so a prepared DIR/data can be copied to another machine)."""
    from hrm_text.data.builtin import builtin_heldout_files, write_builtin_corpus
    from hrm_text.data.sample import parse_rules, sample_corpus
    from hrm_text.data.tokenize import tokenize_sources
    from hrm_text.data.tokenizer import train_tokenizer

    d = grid.data
    known = {"size", "parts", "vocab_size", "context", "epochs", "corpus_dir", "nl_roots", "rules", "workers"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"grid data.{unknown[0]}: unknown key; allowed: {', '.join(sorted(known))}")
    root = out / "data"
    corpus = Path(d["corpus_dir"]) if d.get("corpus_dir") else root / "corpus"
    tok_dir, tokd, sampled = root / "tokenizer", root / "tokens", root / "sampled"
    workers = int(d.get("workers") or 0) or None
    if not (sampled / "metadata.json").is_file():
        if not (corpus / "builtin.json").is_file():
            if d.get("corpus_dir"):
                raise ConfigError(f"grid data.corpus_dir={corpus} is not a `hrm-text data builtin` folder (no builtin.json)")
            log.info("built-in corpus (%s) -> %s", d.get("size", "study"), corpus)
            write_builtin_corpus(corpus, size=str(d.get("size", "study")), seed=grid.seed, workers=workers,
                                 parts=list(d.get("parts", ("arith", "dm_math", "sudoku", "nl_docs"))),
                                 nl_roots=[Path(x) for x in d["nl_roots"]] if d.get("nl_roots") else None)
        if not (tok_dir / "tokenizer.json").is_file():
            log.info("tokenizer (%d tokens) -> %s", int(d.get("vocab_size", 4096)), tok_dir)
            train_tokenizer([corpus / "train"], vocab_size=int(d.get("vocab_size", 4096)), out_dir=tok_dir)
        log.info("tokenize -> %s", tokd)
        tokenize_sources([corpus / "train"], tok_dir, tokd, workers=workers or 1)
        rules = parse_rules({"context": int(d.get("context", 1024)), "seed": grid.seed,
                             "rules": d.get("rules", DEFAULT_RULES)})
        log.info("sample -> %s", sampled)
        sample_corpus(tokd, sampled, rules, epochs=int(d.get("epochs", 3)))
    if not (tok_dir / "tokenizer.json").is_file():
        raise ConfigError(f"{sampled} exists but its tokenizer {tok_dir} is missing: copy both")
    heldout = {k: v for k, v in builtin_heldout_files(corpus).items()}
    if not heldout:
        raise ConfigError(f"no held-out files under {corpus}/heldout: copy them with the sampled data")
    return StudyData(corpus, tok_dir, sampled, heldout)


# ------------------------------------------------------------------------------------------------
# planning


def run_config(grid: Grid, spec: RunSpec, data: StudyData, out: Path) -> Config:
    """The full training config of one run (before its step count is set)."""
    raw: dict[str, Any] = {}
    over: list[str] = []
    for sec in ("model", "data", "train", "eval"):
        merged = dict(grid.base.get(sec, {}))
        merged.update(spec.sections.get(sec, {}))
        if merged:
            raw[sec] = merged
    for k in ("sampled_dir", "tokenizer_dir", "seed"):
        if k in raw.get("data", {}):
            raise ConfigError(f"run {spec.name}: data.{k} is set by the study (shared by every run)")
    for sec, vals in raw.items():
        for k, v in vals.items():
            over.append(f"{sec}.{k}={json.dumps(v)}")  # JSON is YAML: the values keep their types
    over += [f"data.sampled_dir={data.sampled}", f"data.tokenizer_dir={data.tokenizer}", f"data.seed={grid.seed}",
             f"train.seed={spec.seed}", f"train.out_dir={out / 'runs' / spec.run_id}"]
    from hrm_text.data.tokenizer import TextTokenizer

    try:
        cfg = load_config(None, over)
    except ConfigError as e:
        raise ConfigError(f"run {spec.name}: {e}") from None
    cfg.model.vocab_size = TextTokenizer.load(data.tokenizer).vocab_size
    for k in ("max_steps", "max_tokens", "epochs"):
        if getattr(cfg.train, k) is not None:
            raise ConfigError(f"run {spec.name}: train.{k} is derived from the FLOPs budget; remove it")
    return cfg


def real_tokens_per_step(cfg: Config) -> float:
    """Mean real (non-padding) tokens per optimizer step of the shared data plan (epoch 0)."""
    from hrm_text.data.loader import PackedLoader

    accum = max(1, round(cfg.train.global_batch_tokens / cfg.data.tokens_per_rank))
    ld = PackedLoader(cfg.data.sampled_dir, cfg.data.tokens_per_rank, world_size=accum, seed=cfg.data.seed, prefetch=False)
    try:
        fill = ld.fill_stats(0)["fill"]
    finally:
        ld.close()
    return fill * accum * cfg.data.tokens_per_rank


def plan_steps(cfg: Config, budget: float, tokens_per_step: float) -> tuple[int, float]:
    """(optimizer steps, FLOPs per token) that spend `budget` training FLOPs."""
    from hrm_text.model.flops import run_flops

    fpt = run_flops(cfg.model, 1.0, cfg.train)
    return max(1, round(budget / (fpt * tokens_per_step))), fpt


# ------------------------------------------------------------------------------------------------
# evaluation


def heldout_loss(model: Any, tok: Any, rows: list[dict[str, str]], objective: str, row_len: int) -> tuple[float, int]:
    """Mean response-token cross-entropy of `rows` (every objective is scored on the response, with
    the attention mask it was trained with); returns (loss, response tokens)."""
    dev = next(model.parameters()).device
    examples = [tok.encode_example(str(r.get("condition") or "direct"), str(r["instruction"]), str(r["response"])) for r in rows]
    view = "prefix_lm" if objective == "prefix_lm" else "causal_response"
    packed: list[list[tuple[list[int], list[int]]]] = []
    cur, used = [], 0
    for inst, resp in examples:
        n = len(inst) + len(resp)
        if n > row_len:
            continue  # longer than a training row: the model never saw such a length
        if used + n > row_len:
            packed.append(cur)
            cur, used = [], 0
        cur.append((inst, resp))
        used += n
    if cur:
        packed.append(cur)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in packed:  # one row at a time: the training shape, so a compiled attention is reused
            b = apply_objective(pack_rows([row], row_len, pad_id=tok.pad_id), view).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                r = model.loss(b)
            total += float(r.loss_sum)
            count += int(r.num_tokens)
    return (total / count if count else float("nan")), count


def evaluate_run(ckpt: Path, data: StudyData, objective: str, grid_eval: dict[str, Any], row_len: int,
                 device: str) -> dict[str, Any]:
    """Held-out loss and exact match per split, EMA weights, greedy."""
    from hrm_text.data.tokenizer import TextTokenizer
    from hrm_text.eval.runner import builtin_items
    from hrm_text.checkpoint.loading import load_model
    from hrm_text.eval.during_training import exact_match

    limit = int(grid_eval.get("limit", 128))
    model = load_model(ckpt, device=device).model.eval()
    tok = TextTokenizer.load(data.tokenizer)
    loss: dict[str, float] = {}
    em: dict[str, float] = {}
    for split, path in sorted(data.heldout.items()):
        items = builtin_items({split: path}, limit=limit)
        rows = [{"condition": it.condition, "instruction": it.instruction, "response": it.reference} for it in items]
        loss[split], _ = heldout_loss(model, tok, rows, objective, row_len)
    items = builtin_items(dict(data.heldout), limit=limit)
    longest = max(it.max_new_tokens for it in items)
    res = exact_match(model, tok, items, max_new_tokens=min(longest, int(grid_eval.get("max_new_tokens", 100))),
                      prefix_lm=objective == "prefix_lm", max_batch=int(grid_eval.get("batch", 128)),
                      compile=False)  # a decode compile per run would cost more than the decoding
    per: dict[str, list[float]] = {}
    for r in res.items:
        per.setdefault(r.id.split(":")[0], []).append(r.scores.get("exact", 0.0))
    for split, v in per.items():
        em[split] = 100.0 * sum(v) / len(v)
    return {"heldout_loss": loss, "exact_match": em, "eval_items_per_split": limit}


# ------------------------------------------------------------------------------------------------
# metrics of a finished run


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Tokens, FLOPs, wall time and the loss curve from the trainer's metrics.jsonl."""
    curve: list[tuple[int, float, float]] = []  # (step, cumulative FLOPs, loss)
    tokens = flops = 0.0
    elapsed = 0.0
    last_step = 0
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run wrote no training metrics")
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "train/loss" not in rec:
            continue
        step = int(rec["step"])
        dt = float(rec["train/step_time_s"]) * (step - last_step)  # the interval's seconds
        tokens += float(rec["train/tokens_per_s"]) * dt
        flops += float(rec["train/model_flops_per_s"]) * dt
        elapsed = float(rec["train/elapsed_s"])
        last_step = step
        curve.append((step, flops, float(rec["train/loss"])))
    return {"tokens": tokens, "flops": flops, "train_wall_s": elapsed, "steps": last_step, "curve": curve,
            "final_train_loss": curve[-1][2] if curve else float("nan")}


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------------
# the driver


class _Deadline:
    """At the time limit: SIGTERM to ourselves while training (the trainer checkpoints and returns),
    otherwise a flag the driver checks between phases."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.expired = False
        self.training = False
        self._sent = False
        self._old: Any = None

    def __enter__(self) -> "_Deadline":
        if self.seconds:
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, max(0.01, self.seconds))
        return self

    def _fire(self, _sig: int, _frame: Any) -> None:
        self.expired = True
        if not self.training or self._sent:
            return
        if callable(signal.getsignal(signal.SIGTERM)):  # the trainer's handler: it saves and returns
            self._sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        else:  # the trainer is still setting up (the default handler would kill us): try again soon
            signal.setitimer(signal.ITIMER_REAL, 0.2)

    def __exit__(self, *exc: Any) -> None:
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)


def _finished(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / RESULT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def scale_budgets(grid: Grid, factor: float) -> None:
    """Multiply every budget (e.g. by benchmarks/study_steptime.py's suggested scale)."""
    if not factor > 0:
        raise ConfigError(f"--scale-budgets must be > 0 (got {factor})")
    grid.budgets = [b * factor for b in grid.budgets]
    for s in grid.runs:
        s.budget *= factor


def _predicted_s(spec: RunSpec, done: list[dict[str, Any]]) -> float | None:
    """Seconds a run should take, from the model-FLOPs rate and eval time of runs finished in this
    call (the same architecture if one finished, else all); None before any run finished."""
    same = [r for r in done if r["name"] == spec.name] or done
    rate = sum(r["flops"] for r in same) / max(1e-9, sum(r["train_wall_s"] for r in same))
    return spec.budget / rate + statistics.fmean(r["eval_wall_s"] for r in same) + 5.0 if same else None


def run_study(grid_path: str | Path, out: str | Path, device: str | None = None, time_limit_s: float | None = None,
              only: list[str] | None = None, prepare_only: bool = False, command: str = "",
              budget_scale: float | None = None, report_only: bool = False) -> int:
    """Run (or resume) the grid; returns 0 when every run is done, EXIT_INCOMPLETE at the time limit.

    With a time limit, a run predicted (from the runs finished in this call) not to fit the time
    left is not started: a partial run's checkpoint is only useful if the next call finds it."""
    from hrm_text.checkpoint.store import find_latest
    from hrm_text.train.trainer import train

    t0 = time.perf_counter()
    grid = load_grid(grid_path)
    if budget_scale is not None:
        scale_budgets(grid, budget_scale)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if report_only:  # tables and plots from the finished runs' study_result.json (no data, no GPU)
        specs = [s for s in grid.runs if not only or s.name in only]
        done = [d for d in (_finished(out / "runs" / s.run_id) for s in specs) if d is not None]
        write_report(out, grid, done, [(s,) for s in specs], command, complete=len(done) == len(specs))
        return 0 if len(done) == len(specs) else EXIT_INCOMPLETE
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare_data(grid, out)
    specs = [s for s in grid.runs if not only or s.name in only]
    if only and not specs:
        raise ConfigError(f"--only {','.join(only)} matches no run; runs: {', '.join(sorted({s.name for s in grid.runs}))}")
    # plan every run first: a bad run config fails before any training
    planned: list[tuple[RunSpec, Config, int, float]] = []
    tps_cache: dict[tuple[int, int], float] = {}
    for spec in specs:
        cfg = run_config(grid, spec, data, out)
        key = (cfg.train.global_batch_tokens, cfg.data.tokens_per_rank)
        if key not in tps_cache:
            tps_cache[key] = real_tokens_per_step(cfg)
        steps, fpt = plan_steps(cfg, spec.budget, tps_cache[key])
        cfg.train.max_steps = steps
        if cfg.train.ckpt_every == 1000:  # the trainer's default: one checkpoint mid-run (a time-limit
            # stop saves one anyway), at a multiple of log_every so metrics.jsonl intervals stay whole
            every = max(1, cfg.train.log_every)
            cfg.train.ckpt_every = max(every, (steps // 2) // every * every)
        if cfg.train.ckpt_keep == 3:  # the trainer's default: 20 runs x 3 full checkpoints is a lot of disk
            cfg.train.ckpt_keep = 1
        planned.append((spec, cfg, steps, fpt))
    _write_plan(out, grid, planned, tps_cache, command)
    if prepare_only:
        return 0
    results: list[dict[str, Any]] = []
    done_here: list[dict[str, Any]] = []  # finished in this call: their speed predicts the next
    incomplete = False
    with _Deadline(time_limit_s - (time.perf_counter() - t0) if time_limit_s else None) as deadline:
        for i, (spec, cfg, steps, fpt) in enumerate(planned):
            run_dir = Path(cfg.train.out_dir)
            done = _finished(run_dir)
            if done is not None:
                results.append(done)
                continue
            if deadline.expired:
                incomplete = True
                break
            pred = _predicted_s(spec, done_here)
            if time_limit_s and pred is not None and time.perf_counter() - t0 + pred > time_limit_s:
                log.info("not starting %s: predicted %.0f s, %.0f s left", spec.run_id, pred,
                         time_limit_s - (time.perf_counter() - t0))
                incomplete = True
                break
            log.info("run %d/%d %s: %d steps (%.3g FLOPs/token, budget %.3g FLOPs)", i + 1, len(planned), spec.run_id,
                     steps, fpt, spec.budget)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            latest = find_latest(run_dir)
            if latest is None or int(latest.name.split("_")[1]) < steps:
                deadline.training = True
                try:
                    res = train(cfg, resume="auto")
                finally:
                    deadline.training = False
                if res.interrupted or res.steps < steps:
                    incomplete = True
                    break
                latest = res.final_checkpoint
            if deadline.expired:
                incomplete = True
                break
            t_eval = time.perf_counter()
            ev = evaluate_run(Path(latest), data, cfg.train.objective, grid.eval, cfg.data.tokens_per_rank, dev)
            m = read_metrics(run_dir)
            from hrm_text.model.flops import count_params

            pc = count_params(cfg.model)
            result = {
                "run_id": spec.run_id, "name": spec.name, "label": spec.label, "budget_flops": spec.budget,
                "seed": spec.seed, "arch": cfg.model.arch, "objective": cfg.train.objective,
                "n_layers": cfg.model.n_layers, "hidden_size": cfg.model.hidden_size,
                "params_non_embedding": pc.non_embedding, "params_total": pc.total,
                "flops_per_token": fpt, "planned_steps": steps, "steps": m["steps"], "tokens": m["tokens"],
                "flops": m["flops"], "flops_vs_budget": m["flops"] / spec.budget, "train_wall_s": m["train_wall_s"],
                "eval_wall_s": time.perf_counter() - t_eval, "device": device_name(dev),
                "final_train_loss": m["final_train_loss"], "curve": m["curve"], **ev,
                "checkpoint": str(latest), "train_command": f"hrm-text train {run_dir / 'config.yaml'}",
            }
            (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
            results.append(result)
            done_here.append(result)
    write_report(out, grid, results, planned, command, complete=not incomplete)
    return EXIT_INCOMPLETE if incomplete else 0


def _write_plan(out: Path, grid: Grid, planned: list[tuple[RunSpec, Config, int, float]],
                tps: dict[tuple[int, int], float], command: str) -> None:
    rows = [{"run_id": s.run_id, "budget_flops": s.budget, "steps": n, "flops_per_token": f,
             "tokens": n * tps[(c.train.global_batch_tokens, c.data.tokens_per_rank)],
             "arch": c.model.arch, "n_layers": c.model.n_layers, "objective": c.train.objective}
            for s, c, n, f in planned]
    (out / "plan.json").write_text(json.dumps({"grid": grid.source, "command": command, "runs": rows}, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# report


def _mean_std(v: list[float]) -> tuple[float, float]:
    v = [x for x in v if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run name, budget): mean and sample standard deviation over seeds."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["name"], r["budget_flops"]), []).append(r)
    rows = []
    for (name, budget), rs in groups.items():
        splits = sorted({k for r in rs for k in r["heldout_loss"]})
        row: dict[str, Any] = {"name": name, "label": rs[0]["label"], "budget_flops": budget, "seeds": sorted(r["seed"] for r in rs),
                               "arch": rs[0]["arch"], "objective": rs[0]["objective"], "n_layers": rs[0]["n_layers"],
                               "params_non_embedding": rs[0]["params_non_embedding"], "device": rs[0]["device"]}
        for k in ("tokens", "flops", "train_wall_s", "final_train_loss"):
            row[k] = _mean_std([r[k] for r in rs])
        row["heldout_loss"] = {s: _mean_std([r["heldout_loss"].get(s, float("nan")) for r in rs]) for s in splits}
        row["exact_match"] = {s: _mean_std([r["exact_match"].get(s, float("nan")) for r in rs]) for s in splits}
        row["mean_heldout_loss"] = _mean_std([statistics.fmean(r["heldout_loss"].values()) for r in rs])
        row["mean_exact_match"] = _mean_std([statistics.fmean(r["exact_match"].values()) for r in rs if r["exact_match"]])
        rows.append(row)
    return rows


def _fmt(ms: tuple[float, float], digits: int = 3, n: int = 1) -> str:
    m, s = ms
    if not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if n > 1 else "")


def write_report(out: Path, grid: Grid, results: list[dict[str, Any]], planned: list, command: str, complete: bool) -> None:
    """results.json, results.md and the two PNG plots (the plots need the `study` extra)."""
    rows = aggregate(results)
    pending = [s.run_id for s, *_ in planned if s.run_id not in {r["run_id"] for r in results}]
    payload = {"grid": grid.source, "name": grid.name, "complete": complete, "pending_runs": pending,
               "command": command, "resume_command": command, "runs": results, "table": rows,
               "environment": {"python": platform.python_version(), "torch": torch.__version__}}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    splits = sorted({k for r in rows for k in r["heldout_loss"]})
    L = [f"# Study: {grid.name}", "", f"Grid: `{grid.source}`. " + ("Complete." if complete else
         f"**Incomplete**: {len(pending)} run(s) pending; rerun the command to resume."), "",
         "Mean ± sample standard deviation over seeds where a row has several. Held-out loss is the "
         "response-token cross-entropy (nats/token) with the mask each run was trained with; exact match "
         "is greedy decoding with EMA weights, % of items.", ""]
    L += ["## Compute", "", "| run | budget FLOPs | seeds | arch | layers | objective | non-emb params | tokens | FLOPs used | FLOPs / budget | train wall s | device |",
          "|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        n = len(r["seeds"])
        L.append(f"| {r['label']} | {r['budget_flops']:.1e} | {','.join(map(str, r['seeds']))} | {r['arch']} | {r['n_layers']} | "
                 f"{r['objective']} | {r['params_non_embedding'] / 1e6:.1f}M | {r['tokens'][0]:,.0f} | {r['flops'][0]:.3e} | "
                 f"{r['flops'][0] / r['budget_flops']:.3f} | {_fmt(r['train_wall_s'], 1, n)} | {r['device']} |")
    for title, key, digits in (("Held-out loss (lower is better)", "heldout_loss", 3), ("Exact match, % (higher is better)", "exact_match", 1)):
        L += ["", f"## {title}", "", "| run | budget | " + " | ".join(splits) + " | mean |", "|---|---:|" + "---:|" * (len(splits) + 1)]
        for r in rows:
            n = len(r["seeds"])
            mean_key = "mean_heldout_loss" if key == "heldout_loss" else "mean_exact_match"
            L.append(f"| {r['label']} | {r['budget_flops']:.1e} | " + " | ".join(_fmt(r[key].get(s, (float('nan'),) * 2), digits, n) for s in splits)
                     + f" | {_fmt(r[mean_key], digits, n)} |")
    L += ["", "## Commands", "", "```", command or "(not recorded)", "```", "", "Each run alone (a normal training folder):", "", "```"]
    L += [r["train_command"] for r in results]
    L += ["```", ""]
    (out / "results.md").write_text("\n".join(L))
    if results:
        try:
            plot_study(out, results, rows)
        except RuntimeError as e:  # no matplotlib on this machine: the tables stand, plot elsewhere
            log.warning("%s; render them later with --report-only", e)


def plot_study(out: Path, results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    try:  # optional extra `study`: the table does not need it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plots need matplotlib: pip install 'hrm-text[study]' (results.json and results.md are written)") from e
    budgets = sorted({r["budget_flops"] for r in results})
    names = list(dict.fromkeys(r["name"] for r in results))
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.2), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        for r in results:
            if r["budget_flops"] != b or not r["curve"]:
                continue
            x = [c[1] for c in r["curve"]]
            y = [c[2] for c in r["curve"]]
            first = r["seed"] == min(q["seed"] for q in results if q["name"] == r["name"] and q["budget_flops"] == b)
            ax.plot(x, y, color=colors[r["name"]], lw=1.2, alpha=1.0 if first else 0.45, label=r["label"] if first else None)
        ax.set_title(f"training loss, budget {b:.1e} FLOPs")
        ax.set_xlabel("training FLOPs (paper's accounting)")
        ax.set_ylabel("train loss (objective's own tokens)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(2, len(budgets), figsize=(6 * len(budgets), 7.5), squeeze=False)
    for j, b in enumerate(budgets):
        rs = [r for r in rows if r["budget_flops"] == b]
        for i, (key, title) in enumerate((("mean_heldout_loss", "mean held-out loss (lower is better)"),
                                          ("mean_exact_match", "mean exact match % (higher is better)"))):
            ax = axes[i][j]
            vals = [r[key][0] for r in rs]
            errs = [r[key][1] if len(r["seeds"]) > 1 else 0.0 for r in rs]
            ax.bar(range(len(rs)), vals, yerr=errs if any(errs) else None, color=[colors[r["name"]] for r in rs], capsize=3)
            ax.set_xticks(range(len(rs)), [r["label"] for r in rs], rotation=35, ha="right", fontsize=7)
            ax.set_title(f"{title}\nbudget {b:.1e} FLOPs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "bars.png", dpi=120)
    plt.close(fig)

