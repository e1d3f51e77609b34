"""lm-evaluation-harness backend `hrm_text`: PrefixLM-correct scoring of HRM-Text checkpoints.

    hrm-text lm-eval --model hrm_text --model_args ckpt=PATH,device=cpu,batch_size=8,condition=direct \
        --tasks arc_challenge
    # or, from Python:
    import hrm_text.eval.lm_eval_adapter  # registers the backend
    lm_eval.simple_evaluate(model="hrm_text", model_args="ckpt=PATH", tasks=[...])

Why not the stock `hf` backend: it feeds `context + continuation` as one causal sequence, so an
HRM-Text model (trained PrefixLM: the instruction attends bidirectionally,
docs/ARCHITECTURE.md#sequence-layout-and-objective) is scored as if it were causal, with no
`<boq>`/condition/`<eoq>` framing; docs/ARCHITECTURE.md#transformers-interop quotes ARC-C 0.71
vs 0.12 for the two. Here every request is laid out exactly as in training:

    context       -> prompt   `<boq> <cond...> context <eoq>`   (bidirectional, `is_prefix`)
    continuation  -> response `continuation`                    (causal, scored token by token)

Registration: lm-eval 0.4.13 (the version this was written against) resolves `--model` names only
from its own registry and has no plugin entry-point group. Importing this module registers it
(`@register_model("hrm_text")`); `hrm-text lm-eval ...` imports it and then runs lm-eval's own CLI
(docs/EVALUATION.md says why there is no start-up hook for a bare `lm_eval`).

Decisions (documented in docs/EVALUATION.md):
  - `<eoa>` is NOT appended to continuations (`append_eoa=False`): lm-eval asks for the probability
    of a continuation *text*, which for tasks like HellaSwag is the middle of a longer answer;
    appending `<eoa>` would score "the whole response is exactly this", a different quantity. It
    can be switched on (`append_eoa=true`) for tasks whose choices are complete answers.
  - The instruction/response boundary is `<eoq>`, not a space: the context's trailing whitespace and
    the continuation's leading whitespace (lm-eval's " answer" convention) are stripped
    (`strip_space=True`), as our responses never start with a space.
  - Log-probabilities are normalised over the real vocabulary (the rows of the padded lm_head past
    `vocab_size` are never real tokens and the engine never samples them).
  - Too long for `max_length`: the context is cut from the left (the `<boq> <cond>` head and
    `<eoq>` stay); a continuation that does not fit even with an empty context is an error, never a
    silently partial score.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from hrm_text.data.batch import IGNORE_INDEX, pack_rows

# a child of lm-eval's logger: lm-eval's CLI gives only "lm_eval" a handler (INFO by default), so
# the device/checkpoint line shows up next to lm-eval's own and follows its --verbosity
log = logging.getLogger("lm_eval.models.hrm_text")

__all__ = ["HRMTextLMEval", "ScoreRequest", "resolve_device", "run_lm_eval_cli"]


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "y", "on")


@dataclass
class ScoreRequest:
    """One sequence to score: `prompt` (instruction part incl. `<boq>`..`<eoq>`), `response` tokens,
    of which the last `n_score` are scored (all of them unless a rolling window carries context)."""

    prompt: list[int]
    response: list[int]
    n_score: int

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)


def _pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing: indices grouped into rows of at most `capacity` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        for b in range(len(bins)):
            if fill[b] + lengths[i] <= capacity:
                bins[b].append(i)
                fill[b] += lengths[i]
                break
        else:
            bins.append([i])
            fill.append(lengths[i])
    return bins


def resolve_device(requested: str | None) -> str:
    """The device to run on: `requested`, except that a CUDA device on a machine without CUDA
    becomes the CPU (with a warning). lm-eval's CLI always passes its own default `cuda:0`, so a
    `hrm-text lm-eval --model hrm_text ...` on a CPU machine must not fail on it; any other device
    (`cpu`, `mps`, a CUDA device where CUDA exists) is used as given."""
    if not requested:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        log.warning("hrm_text backend: device %s requested but CUDA is not available; using cpu", requested)
        return "cpu"
    return str(requested)


@register_model("hrm_text")
class HRMTextLMEval(LM):
    """lm-eval `LM` over an HRM-Text checkpoint (EMA weights), our tokenizer layout and our engine.

    model_args: `ckpt` (checkpoint dir, run dir or transformers hrm_text folder; `pretrained` is an
    alias), `device`, `dtype` (auto|float32|bfloat16), `batch_size` (requests per forward / engine
    rows), `condition` (the condition tags of every prompt, default `direct`), `max_length`
    (default: the model's max_seq_len), `append_eoa`, `strip_space`, `use_ema`, `tokenizer`.
    """

    def __init__(
        self,
        ckpt: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str | None = 8,
        max_batch_size: int | str | None = None,
        condition: str = "direct",
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        append_eoa: bool | str = False,
        strip_space: bool | str = True,
        use_ema: bool | str = True,
        tokenizer: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from hrm_text.data.records import parse_condition
        from hrm_text.checkpoint.loading import load_tokenizer_only
        from hrm_text.checkpoint.loading import load_model

        path = ckpt or pretrained
        if not path:
            raise ValueError("model_args needs ckpt=PATH (a checkpoint, run dir or transformers hrm_text folder)")
        if kwargs:
            log.warning("hrm_text backend ignores unknown model_args: %s", sorted(kwargs))
        dev = resolve_device(device)
        if dtype == "auto":
            tdtype = torch.bfloat16 if str(dev).startswith("cuda") else torch.float32
        else:
            tdtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                      "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[str(dtype)]
        loaded = load_model(path, device=dev, dtype=tdtype, use_ema=_as_bool(use_ema))
        self.model = loaded.model.eval()
        if tokenizer is not None or loaded.tokenizer is None:
            self.tok = load_tokenizer_only(loaded.path, Path(tokenizer) if tokenizer is not None else None)
        else:
            self.tok = loaded.tokenizer
        self.source = f"{loaded.path} ({loaded.source})"
        log.info("hrm_text backend: %s on %s (%s)", self.source, dev, str(tdtype).removeprefix("torch."))
        self._device = torch.device(dev)
        parse_condition(condition)  # fail early on an unknown tag
        self.condition = condition
        if batch_size is None or str(batch_size).startswith("auto"):
            batch_size = max_batch_size or 8  # no memory probing: a fixed, reproducible batch
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length) if max_length else int(self.model.cfg.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.append_eoa = _as_bool(append_eoa)
        self.strip_space = _as_bool(strip_space)
        self.vocab = int(self.model.cfg.vocab_size)
        self._engine: Any = None

    # ------------------------------------------------------------------ construction from lm-eval
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "HRMTextLMEval":
        """`--model_args` wins over lm-eval's own `--batch_size/--device` values: the base class
        passes both as keywords, so `model_args=...,batch_size=8` would otherwise be a TypeError
        (the CLI always sends its default batch_size=1)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> "HRMTextLMEval":
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # ------------------------------------------------------------------ layout
    @property
    def head(self) -> list[int]:
        """`<boq> <cond...>`: the prompt tokens before the instruction text."""
        return self.tok.condition_prefix(self.condition)

    def prompt_ids(self, context: str, reserve: int) -> list[int]:
        """`<boq> <cond> context <eoq>`, the context cut from the left so that `reserve` more tokens
        (the response) fit in `max_length`."""
        text = context.rstrip() if self.strip_space else context
        body = self.tok.encode(text) if text else []
        room = self.max_length - reserve - len(self.head) - 1
        if room < 0:
            raise ValueError(f"a response of {reserve} tokens does not fit max_length={self.max_length} "
                             "even with an empty context")
        if len(body) > room:
            body = body[len(body) - room:] if room > 0 else []
        return self.head + body + [self.tok.eoq_id]

    def response_ids(self, continuation: str) -> list[int]:
        text = continuation.lstrip() if self.strip_space else continuation
        ids = self.tok.encode(text) if text else []
        return ids + [self.tok.eoa_id] if self.append_eoa else ids

    # ------------------------------------------------------------------ scoring core
    @torch.inference_mode()
    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, bool]]:
        """(sum of log-probs of the scored response tokens, all of them greedy) per request.

        Requests are packed several to a row (first-fit-decreasing, `max_length` tokens a row,
        `batch_size` requests a forward) with `pack_rows`, so each is its own example: positions
        restart, instruction tokens attend bidirectionally within the example, response tokens
        causally, nothing crosses examples. Only the scored positions go through the lm_head.
        """
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            if r.n_score <= 0 or not r.response:
                out[i] = (0.0, True)  # nothing to predict: log 1
            elif r.length > self.max_length:
                raise ValueError(f"request of {r.length} tokens exceeds max_length={self.max_length}")
            else:
                todo.append(i)
        todo.sort(key=lambda i: -requests[i].length)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            bins = _pack_bins([requests[i].length for i in chunk], self.max_length)
            row_len = max(sum(requests[chunk[j]].length for j in b) for b in bins)
            rows = [[(requests[chunk[j]].prompt, requests[chunk[j]].response) for j in b] for b in bins]
            batch = pack_rows(rows, row_len, pad_id=self.tok.pad_id).to(self.device)
            mask = self.model.build_mask(batch.doc_ids, batch.is_prefix)
            h = self.model.hidden(batch.input_ids, batch.position_ids, mask)
            # where each example's scored labels sit: response token k is predicted at p - 1 + k
            sel_b, sel_t, owners = [], [], []
            for b, members in enumerate(bins):
                cur = 0
                for j in members:
                    r = requests[chunk[j]]
                    p, n = len(r.prompt), len(r.response)
                    first = cur + p - 1 + (n - r.n_score)
                    sel_b += [b] * r.n_score
                    sel_t += list(range(first, cur + p - 1 + n))
                    owners.append((chunk[j], r.n_score))
                    cur += p + n
            bi = torch.tensor(sel_b, device=self.device)
            ti = torch.tensor(sel_t, device=self.device)
            targets = batch.labels[bi, ti]
            assert bool((targets != IGNORE_INDEX).all()), "scored position without a label"
            logits = self.model.lm_head(h[bi, ti]).float()[:, : self.vocab]
            logp = torch.log_softmax(logits, -1)
            tok_lp = logp.gather(-1, targets[:, None]).squeeze(-1).cpu()
            greedy = (logits.argmax(-1) == targets).cpu()
            k = 0
            for idx, n in owners:
                out[idx] = (float(tok_lp[k : k + n].double().sum()), bool(greedy[k : k + n].all()))
                k += n
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ lm-eval API
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """log P(continuation | context) with the context as the bidirectional prompt."""
        reqs = []
        for inst in requests:
            context, continuation = inst.args[0], inst.args[1]
            resp = self.response_ids(continuation)
            reqs.append(ScoreRequest(self.prompt_ids(context, len(resp)) if resp else [], resp, len(resp)))
        res = self.score(reqs)
        for inst, r in zip(requests, res):
            self.cache_hook.add_partial("loglikelihood", inst.args, r)
        return res

    def rolling_windows(self, text: str) -> list[ScoreRequest]:
        """The text as one response after an empty prompt (`<boq> <cond> <eoq>`); texts longer than
        the window are cut into windows that each predict new tokens, and every window after the
        first keeps as much preceding text (unscored) as fits, like lm-eval's rolling windows."""
        toks = self.response_ids(text)
        prompt = self.head + [self.tok.eoq_id]
        room = self.max_length - len(prompt)
        if room < 1:
            raise ValueError(f"max_length={self.max_length} leaves no room for text")
        windows: list[ScoreRequest] = []
        done = 0
        while done < len(toks):
            end = min(done + room, len(toks))
            begin = max(0, end - room)
            windows.append(ScoreRequest(prompt, toks[begin:end], end - done))
            done = end
        return windows

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        per_doc = [self.rolling_windows(inst.args[0]) for inst in requests]
        flat = [w for ws in per_doc for w in ws]
        scores = self.score(flat)
        out, k = [], 0
        for inst, ws in zip(requests, per_doc):
            total = sum(s for s, _ in scores[k : k + len(ws)])
            k += len(ws)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", inst.args, total)
        return out

    def _get_engine(self) -> Any:
        from hrm_text.infer.textgen import make_engine

        if self._engine is None:
            self._engine = make_engine(self.model, self.tok, max_batch=self.batch_size, max_len=self.max_length)
        return self._engine

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (unless the task asks to sample) generation through our engine: continuous
        batching over `batch_size` rows, `until` stop strings, `max_gen_toks`, `<eoa>` ends a
        response. The prompt is cut from the left to leave room for `max_gen_toks`."""
        from hrm_text.infer.engine import Request, SamplingParams

        engine = self._get_engine()
        reqs, stops = [], []
        for i, inst in enumerate(requests):
            context, gen_kwargs = inst.args[0], dict(inst.args[1] or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = _as_bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
            top_p = float(gen_kwargs.pop("top_p", 1.0) or 1.0)
            max_new = max(1, min(max_new, self.max_length - len(self.head) - 2))
            prompt = self.prompt_ids(context, max_new)
            params = SamplingParams(max_tokens=max_new, temperature=temperature, top_p=top_p if do_sample else 1.0,
                                    stop=tuple(s for s in until if s), seed=1234 + i if do_sample else None)
            reqs.append(Request(prompt, params, i))
            stops.append(until)
        texts = []
        for inst, res, until in zip(requests, engine.generate(reqs), stops):
            text = res.text or ""
            for s in until:  # the engine cuts at a stop string; cut again in case it ended otherwise
                if s and s in text:
                    text = text[: text.index(s)]
            texts.append(text)
            self.cache_hook.add_partial("generate_until", inst.args, text)
        return texts

    # ------------------------------------------------------------------ metadata
    @property
    def tokenizer_name(self) -> str:
        return f"hrm_text:{self.tok.source_dir}"

    def get_model_info(self) -> dict[str, Any]:
        return {"model_source": self.source, "condition": self.condition, "max_length": self.max_length,
                "append_eoa": self.append_eoa, "strip_space": self.strip_space}


def run_lm_eval_cli(argv: Sequence[str]) -> int:
    """Run lm-eval's own command line with the `hrm_text` backend registered (this module is
    imported by then). Returns the exit status."""
    import lm_eval.models  # noqa: F401  (the stock backends; lm-eval imports them only into an empty registry)
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old
    return 0


def _register_stock_models() -> None:
    """lm-eval fills its registry with the stock backends only when `get_model` finds it empty;
    registering ours first would hide `hf` & co., so make sure they are there too."""
    try:
        import lm_eval.models  # noqa: F401
    except Exception:  # pragma: no cover - a broken optional backend must not break ours
        log.debug("lm_eval.models failed to import", exc_info=True)


_register_stock_models()
