"""The fused decode attention (RoPE + cache write + attention + output gate in one Triton kernel).

On CPU: its PyTorch reference equals the model's own block path, so the contract is the model's.
On CUDA (skipped elsewhere): the Triton kernel equals the reference, and the engine decodes the same
greedy tokens with and without it.
"""

import pytest
import torch

from hrm_text.config import model_config
from hrm_text.infer.decode_attention import decode_attention, decode_attention_reference, fused_decode_available
from hrm_text.infer.decode_block import attn_finish, attn_inputs, finish_gated, fused_projection
from hrm_text.infer.engine import Engine, greedy
from hrm_text.model.attention import AttnMask, attention
from hrm_text.model.kv_cache import CacheView
from hrm_text.model.layers import Block, RotaryEmbedding
from hrm_text.model.lm import HRMTextLM

cuda_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() and fused_decode_available(torch.device("cuda"))), reason="needs CUDA and Triton"
)


def _inputs(B: int, H: int, D: int, L: int, pos: list[int], dtype: torch.dtype, device: str = "cpu"):
    g = torch.Generator().manual_seed(B * 1000 + L)
    gqkv = torch.randn(B, 1, 4 * H * D, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, H, L, D, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(B, H, L, D, generator=g).to(device=device, dtype=dtype)
    p = torch.tensor(pos, device=device).view(B, 1)
    cos, sin = RotaryEmbedding(D).to(device)(p)
    return gqkv, cos, sin, k, v, p


def test_reference_matches_the_block_path():
    torch.manual_seed(0)
    B, H, D, L, hidden = 3, 2, 16, 20, 32
    block = Block(hidden, H, D, 64, 1e-6)
    for m in block.modules():
        if hasattr(m, "reset_parameters") and m is not block:
            m.reset_parameters()
    x = torch.randn(B, 1, hidden)
    pos = torch.tensor([[0], [7], [19]])
    rope = RotaryEmbedding(D)(pos)
    k0, v0 = torch.randn(B, H, L, D), torch.randn(B, H, L, D)

    # the model's path: project (norm, gqkv, RoPE) -> cache write -> masked attention -> gate, o_proj
    kc, vc = k0.clone(), v0.clone()
    gate, q, k, v = attn_inputs(block, x, rope)
    k, v = CacheView(kc, vc, pos).update(k, v)
    valid = (torch.arange(L)[None, :] <= pos).view(B, 1, 1, L)
    want = block.attn.output(gate, attention(q, k, v, AttnMask("sdpa", dense=valid)))

    kr, vr = k0.clone(), v0.clone()
    gated = decode_attention_reference(fused_projection(block, x), rope[0], rope[1], kr, vr, pos, H)
    torch.testing.assert_close(block.attn.o_proj(gated), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kr, kc)
    torch.testing.assert_close(vr, vc)
    # and the full block built from the fused pieces equals Block.forward's decode result
    torch.testing.assert_close(finish_gated(block, x, gated), attn_finish(block, x, gate, attention(q, k, v, AttnMask("sdpa", dense=valid))))
    # rows beyond pos were not touched
    for b, p in enumerate(pos.view(-1).tolist()):
        assert torch.equal(kr[b, :, p + 1 :], k0[b, :, p + 1 :])


@pytest.mark.gpu
@cuda_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [None, 1, 3, 16])  # None: the default for the shape
@pytest.mark.parametrize(
    "B,H,D,L,pos",
    [(1, 12, 128, 400, [256]), (5, 2, 64, 130, [0, 1, 63, 64, 129]), (32, 12, 128, 392, list(range(200, 392, 6)))],
)
def test_kernel_matches_reference(dtype, splits, B, H, D, L, pos):
    gqkv, cos, sin, k, v, p = _inputs(B, H, D, L, pos, dtype, "cuda")
    k2, v2 = k.clone(), v.clone()
    want = decode_attention_reference(gqkv, cos, sin, k, v, p, H)
    got = decode_attention(gqkv, cos, sin, k2, v2, p.view(-1), H, num_splits=splits)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(k2, k, **tol)  # new keys: RoPE rounding may differ by one bf16 ulp
    assert torch.equal(v2, v)


@pytest.mark.gpu
@cuda_triton
def test_engine_fused_matches_unfused_greedy():
    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=300)).cuda().eval()
    prompts = [[5, 17, 42, 99, 7, 3], [1, 2, 3], [9] * 70, [4, 4], [8, 7, 6, 5, 4]]
    plain = greedy(Engine(model, eoa_id=299, max_batch=3, max_len=128, fused_attention=False), prompts, 12)
    fused_engine = Engine(model, eoa_id=299, max_batch=3, max_len=128)
    assert fused_engine._fused  # the default on CUDA with Triton
    assert greedy(fused_engine, prompts, 12) == plain
    gemv_engine = Engine(model, eoa_id=299, max_batch=3, max_len=128, gemv_rows=8)
    assert gemv_engine._gemv
    assert greedy(gemv_engine, prompts, 12) == plain


@cuda_triton
@pytest.mark.gpu
def test_engine_sampled_rows_on_cuda():
    """The sampled path on the GPU (its host-to-device copies go through pinned memory,
    infer/sampling.to_device): top_k = 1 draws the greedy token, and a seeded request gives the same
    tokens alone and beside other requests."""
    from hrm_text.infer.engine import Request, SamplingParams

    torch.manual_seed(0)
    model = HRMTextLM(model_config("tiny", vocab_size=300)).cuda().eval()
    prompts = [[5, 17, 42, 99, 7, 3], [1, 2, 3], [9] * 70]
    engine = Engine(model, eoa_id=299, max_batch=3, max_len=128)
    plain = greedy(engine, prompts, 12)
    top1 = engine.generate([Request(p, SamplingParams(max_tokens=12, temperature=1.0, top_k=1, seed=i), i)
                            for i, p in enumerate(prompts)])
    assert [r.token_ids for r in sorted(top1, key=lambda r: r.request_id)] == plain
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    alone = engine.generate([Request(prompts[0], seeded, 0)])[0].token_ids
    mixed = engine.generate([Request(prompts[1], SamplingParams(max_tokens=5, temperature=0.8, seed=1), 1),
                             Request(prompts[0], seeded, 0), Request(prompts[2], SamplingParams(max_tokens=9), 2)])
    assert next(r.token_ids for r in mixed if r.request_id == 0) == alone
