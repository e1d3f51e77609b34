"""Shared timing for the GPU step benchmarks: first (compiling) step on the wall clock, one more
warm-up, then `n` steps timed with CUDA events (peak memory counted from the timed steps only)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def timed_steps(step: Callable[[int], T], n: int) -> tuple[float, list[float], list[T]]:
    """Returns (first step seconds, seconds of each timed step, each timed step's return value)."""
    t0 = time.perf_counter()
    step(0)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    step(1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, outs = [], []
    for i in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        outs.append(step(i + 2))
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return first, times, outs
