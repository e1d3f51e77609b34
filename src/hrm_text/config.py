"""Typed configuration: dataclasses, presets, YAML loading and `key=value` overrides.

One `Config` holds every section (`model`, `data`, `train`, `eval`). It is loaded from an optional
YAML file, then `section.key=value` overrides from the command line are applied, and every value is
validated against its dataclass field type. Errors name the bad key and the allowed keys/values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the key and what is allowed."""


# Each set of choices is written once, as the field's type; the tuples are derived for checks and messages.
Arch = Literal["hrm", "transformer", "looped", "trm", "rins"]
AttnBackend = Literal["auto", "sdpa", "flex", "flex_fa4", "varlen", "fa3"]
Fp8Recipe = Literal["fused", "fused_precise", "fused_lowmem", "rowwise", "tensorwise", "rowwise_with_gw_hp"]  # train/step.py
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
ARCHS: tuple[str, ...] = get_args(Arch)
ATTN_BACKENDS: tuple[str, ...] = get_args(AttnBackend)
FP8_RECIPES: tuple[str, ...] = get_args(Fp8Recipe)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


@dataclass
class ModelConfig:
    """Shape of the network (docs/ARCHITECTURE.md#model). `n_layers` is the total over both stacks for HRM."""

    arch: Arch = "hrm"
    preset: str | None = None
    vocab_size: int = 65536
    hidden_size: int = 128
    num_heads: int = 2
    head_dim: int = 64
    n_layers: int = 4
    expansion: float = 4.0
    mlp_multiple: int = 256
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # HRM recurrence
    H_cycles: int = 2
    L_cycles: int = 3
    # Baselines
    looped_cycles: int = 4
    rins_L_cycles: int = 7
    # Only the network's shape lives here: it ships with the weights. How gradients flow through the
    # calls (train.bp_*) and which attention kernel runs (train.attn_backend, load_model's
    # attn_backend) are chosen by whoever runs the model.

    @property
    def intermediate_size(self) -> int:
        raw = round(self.expansion * self.hidden_size * 2 / 3)
        return int(math.ceil(raw / self.mlp_multiple) * self.mlp_multiple)

    @property
    def half_layers(self) -> int:
        return self.n_layers // 2

    @property
    def padded_vocab_size(self) -> int:
        return int(math.ceil(self.vocab_size / 256) * 256)

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch={self.arch!r} is not one of {', '.join(ARCHS)}")
        for name in ("vocab_size", "hidden_size", "num_heads", "head_dim", "n_layers", "H_cycles", "L_cycles"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1 (got {getattr(self, name)})")
        if self.arch in ("hrm", "trm", "rins") and self.n_layers % 2:
            raise ConfigError(f"model.n_layers={self.n_layers} must be even for arch={self.arch} (split between H and L)")

    @property
    def num_stack_calls(self) -> int:
        """Stack calls per token of the HRM/TRM schedule (the most K can record)."""
        return self.H_cycles * (self.L_cycles + 1)


# Presets (docs/ARCHITECTURE.md#presets). `tiny` and `S` are ours (laptop CPU and small-GPU sizes); the
# rest are the paper's.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layers=4, hidden_size=128, num_heads=2, head_dim=64, mlp_multiple=128, max_seq_len=512, vocab_size=2048),
    "S": dict(n_layers=14, hidden_size=512, num_heads=4, head_dim=128),
    "B": dict(n_layers=12, hidden_size=1024, num_heads=8, head_dim=128),
    "L": dict(n_layers=24, hidden_size=1280, num_heads=10, head_dim=128),
    "XL": dict(n_layers=32, hidden_size=1536, num_heads=12, head_dim=128),
    "XXL": dict(n_layers=72, hidden_size=1792, num_heads=14, head_dim=128),
    "XXL_wide": dict(n_layers=32, hidden_size=2560, num_heads=20, head_dim=128),
}


def model_config(preset: str | None = None, **overrides: Any) -> ModelConfig:
    """Build a ModelConfig from a preset name plus keyword overrides (validated)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update(overrides)
    cfg = _build(ModelConfig, values, "model")
    cfg.validate()
    return cfg


@dataclass
class DataConfig:
    """Where training data lives and how it is batched (docs/ARCHITECTURE.md#sequence-layout-and-objective,
    #data-pipeline)."""

    sampled_dir: str | None = None  # output of `hrm-text data sample`
    tokenizer_dir: str | None = None
    tokens_per_rank: int = 16384  # token budget of one packed row per rank per micro-step
    num_workers: int = 1
    seed: int = 0


LORA_TARGETS = ("gqkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass
class LoraConfig:
    """LoRA adapters on the block projections (docs/POST_TRAINING.md); base weights stay frozen.

    Scaling of a stack S is `alpha / rank_S * S_scale`. The L stack runs H_cycles * L_cycles times
    per token (6 by default), so one update moves the output several times as much: `L_scale`
    (or a smaller `L_rank`) damps it, which public HRM fine-tunes did by hand with per-stack LRs.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    H_rank: int | None = None  # per-stack rank (default: rank)
    L_rank: int | None = None
    H_scale: float = 1.0  # per-stack multiplier of alpha / rank
    L_scale: float = 1.0

    def validate(self) -> None:
        if not isinstance(self.targets, list) or not self.targets:
            raise ConfigError(f"train.lora.targets must be a non-empty list of {', '.join(LORA_TARGETS)}")
        for t in self.targets:
            if t not in LORA_TARGETS:
                raise ConfigError(f"train.lora.targets has {t!r}; choose among {', '.join(LORA_TARGETS)}")
        for name in ("rank", "H_rank", "L_rank"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"train.lora.{name} must be >= 1 (got {v})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"train.lora.dropout must be in [0, 1) (got {self.dropout})")


@dataclass
class TrainConfig:
    """Optimisation and run control (docs/ARCHITECTURE.md#optimiser-and-schedules)."""

    out_dir: str = "runs/default"
    init_from: str | None = None  # checkpoint dir (SFT / fine-tune)
    init_from_ema: bool = True
    lora: LoraConfig | None = None  # set (e.g. `lora: {rank: 16}`) to train adapters only
    lr: float = 2.2e-4
    lr_warmup_steps: int = 2000
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min_ratio: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # min(decay, (1+n)/(10+n)): useful EMA for very short runs (quickstart)
    global_batch_tokens: int = 196608
    max_steps: int | None = None
    max_tokens: float | None = None
    epochs: int | None = None
    # Deep credit assignment (docs/ARCHITECTURE.md#deep-credit-assignment): how many stack calls
    # per step are recorded for autograd. hrm/trm: K grows from bp_min_steps to bp_max_steps over the
    # first bp_warmup_ratio of training. The baselines use fixed counts, as in the paper.
    bp_min_steps: int = 2
    bp_max_steps: int = 5
    bp_warmup_ratio: float = 0.2
    full_bp_from_start: bool = False  # SFT: K = bp_max_steps from step 1
    looped_bp_steps: int = 2  # looped: gradients through the last N of its looped_cycles calls
    rins_bp_steps: int = 4  # rins: the last N of its L calls (the H call is always recorded)
    # attention kernel for full sequences (training steps, held-out loss): auto = flex on CUDA,
    # sdpa elsewhere; fa3 needs an sm90 GPU; varlen needs CUDA sm80+; flex_fa4 (flex on
    # FlashAttention-4) needs sm90+ and the flash-attn-4 package. A run-time choice, not part of
    # the weights (model/attention.py).
    attn_backend: AttnBackend = "auto"
    # prefix_lm (docs/ARCHITECTURE.md#sequence-layout-and-objective), causal_response (causal mask, response loss) or causal_full (causal mask,
    # loss on every next token): the objective ablation of the paper's Table 3 (data.batch.apply_objective)
    objective: Literal["prefix_lm", "causal_response", "causal_full"] = "prefix_lm"
    dtype: Literal["bf16", "fp32"] = "bf16"
    compile: bool = True
    # inductor's multi-kernel for the compiled blocks: each row reduction (norms, float8 row scales)
    # is built both looped and whole-row (persistent) and the faster is kept at its first run
    # (+1.2-2.4% at XL). With torch 2.11 a compile-cache hit of such a graph failed, so these graphs skip
    # inductor's cache and compile from cold at every launch (about 40 s at XL; docs/PERFORMANCE.md)
    multi_kernel: bool = True
    # speed and memory (train/step.py; measured in docs/PERFORMANCE.md)
    fp8: bool = False  # float8 training of the block projections (H100/H200 class GPUs)
    # fused: ours (train/fp8.py: float8 forward and input-gradient GEMMs, casts fused by compile);
    # fused_lowmem (default): the same, saving x for the weight gradient in float8: the paper recipe's
    #   12,288-token rows fit an 80 GB card without recomputation, about 1% slower where fused fits;
    # fused_precise: fused without Hopper's fast (reduced-precision) accumulation in the forward GEMM;
    # rowwise, tensorwise, rowwise_with_gw_hp: torchao's recipes (the `fp8` extra)
    fp8_recipe: Fp8Recipe = "fused_lowmem"
    # our fused recipes on one process (ignored under FSDP and for torchao's recipes):
    # quantize each block weight once per micro-step instead of at every call (+2 bytes per block
    # parameter: 2 GB at XL), and add the weight gradients into .grad inside the GEMM (float32)
    fp8_weight_cache: bool = True
    fused_wgrad: bool = True  # also for the bf16 projections when bf16_weight_cache is on
    # bf16 without float8 on one GPU (train/projections.py): cast each float32 block weight to bf16
    # once per micro-step instead of at each of HRM's calls (+2 bytes per block parameter: 2 GB at XL)
    bf16_weight_cache: bool = True
    # hold HRM's states (the residual stream between and inside the stacks) in bf16 under autocast,
    # as transformers' hrm_text run in bf16 does, instead of float32: half the bytes of every
    # residual add and norm input, and of the block inputs saved for backward (model/hrm.py).
    # XL on an H200: +1.7% bf16, +1.2% float8, 3 GB less; its 300-step S loss curve stays within
    # bf16's seed spread (docs/PERFORMANCE.md, 2026-12-07). false: float32 states
    bf16_states: bool = True
    activation_memory_budget: float = 1.0  # < 1: the compiler recomputes activations to save memory (bf16 XL, 12,288-token rows: 0.8 fits 80 GB at 71 GB, the fastest there; a bf16 GPU run that would not fit sets 0.8 unless this is set)
    recompute_calls: int = 0  # first N recorded stack calls recomputed in backward (checkpointing)
    # FSDP2: free a block's gathered weights after each call (True) or keep them until backward
    # (False: fewer all-gathers, since HRM calls each block several times per step; more memory)
    fsdp_reshard_after_forward: bool = True
    # keep every block's gathered weights for the whole optimizer step: one all-gather per block per
    # step instead of one per call (HRM calls blocks 2-6 times); costs one unsharded bf16 copy
    fsdp_keep_gathered: bool = False
    # HSDP: split the processes into this many replica groups; parameters are sharded within a
    # group and replicated across groups (e.g. 2 for two nodes of 8 GPUs). 1 = plain FSDP2.
    fsdp_replicate: int = 1
    seed: int = 0
    ckpt_every: int = 1000
    ckpt_keep: int = 3
    log_every: int = 10
    price_per_gpu_hour: float = 2.0
    tensorboard: bool = True
    wandb: bool = False

    def final_bp_steps(self, arch: str) -> int:
        """K once the warm-up is over: bp_max_steps for hrm/trm, the fixed count of a baseline
        (what the model's `bp_steps` means for each arch: model/schedule.py)."""
        if arch == "looped":
            return self.looped_bp_steps
        if arch == "rins":
            return self.rins_bp_steps
        if arch == "transformer":
            return 1  # one call, always recorded
        return self.bp_max_steps

    def validate(self, model: ModelConfig) -> None:
        """Checks that need the model's shape: K cannot record more calls than the schedule has."""
        if self.attn_backend not in ATTN_BACKENDS:
            raise ConfigError(f"train.attn_backend={self.attn_backend!r} is not one of {', '.join(ATTN_BACKENDS)}")
        if not 1 <= self.bp_min_steps <= self.bp_max_steps:
            raise ConfigError(
                f"need 1 <= train.bp_min_steps <= train.bp_max_steps (got {self.bp_min_steps}, {self.bp_max_steps})"
            )
        if model.arch in ("hrm", "trm") and self.bp_min_steps < 2:
            raise ConfigError("train.bp_min_steps must be >= 2 for hrm/trm (one H call and one L call)")
        if model.arch in ("hrm", "trm") and self.bp_max_steps > model.num_stack_calls:
            raise ConfigError(f"train.bp_max_steps={self.bp_max_steps} exceeds the model's {model.num_stack_calls} stack calls")
        if not 0.0 <= self.bp_warmup_ratio <= 1.0:
            raise ConfigError(f"train.bp_warmup_ratio must be in [0, 1] (got {self.bp_warmup_ratio})")
        for name in ("looped_bp_steps", "rins_bp_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1 (got {getattr(self, name)})")


@dataclass
class EvalConfig:
    """Evaluation during training (eval/during_training.py, docs/EVALUATION.md): every `every` steps,
    on the EMA weights, greedy."""

    every: int = 0  # optimizer steps between evaluations; 0 = off
    heldout_dir: str | None = None  # sampled held-out split (a `data sample` output): held-out loss
    heldout_jsonl: str | None = None  # held-out JSONL file or folder: exact match
    heldout_limit: int = 64  # packed rows of heldout_dir, items per heldout_jsonl file
    # a --limit-ed paper suite from local files
    paper_data_dir: str | None = None
    paper_limit: int = 0  # items per benchmark; 0 = off
    batch_size: int = 32
    max_context: int = 3072
    max_new_tokens: int = 512

    def validate(self) -> None:
        for name in ("every", "heldout_limit", "paper_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0 (got {getattr(self, name)})")


@dataclass
class InferConfig:
    """Switches of the decode engine (infer/engine.py, docs/INFERENCE.md, "Engine"). They
    change speed, not results. None picks the device's default. Not a section of a run's YAML:
    `Engine(options=...)`, `make_engine` and the generate/chat/serve options take it."""

    compile: bool | None = None  # compile the dense parts of a decode block (default: on CUDA)
    # torch.compile mode of those parts; "max-autotune-no-cudagraphs" tunes the decode matmuls
    # (minutes of compilation at start-up); None compiles in seconds
    compile_mode: CompileMode | None = None
    fused_attention: bool | None = None  # one Triton kernel per block (default: CUDA + compile + Triton)
    # batches of at most this many rows run the projections as fused reductions (faster than
    # cuBLAS for one row, slower from two); 0 = never
    gemv_rows: int = 1
    cuda_graphs: bool | None = None  # capture the decode step (default: on CUDA)

    def validate(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode={self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if self.gemv_rows < 0:
            raise ConfigError(f"gemv_rows must be >= 0 (got {self.gemv_rows})")


def infer_config(**values: Any) -> InferConfig:
    """An InferConfig from keyword values (CLI strings are coerced), validated."""
    cfg = _build(InferConfig, values, "infer")
    cfg.validate()
    return cfg


@dataclass
class RLConfig:
    """GRPO (`hrm-text rl`, docs/POST_TRAINING.md). Model, optimizer, LoRA, checkpoints and logging
    come from the `train` section; `train.max_steps` counts GRPO steps."""

    prompts: str | None = None  # JSONL of {condition, instruction, response} (a built-in held-out/train file)
    heldout: str | None = None  # JSONL scored greedily every `eval_every` steps (exact match / the reward)
    reward: str = "auto"  # auto | exact | dm_math | sudoku | boxed_math | module:function
    prompts_per_step: int = 8
    group_size: int = 8  # completions per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    kl_coef: float = 0.0  # k3 KL to the starting weights (LoRA: the base with adapters off)
    scale_rewards: bool = True  # divide advantages by the group std (GRPO); false = Dr. GRPO
    micro_batch: int = 64  # completions per forward/backward in the update
    eval_every: int = 0
    eval_limit: int = 200
    seed: int = 0

    def validate(self) -> None:
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "micro_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rl.{name} must be >= 1 (got {getattr(self, name)})")
        if self.group_size < 2:
            raise ConfigError("rl.group_size must be >= 2: advantages are normalised within a group")
        if self.temperature <= 0:
            raise ConfigError(f"rl.temperature must be > 0 for group rollouts (got {self.temperature})")
        if self.kl_coef < 0:
            raise ConfigError(f"rl.kl_coef must be >= 0 (got {self.kl_coef})")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # `section.key`s given in the YAML or as overrides (load_config fills it; None: unknown, treat
    # every key as set). Lets device-dependent defaults (train/batching.py) leave user choices alone.
    set_keys: frozenset[str] | None = field(default=None, compare=False, repr=False)

    rl: RLConfig = field(default_factory=RLConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate(self.model)
        if self.train.lora is not None:
            self.train.lora.validate()
        self.eval.validate()
        self.rl.validate()

    def wants_eval_during_training(self) -> bool:
        """eval.every is on and there is something to evaluate (held-out data or a paper suite)."""
        e = self.eval
        paper = bool(e.paper_data_dir) and e.paper_limit > 0
        return e.every > 0 and bool(e.heldout_jsonl or e.heldout_dir or paper)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("set_keys")
        return d


# ---------------------------------------------------------------------------------------------
# Keys that moved when the settings were grouped by lifetime (docs/ARCHITECTURE.md#configuration).
# A user's YAML or override with an old key fails with a message naming the new one; a config saved
# inside an older checkpoint is migrated silently (config_from_dict), so old runs load and resume.

MOVED_KEYS: dict[str, str] = {
    "model.bp_min_steps": "train.bp_min_steps",
    "model.bp_max_steps": "train.bp_max_steps",
    "model.bp_warmup_ratio": "train.bp_warmup_ratio",
    "model.looped_bp_steps": "train.looped_bp_steps",
    "model.rins_bp_steps": "train.rins_bp_steps",
    "model.attn_backend": "train.attn_backend",
    "data.heldout_dir": "eval.heldout_dir",
    "data.heldout_jsonl": "eval.heldout_jsonl",
    "train.eval_every": "eval.every",
    "train.eval_limit": "eval.heldout_limit",
}
_MOVED_WHY = {
    "model": "the model section holds only what ships with the weights",
    "data": "evaluation settings are gathered in the eval section",
    "train": "evaluation settings are gathered in the eval section",
}
_MOVED_EXTRA = {
    "model.attn_backend": "; for inference pass attn_backend to hrm_text.checkpoint.loading.load_model, "
                          "or HRMTextLM(cfg, attn_backend=...)",
}


def moved_key_message(old: str) -> str:
    """The error for a key that has a new spelling (`old` is `section.key`)."""
    new = MOVED_KEYS[old]
    return f"{old} is now {new} ({_MOVED_WHY[old.split('.')[0]]}): write {new}{_MOVED_EXTRA.get(old, '')}"


def migrate_saved_config(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved `Config.to_dict()` with the keys of older versions moved to their new
    places (a value already at the new place wins). The input is not changed."""
    out = {sec: dict(vals) if isinstance(vals, dict) else vals for sec, vals in d.items()}
    for old, new in MOVED_KEYS.items():
        old_sec, old_key = old.split(".")
        new_sec, new_key = new.split(".")
        src = out.get(old_sec)
        if not isinstance(src, dict) or old_key not in src:
            continue
        value = src.pop(old_key)
        dst = out.get(new_sec)
        if not isinstance(dst, dict):
            dst = out[new_sec] = {}
        dst.setdefault(new_key, value)
    return out


# ---------------------------------------------------------------------------------------------
# Loading and validation machinery


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to type `tp`, or raise ConfigError naming `where`."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys to values")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer (got {value!r})")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer (got {value!r})") from None
        if not f.is_integer():
            raise ConfigError(f"{where} must be an integer (got {value!r})")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number (got {value!r})")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number (got {value!r})") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string (got {value!r})")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    types_ = _field_types(cls)
    unknown = [k for k in values if k not in types_]
    for k in unknown:
        if f"{where}.{k}" in MOVED_KEYS:
            raise ConfigError(moved_key_message(f"{where}.{k}"))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]}; allowed keys in {where}: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parse a CLI value with YAML rules (so 1e-4, true, null, [1,2] work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings onto a nested dict. `model.preset=XL` is allowed."""
    sections = {f.name for f in dataclasses.fields(Config)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) not in (2, 3) or parts[0] not in sections:
            raise ConfigError(f"override key {key!r} must be section.key (or section.key.subkey, e.g. train.lora.rank) "
                              f"with section one of {', '.join(sorted(sections))}")
        node = raw.setdefault(parts[0], {})
        if len(parts) == 3:  # a nested section such as train.lora
            sub = node.get(parts[1])
            if not isinstance(sub, dict):
                sub = node[parts[1]] = {}
            node = sub
        node[parts[-1]] = _parse_scalar(text)
    return raw


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file and what it should hold."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {p} must hold {expected}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (optional), apply overrides, expand the model preset, validate everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path, "config file", "a mapping of sections (model, data, train, eval)")
    raw = apply_overrides(raw, list(overrides or []))
    sections = {f.name for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown section {key!r}; allowed sections: {', '.join(sorted(sections))}")
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.pop("preset", None)
    model = model_config(preset, **model_raw)
    cfg = Config(
        model=model,
        data=_build(DataConfig, dict(raw.get("data") or {}), "data"),
        train=_build(TrainConfig, dict(raw.get("train") or {}), "train"),
        eval=_build(EvalConfig, dict(raw.get("eval") or {}), "eval"),
        rl=_build(RLConfig, dict(raw.get("rl") or {}), "rl"),
        set_keys=frozenset(f"{sec}.{k}" for sec, vals in raw.items() if isinstance(vals, dict) for k in vals),
    )
    cfg.validate()
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config saved with `Config.to_dict()` (e.g. inside a checkpoint); keys an older
    version saved elsewhere are migrated (MOVED_KEYS)."""
    d = migrate_saved_config(d)
    model_raw = dict(d.get("model") or {})
    return Config(
        model=_build(ModelConfig, model_raw, "model"),
        data=_build(DataConfig, dict(d.get("data") or {}), "data"),
        train=_build(TrainConfig, dict(d.get("train") or {}), "train"),
        eval=_build(EvalConfig, dict(d.get("eval") or {}), "eval"),
        rl=_build(RLConfig, dict(d.get("rl") or {}), "rl"),
    )
