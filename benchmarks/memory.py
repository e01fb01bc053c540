"""Peak memory of one training step: the CUDA allocator's peak, or a fresh subprocess's peak RSS on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.workload import autocast_context, build_clip, build_model, make_inputs, make_train_step


@dataclass(frozen=True)
class ProbeConfig:
    """One training-step configuration whose peak memory is measured."""

    model: str
    depth: int
    classes: int
    batch: int
    mode: str
    checkpointing: bool
    precision: str


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_probe(config: ProbeConfig, device: torch.device, clip: torch.nn.Module | None = None) -> float:
    """Peak memory (MiB) of one training step above what was in use just before it."""
    clip = build_clip(config.model, config.depth, device) if clip is None else clip
    model = build_model(clip, config.classes, config.checkpointing)
    step = make_train_step(model, config.mode, autocast_context(device, config.precision))
    inputs = make_inputs(model, config.batch, device)
    if device.type == "cuda":
        step(inputs)  # the allocator's pools and the optimizer state exist from the second step on
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(inputs)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # A fresh process, so the RSS high-water mark is this step's alone (reset just before it).
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    step(inputs)
    return (_rss_kib("VmHWM") - base) / 1024


def probe_train_memory(config: ProbeConfig, device: str, clip: torch.nn.Module | None = None) -> float:
    """Peak training-step memory in MiB: in this process on CUDA (re-using ``clip``), in a fresh subprocess on CPU."""
    if device == "cuda":
        return run_probe(config, torch.device("cuda"), clip)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "benchmarks", "--_probe", json.dumps(asdict(config))]
    # From the repository root, where `benchmarks` is importable whatever the caller's folder.
    repository = Path(__file__).resolve().parents[1]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repository, check=False)
    match = re.search(r"PEAK_MIB=([0-9.]+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"memory probe {config} failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))
