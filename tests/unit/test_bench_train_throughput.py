"""benchmarks/train_throughput.py's profile split, on made-up profiler events."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torch.autograd import DeviceType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"
spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
assert spec is not None and spec.loader is not None
tt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tt)


@dataclass
class Evt:
    name: str
    self_device_time_total: float  # us
    device_type: DeviceType = DeviceType.CUDA
    is_user_annotation: bool = False


class Prof:
    def __init__(self, events: list[Evt]) -> None:
        self._events = events

    def events(self) -> list[Evt]:
        return self._events


def test_split_counts_kernels_only():
    prof = Prof([
        Evt("hrm::step", 500_000.0, is_user_annotation=True),  # a device-side span of a whole phase
        Evt("hrm::forward_backward", 400_000.0),
        Evt("Command Buffer Full", 90_000.0),  # a host wait
        Evt("aten::mm", 7_000.0, device_type=DeviceType.CPU),
        Evt("nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_ovscale_TNT", 2_000.0),
        Evt("triton_tem_fused_flex_attention_backward_mul_transpose_view_7", 1_000.0),
        Evt("triton_red_fused__scaled_mm__to_copy_abs_amax_cat", 500.0),
        Evt("_adam_atan2_kernel", 300.0),
        Evt("void at::native::vectorized_elementwise_kernel<4>", 100.0),
    ])
    assert tt._profile_split(prof) == {"matmul": 2.0, "attention": 1.0, "fused_elementwise": 0.5,
                                       "optimizer_ema": 0.3, "other_elementwise": 0.1}


def test_kernel_table_lists_kernels_per_step_by_time():
    """The kernel table: the same kernels as the split (no spans, host waits or CPU ops), summed by
    name, per step, largest first, with their class."""
    prof = Prof([
        Evt("hrm::step", 500_000.0, is_user_annotation=True),
        Evt("Command Buffer Full", 90_000.0),
        Evt("aten::mm", 7_000.0, device_type=DeviceType.CPU),
        Evt("_adam_atan2_kernel", 300.0),
        Evt("nvjet_sm90_qqtst_128x128", 2_000.0),
        Evt("nvjet_sm90_qqtst_128x128", 2_000.0),
        Evt("_adam_atan2_kernel", 300.0),
    ])
    lines = tt._kernel_table(prof, steps=2).splitlines()
    assert lines[0].split() == ["ms/step", "calls", "class", "kernel"]
    assert [line.split() for line in lines[1:]] == [["2.00", "1", "matmul", "nvjet_sm90_qqtst_128x128"],
                                                    ["0.30", "1", "optimizer_ema", "_adam_atan2_kernel"]]
