"""Open a trained model for inference, evaluation, export or fine-tuning.

Accepts either a checkpoint directory of ours (`runs/x/step_000100`, or a run directory, whose newest
complete checkpoint is taken) or a transformers `hrm_text` folder (config.json + safetensors +
tokenizer files). EMA weights are used by default: evaluation and export use them
(docs/ARCHITECTURE.md#optimiser-and-schedules).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hrm_text.config import LoraConfig, ModelConfig, config_from_dict
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.checkpoint.store import find_latest, load_model_weights, read_checkpoint_config, verify_checkpoint
from hrm_text.model.lm import HRMTextLM

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """The path is not a usable checkpoint or model folder; the message says why."""


@dataclass
class LoadedModel:
    model: HRMTextLM
    tokenizer: TextTokenizer | None
    source: str  # "checkpoint:ema", "checkpoint:model" or "hf"
    path: Path
    lora: LoraConfig | None = None  # set when the model still carries its (unmerged) LoRA adapter


def is_hf_folder(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "hrm_text"
    except (OSError, json.JSONDecodeError):
        return False


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or the newest complete one inside a run directory."""

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p} does not exist")
    if is_hf_folder(p):
        return p
    if (p / "meta.json").is_file() or (p / "COMPLETE").is_file():
        ok, reason = verify_checkpoint(p)
        if not ok:
            raise ModelLoadError(f"checkpoint {p} is damaged or incomplete: {reason}")
        return p
    latest = find_latest(p)
    if latest is None:
        raise ModelLoadError(f"{p} holds no complete checkpoint (and is not a transformers hrm_text folder)")
    return latest


def model_config_of(path: str | Path) -> ModelConfig:
    p = resolve_checkpoint(path)
    if is_hf_folder(p):
        from hrm_text.model.hf_adapter import from_hf_config

        return from_hf_config(json.loads((p / "config.json").read_text()))

    return config_from_dict(read_checkpoint_config(p)).model


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
    attn_backend: str | None = None,
    merge_lora: bool = True,
) -> LoadedModel:
    """Build the model described by the checkpoint/folder and load its weights.

    A checkpoint trained with `train.lora` holds the frozen base and the adapter; it is returned
    merged into a plain model (what generate/chat/serve/eval run fast), or with the adapter still
    separate when `merge_lora=False` (export of a PEFT adapter folder). `attn_backend` picks the
    attention kernel of full-sequence scoring (`model.build_mask`; None keeps "auto"); the engine's
    prefill and decode use their own masks."""
    p = resolve_checkpoint(path)
    tokenizer: TextTokenizer | None = None
    lora: LoraConfig | None = None
    if is_hf_folder(p):
        from hrm_text.model.hf_adapter import load_hf_folder

        model = load_hf_folder(p)
        source = "hf"
        if (p / "tokenizer.json").is_file():
            tokenizer = TextTokenizer.load(p)
    else:

        full = config_from_dict(read_checkpoint_config(p))
        model = HRMTextLM(full.model, init=False)
        lora = full.train.lora
        if lora is not None:
            from hrm_text.model.lora import apply_lora

            apply_lora(model, lora)  # same module names as in training, so the state dict matches
        which = load_model_weights(p, model, use_ema=use_ema)
        source = f"checkpoint:{which}"
        if lora is not None and merge_lora:
            from hrm_text.model.lora import merge_lora as merge

            model, lora = merge(model), None
        if (p / "tokenizer").is_dir():
            tokenizer = TextTokenizer.load(p / "tokenizer")
    if attn_backend is not None:  # a run-time kernel choice, not part of the saved config
        model.set_attn_backend(attn_backend)
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tokenizer, source, p, lora)


def load_tokenizer_only(ckpt: Path, tokenizer_dir: Path | None = None) -> TextTokenizer:
    """The tokenizer stored with a checkpoint (or a transformers folder), without the weights:
    items are built (and missing data reported) before paying for the model load."""
    if tokenizer_dir is not None:
        return TextTokenizer.load(tokenizer_dir)
    p = resolve_checkpoint(ckpt)
    for cand in ((p,) if is_hf_folder(p) else (p / "tokenizer",)):
        if (cand / "tokenizer.json").is_file():
            return TextTokenizer.load(cand)
    raise ModelLoadError(f"{p} stores no tokenizer; pass --tokenizer DIR")
