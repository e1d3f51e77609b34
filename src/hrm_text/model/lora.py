"""LoRA adapters on the block projections, injected with `peft` (the `lora` extra).

    model = HRMTextLM(cfg)                          # or a loaded base
    apply_lora(model, LoraConfig(rank=16))          # base frozen, adapters trainable
    plain = merge_lora(model)                       # an adapter-free HRMTextLM with W + s*B@A

Why peft fits: our projections are plain `nn.Linear` modules with stable names
(`{H,L}_module.layers.N.attn.gqkv_proj`, `attn.o_proj`, `mlp.gate_up_proj`, `mlp.down_proj`), so
`peft.inject_adapter_in_model` wraps them in place; the `Block` modules stay `Block`s, so FSDP2
sharding and per-block compile see the same units. State-dict keys become
`...gqkv_proj.base_layer.weight` and `...gqkv_proj.lora_{A,B}.default.weight`.

What peft cannot see: code that reads `.weight` directly instead of calling the module. Training
goes through module calls (`SwiGLU.forward` calls its modules when no `linear` is given); the
inference engine's fused decode path reads weights, so inference and rollouts run on merged,
adapter-free copies (`merge_lora`, `copy_merged_weights`): no adapter cost per decoded token.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn as nn

from hrm_text.config import ConfigError, LoraConfig, ModelConfig

ADAPTER = "default"  # peft's adapter name; one adapter per model here

# our module suffix -> (module path inside a block)
_TARGET_PATHS = {
    "gqkv_proj": "attn.gqkv_proj",
    "o_proj": "attn.o_proj",
    "gate_up_proj": "mlp.gate_up_proj",
    "down_proj": "mlp.down_proj",
}


def _import_peft() -> Any:
    try:
        import peft  # lazy: keeps peft an optional extra
    except ImportError:
        raise ConfigError("train.lora needs peft: pip install 'hrm-text[lora]' (or pip install peft)") from None
    return peft


def target_regex(lcfg: LoraConfig) -> str:
    """A regex over module names that matches the chosen projections of every block."""
    paths = "|".join(_TARGET_PATHS[t].replace(".", r"\.") for t in lcfg.targets)
    return rf".*\.layers\.\d+\.({paths})"


def stack_patterns(lcfg: LoraConfig) -> tuple[dict[str, int], dict[str, float]]:
    """peft rank_pattern / alpha_pattern for the per-stack rank and scale (HRM's H_module/L_module).

    Scaling of stack S = alpha * S_scale / rank_S (peft divides alpha_S by rank_S)."""
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for stack in ("H", "L"):
        r = getattr(lcfg, f"{stack}_rank") or lcfg.rank
        scale = float(getattr(lcfg, f"{stack}_scale"))
        key = rf"{stack}_module\..*"
        if r != lcfg.rank:
            ranks[key] = int(r)
        alpha = lcfg.alpha * scale
        if alpha != lcfg.alpha:
            alphas[key] = float(alpha)
    return ranks, alphas


def peft_config(lcfg: LoraConfig) -> Any:
    peft = _import_peft()
    ranks, alphas = stack_patterns(lcfg)
    return peft.LoraConfig(
        r=lcfg.rank, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, target_modules=target_regex(lcfg),
        rank_pattern=ranks, alpha_pattern=alphas, bias="none",
    )


def apply_lora(model: nn.Module, lcfg: LoraConfig, seed: int = 0) -> nn.Module:
    """Inject adapters in place (B = 0, so the model computes exactly what it did); freeze the rest.

    A is drawn from its own seeded RNG: the same adapters whatever ran before (two runs in one
    process start alike, which exact-resume checks rely on), and the caller's RNG is untouched."""
    lcfg.validate()
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    peft = _import_peft()
    p = next(model.parameters())
    devices = [p.device] if p.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(peft_config(lcfg), model, adapter_name=ADAPTER)
    layers = lora_layers(model)
    if not layers:
        raise ConfigError(f"train.lora.targets={lcfg.targets} matched no module of this model")
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> peft LoRA layer (e.g. 'model.L_module.layers.0.attn.gqkv_proj')."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def has_lora(model: nn.Module) -> bool:
    return any(hasattr(m, "lora_A") and hasattr(m, "base_layer") for m in model.modules())


def delta_weight(layer: nn.Module) -> torch.Tensor:
    """scaling * B @ A of one layer, in the base weight's dtype."""
    return layer.get_delta_weight(ADAPTER).to(layer.base_layer.weight.dtype)


def adapter_parts(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float, int, float]:
    """(A [r, in], B [out, r], scaling, rank, alpha) of one layer."""
    a = layer.lora_A[ADAPTER].weight
    b = layer.lora_B[ADAPTER].weight
    scaling = float(layer.scaling[ADAPTER])
    r = int(layer.r[ADAPTER])
    return a, b, scaling, r, float(layer.lora_alpha[ADAPTER])


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model inside the block (the KL reference of GRPO with LoRA: no second copy)."""
    layers = list(lora_layers(model).values())
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain (adapter-free) state dict with W + scaling * B @ A in place of each adapted W."""
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    for name, layer in lora_layers(model).items():
        key = f"{name}.weight"
        out[key] = out[key] + delta_weight(layer)
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """A new adapter-free HRMTextLM holding the merged weights (the input is left unchanged)."""
    from hrm_text.model.lm import HRMTextLM

    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    p = next(model.parameters())
    plain = HRMTextLM(cfg, init=False).to(device=p.device, dtype=p.dtype)
    missing, unexpected = plain.load_state_dict(merged_state_dict(model), strict=False)
    if unexpected or [m for m in missing if not m.endswith("inv_freq")]:
        raise RuntimeError(f"merged weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return plain.train(model.training)


@torch.no_grad()
def copy_merged_weights(src: nn.Module, dst: nn.Module) -> None:
    """Write src's (merged, if it has adapters) weights into the adapter-free `dst` in place, in
    dst's dtype: the GRPO rollout copy is refreshed this way, keeping its tensors (and any CUDA
    graph captured over them) alive."""
    sd = merged_state_dict(src) if has_lora(src) else src.state_dict()
    for k, t in dst.state_dict().items():
        if k in sd:
            t.copy_(sd[k])


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights under the plain (adapter-free) names."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def adapter_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A, B)} of every adapted projection."""
    return {n: adapter_parts(m)[:2] for n, m in lora_layers(model).items()}
