"""Where a training step's time goes: wall time, GPU kernel time, kernels and aten operators per step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.workload import StepInputs, synchronize


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active: each is host work (on a GPU, mostly a kernel launch), which
    is what bounds an eager batch-32 step on a fast GPU. Eager code only: compiled code is traced anew under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class StepProfile:
    """Where a training step's time goes: wall time, time the GPU spends in kernels, how many kernels, and how many
    aten operators the host dispatched (eager steps)."""

    wall_ms: float
    kernel_ms: float | None  # None on the CPU
    kernels: float | None
    operators: int | None  # None for compiled steps
    top_ops: str


def profile_train_step(
    step: Callable[[StepInputs], torch.Tensor],
    inputs: StepInputs,
    device: torch.device,
    steps: int = 3,
    count_operators: bool = True,
) -> StepProfile:
    """Profile ``steps`` training steps (after a warm-up). A step whose kernel time is far below its wall time is
    host-bound: Python and launch overhead, which fewer operators, compilation and CUDA graphs remove."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    step(inputs)
    synchronize(device)
    operators = None
    if count_operators:
        with OperatorCounter() as counter:
            step(inputs)
        synchronize(device)
        operators = counter.count
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(inputs)
        synchronize(device)
        wall = time.perf_counter() - start
    kernels = [event for event in prof.events() if event.device_type == DeviceType.CUDA]
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    return StepProfile(
        wall_ms=wall * 1e3 / steps,
        kernel_ms=sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / steps if cuda else None,
        kernels=len(kernels) / steps if cuda else None,
        operators=operators,
        top_ops=prof.key_averages().table(sort_by=sort_by, row_limit=12, max_name_column_width=60),
    )
