"""The lm-evaluation-harness backend `hrm_text`: PrefixLM-exact loglikelihood, and lm-eval's own
Python API and command line running local task files through it on a small trained model,
through `hrm-text lm-eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from hrm_text.data.batch import pack_rows  # noqa: E402
from hrm_text.eval.lm_eval_adapter import HRMTextLMEval, ScoreRequest  # noqa: E402


class _Inst:
    """The part of lm_eval's Instance the backend reads (`args`)."""

    def __init__(self, *args: object) -> None:
        self.args = args


@pytest.fixture(scope="module")
def backend(trained_tiny: Path) -> HRMTextLMEval:
    return HRMTextLMEval(ckpt=str(trained_tiny), device="cpu", batch_size=8, condition="direct")


def _direct_logprob(lm: HRMTextLMEval, prompt: list[int], resp: list[int], prefix: bool = True) -> float:
    """Sum of response-token log-probs from one hand-built example: PrefixLM mask (or, with
    prefix=False, a plain causal mask over the same tokens), full logits, log_softmax, gather."""
    model = lm.model
    batch = pack_rows([[(prompt, resp)]], len(prompt) + len(resp), pad_id=lm.tok.pad_id)
    is_prefix = batch.is_prefix if prefix else torch.zeros_like(batch.is_prefix)
    with torch.no_grad():
        logits = model(batch.input_ids, batch.position_ids, model.build_mask(batch.doc_ids, is_prefix))
    logp = torch.log_softmax(logits[0, :, : model.cfg.vocab_size].float(), -1)
    p = len(prompt)
    seq = prompt + resp
    return float(sum(logp[t, seq[t + 1]] for t in range(p - 1, p - 1 + len(resp))))


CASES = [("12+7=", "19"), ("3+4=", "7"), ("45+45=", "90"), ("8+80=", "88"), ("What is 2+3?", "5"),
         ("1+1=", "2 and more text after it")]


def test_loglikelihood_equals_direct_prefix_lm_sum(backend: HRMTextLMEval) -> None:
    tok = backend.tok
    got = backend.loglikelihood([_Inst(c, x) for c, x in CASES])
    assert len(got) == len(CASES)
    n_causal_diff = 0
    for (ctx, cont), (lp, greedy) in zip(CASES, got):
        prompt, resp = tok.encode_prompt(ctx, "direct"), tok.encode(cont)
        want = _direct_logprob(backend, prompt, resp)
        assert lp == pytest.approx(want, abs=1e-4), (ctx, cont)
        assert isinstance(greedy, bool) and lp < 0
        causal = _direct_logprob(backend, prompt, resp, prefix=False)
        n_causal_diff += abs(causal - lp) > 1e-3
    # the bidirectional prompt changes the scores: the causal mask (stock `hf` backend) differs
    assert n_causal_diff >= len(CASES) - 1


def test_batching_packs_several_requests_per_row(backend: HRMTextLMEval) -> None:
    """Same numbers one at a time and packed together (positions restart, no cross-attention)."""
    reqs = [_Inst(c, x) for c, x in CASES]
    together = backend.loglikelihood(reqs)
    backend.batch_size, old = 1, backend.batch_size
    try:
        alone = backend.loglikelihood(reqs)
    finally:
        backend.batch_size = old
    for (a, ga), (b, gb) in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def test_greedy_flag_and_space_handling(backend: HRMTextLMEval) -> None:
    tok = backend.tok
    prompt = tok.encode_prompt("12+7=", "direct")
    # the greedy continuation is, by definition, greedy; lm-eval's leading space is stripped
    with torch.no_grad():
        first = backend.score([ScoreRequest(prompt, [tok.encode("1")[0]], 1)])
    assert isinstance(first[0][1], bool)
    a = backend.loglikelihood([_Inst("12+7= ", " 19")])[0]
    b = backend.loglikelihood([_Inst("12+7=", "19")])[0]
    assert a[0] == pytest.approx(b[0], abs=1e-6)
    # <eoa> appended only on request, and it costs probability
    backend.append_eoa = True
    try:
        c = backend.loglikelihood([_Inst("12+7=", "19")])[0]
    finally:
        backend.append_eoa = False
    assert c[0] < b[0]


def test_rolling_windows_cover_every_token_once(backend: HRMTextLMEval) -> None:
    text = " ".join(f"{i}+{i}={2 * i}" for i in range(60))
    n_tok = len(backend.tok.encode(text))
    old = backend.max_length
    backend.max_length = 40
    try:
        windows = backend.rolling_windows(text)
        assert sum(w.n_score for w in windows) == n_tok and len(windows) > 2
        assert all(w.length <= 40 for w in windows)
        total = backend.loglikelihood_rolling([_Inst(text)])[0]
    finally:
        backend.max_length = old
    assert total == pytest.approx(sum(s for s, _ in backend.score(windows)), abs=1e-3)
    assert total < 0 and math.isfinite(total)


def test_context_truncated_from_left(backend: HRMTextLMEval) -> None:
    old = backend.max_length
    backend.max_length = 24
    try:
        prompt = backend.prompt_ids("1+2+3+4+5+6+7+8+9+10+11+12+13+14+15+16+17+18+19=", 3)
        assert len(prompt) + 3 <= 24
        assert prompt[: len(backend.head)] == backend.head and prompt[-1] == backend.tok.eoq_id
        assert backend.tok.decode(prompt[len(backend.head) : -1]).endswith("19=")
        lp, _ = backend.loglikelihood([_Inst("1+2+3+4+5+6+7+8+9+10+11+12+13+14+15+16+17+18+19=", "190")])[0]
        assert math.isfinite(lp)
    finally:
        backend.max_length = old


# ---------------------------------------------------------------------------------------------
# lm-eval's own Python API with local task files


def _write_tasks(root: Path) -> Path:
    mc = [{"question": f"{a}+{b}=", "choices": [str(a + b), str(a + b + 7), str(a * b + 1)], "answer": 0}
          for a, b in [(2, 3), (10, 4), (21, 30), (7, 7), (40, 1), (13, 13)]]
    mc.append({"question": "What is 2+3?", "choices": ["5", "6", "23"], "answer": 0})
    gen = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a, b in [(2, 3), (10, 4), (21, 30), (7, 7)]]
    data = root / "data"
    data.mkdir(parents=True)
    (data / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (data / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "hrm_tiny_mc.yaml").write_text(f"""task: hrm_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    (tasks / "hrm_tiny_gen.yaml").write_text(f"""task: hrm_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return tasks


def test_simple_evaluate_local_tasks(trained_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tasks = _write_tasks(tmp_path)
    out = lm_eval.simple_evaluate(
        model="hrm_text",
        model_args=f"ckpt={trained_tiny},device=cpu,batch_size=8,condition=direct",
        tasks=["hrm_tiny_mc", "hrm_tiny_gen"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
        bootstrap_iters=0,
    )
    assert out is not None
    res = out["results"]
    acc = res["hrm_tiny_mc"]["acc,none"]
    em = res["hrm_tiny_gen"]["exact_match,none"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert isinstance(em, float) and 0.0 <= em <= 1.0
    # every multiple-choice doc was scored with one loglikelihood per choice
    mc_samples = out["samples"]["hrm_tiny_mc"]
    assert len(mc_samples) == 7 and all(len(s["resps"]) == 3 for s in mc_samples)
    lls = [r[0][0] for s in mc_samples for r in s["resps"]]
    assert all(isinstance(x, float) and x < 0 for x in lls)
    gen_samples = out["samples"]["hrm_tiny_gen"]
    assert len(gen_samples) == 4 and all(isinstance(s["resps"][0][0], str) for s in gen_samples)
    assert out["config"]["model"] == "hrm_text"


def test_hrm_text_lm_eval_wrapper_runs_lm_eval_cli(trained_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hrm-text lm-eval ...` is lm-eval's own CLI with the backend registered."""
    from typer.testing import CliRunner

    from hrm_text.cli import app

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tasks = _write_tasks(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["lm-eval", "--model", "hrm_text", "--model_args",
                                 f"ckpt={trained_tiny},device=cpu,batch_size=4", "--tasks", "hrm_tiny_mc",
                                 "--include_path", str(tasks), "--output_path", str(out), "--limit", "3"])
    assert r.exit_code == 0, r.output
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())["results"]["hrm_tiny_mc"]
    assert 0.0 <= res["acc,none"] <= 1.0


def test_readme_command_with_lm_eval_defaults_runs_on_cpu(trained_tiny: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's `hrm-text lm-eval --model hrm_text --model_args ckpt=RUN --tasks T`, nothing else: lm-eval
    then passes its own defaults (device `cuda:0`, batch_size 1). Without CUDA the backend must run
    on the CPU and say so, not stop on "Torch not compiled with CUDA enabled"."""
    import logging

    from typer.testing import CliRunner

    from hrm_text.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU machine, also on a GPU host
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tasks = _write_tasks(tmp_path)
    seen: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("lm_eval.models.hrm_text")
    handler = _Keep(logging.INFO)
    logger.addHandler(handler)
    try:
        r = CliRunner().invoke(app, ["lm-eval", "--model", "hrm_text", "--model_args", f"ckpt={trained_tiny}",
                                     "--tasks", "hrm_tiny_mc", "--include_path", str(tasks)])
    finally:
        logger.removeHandler(handler)
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    assert any("cuda:0 requested but CUDA is not available; using cpu" in m for m in seen), seen
    assert any(m.endswith("on cpu (float32)") for m in seen), seen


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from hrm_text.eval.lm_eval_adapter import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [resolve_device(d) for d in (None, "", "cuda", "cuda:0", "cpu")] == ["cpu"] * 5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [resolve_device(d) for d in (None, "cuda:1", "cpu")] == ["cuda", "cuda:1", "cpu"]
