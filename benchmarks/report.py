"""The written report: machine description, number formatting, and the per-device section of BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path

import torch


def section_marker(device: str) -> str:
    """The HTML comment that opens this device's section in BENCHMARKS.md."""
    return f"<!-- benchmarks:{device} -->"


def _section_end(device: str) -> str:
    return f"<!-- /benchmarks:{device} -->"


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        text += f"; GPU {properties.name} ({properties.total_memory / 2**30:.0f} GiB)"
    return text


def ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def write_section(path: Path, device: str, body: str) -> None:
    """Write or replace this device's marked section of ``path``, leaving the rest as it is."""
    start, end = section_marker(device), _section_end(device)
    section = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
