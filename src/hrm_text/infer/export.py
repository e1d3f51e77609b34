"""Export our checkpoints to a transformers `hrm_text` folder, and import such folders back.

Why both directions: export lets people use a model trained here with stock transformers
(`AutoModelForCausalLM` / `AutoTokenizer`), and import lets the released HRM-Text-1B (or any
`hrm_text` folder) be fine-tuned, served or evaluated with this project's tools.

Exactness: our parameter names already are the on-disk names of transformers' `hrm_text` format
(see `hrm_text.model.hf_adapter`), so export copies tensors. Import stores them in float32, which
holds every bf16/fp16 value exactly, and remembers the folder's dtype in the checkpoint's
`meta.json` (`extra.hf_dtype`), so `export-hf` of an imported checkpoint writes the original dtype
back and the round trip is bit-exact.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.checkpoint.loading import LoadedModel, ModelLoadError, is_hf_folder, load_model

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def parse_dtype(name: str) -> torch.dtype:
    """'float32'/'fp32', 'bfloat16'/'bf16', 'float16'/'fp16' -> torch dtype (ValueError otherwise)."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    key = aliases.get(name.lower(), name.lower())
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


README_TEMPLATE = """\
---
library_name: transformers
tags: [hrm_text, hierarchical-recurrent-model]
---
# {name}

An HRM-Text (Hierarchical Recurrent Model) language model exported by `hrm-text export-hf`
({weights} weights, {dtype}). It loads with stock transformers (`model_type: hrm_text`, >= 5.9).

## Prompt layout

```
<|im_start|> <condition tags> instruction <|im_end|>   ->   response <|box_end|>
```

Condition tags: `direct` = `<|object_ref_start|>`, `cot` = `<|object_ref_end|>`,
`noisy` = `<|quad_start|>`, `synth` = `<|quad_end|>` (several may follow each other, e.g. synth,cot).
Generation ends at `<|box_end|>` (id {eoa_id}; `eos_token_id` in `generation_config.json`).

## token_type_ids are required

HRM-Text is a PrefixLM: prompt tokens attend to each other bidirectionally. transformers only knows
which tokens form the prompt from `token_type_ids` = 1 on every prompt token. **Without it the model
silently runs fully causal and answers far worse.** Pass it to every forward and `generate` call.
FlashAttention backends are refused with prefix_lm; use `attn_implementation="sdpa"` (or eager/flex).

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForCausalLM.from_pretrained("{path}", attn_implementation="sdpa").eval()

prompt = "<|im_start|><|object_ref_start|>" + "12+30=" + "<|im_end|>"   # direct condition
ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
token_type_ids = torch.ones_like(ids)          # 1 on every prompt token
out = model.generate(input_ids=ids, token_type_ids=token_type_ids, max_new_tokens=32, do_sample=False)
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```

Batched generation with left padding shifts the positions of the shorter prompts; generate one
prompt at a time (or right-pad and use our `hrm-text serve`) when exact results matter.
"""


def _token_ids(tok: TextTokenizer | None) -> dict[str, int | None]:
    if tok is None:
        return {}
    return {"bos": tok.boq_id, "eos": tok.eoa_id, "pad": tok.pad_id}


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    meta = path / "meta.json"
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


ADAPTER_DIR = "adapter"


def export_hf(ckpt: str | Path, out: str | Path, raw_weights: bool = False, dtype: str | None = None,
              merge_lora: bool = False) -> Path:
    """Write a transformers `hrm_text` folder from a checkpoint (EMA weights unless `raw_weights`).

    `dtype` None means: the dtype the checkpoint was imported from (bit-exact round trips), else
    float32, the dtype the trainer keeps its master weights in. A LoRA checkpoint exports the base
    weights plus a PEFT adapter folder `OUT/adapter` (`PeftModel.from_pretrained(base, OUT/adapter)`),
    or, with `merge_lora`, one folder of merged weights.
    """
    from hrm_text.model.hf_adapter import save_hf_folder

    from hrm_text.checkpoint.loading import resolve_checkpoint

    # an imported checkpoint has no EMA: take its model weights without the "no EMA" warning
    has_ema = bool(_checkpoint_meta(resolve_checkpoint(ckpt)).get("has_ema", True))
    loaded: LoadedModel = load_model(ckpt, device="cpu", dtype=torch.float32, use_ema=has_ema and not raw_weights,
                                     merge_lora=merge_lora)
    if loaded.model.cfg.arch != "hrm":
        raise ModelLoadError(f"only arch=hrm has a transformers counterpart; {ckpt} is arch={loaded.model.cfg.arch}")
    if dtype is None:
        dtype = str(_checkpoint_meta(loaded.path).get("extra", {}).get("hf_dtype") or "float32")
        if loaded.source == "hf":
            cfg_dtype = json.loads((loaded.path / "config.json").read_text()).get("dtype")
            dtype = str(cfg_dtype or "float32")
    torch_dtype = parse_dtype(dtype)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not is_hf_folder(out_dir):
        raise ModelLoadError(f"{out_dir} exists and is not empty (nor an hrm_text folder); choose a new folder")
    tok = loaded.tokenizer
    ids = _token_ids(tok)
    base_sd = None
    if loaded.lora is not None:
        from hrm_text.model.lora import base_state_dict

        base_sd = base_state_dict(loaded.model)
    save_hf_folder(loaded.model, out_dir, ids, dtype=torch_dtype, state_dict=base_sd)
    if loaded.lora is not None:
        write_peft_adapter(loaded.model, loaded.lora, out_dir / ADAPTER_DIR, base=out_dir, dtype=torch_dtype)
    if tok is not None:
        tok.save(out_dir)
    gen_cfg: dict[str, Any] = {"_from_model_config": False, "do_sample": False}
    if tok is not None:
        gen_cfg.update(bos_token_id=tok.boq_id, eos_token_id=tok.eoa_id, pad_token_id=tok.pad_id)
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    weights = "raw (non-EMA)" if raw_weights or loaded.source == "checkpoint:model" else "EMA"
    if loaded.source == "hf":
        weights = "imported"
    readme = README_TEMPLATE.format(
        name=out_dir.name, weights=weights, dtype=str(torch_dtype).replace("torch.", ""),
        eoa_id=tok.eoa_id if tok is not None else "?", path=str(out_dir),
    )
    (out_dir / "README.md").write_text(readme)
    return out_dir


def write_peft_adapter(model: torch.nn.Module, lora: Any, out_dir: Path, base: Path, dtype: torch.dtype) -> Path:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) over transformers'
    split `hrm_text` modules; fused projections become per-split LoRAs sharing one A."""
    from safetensors.torch import save_file

    from hrm_text.model.hf_adapter import to_hf_lora_state_dict
    from hrm_text.model.lora import adapter_factors, peft_config

    sd, targets = to_hf_lora_state_dict(adapter_factors(model))
    cfg = peft_config(lora)
    cfg.target_modules = targets
    cfg.task_type = "CAUSAL_LM"
    cfg.base_model_name_or_path = str(base)
    cfg.inference_mode = True
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(out_dir))
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(out_dir / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return out_dir


def import_hf(hf_dir: str | Path, out: str | Path, step: int = 0) -> Path:
    """Make a checkpoint of ours (`out/step_000000`) from a transformers `hrm_text` folder.

    No optimizer and no EMA state are stored (fine-tuning starts a fresh optimizer; the imported
    weights are the model weights). The tokenizer is copied when the folder has one that carries
    the HRM-Text special tokens.
    """
    from hrm_text.config import Config
    from hrm_text.model.hf_adapter import HFFormatError, load_hf_folder
    from hrm_text.checkpoint.store import list_checkpoints, save_checkpoint

    src = Path(hf_dir)
    if not src.is_dir():
        raise ModelLoadError(f"{src} does not exist or is not a folder")
    if not is_hf_folder(src):
        raise ModelLoadError(f"{src} is not a transformers hrm_text folder (config.json with model_type 'hrm_text')")
    out_dir = Path(out)
    if list_checkpoints(out_dir):
        raise ModelLoadError(f"{out_dir} already holds checkpoints; import into a new folder")
    try:
        model = load_hf_folder(src)
    except HFFormatError as e:
        raise ModelLoadError(str(e)) from e
    hf_cfg = json.loads((src / "config.json").read_text())
    hf_dtype = str(hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "float32")
    config_dict = Config(model=model.cfg).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir: Path | None = None
        if (src / "tokenizer.json").is_file():
            try:
                tok = TextTokenizer.load(src)
            except ValueError:
                tok = None  # not an HRM-Text tokenizer: the checkpoint goes without one
            if tok is not None:
                tok_dir = Path(tmp) / "tokenizer"
                tok_dir.mkdir()
                for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                    if (src / name).is_file():
                        shutil.copy2(src / name, tok_dir / name)
                config_dict["data"]["tokenizer_dir"] = None
        return save_checkpoint(
            out_dir, step, model, optimizer=None, ema=None, loader_state=None, config_dict=config_dict,
            tokenizer_dir=tok_dir, keep=0, extra={"imported_from": str(src.resolve()), "hf_dtype": hf_dtype},
        )
