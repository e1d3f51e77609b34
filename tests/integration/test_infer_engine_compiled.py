"""The compiled decode path (used by default on CUDA) gives the same greedy tokens as the eager one."""

import torch

from hrm_text.config import model_config
from hrm_text.infer.engine import Engine, greedy
from hrm_text.model.lm import HRMTextLM


def test_compiled_decode_matches_eager():
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=300)).eval()
    prompts = [[5, 17, 42, 99, 7, 3], [1, 2, 3], [9] * 10, [4, 4], [8, 7, 6, 5, 4]]
    eager = greedy(Engine(model, eoa_id=299, max_batch=3, max_len=64, compile=False), prompts, 8)
    compiled = greedy(Engine(model, eoa_id=299, max_batch=3, max_len=64, compile=True), prompts, 8)
    assert compiled == eager
    assert all(len(t) == 8 for t in eager)  # random weights never emit <eoa> here: full-length check
