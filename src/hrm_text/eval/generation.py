"""Generation for the evaluation suites over our engine: one engine per context length, items
grouped by (context, answer budget)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hrm_text.infer.textgen import make_engine, text_generate_fn


class SuiteGenerator:
    """The `generate(pairs) -> texts` callable `run_suite` wants, over our engine.

    `run_suite` only passes (condition, instruction) pairs, so each pair's context and answer
    budget are looked up from the items. One engine (and one KV cache) exists at a time: items are
    sorted by context, so a run of the paper suite builds at most two engines (3072 and 4096).
    """

    def __init__(
        self,
        model: Any,
        tok: Any,
        items: Sequence[Any],
        batch_size: int,
        context: Optional[int] = None,
        max_new_tokens: Optional[int] = None,
    ) -> None:
        self.model, self.tok, self.batch_size = model, tok, batch_size
        self.limit_ctx = int(model.cfg.max_seq_len)
        self.plan: dict[tuple[str, str], tuple[int, int]] = {}
        for it in items:
            ctx = self.effective_context(it.max_context if context is None else context)
            new = it.max_new_tokens if max_new_tokens is None else min(it.max_new_tokens, max_new_tokens)
            key = (it.condition, it.instruction)
            old = self.plan.get(key)
            self.plan[key] = (ctx, new) if old is None else (max(old[0], ctx), max(old[1], new))
        self._engine: Any = None
        self._engine_ctx = -1

    def effective_context(self, ctx: int) -> int:
        """The requested context, capped by what the model's positions were trained for."""
        return max(8, min(int(ctx), self.limit_ctx))

    def engine(self, ctx: int) -> Any:
        if self._engine is None or self._engine_ctx != ctx:
            self._engine = None  # free the previous KV cache before allocating the next
            self._engine = make_engine(self.model, self.tok, max_batch=self.batch_size, max_len=ctx)
            self._engine_ctx = ctx
        return self._engine

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        out: list[str] = [""] * len(pairs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, pair in enumerate(pairs):
            groups.setdefault(self.plan[(pair[0], pair[1])], []).append(i)
        for (ctx, new), idx in sorted(groups.items()):
            texts = text_generate_fn(self.engine(ctx), self.tok, new)([pairs[i] for i in idx])
            for i, t in zip(idx, texts):
                out[i] = t
        return out
