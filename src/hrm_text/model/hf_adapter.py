"""State-dict and config adapter to and from transformers' `hrm_text` format
(docs/ARCHITECTURE.md#transformers-interop).

Our parameter names already are the on-disk names of the released checkpoint (fused
`attn.gqkv_proj` with rows gate|q|k|v, fused `mlp.gate_up_proj` with rows gate|up), so export is a
copy. Import also accepts the split names transformers uses in memory
(`self_attn.{gate,q,k,v}_proj`, `mlp.{gate,up}_proj`) and fuses them.
No dependency on transformers: it reads and writes `config.json` and safetensors directly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from hrm_text.config import ModelConfig, model_config

_SPLIT_ATTN = re.compile(r"^(.*)\.self_attn\.(gate|q|k|v)_proj\.weight$")
_SPLIT_MLP = re.compile(r"^(.*)\.mlp\.(gate|up)_proj\.weight$")
_SPLIT_O = re.compile(r"^(.*)\.self_attn\.o_proj\.weight$")


class HFFormatError(ValueError):
    """A folder or state dict that is not a loadable `hrm_text` checkpoint; the message says why."""


def to_hf_config(cfg: ModelConfig, token_ids: dict[str, int | None] | None = None, dtype: str = "float32") -> dict[str, Any]:
    """config.json content for `HrmTextForCausalLM` (num_hidden_layers stored already inflated)."""
    if cfg.arch != "hrm":
        raise HFFormatError(f"only arch=hrm has a transformers counterpart (hrm_text); this model is arch={cfg.arch}")
    ids = token_ids or {}
    n_stack = cfg.half_layers
    return {
        "architectures": ["HrmTextForCausalLM"],
        "model_type": "hrm_text",
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": n_stack * cfg.H_cycles * (cfg.L_cycles + 1),
        "num_layers_per_stack": n_stack,
        "num_attention_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": 1.0 / math.sqrt(cfg.hidden_size),
        "embedding_scale": math.sqrt(cfg.hidden_size),
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "H_cycles": cfg.H_cycles,
        "L_cycles": cfg.L_cycles,
        "L_bp_cycles": [2],
        "prefix_lm": True,
        "use_cache": True,
        "bos_token_id": ids.get("bos"),
        "eos_token_id": ids.get("eos"),
        "pad_token_id": ids.get("pad"),
        "dtype": dtype,
    }


def from_hf_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from a transformers `hrm_text` config.json dict."""
    if hf.get("model_type") != "hrm_text":
        raise HFFormatError(f"config.json has model_type={hf.get('model_type')!r}, expected 'hrm_text'")
    H = int(hf.get("H_cycles", 2))
    L = int(hf.get("L_cycles", 3))
    n_stack = hf.get("num_layers_per_stack")
    if n_stack is None:  # a config written before inflation: num_hidden_layers is per stack
        n_stack = hf["num_hidden_layers"]
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise HFFormatError(f"rope_type={rope.get('rope_type')!r} is not supported (only 'default')")
    hidden = int(hf["hidden_size"])
    scale = hf.get("embedding_scale")
    if scale is not None and not math.isclose(float(scale), math.sqrt(hidden), rel_tol=1e-6):
        raise HFFormatError(f"embedding_scale={scale} differs from sqrt(hidden_size)={math.sqrt(hidden)}; not supported")
    if hf.get("tie_word_embeddings"):
        raise HFFormatError("tied word embeddings are not supported (HRM-Text uses an untied head)")
    head_dim = int(hf.get("head_dim") or hidden // int(hf["num_attention_heads"]))
    # our intermediate size is derived from expansion; pick mlp_multiple so it reproduces the file's value
    values: dict[str, Any] = dict(
        arch="hrm",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_heads=int(hf["num_attention_heads"]),
        head_dim=head_dim,
        n_layers=2 * int(n_stack),
        max_seq_len=int(hf.get("max_position_embeddings", 4096)),
        rope_theta=float(theta),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        H_cycles=H,
        L_cycles=L,
    )
    values.update(_expansion_for(hidden, int(hf["intermediate_size"])))
    values.update(overrides)
    return model_config(None, **values)


def _expansion_for(hidden: int, intermediate: int) -> dict[str, Any]:
    """expansion/mlp_multiple that give exactly `intermediate` through ModelConfig.intermediate_size."""
    default = ModelConfig(hidden_size=hidden, expansion=4.0, mlp_multiple=256)
    if default.intermediate_size == intermediate:
        return {"expansion": 4.0, "mlp_multiple": 256}
    return {"expansion": intermediate * 3 / (2 * hidden), "mlp_multiple": 1}


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our HRM state dict -> transformers on-disk keys (identical names; non-tensor/rope entries dropped)."""
    return {k: v for k, v in state_dict.items() if not k.endswith("inv_freq")}


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers keys (fused on-disk or split in-memory) -> our keys."""
    out: dict[str, torch.Tensor] = {}
    split_attn: dict[str, dict[str, torch.Tensor]] = {}
    split_mlp: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state_dict.items():
        if key.endswith("inv_freq") or key.endswith("original_inv_freq"):
            continue
        if m := _SPLIT_ATTN.match(key):
            split_attn.setdefault(m.group(1), {})[m.group(2)] = t
        elif m := _SPLIT_MLP.match(key):
            split_mlp.setdefault(m.group(1), {})[m.group(2)] = t
        elif m := _SPLIT_O.match(key):
            out[f"{m.group(1)}.attn.o_proj.weight"] = t
        else:
            out[key] = t
    for prefix, parts in split_attn.items():
        missing = [p for p in ("gate", "q", "k", "v") if p not in parts]
        if missing:
            raise HFFormatError(f"{prefix}.self_attn is missing {', '.join(p + '_proj' for p in missing)}")
        out[f"{prefix}.attn.gqkv_proj.weight"] = torch.cat([parts[p] for p in ("gate", "q", "k", "v")], 0)
    for prefix, parts in split_mlp.items():
        missing = [p for p in ("gate", "up") if p not in parts]
        if missing:
            raise HFFormatError(f"{prefix}.mlp is missing {', '.join(p + '_proj' for p in missing)}")
        out[f"{prefix}.mlp.gate_up_proj.weight"] = torch.cat([parts["gate"], parts["up"]], 0)
    return out


def save_hf_folder(
    model: torch.nn.Module,
    out_dir: str | Path,
    token_ids: dict[str, int | None] | None = None,
    dtype: torch.dtype = torch.float32,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write config.json + model.safetensors (one file; transformers loads it directly)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    sd = to_hf_state_dict(state_dict if state_dict is not None else model.state_dict())
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    dtype_name = str(dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(to_hf_config(cfg, token_ids, dtype_name), indent=2) + "\n")
    return out


def load_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read model.safetensors (or a sharded `model.safetensors.index.json`) from a folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(load_file(str(folder / shard)))
        return sd
    raise HFFormatError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")


def load_hf_folder(folder: str | Path, **config_overrides: Any) -> torch.nn.Module:
    """Build our HRMTextLM from a transformers `hrm_text` folder (config.json + safetensors)."""
    from hrm_text.model.lm import HRMTextLM

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise HFFormatError(f"{folder} has no config.json")
    cfg = from_hf_config(json.loads(cfg_path.read_text()), **config_overrides)
    model = HRMTextLM(cfg, init=False)
    sd = from_hf_state_dict(load_hf_state_dict(folder))
    sd = {k: v.float() for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise HFFormatError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


# LoRA on a fused projection = one shared A and B split by rows like the weight itself, since
# W_part + s * B_part @ A is row block `part` of W + s * B @ A (exact, no refit).
_LORA_SPLITS: dict[str, tuple[str, ...]] = {
    "attn.gqkv_proj": ("self_attn.gate_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "attn.o_proj": ("self_attn.o_proj",),
    "mlp.down_proj": ("mlp.down_proj",),
}


def to_hf_lora_state_dict(adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our LoRA factors {module name: (A [r, in], B [out, r])} -> a PEFT adapter state dict over
    transformers' in-memory (split) `hrm_text` modules, and the PEFT `target_modules` suffixes."""
    out: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, (a, b) in adapters.items():
        for ours, theirs in _LORA_SPLITS.items():
            if name.endswith("." + ours):
                prefix = name[: -len(ours)]
                break
        else:
            raise HFFormatError(f"LoRA on {name} has no transformers counterpart")
        if b.shape[0] % len(theirs):
            raise HFFormatError(f"LoRA B of {name} has {b.shape[0]} rows, not divisible into {len(theirs)} projections")
        for part, b_part in zip(theirs, b.chunk(len(theirs), dim=0)):
            key = f"base_model.model.{prefix}{part}"
            out[f"{key}.lora_A.weight"] = a.detach().clone()
            out[f"{key}.lora_B.weight"] = b_part.detach().clone()
            targets.add(part)
    return out, sorted(targets)
