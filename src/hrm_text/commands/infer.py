"""`hrm-text generate | chat | serve | export-hf | import-hf`.

Every command turns a user mistake (missing or damaged checkpoint, unknown condition tag, bad
sampling value) into one line on stderr and exit code 2, never a traceback: those are the errors
people make at the terminal, and a traceback hides the one line that matters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

CKPT_HELP = "Checkpoint dir (runs/x/step_000100), run dir (newest complete checkpoint), or a transformers hrm_text folder."


def _fail(msg: str) -> "typer.Exit":
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _device(device: Optional[str]) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(ckpt: Path, device: Optional[str], dtype: Optional[str], raw_weights: bool = False):  # -> LoadedModel
    """Load a model for inference; any load problem becomes exit code 2 with the reason."""
    import torch

    from hrm_text.infer.export import parse_dtype
    from hrm_text.checkpoint.loading import ModelLoadError, load_model

    dev = _device(device)
    try:
        dt = parse_dtype(dtype) if dtype else (torch.bfloat16 if dev.startswith("cuda") else torch.float32)
        loaded = load_model(ckpt, device=dev, dtype=dt, use_ema=not raw_weights)
    except (ModelLoadError, ValueError, FileNotFoundError, OSError, RuntimeError, KeyError) as e:
        raise _fail(f"cannot load {ckpt}: {e}")
    except Exception as e:  # damaged files surface as many exception types (DCP, safetensors, json)
        raise _fail(f"cannot load {ckpt}: {type(e).__name__}: {e}")
    if loaded.tokenizer is None:
        raise _fail(f"{loaded.path} has no tokenizer (tokenizer/ in a checkpoint, tokenizer.json in an hrm_text folder)")
    return loaded


def _params(max_tokens: int, temperature: float, top_p: float, top_k: int, seed: Optional[int], stop: Optional[list[str]]):
    from hrm_text.infer.engine import SamplingParams

    p = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                       stop=tuple(stop or ()), seed=seed)
    try:
        p.validate()
    except ValueError as e:
        raise _fail(str(e))
    return p


def _infer_options(compile_mode: Optional[str], gemv_rows: int):  # -> InferConfig
    """The engine's speed switches from the command line; a bad value is exit code 2."""
    from hrm_text.config import ConfigError, infer_config

    try:
        return infer_config(compile_mode=compile_mode, gemv_rows=gemv_rows)
    except ConfigError as e:
        raise _fail(str(e))


def _check_condition(condition: str) -> str:
    from hrm_text.data.records import parse_condition

    try:
        return ",".join(parse_condition(condition))
    except ValueError as e:
        raise _fail(str(e))


_CONDITION = typer.Option("direct", "--condition", "-c", help="Condition tags, comma-separated in order: direct, cot, noisy, synth (e.g. synth,cot).")
_MAX_TOKENS = typer.Option(256, "--max-tokens", "-n", help="Most tokens to generate.")
_TEMPERATURE = typer.Option(0.0, help="0 = greedy; > 0 samples.")
_TOP_P = typer.Option(1.0, "--top-p", help="Nucleus sampling mass in (0, 1].")
_TOP_K = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0 = off).")
_SEED = typer.Option(None, help="Seed for sampling (reproducible samples).")
_STOP = typer.Option(None, "--stop", help="Stop string (repeat for several); the answer ends before it.")
_DEVICE = typer.Option(None, help="cpu or cuda (default: cuda if available).")
_DTYPE = typer.Option(None, help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on CPU).")
_MAX_LEN = typer.Option(None, "--max-len", help="Context length of the KV cache (default: the model's max_seq_len).")
_COMPILE_MODE = typer.Option(None, "--compile-mode", help="torch.compile mode of the decode block on CUDA, e.g. max-autotune-no-cudagraphs (tunes the matmuls; minutes of start-up).")
_GEMV_ROWS = typer.Option(1, "--gemv-rows", help="Batches of at most this many rows run the decode matmuls as fused reductions on CUDA (0 = never).")


def generate_cmd(
    ckpt: Path = typer.Argument(..., help=CKPT_HELP),
    prompt: str = typer.Argument(..., help="The instruction text (the prompt layout and condition tags are added)."),
    condition: str = _CONDITION,
    max_tokens: int = _MAX_TOKENS,
    temperature: float = _TEMPERATURE,
    top_p: float = _TOP_P,
    top_k: int = _TOP_K,
    seed: Optional[int] = _SEED,
    stop: Optional[list[str]] = _STOP,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    max_len: Optional[int] = _MAX_LEN,
    compile_mode: Optional[str] = _COMPILE_MODE,
    gemv_rows: int = _GEMV_ROWS,
    raw_weights: bool = typer.Option(False, "--raw-weights", help="Use the raw weights instead of the EMA ones."),
    stream: bool = typer.Option(True, help="Print tokens as they are produced."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the text: prompt, condition, prompt_ids, ids (generated tokens, the final <eoa> excluded), text, finish_reason (stop|length)."),
    ids_only: bool = typer.Option(False, "--ids", help="Print the generated token ids (space-separated) instead of the text."),
) -> None:
    """Answer one prompt and print the response (streamed) to stdout; --json or --ids for scripts."""
    from hrm_text.infer.chat import generate_one
    from hrm_text.infer.textgen import make_engine

    if as_json and ids_only:
        raise _fail("--json already holds the ids; pass one of --json and --ids")
    stream = stream and not (as_json or ids_only)
    cond = _check_condition(condition)
    params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
    options = _infer_options(compile_mode, gemv_rows)
    loaded = _load(ckpt, device, dtype, raw_weights)
    engine = make_engine(loaded.model, loaded.tokenizer, max_batch=1, max_len=max_len, options=options)

    def out(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    try:
        res = generate_one(engine, loaded.tokenizer, prompt, cond, params, on_text=out if stream else None)
    except ValueError as e:
        raise _fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps({"prompt": prompt, "condition": cond, "prompt_ids": res.prompt_ids,
                                     "ids": res.token_ids, "text": res.text or "",
                                     "finish_reason": res.finish_reason}, ensure_ascii=False))
    elif ids_only:
        sys.stdout.write(" ".join(map(str, res.token_ids)))
    elif not stream:
        sys.stdout.write(res.text or "")
    sys.stdout.write("\n")


def chat_cmd(
    ckpt: Path = typer.Argument(..., help=CKPT_HELP),
    condition: str = _CONDITION,
    max_tokens: int = _MAX_TOKENS,
    temperature: float = _TEMPERATURE,
    top_p: float = _TOP_P,
    top_k: int = _TOP_K,
    seed: Optional[int] = _SEED,
    stop: Optional[list[str]] = _STOP,
    system: Optional[str] = typer.Option(None, help="System message put before the conversation."),
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    max_len: Optional[int] = _MAX_LEN,
    compile_mode: Optional[str] = _COMPILE_MODE,
    gemv_rows: int = _GEMV_ROWS,
    raw_weights: bool = typer.Option(False, "--raw-weights", help="Use the raw weights instead of the EMA ones."),
) -> None:
    """Interactive chat in the terminal: answers stream as they are produced.

    Commands: /condition <tags>, /reset, /help, /quit. Earlier turns are folded into the
    instruction as 'User: ...' / 'Assistant: ...' lines (docs/INFERENCE.md); the oldest turns are
    dropped when the context is full.
    """
    from hrm_text.infer.chat import ChatSession, run_chat
    from hrm_text.infer.textgen import make_engine

    cond = _check_condition(condition)
    params = _params(max_tokens, temperature, top_p, top_k, seed, stop)
    options = _infer_options(compile_mode, gemv_rows)
    loaded = _load(ckpt, device, dtype, raw_weights)
    engine = make_engine(loaded.model, loaded.tokenizer, max_batch=1, max_len=max_len, options=options)
    session = ChatSession(engine, loaded.tokenizer, params, condition=cond, system=system)
    try:
        run_chat(session)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


def serve_cmd(
    ckpt: Path = typer.Argument(..., help=CKPT_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Only loopback by default; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HRM_TEXT_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/* (also from $HRM_TEXT_API_KEY)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows decoded together (continuous batching)."),
    max_len: Optional[int] = _MAX_LEN,
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Model id clients pass as 'model' (default: the checkpoint folder name; the alias 'hrm-text' works too)."),
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    raw_weights: bool = typer.Option(False, "--raw-weights", help="Serve the raw weights instead of the EMA ones."),
    compile_mode: Optional[str] = _COMPILE_MODE,
    gemv_rows: int = _GEMV_ROWS,
) -> None:
    """OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions (SSE with stream=true),
    /v1/models, /health. Extra request field 'condition' selects condition tags (default direct)."""
    if max_batch < 1:
        raise _fail("--max-batch must be >= 1")
    options = _infer_options(compile_mode, gemv_rows)
    loaded = _load(ckpt, device, dtype, raw_weights)
    from hrm_text.infer.server import create_app

    try:
        app = create_app(loaded, model_name=model_name, api_key=api_key, max_batch=max_batch, max_len=max_len,
                         options=options)
    except ValueError as e:
        raise _fail(str(e))
    import uvicorn

    typer.echo(f"serving {' = '.join(repr(m) for m in app.state.hrm.model_ids)} on http://{host}:{port}/v1 (max batch {max_batch})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def export_hf_cmd(
    ckpt: Path = typer.Argument(..., help=CKPT_HELP),
    out: Path = typer.Argument(..., help="Output folder (created)."),
    raw_weights: bool = typer.Option(False, "--raw-weights", help="Export the raw weights instead of the EMA ones."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16 or float16 (default: the imported folder's dtype, else float32)."),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="LoRA checkpoint: write merged weights instead of base + OUT/adapter (PEFT folder)."),
) -> None:
    """Write a transformers `hrm_text` folder (config, safetensors, tokenizer, generation config, README).
    A LoRA checkpoint also gets OUT/adapter, a PEFT adapter folder (peft.PeftModel.from_pretrained)."""
    from hrm_text.infer.export import export_hf

    try:
        path = export_hf(ckpt, out, raw_weights=raw_weights, dtype=dtype, merge_lora=merge_lora)
    except Exception as e:  # ModelLoadError, damaged checkpoints, bad dtype: one line, exit 2
        raise _fail(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
    typer.echo(f"exported to {path} (load with AutoModelForCausalLM and pass token_type_ids=1 on the prompt)")


def import_hf_cmd(
    hf_dir: Path = typer.Argument(..., help="A transformers hrm_text folder (config.json + safetensors [+ tokenizer])."),
    out: Path = typer.Argument(..., help="Run folder to create; the checkpoint goes to OUT/step_000000."),
) -> None:
    """Make a checkpoint of ours from a transformers `hrm_text` folder (to fine-tune, serve or evaluate it)."""
    from hrm_text.infer.export import import_hf

    try:
        path = import_hf(hf_dir, out)
    except Exception as e:
        raise _fail(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
    typer.echo(f"imported to {path}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
    app.command("chat")(chat_cmd)
    app.command("serve")(serve_cmd)
    app.command("export-hf")(export_hf_cmd)
    app.command("import-hf")(import_hf_cmd)
