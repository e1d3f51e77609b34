"""Training metrics: JSONL (always), TensorBoard (if installed), W&B (if installed and asked), and a
progress bar with loss, token accuracy, tokens/s, MFU, elapsed time, projected cost and ETA.

MFU here is as in docs/ARCHITECTURE.md#flops-accounting: achieved *model* FLOPs per second (the
paper's accounting from `hrm_text.model.flops`, which counts recorded stack calls three times and
the others once) divided by the device peak. The peak used is always reported next to the number
(`peak_source`), because "MFU" against a datasheet and against a measured matmul rate differ by
about 25% on an H100.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

# Dense (no sparsity) BF16 tensor-core peaks from the vendors' datasheets. Matched by substring of
# torch.cuda.get_device_name(), most specific first.
PEAK_FLOPS_BF16: list[tuple[str, float, str]] = [
    ("H100 PCIe", 756e12, "NVIDIA H100 PCIe datasheet, dense BF16 756 TFLOP/s"),
    ("H100 NVL", 835e12, "NVIDIA H100 NVL datasheet, dense BF16 835 TFLOP/s"),
    ("H100", 989e12, "NVIDIA H100 SXM datasheet, dense BF16 989 TFLOP/s"),
    ("H200", 989e12, "NVIDIA H200 datasheet, dense BF16 989 TFLOP/s (same tensor cores as H100 SXM)"),
    ("GH200", 989e12, "NVIDIA GH200 datasheet, dense BF16 989 TFLOP/s"),
    ("B200", 2250e12, "NVIDIA B200 (HGX) datasheet, dense BF16 2.25 PFLOP/s"),
    ("A100", 312e12, "NVIDIA A100 datasheet, dense BF16 312 TFLOP/s"),
    ("L40S", 362e12, "NVIDIA L40S datasheet, dense BF16 362 TFLOP/s"),
    ("A10G", 70e12, "NVIDIA A10G (AWS) dense BF16 about 70 TFLOP/s"),
    ("A10", 125e12, "NVIDIA A10 datasheet, dense BF16 125 TFLOP/s"),
    ("L4", 121e12, "NVIDIA L4 datasheet, dense BF16 121 TFLOP/s"),
]


def peak_flops_for_name(name: str) -> tuple[float, str] | None:
    """Datasheet dense-BF16 peak for a CUDA device name, or None when the device is not in the table."""
    for key, flops, source in PEAK_FLOPS_BF16:
        if key.lower() in name.lower():
            return flops, source
    return None


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype | None = None, n: int | None = None,
                         seconds: float = 0.3) -> float:
    """Best observed rate of an n x n matmul on `device`: an attainable peak for devices without a
    datasheet entry (CPUs, unknown GPUs). CPU default: fp32, n = 512 (short, cache friendly)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if n is None:
        n = 512 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up (kernel selection, thread pool start)
    sync()
    best = 0.0
    deadline = time.perf_counter() + seconds
    reps = 1
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 2.0 * n**3 * reps / max(dt, 1e-9))
        if dt < 0.02:
            reps *= 2
    return best


def device_peak_flops(device: torch.device | str) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for MFU.

    CUDA devices in `PEAK_FLOPS_BF16` use the datasheet dense-BF16 figure (the choice behind the
    paper-derived 38% MFU, docs/ARCHITECTURE.md#flops-accounting). Anything else is *measured*: the
    best rate of a square matmul (fp32 on CPU, bf16 on GPU) over ~0.3 s, so MFU on a laptop is
    relative to what its BLAS really reaches, not to a marketing number that depends on the CPU's
    vector units and clock.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        hit = peak_flops_for_name(name)
        if hit is not None:
            return hit
        rate = measure_matmul_flops(device)
        return rate, f"measured bf16 matmul rate on {name} (not in the datasheet table)"
    rate = measure_matmul_flops(device)
    threads = torch.get_num_threads()
    return rate, f"measured fp32 512x512 matmul rate on {device.type} ({threads} threads)"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _truncate_after(path: Path, step: int) -> None:
    """Drop records of steps > `step` (written by a run that died after its last checkpoint), so
    metrics.jsonl holds each step once after a resume. Unparseable lines (a torn last write) go too."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(k + "\n" for k in kept))


def _set_aside(path: Path) -> Path:
    """Rename `path` to the first free `NAME.1`, `NAME.2`, ... and return the new path."""
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    return path.rename(path.with_name(f"{path.name}.{n}"))


class MetricsLogger:
    """One sink for every metric of a run; only the main rank writes (others get a silent logger).

    `log_train` takes the *global* quantities of the interval since its previous call (tokens and
    model FLOPs summed over ranks, loss and accuracy already averaged over response tokens), times
    the interval itself (or takes `dt`), and derives throughput, MFU, cost and ETA. `elapsed_offset`
    and `start_step` let a resumed run continue its clock and cost (save `logger.elapsed` in the
    checkpoint's `extra`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        total_steps: int,
        price_per_gpu_hour: float,
        num_gpus: int,
        peak_flops: float,
        peak_source: str = "",
        tensorboard: bool = True,
        wandb: bool = False,
        is_main: bool = True,
        start_step: int = 0,
        elapsed_offset: float = 0.0,
        progress: bool = True,
        config: dict[str, Any] | None = None,
        run_name: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.total_steps = int(total_steps)
        self.price = float(price_per_gpu_hour)
        self.num_gpus = max(1, int(num_gpus))
        self.peak_flops = float(peak_flops)
        self.peak_source = peak_source
        self.is_main = is_main
        self.start_step = int(start_step)
        self.elapsed_offset = float(elapsed_offset)
        self._clock = clock
        self._t0 = clock()
        self._t_last = self._t0
        self._step_last = self.start_step
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._bar = None
        self._logged = ""  # bar text of the last log_train
        self._recent: deque[tuple[float, float]] = deque(maxlen=10)  # (seconds, tokens) of recent steps
        self._t_step = self._t0
        if not is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        jsonl = self.out_dir / "metrics.jsonl"
        if start_step > 0 and jsonl.is_file():
            _truncate_after(jsonl, start_step)  # a resumed run replays steps after its checkpoint
        elif jsonl.is_file() and jsonl.stat().st_size > 0:
            # a fresh run where an earlier one logged (say, one that died before its first
            # checkpoint): appending would mix two runs' steps, so the earlier records move aside
            kept = _set_aside(jsonl)
            log.warning("%s held an earlier run's metrics; this run starts from step 0, so they are kept as %s",
                        jsonl, kept.name)
        self._jsonl = open(jsonl, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
            except ImportError:
                log.info("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")
        if wandb:
            try:
                import wandb as _wandb

                self._wandb = _wandb.init(project="hrm-text", name=run_name, dir=str(self.out_dir), config=config, resume="allow")
            except ImportError:
                log.warning("train.wandb=true but wandb is not installed (pip install wandb): skipping W&B")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=self.start_step, unit="step", dynamic_ncols=True,
                             smoothing=0.1, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {postfix}")

    # -- time and money -------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Wall seconds of the whole run, including time before a resume."""
        return self.elapsed_offset + (self._clock() - self._t0)

    def cost(self, elapsed: float | None = None) -> float:
        e = self.elapsed if elapsed is None else elapsed
        return e / 3600.0 * self.num_gpus * self.price

    def eta(self, step: int) -> float:
        """Seconds left, from this process's average step time (compile warm-up included)."""
        done = step - self.start_step
        if done <= 0:
            return math.inf
        rate = (self._clock() - self._t0) / done
        return max(0, self.total_steps - step) * rate

    # -- logging --------------------------------------------------------------------------------

    def log_train(
        self,
        step: int,
        *,
        loss: float,
        accuracy: float,
        tokens: float,
        flops: float,
        dt: float | None = None,
        **extra: float,
    ) -> dict[str, float]:
        """Record one training interval ending at `step`; returns the full metric dict."""
        now = self._clock()
        if dt is None:
            dt = now - self._t_last
        dt = max(float(dt), 1e-9)
        elapsed = self.elapsed
        eta = self.eta(step)
        tps = tokens / dt
        metrics: dict[str, float] = {
            "loss": float(loss),
            "accuracy": float(accuracy),
            "tokens_per_s": tps,
            "tokens_per_s_per_gpu": tps / self.num_gpus,
            "model_flops_per_s": flops / dt,
            "mfu": flops / dt / (self.peak_flops * self.num_gpus) if self.peak_flops > 0 else 0.0,
            "elapsed_s": elapsed,
            "gpu_hours": elapsed / 3600.0 * self.num_gpus,
            "cost": self.cost(elapsed),
            "projected_cost": self.cost(elapsed + (eta if math.isfinite(eta) else 0.0)),
            "eta_s": eta if math.isfinite(eta) else -1.0,
            "step_time_s": dt / max(1, step - self._step_last),
        }
        metrics.update({k: float(v) for k, v in extra.items()})
        self._t_last = now
        self._step_last = step
        self._write(step, metrics, prefix="train/")
        if self._bar is not None:
            self._bar.update(max(0, step - self._bar.n))
            self._logged = self.summary(metrics)
            self._bar.set_postfix_str(self._logged, refresh=True)
        return metrics

    def step_done(self, step: int, tokens: float, loss: float) -> None:
        """Move the bar after every optimizer step (not only every `log_every`), with the step's
        loss, tokens/s over the last few steps and the ETA: a run of slow steps must not look hung.
        Host numbers only (the trainer already has them); writes no metric records."""
        if self._bar is None:
            return
        now = self._clock()
        self._recent.append((now - self._t_step, float(tokens)))
        self._t_step = now
        tps = sum(n for _, n in self._recent) / max(sum(dt for dt, _ in self._recent), 1e-9)
        eta = self.eta(step)
        self._bar.update(max(0, step - self._bar.n))
        text = f"loss {loss:.4f} {_si(tps)} tok/s ETA {format_duration(eta)}"
        if self._logged:  # the last full summary (accuracy, MFU, cost) stays visible
            text += f" | last log: {self._logged}"
        self._bar.set_postfix_str(text, refresh=True)

    def summary(self, m: dict[str, float]) -> str:
        """The progress-bar text: the numbers someone watching a run wants at a glance."""
        eta = m["eta_s"]
        return (
            f"loss {m['loss']:.4f} acc {100 * m['accuracy']:.1f}% "
            f"{_si(m['tokens_per_s'])} tok/s MFU {100 * m['mfu']:.1f}% "
            f"elapsed {format_duration(m['elapsed_s'])} "
            f"${m['cost']:,.2f}/${m['projected_cost']:,.2f} "
            f"ETA {format_duration(eta) if eta >= 0 else '?'}"
        )

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record arbitrary scalars (held-out loss, exact-match...) under `prefix` (e.g. "eval/")."""
        self._write(step, {k: v for k, v in metrics.items()}, prefix=prefix)
        if self._bar is not None and metrics:
            shown = " ".join(f"{prefix}{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            self._bar.write(f"step {step}: {shown}")

    def _write(self, step: int, metrics: dict[str, Any], prefix: str) -> None:
        if not self.is_main:
            return
        record = {"step": int(step), "time": time.time(), **{f"{prefix}{k}": v for k, v in metrics.items()}}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, default=float) + "\n")
        scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
