"""Text in, text out over the engine: what evaluation, chat and the server build on."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from hrm_text.config import InferConfig
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.infer.engine import Engine, Request, SamplingParams
from hrm_text.model.lm import HRMTextLM


def make_engine(model: HRMTextLM, tok: TextTokenizer, max_batch: int = 32, max_len: int | None = None,
                prefix_lm: bool = True, options: InferConfig | None = None, **engine_options: Any) -> Engine:
    """`options`: the engine's speed switches (InferConfig); `engine_options`: single `Engine`
    keyword switches laid over them (compile, cuda_graphs, ...)."""
    return Engine(model, eoa_id=tok.eoa_id, max_batch=max_batch, max_len=max_len,
                  decode_text=lambda ids: tok.decode(ids, skip_special_tokens=True), prefix_lm=prefix_lm,
                  options=options, **engine_options)


def text_generate_fn(
    engine: Engine, tok: TextTokenizer, max_new_tokens: int = 64
) -> Callable[[Sequence[tuple[str, str]]], list[str]]:
    """A greedy `generate([(condition, instruction), ...]) -> [response text, ...]` function.

    Prompts that do not fit the engine's context are cut from the left of the instruction text
    (the question at the end survives), and generation stops when the context is full.
    """

    def generate(pairs: Sequence[tuple[str, str]]) -> list[str]:
        reqs = []
        for i, (cond, instr) in enumerate(pairs):
            ids = tok.encode_prompt(instr, cond)
            room = engine.max_len - 2
            if len(ids) > room:  # keep <boq> <cond...> and the tail of the instruction
                head = tok.condition_prefix(cond)
                ids = head + ids[len(ids) - (room - len(head)):]
            reqs.append(Request(ids, SamplingParams(max_tokens=max_new_tokens), i))
        return [r.text or "" for r in engine.generate(reqs)]

    return generate
