"""Checkpoints with `torch.distributed.checkpoint` (DCP): atomic, verifiable, reshardable.

Layout of one checkpoint (the state *after* optimizer step `step`):

    out_dir/step_000123/
        state/            DCP directory: {"model", "optim", "ema"} tensors, each rank writes its shards
        ranks/rank_00000.pt   per-rank loader position and RNG states (torch.save, our own files)
        meta.json         step, world size, what is inside, trainer extras (elapsed time, ...)
        config.json       the full run config (Config.to_dict())
        tokenizer/        copy of the tokenizer folder, so a checkpoint is self-contained
        COMPLETE          JSON manifest {relative path: {size, crc32}}, written last

Why this shape:
- DCP saves each rank's shards in parallel and loads them under any other world size, including a
  single CPU process with no process group (`load_model_weights` for inference/SFT), so one format
  serves FSDP2 training, resume on a different GPU count, and laptop evaluation.
- Everything is written under `.tmp-step_000123` and renamed with `os.replace` only once the
  manifest is on disk, so a crash mid-write never leaves something that looks like a checkpoint.
  The manifest lets `find_latest` reject a checkpoint damaged afterwards (truncated copy, disk full
  on a later sync) cheaply by size, or thoroughly by CRC.
- Multi-node runs need `out_dir` on a filesystem every rank sees (rank 0 writes the manifest over
  all ranks' files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

import torch.distributed as dist

log = logging.getLogger(__name__)


class StateHolder(Protocol):
    """What is saved beside the model and optimizer (the weight EMA): a state dict round trip."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def clean_param_name(name: str) -> str:
    """Parameter names without wrapper prefixes (torch.compile's `_orig_mod.`, DDP's `module.`),
    so saved keys match the model's canonical state-dict keys whatever wraps the model."""
    for prefix in ("_orig_mod.", "module."):
        name = name.replace(prefix, "")
    return name


# rank helpers on torch.distributed directly (train/distributed.py sits a floor above)
def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

CKPT_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
MARKER = "COMPLETE"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^step_(\d+)$")
_CHUNK = 8 << 20

Verify = Literal["size", "checksum"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which one and why."""


def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:06d}"


@contextlib.contextmanager
def _quiet_dcp() -> Iterator[None]:
    """DCP warns on every single-process save/load that it assumes no process group: that is the
    intended use here, so the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*single process.*")
        yield


# ---------------------------------------------------------------------------------------------
# RNG


def capture_rng() -> dict[str, Any]:
    """Every RNG the training loop may touch, so a resumed run draws the same numbers."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what `capture_rng` recorded. Accepts the dict `load_checkpoint` returns (uses its
    `rng` entry) or the bare RNG dict. CUDA states are restored only when the counts match."""
    rng = state.get("rng", state) if isinstance(state, dict) else state
    if rng is None:
        return
    if "python" in rng:
        random.setstate(rng["python"])
    if "numpy" in rng:
        np.random.set_state(rng["numpy"])
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has %d CUDA RNG states, this process sees %d devices: CUDA RNG not restored",
                        len(cuda), torch.cuda.device_count())


# ---------------------------------------------------------------------------------------------
# Manifest and verification


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _build_manifest(root: Path, checksum: bool) -> dict[str, dict[str, int]]:
    files: dict[str, dict[str, int]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MARKER:
            entry = {"size": p.stat().st_size}
            if checksum:
                entry["crc32"] = _file_crc32(p)
            files[p.relative_to(root).as_posix()] = entry
    return files


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(path: str | Path, verify: Verify = "size") -> tuple[bool, str]:
    """(ok, reason). `size` checks the marker, that every listed file exists with its recorded size
    and that no expected part is missing; `checksum` also recomputes every CRC32 (reads it all)."""
    path = Path(path)
    marker = path / MARKER
    if not path.is_dir():
        return False, "not a directory"
    if not marker.is_file():
        return False, f"no {MARKER} marker (incomplete write)"
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"unreadable {MARKER} marker: {e}"
    for required in ("meta.json", "state/.metadata"):
        if required not in files:
            return False, f"manifest lacks {required}"
    for rel, entry in files.items():
        f = path / rel
        try:
            size = f.stat().st_size
        except OSError:
            return False, f"missing file {rel}"
        if size != entry.get("size"):
            return False, f"{rel} has {size} bytes, manifest says {entry.get('size')} (truncated or modified)"
        if verify == "checksum" and "crc32" in entry and _file_crc32(f) != entry["crc32"]:
            return False, f"{rel} fails its CRC32 check"
    return True, "ok"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """All final-named `step_N` directories (complete or not), oldest first. Temporary
    `.tmp-step_N` directories are never listed."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(out_dir: str | Path, verify: Verify = "size") -> Path | None:
    """Newest checkpoint that passes `verify_checkpoint`; damaged ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(out_dir)):
        ok, reason = verify_checkpoint(path, verify)
        if ok:
            return path
        log.warning("skipping damaged checkpoint %s: %s", path, reason)
    return None


def prune_checkpoints(out_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (keep <= 0: keep all); delete older ones, damaged
    ones older than the oldest kept, and leftover temporary directories. Returns what was deleted."""
    out = Path(out_dir)
    deleted: list[Path] = []
    for p in out.glob(f"{TMP_PREFIX}*") if out.is_dir() else []:
        if p.is_dir() and p != protect:
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    if keep <= 0:
        return deleted
    ckpts = list_checkpoints(out)
    complete = [(s, p) for s, p in ckpts if (p / MARKER).is_file()]
    kept = complete[-keep:]
    if not kept:
        return deleted
    oldest_kept = kept[0][0]
    kept_paths = {p for _, p in kept}
    for step, p in ckpts:
        if p in kept_paths or p == protect:
            continue
        if step < oldest_kept:
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    return deleted


# ---------------------------------------------------------------------------------------------
# Save


def _rank_file(root: Path, rank: int) -> Path:
    return root / "ranks" / f"rank_{rank:05d}.pt"


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: StateHolder | None,
    loader_state: dict[str, Any] | None,
    config_dict: dict[str, Any],
    tokenizer_dir: str | Path | None,
    keep: int,
    *,
    extra: dict[str, Any] | None = None,
    checksum: bool = True,
) -> Path:
    """Write `out_dir/step_{step:06d}` atomically; every rank must call it (collective).

    `loader_state` is this rank's data-loader position; `extra` (JSON-serialisable) carries trainer
    bookkeeping such as elapsed seconds so cost/ETA continue across restarts. `checksum=False` skips
    the CRC32 pass (rank 0 reads the whole checkpoint once) for very large models; sizes are still
    recorded and verified. Returns the final path.
    """
    out = Path(out_dir)
    rank, world = get_rank(), get_world_size()
    name = checkpoint_name(step)
    final = out / name
    tmp = out / f"{TMP_PREFIX}{name}"
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok is not None and not tok.is_dir():
        raise CheckpointError(f"tokenizer folder {tok} does not exist; it is copied into every checkpoint")

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "ranks").mkdir(parents=True)
    barrier()

    # An optimizer that has not stepped yet has no state; get_state_dict would create it by running a
    # zero-LR step on the live optimizer (advancing its step counters). Save it as "fresh" instead.
    optimizer_fresh = optimizer is not None and not optimizer.state
    if optimizer is not None and not optimizer_fresh and hasattr(optimizer, "_init_state"):
        # A parameter that has had no gradient yet has no state (HRM's embedding while K = 2
        # records only the last H and L calls), but the load template holds every parameter, so
        # such a checkpoint could not be resumed. Give it the state its first step would start
        # from (step 0, zero moments): the same update follows, and the checkpoint loads.
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer._init_state(p)
    if optimizer is not None and not optimizer_fresh:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    with _quiet_dcp():
        dcp.save(state, checkpoint_id=str(tmp / "state"))

    rank_path = _rank_file(tmp, rank)
    torch.save({"loader_state": loader_state, "rng": capture_rng(), "rank": rank}, rank_path)
    _fsync_file(rank_path)

    if rank == 0:
        meta = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "world_size": world,
            "has_optimizer": optimizer is not None and not optimizer_fresh,
            "optimizer_fresh": optimizer_fresh,
            "has_ema": ema is not None,
            "has_tokenizer": tok is not None,
            "extra": extra or {},
            "saved_at": time.time(),
            "torch_version": torch.__version__,
        }
        _write_json(tmp / "meta.json", meta)
        _write_json(tmp / "config.json", config_dict)
        if tok is not None:
            shutil.copytree(tok, tmp / "tokenizer")
    barrier()  # every rank's shards and rank file are on disk before the manifest is taken

    if rank == 0:
        manifest = {"step": int(step), "files": _build_manifest(tmp, checksum), "created": time.time()}
        _write_json(tmp / MARKER, manifest)
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after resuming from an older one): swap it out
            old = out / f"{TMP_PREFIX}old-{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(out)
        for p in prune_checkpoints(out, keep, protect=final):
            log.info("deleted old checkpoint %s", p)
    barrier()
    return final


# ---------------------------------------------------------------------------------------------
# Load


def _read_meta(path: Path) -> dict[str, Any]:
    ok, reason = verify_checkpoint(path, "size")
    if not ok:
        raise CheckpointError(f"checkpoint {path} cannot be used: {reason}")
    return json.loads((path / "meta.json").read_text())


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: StateHolder | None = None,
) -> dict[str, Any]:
    """Restore model (+ optimizer, + EMA) in place for exact resume; every rank must call it.

    Works under any world size: DCP reshards what a run of N ranks wrote onto this run's layout.
    Returns {"step", "loader_state" (this rank's, else rank 0's), "rng" (this rank's; apply with
    `restore_rng`), "config", "extra", "world_size" (of the saving run), "path"}. RNG is *not*
    restored here, so the caller decides when (after building data loaders, before the first step).
    """
    path = Path(path)
    meta = _read_meta(path)
    if optimizer is not None and not meta["has_optimizer"]:
        if not meta.get("optimizer_fresh"):
            raise CheckpointError(f"checkpoint {path} holds no optimizer state; load it with optimizer=None")
        optimizer = None  # saved before the first step: a fresh optimizer is the exact state
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    if ema is not None:
        if not meta["has_ema"]:
            raise CheckpointError(f"checkpoint {path} holds no EMA weights")
        state["ema"] = ema.state_dict()
    with _quiet_dcp():
        dcp.load(state, checkpoint_id=str(path / "state"))
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])

    rank = get_rank()
    rank_path = _rank_file(path, rank)
    if not rank_path.is_file():
        rank_path = _rank_file(path, 0)
    per_rank = torch.load(rank_path, map_location="cpu", weights_only=False) if rank_path.is_file() else {}
    return {
        "step": int(meta["step"]),
        "loader_state": per_rank.get("loader_state"),
        "rng": per_rank.get("rng") if per_rank.get("rank") == rank else None,
        "config": json.loads((path / "config.json").read_text()),
        "extra": meta.get("extra", {}),
        "world_size": int(meta["world_size"]),
        "path": str(path),
    }


def load_model_weights(path: str | Path, model: nn.Module, use_ema: bool = True) -> str:
    """Load only the weights (EMA by default) into `model`, e.g. for evaluation, export or SFT.

    Needs no process group and no optimizer; works on CPU from a checkpoint written by any number of
    ranks, and into a model of another dtype (DCP copies with conversion). With `use_ema` the EMA
    shadow replaces each parameter while buffers come from the model part. Returns "ema" or
    "model": which weights were loaded (a checkpoint without EMA falls back to "model", with a warning).
    """
    path = Path(path)
    meta = _read_meta(path)
    target = get_model_state_dict(model)
    source = "model"
    if use_ema and meta["has_ema"]:
        source = "ema"
    elif use_ema:
        log.warning("checkpoint %s has no EMA weights; loading the raw model weights", path)
    if source == "ema":
        param_names = {clean_param_name(n) for n, p in model.named_parameters() if p.requires_grad}
        state: dict[str, Any] = {
            "model": {k: v for k, v in target.items() if k not in param_names},
            "ema": {f"shadow.{k}": v for k, v in target.items() if k in param_names},
        }
        if not state["model"]:
            del state["model"]
    else:
        state = {"model": target}
    with _quiet_dcp():
        dcp.load(state, checkpoint_id=str(path / "state"))
    merged = dict(state.get("model", {}))
    merged.update({k[len("shadow."):]: v for k, v in state.get("ema", {}).items()})
    set_model_state_dict(model, merged)
    return source


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The run config stored in a checkpoint (to rebuild the model before loading weights)."""
    path = Path(path)
    _read_meta(path)
    return json.loads((path / "config.json").read_text())
