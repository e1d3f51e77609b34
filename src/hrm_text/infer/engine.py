"""Generation engine: PrefixLM prefill, static KV cache, continuous batching, sampling.

How a request runs:
  1. prefill: the whole prompt (`<boq> <cond> instruction <eoq>`) attends bidirectionally; every
     stack call writes its keys/values into its own cache slot. The prompt's keys never change
     afterwards (prompt tokens do not see the response), so caching them is exact.
  2. decode: one token per step for every active row; token at position t sees cache 0..t.
  3. a finished row (eoa, stop string, max tokens, context full) is refilled with a waiting
     request at the next step: continuous batching over `max_batch` rows.
On CUDA the decode step is captured once in a CUDA graph and replayed (static shapes: input token,
position and the cache), which removes the per-kernel launch cost that dominates small-batch
decoding of a model that runs 8 stack calls per token; the step runs block by block with the
block's dense parts compiled once (decode_block.py), each block's attention is one fused Triton
kernel (decode_attention.py), and steps are pipelined, greedy and sampled (see `Engine.run`). On CPU it simply
runs. docs/INFERENCE.md lists the switches, docs/PERFORMANCE.md what each one gained.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from hrm_text.config import InferConfig
from hrm_text.infer.decode_attention import fused_decode_available
from hrm_text.infer.decode_block import BlockFn, CompiledDecodeBlock, decode_hidden, eager_block
from hrm_text.infer.sampling import draw_uniforms, sample, to_device
from hrm_text.model.attention import AttnMask
from hrm_text.model.lm import HRMTextLM
from hrm_text.model.lora import has_lora

log = logging.getLogger(__name__)

# environment switches of earlier versions, now InferConfig fields: a run that still sets one is
# told so, rather than silently decoding with other settings
_RETIRED_ENV = {"HRM_TEXT_DECODE_GEMV_ROWS": "gemv_rows", "HRM_TEXT_DECODE_COMPILE_MODE": "compile_mode"}
_warned_env: set[str] = set()  # once per process: evaluation during training builds many engines


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: Sequence[str] = ()
    seed: int | None = None

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (got {self.top_k})")


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: int = 0
    on_token: Callable[[int], None] | None = None  # streaming callback, called per generated token


@dataclass
class Result:
    request_id: int
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens (the stop token <eoa> excluded)
    finish_reason: str  # "stop" (eoa or stop string), "length" (max_tokens or context)
    text: str | None = None


@dataclass
class _Step:
    """A launched pipelined decode step: the (cache row, row) pairs it ran for, and its
    tokens (argmax or sampled) being copied to `host` (pinned memory on CUDA) behind `event`."""

    rows: list[tuple[int, "_Row"]]
    host: torch.Tensor
    event: torch.cuda.Event | None

    def tokens(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host[:, 0].tolist()


@dataclass
class _Row:
    req: Request
    length: int  # tokens in cache (prompt + generated so far, excluding the pending token)
    generated: list[int]
    pending: int  # last sampled token, to be fed at the next decode step
    generator: torch.Generator | None
    text: str = ""


class Engine:
    """Batched generation over an HRMTextLM.

    `decode_text` (tokenizer.decode) enables stop strings; `eoa_id` ends a response.
    `options` (InferConfig) holds the speed switches; the keyword arguments `cuda_graphs`,
    `compile`, `fused_attention` and `gemv_rows`, when given, override its fields:
    `compile` (default: on CUDA) compiles the dense parts of a decode block; `fused_attention`
    (default: on CUDA when compiling and Triton is present) replaces RoPE, the cache writes, attention
    and the output gate by one Triton kernel per block (infer/decode_attention.py).
    """

    def __init__(
        self,
        model: HRMTextLM,
        eoa_id: int,
        max_batch: int = 8,
        max_len: int | None = None,
        decode_text: Callable[[list[int]], str] | None = None,
        cuda_graphs: bool | None = None,
        compile: bool | None = None,
        fused_attention: bool | None = None,
        gemv_rows: int | None = None,
        prefix_lm: bool = True,
        options: InferConfig | None = None,
    ):
        opts = _resolve_options(options, cuda_graphs=cuda_graphs, compile=compile,
                                fused_attention=fused_attention, gemv_rows=gemv_rows)
        self.options = opts
        self.model = model.eval()
        # False: the prompt is read causally too, for models trained without the PrefixLM mask
        # (train.objective causal_*); decode is the same either way
        self.prefix_lm = prefix_lm
        self.eoa_id = eoa_id
        self.max_batch = max_batch
        self.max_len = max_len or model.cfg.max_seq_len
        self.decode_text = decode_text
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.cache = model.new_cache(max_batch, self.max_len)
        self.vocab = model.cfg.vocab_size  # sample only real tokens, never the padding rows
        use_graphs = self.device.type == "cuda" if opts.cuda_graphs is None else opts.cuda_graphs
        self._graph: torch.cuda.CUDAGraph | None = None
        self._use_graphs = use_graphs and self.device.type == "cuda"
        B = max_batch
        self._tok = torch.zeros(B, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(B, 1, dtype=torch.long, device=self.device)
        self._logits: torch.Tensor | None = None
        self._live = torch.zeros(B, 1, dtype=torch.long, device=self.device)  # 1 = row is decoding
        self._stale: set[int] = set()  # rows whose device token/position the host must rewrite
        pin = self.device.type == "cuda"
        self._host_toks = [torch.zeros(B, 1, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._host_events = [torch.cuda.Event() for _ in range(2)] if pin else [None, None]
        self._n_launched = 0
        self._key_idx = torch.arange(self.max_len, device=self.device)
        # Decoding one token evaluates 128 blocks for XL, each a handful of small kernels: launch
        # bound. Compiled block parts (shared by every block and stack call) and the fused attention
        # kernel keep the kernel count down; the CUDA graph then replays the whole step.
        use_compile = self.device.type == "cuda" if opts.compile is None else opts.compile
        fused_attention = opts.fused_attention
        if fused_attention is None:  # live LoRA adapters (evaluation during LoRA training) need module calls
            fused_attention = use_compile and fused_decode_available(self.device) and not has_lora(model)
        if fused_attention and not (use_compile and fused_decode_available(self.device)):
            raise ValueError("fused_attention needs compile=True on a CUDA device with Triton")
        if fused_attention and has_lora(model):  # the fused kernels read raw weights: adapters would be skipped
            raise ValueError("the fused decode path cannot run live LoRA adapters; merge them first (hrm_text.model.lora.merge_lora)")
        self._fused = fused_attention
        # one row: matmuls as fused reductions beat cuBLAS (XL on an H100: 5.5-6.0 ms against 6.6 ms a
        # step); from two rows on they lose (docs/PERFORMANCE.md). InferConfig.gemv_rows sets the limit.
        self._gemv = bool(fused_attention and max_batch <= opts.gemv_rows)
        self._block_fn: BlockFn = (CompiledDecodeBlock(mode=opts.compile_mode, fused=fused_attention, gemv=self._gemv)
                                   if use_compile else eager_block)

    # ------------------------------------------------------------------ model calls
    @torch.no_grad()
    def _prefill(self, rows: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Run prompts (right-padded) into cache rows `rows`; return logits at each last prompt token."""
        n = len(prompts)
        T = max(len(p) for p in prompts)
        ids = torch.zeros(n, T, dtype=torch.long)
        lens = torch.tensor([len(p) for p in prompts])
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        ids = ids.to(self.device)
        lens_d = lens.to(self.device)
        pos = torch.arange(T, device=self.device)[None].expand(n, T)
        # bidirectional over each row's own prompt, and nothing else: attention runs over the T new
        # keys only (PromptWrites), whatever the cache length. Padded queries also see only the
        # prompt, and the garbage keys they write beyond it are masked until decode overwrites them.
        keys = self._key_idx[None, None, None, :T]
        dense = (keys < lens_d[:, None, None, None]).expand(n, 1, T, T)
        if not self.prefix_lm:
            dense = dense & (keys <= self._key_idx[None, None, :T, None])
        rows_t = torch.tensor(rows, device=self.device)
        h = self.model.hidden(ids, pos, AttnMask("sdpa", dense=dense), None, self.cache.prompt_writes(), cache_positions=pos, cache_rows=rows_t)
        last = h[torch.arange(n, device=self.device), lens_d - 1]
        return self.model.lm_head(last).float()

    def _decode_eager(self) -> torch.Tensor:
        if self._fused:  # the fused kernel masks by position itself
            dense = None
        else:  # additive float mask built once per step (a boolean one is converted again in every layer)
            valid = (self._key_idx[None, :] <= self._pos).view(self.max_batch, 1, 1, self.max_len)
            dense = torch.zeros(valid.shape, dtype=self.dtype, device=self.device).masked_fill_(~valid, float("-inf"))
        h = decode_hidden(self.model.model, self._tok, self._pos, AttnMask("sdpa", dense=dense), self.cache, self._block_fn)
        return self.model.lm_head(h[:, -1]).float()

    @torch.no_grad()
    def _decode(self) -> torch.Tensor:
        if not self._use_graphs:
            return self._decode_eager()
        if self._graph is None:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):  # warm up outside the graph (allocator, cuBLAS handles)
                    self._decode_eager()
            torch.cuda.current_stream().wait_stream(s)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._logits = self._decode_eager()
        self._graph.replay()
        assert self._logits is not None
        return self._logits

    # ------------------------------------------------------------------ main loop
    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """Run all requests to completion with continuous batching; results in request order."""
        results: dict[int, Result] = {}
        for res in self.run(requests):
            results[res.request_id] = res
        return [results[r.request_id] for r in requests]

    def run(self, requests: Sequence[Request], poll: Callable[[bool], list[Request]] | None = None) -> Iterator[Result]:
        """Yield results as requests finish.

        `poll(block)` (optional) fetches newly arrived requests each step (the server's queue);
        with block=True the engine is idle and poll may wait; an empty answer then ends the loop.

        Steps are pipelined: each row's next token is chosen on the device (argmax, or a batched
        draw for sampled rows from uniforms its own generator gave at launch) and fed straight into
        the next step, which is launched before the host reads the previous step's tokens. The
        host's work (stop checks, streaming callbacks, admission) then overlaps the device's. A row
        that finished at step t has had step t+1 computed for it; that token is discarded (its cache
        row is rewritten by the next prefill), and a seeded row has drawn one uniform more than it
        used, which changes nothing it returned.
        """
        waiting: deque[Request] = deque()
        for r in requests:
            self._check(r)
            waiting.append(r)
        rows: list[_Row | None] = [None] * self.max_batch
        self._stale.update(range(self.max_batch))  # whatever an earlier (maybe abandoned) run left
        inflight: _Step | None = None  # a launched pipelined step whose tokens the host has not read
        while True:
            idle = not waiting and inflight is None and all(r is None for r in rows)
            if poll is not None:
                arrived = poll(idle)
                for r in arrived:
                    waiting.append(r)
                if idle and not arrived:
                    return
            elif idle:
                return
            free = [i for i, r in enumerate(rows) if r is None]
            if free and waiting:
                admit = [(i, waiting.popleft()) for i in free[: len(waiting)]]
                logits = self._prefill([i for i, _ in admit], [r.prompt_ids for _, r in admit])
                # the seeded generator must exist before the FIRST token is sampled, or a seeded
                # request's first token comes from the global RNG and is not reproducible
                gens = [self._generator(r) for _, r in admit]
                toks = self._choose(logits, [r for _, r in admit], gens).tolist()
                for (i, req), tok, gen in zip(admit, toks, gens):
                    row = _Row(req, len(req.prompt_ids), [], 0, gen)
                    rows[i] = row
                    if (done := self._accept(row, tok)) is not None:
                        rows[i] = None
                        yield done
                    else:
                        self._stale.add(i)  # its token and position go to the device before the next step
            active = [i for i, r in enumerate(rows) if r is not None]
            launched = self._launch(rows, active) if active else None
            if inflight is not None:
                yield from self._advance(rows, inflight.rows, inflight.tokens())
            inflight = launched

    def _write_rows(self, rows: list[_Row | None], which: list[int]) -> None:
        """Host -> device: pending token, position and liveness of the given cache rows (an empty row
        gets position 0 and stays there, so it costs the attention kernel nothing)."""
        tok = torch.zeros(len(which), 1, dtype=torch.long)
        pos = torch.zeros(len(which), 1, dtype=torch.long)
        live = torch.zeros(len(which), 1, dtype=torch.long)
        for j, i in enumerate(which):
            if (row := rows[i]) is not None:
                tok[j, 0], pos[j, 0], live[j, 0] = row.pending, row.length, 1
        if len(which) == self.max_batch:
            self._tok.copy_(tok)
            self._pos.copy_(pos)
            self._live.copy_(live)
        else:
            idx = torch.tensor(which, device=self.device)
            self._tok.index_copy_(0, idx, tok.to(self.device))
            self._pos.index_copy_(0, idx, pos.to(self.device))
            self._live.index_copy_(0, idx, live.to(self.device))
        self._stale.difference_update(which)

    def _launch(self, rows: list[_Row | None], active: list[int]) -> _Step:
        """Launch one step without waiting for it; the device feeds its own tokens forward."""
        if self._stale:
            self._write_rows(rows, sorted(self._stale))
        logits = self._decode()
        reqs: list[Request | None] = [None] * self.max_batch  # rows without a request decode greedily
        gens: list[torch.Generator | None] = [None] * self.max_batch
        for i in active:
            reqs[i], gens[i] = rows[i].req, rows[i].generator  # type: ignore[union-attr]
        nxt = self._choose(logits, reqs, gens)[:, None]
        self._tok.copy_(nxt)
        self._pos.add_(self._live).clamp_(max=self.max_len - 1)  # in bounds even one step past the end
        self._n_launched += 1
        slot = self._n_launched % 2  # two steps are alive at most: double buffer
        host, event = self._host_toks[slot], self._host_events[slot]
        host.copy_(nxt, non_blocking=True)
        if event is not None:
            event.record()
        return _Step([(i, rows[i]) for i in active], host, event)  # type: ignore[misc]

    def _advance(self, rows: list[_Row | None], stepped: list[tuple[int, _Row]], toks: list[int]) -> Iterator[Result]:
        """Apply one step's tokens (indexed by cache row) to the rows it ran for; rows finished or
        replaced since it was launched are skipped."""
        for i, row in stepped:
            if rows[i] is not row:
                continue
            row.length += 1
            if (done := self._accept(row, toks[i])) is not None:
                rows[i] = None
                self._stale.add(i)  # park the row at position 0
                yield done

    @staticmethod
    def _generator(req: Request) -> torch.Generator | None:
        if req.params.temperature == 0:
            return None
        seed = req.params.seed if req.params.seed is not None else time.time_ns() % 2**31
        return torch.Generator().manual_seed(int(seed))

    def _choose(self, logits: torch.Tensor, reqs: Sequence[Request | None], gens: Sequence[torch.Generator | None]) -> torch.Tensor:
        """Next token of every row, on the device and without waiting for it: greedy rows (and rows
        without a request) by argmax, sampled rows in one batched draw (infer/sampling.py). Every
        host-to-device copy here goes through `to_device`, so a pipelined step is not held up."""
        lg = logits[:, : self.vocab]
        toks = lg.argmax(-1)
        samp = [j for j, req in enumerate(reqs) if req is not None and req.params.temperature > 0]
        if samp:
            idx = to_device(torch.tensor(samp), lg.device)
            ps = [reqs[j].params for j in samp]  # type: ignore[union-attr]
            drawn = sample(lg.index_select(0, idx), [q.temperature for q in ps], [q.top_k for q in ps],
                           [q.top_p for q in ps], draw_uniforms([gens[j] for j in samp], lg.device))
            toks = toks.index_copy(0, idx, drawn)
        return toks

    def _check(self, r: Request) -> None:
        r.params.validate()
        if not r.prompt_ids:
            raise ValueError("empty prompt")
        if len(r.prompt_ids) >= self.max_len:
            raise ValueError(f"prompt of {len(r.prompt_ids)} tokens does not fit the {self.max_len}-token context")

    def _accept(self, row: _Row, tok: int) -> Result | None:
        """Record a sampled token; return a Result if the row is finished."""
        req = row.req
        if tok == self.eoa_id:
            return self._finish(row, "stop")
        row.generated.append(tok)
        row.pending = tok
        if req.on_token is not None:
            req.on_token(tok)
        if req.params.stop and self.decode_text is not None:
            text = self.decode_text(row.generated)
            for s in req.params.stop:
                if s and s in text:
                    row.text = text[: text.index(s)]
                    return self._finish(row, "stop", text=row.text)
        if len(row.generated) >= req.params.max_tokens or row.length + 1 >= self.max_len:
            return self._finish(row, "length")
        return None

    def _finish(self, row: _Row, reason: str, text: str | None = None) -> Result:
        if text is None and self.decode_text is not None:
            text = self.decode_text(row.generated)
        return Result(row.req.request_id, row.req.prompt_ids, row.generated, reason, text)


def _resolve_options(options: InferConfig | None, **given: bool | int | None) -> InferConfig:
    """`options` (default InferConfig()) with the keyword arguments that were given laid over it;
    validated. The caller's object is not changed."""
    for var, field_name in _RETIRED_ENV.items():
        if os.environ.get(var) and var not in _warned_env:
            _warned_env.add(var)
            log.warning("%s is no longer read; pass InferConfig(%s=...) to the engine (or the --%s option "
                        "of generate, chat and serve)", var, field_name, field_name.replace("_", "-"))
    opts = dataclasses.replace(options or InferConfig(), **{k: v for k, v in given.items() if v is not None})
    opts.validate()
    return opts


def greedy(engine: Engine, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Convenience: greedy continuations of token prompts."""
    reqs = [Request(list(p), SamplingParams(max_tokens=max_tokens), i) for i, p in enumerate(prompts)]
    return [r.token_ids for r in engine.generate(reqs)]
