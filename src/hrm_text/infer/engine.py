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
decoding of a model that runs 8 stack calls per token. On CPU it simply runs.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from hrm_text.model.attention import AttnMask, attention
from hrm_text.model.lm import HRMTextLM


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
    ):
        self.model = model.eval()
        self.eoa_id = eoa_id
        self.max_batch = max_batch
        self.max_len = max_len or model.cfg.max_seq_len
        self.decode_text = decode_text
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.cache = model.new_cache(max_batch, self.max_len)
        self.vocab = model.cfg.vocab_size  # sample only real tokens, never the padding rows
        use_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self._graph: torch.cuda.CUDAGraph | None = None
        self._use_graphs = use_graphs and self.device.type == "cuda"
        B = max_batch
        self._tok = torch.zeros(B, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(B, 1, dtype=torch.long, device=self.device)
        self._logits: torch.Tensor | None = None
        self._key_idx = torch.arange(self.max_len, device=self.device)
        # Decoding one token runs ~30 small kernels per block and 128 blocks per token for XL: launch
        # bound. One compiled block function (shared by every block and stack call) fuses the
        # element-wise work; the CUDA graph then replays the whole step.
        use_compile = self.device.type == "cuda" if compile is None else compile
        self._block_fn = _CompiledDecodeBlock() if use_compile else None

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
        # bidirectional over each row's own prompt; padded queries also see only the prompt, and the
        # garbage keys they write beyond the prompt are masked until decode overwrites them
        dense = (self._key_idx[None, None, None, :] < lens_d[:, None, None, None]).expand(n, 1, T, self.max_len)
        rows_t = torch.tensor(rows, device=self.device)
        h = self.model.hidden(ids, pos, AttnMask("sdpa", dense=dense), None, self.cache, pos, rows_t)
        last = h[torch.arange(n, device=self.device), lens_d - 1]
        return self.model.lm_head(last).float()

    def _decode_eager(self) -> torch.Tensor:
        # additive float mask built once per step (a boolean one is converted again in every layer)
        valid = (self._key_idx[None, :] <= self._pos).view(self.max_batch, 1, 1, self.max_len)
        dense = torch.zeros(valid.shape, dtype=self.dtype, device=self.device).masked_fill_(~valid, float("-inf"))
        stacks = list(self.model.model.stacks().values())
        for st in stacks:
            st.layer_call = self._block_fn
        try:
            h = self.model.hidden(self._tok, self._pos, AttnMask("sdpa", dense=dense), None, self.cache, self._pos)
        finally:
            for st in stacks:
                st.layer_call = None
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

    # ------------------------------------------------------------------ sampling
    def _sample(self, logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
        logits = logits[: self.vocab]
        if params.temperature == 0:
            return int(logits.argmax())
        logits = logits / params.temperature
        if params.top_k > 0:
            k = min(params.top_k, logits.numel())
            kth = torch.topk(logits, k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, -1)
        if params.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            keep = sp.cumsum(0) - sp < params.top_p  # always keeps the most likely token
            sp = sp * keep
            probs = torch.zeros_like(probs).scatter_(0, si, sp)
        return int(torch.multinomial(probs.cpu(), 1, generator=gen))

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
        """
        waiting: deque[Request] = deque()
        for r in requests:
            self._check(r)
            waiting.append(r)
        rows: list[_Row | None] = [None] * self.max_batch
        while True:
            idle = not waiting and all(r is None for r in rows)
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
                toks = self._sample_rows(logits, [r for _, r in admit], gens)
                for (i, req), tok, gen in zip(admit, toks, gens):
                    row = _Row(req, len(req.prompt_ids), [], 0, gen)
                    rows[i] = row
                    if (done := self._accept(row, tok)) is not None:
                        rows[i] = None
                        yield done
            active = [i for i, r in enumerate(rows) if r is not None]
            if not active:
                continue
            tok_cpu = torch.zeros(self.max_batch, 1, dtype=torch.long)
            pos_cpu = torch.zeros(self.max_batch, 1, dtype=torch.long)
            for i in active:
                tok_cpu[i, 0] = rows[i].pending  # type: ignore[union-attr]
                pos_cpu[i, 0] = rows[i].length  # type: ignore[union-attr]
            self._tok.copy_(tok_cpu)
            self._pos.copy_(pos_cpu)
            logits = self._decode()
            act_rows = [rows[i] for i in active]
            toks = self._sample_rows(logits[active], [r.req for r in act_rows], [r.generator for r in act_rows])  # type: ignore[union-attr]
            for i, tok in zip(active, toks):
                r = rows[i]
                assert r is not None
                r.length += 1
                if (done := self._accept(r, tok)) is not None:
                    rows[i] = None
                    yield done

    @staticmethod
    def _generator(req: Request) -> torch.Generator | None:
        if req.params.temperature == 0:
            return None
        seed = req.params.seed if req.params.seed is not None else time.time_ns() % 2**31
        return torch.Generator().manual_seed(int(seed))

    def _sample_rows(self, logits: torch.Tensor, reqs: list[Request], gens: list[torch.Generator | None]) -> list[int]:
        """Greedy rows in one argmax and one device->host copy; sampled rows one by one."""
        greedy_toks = logits[:, : self.vocab].argmax(-1).tolist()
        out = []
        for j, req in enumerate(reqs):
            if req.params.temperature == 0:
                out.append(greedy_toks[j])
            else:
                out.append(self._sample(logits[j], req.params, gens[j]))
        return out

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


class _CompiledDecodeBlock:
    """Runs a block as compiled(norm, gqkv, rope) -> eager cache write + attention -> compiled(gate,
    o_proj, residual, norm, SwiGLU, residual). Both compiled parts are shared by every block."""

    def __init__(self, mode: str | None = None) -> None:
        # HRM_TEXT_DECODE_COMPILE_MODE=max-autotune-no-cudagraphs lets inductor tune the decode matmuls
        # (minutes of compilation at start-up); the default mode compiles in seconds
        import os

        mode = mode or os.environ.get("HRM_TEXT_DECODE_COMPILE_MODE") or None
        self.pre = torch.compile(_block_pre, dynamic=False, mode=mode)
        self.post = torch.compile(_block_post, dynamic=False, mode=mode)

    def __call__(self, block: torch.nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: AttnMask, view: object) -> torch.Tensor:
        gate, q, k, v = self.pre(block, x, rope)
        if view is not None:
            k, v = view.update(k, v)  # type: ignore[attr-defined]
        return self.post(block, x, gate, attention(q, k, v, mask))


def _block_pre(block: torch.nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return block.attn_inputs(x, rope)  # type: ignore[operator]


def _block_post(block: torch.nn.Module, x: torch.Tensor, gate: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    return block.attn_finish(x, gate, attn_out)  # type: ignore[operator]


def greedy(engine: Engine, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Convenience: greedy continuations of token prompts."""
    reqs = [Request(list(p), SamplingParams(max_tokens=max_tokens), i) for i, p in enumerate(prompts)]
    return [r.token_ids for r in engine.generate(reqs)]
