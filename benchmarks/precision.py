"""fp32 against bf16-mixed on the CPU, side by side: the fast training step, the evaluation pass and the step's peak
memory of the same model in the same process (the precisions alternating), and each one's share of this machine's
own measured matrix-multiply peak in its dtype."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from benchmarks.memory import ProbeConfig, probe_train_memory
from benchmarks.report import fmt
from benchmarks.throughput import image_flops, image_mlp_width, image_tokens, text_flops, train_step_flops
from benchmarks.workload import (
    autocast_context,
    build_model,
    eval_fast,
    interleaved_medians,
    make_inputs,
    make_train_step,
)

PRECISIONS = ("32", "bf16-mixed")
DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, rows: int, inner: int, cols: int, repeats: int = 10) -> float:
    """GFLOP/s of this machine's fastest of ``repeats`` ``(rows x inner) @ (inner x cols)`` products in ``dtype``,
    into a kept output (a fresh one would time the page faults of its first touch too)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator).to(dtype)
    b = torch.randn(inner, cols, generator=generator).to(dtype)
    out = torch.empty(rows, cols, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: the library picks and prepares its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * inner * cols / best / 1e9


def image_block_products(model, batch: int) -> list[tuple[int, int, int]]:
    """The image tower's matrix products in a training step, as (rows, inner, cols): q/k/v, output, MLP in, MLP out."""
    tokens, width, mlp = batch * image_tokens(model)[1], model.image_tower.width, image_mlp_width(model)
    return [(tokens, width, 3 * width), (tokens, width, width), (tokens, width, mlp), (tokens, mlp, width)]


def matmul_peaks(model, batch: int) -> dict[str, float]:
    """This machine's matmul peak in each precision's dtype: the fastest of the image tower's products."""
    shapes = image_block_products(model, batch)
    return {precision: max(matmul_peak(dtype, *shape) for shape in shapes) for precision, dtype in DTYPES.items()}


@dataclass(frozen=True)
class PrecisionRow:
    """One measurement in both precisions, and the floating-point work it does (None: not a rate)."""

    classes: int
    measure: str
    values: dict[str, float]
    flops: float | None


def measure_precisions(
    clip: torch.nn.Module,
    classes: int,
    batch: int,
    test_batch: int,
    eval_images: int,
    repeats: int,
    memory: bool,
    model_name: str,
    depth: int,
) -> list[PrecisionRow]:
    """The fast training step (ms), the evaluation pass (s) and, with ``memory``, the step's peak memory (MiB) of one
    model in fp32 and bf16-mixed."""
    device = torch.device("cpu")
    model = build_model(clip, classes)
    inputs = make_inputs(model, batch, device)
    steps = {p: make_train_step(model, "auto", autocast_context(device, p)) for p in PRECISIONS}
    timed = interleaved_medians({p: (lambda s=s: s(inputs)) for p, s in steps.items()}, repeats, device)
    rows = [
        PrecisionRow(
            classes,
            "train step (ms)",
            {p: t * 1e3 for p, t in timed.items()},
            train_step_flops(model, batch, "auto"),
        )
    ]
    batches = [make_inputs(model, test_batch, device, seed=1 + i).images for i in range(-(-eval_images // test_batch))]
    model.eval()
    autocasts = {p: autocast_context(device, p) for p in PRECISIONS}
    passes = {p: (lambda a=a: eval_fast(model, batches, a)) for p, a in autocasts.items()}
    warmups = {p: (lambda a=a: eval_fast(model, batches[:1], a)) for p, a in autocasts.items()}
    timed = interleaved_medians(passes, max(1, (repeats + 1) // 2), device, warmups=warmups)
    blocks, patch_embed = image_flops(model)
    eval_flops = len(batches) * test_batch * (blocks + patch_embed) + text_flops(model, "auto")
    rows.append(PrecisionRow(classes, f"eval pass, {eval_images} images (s)", dict(timed), eval_flops))
    if memory:
        peaks = {
            p: probe_train_memory(ProbeConfig(model_name, depth, classes, batch, "auto", False, p), "cpu", clip)
            for p in PRECISIONS
        }
        rows.append(PrecisionRow(classes, "train step peak memory (MiB)", peaks, None))
    return rows


def precision_table(rows: list[PrecisionRow], peaks: dict[str, float]) -> list[str]:
    """The Markdown lines: both precisions, their ratio, and each one's share of its dtype's matmul peak."""
    lines = [
        "",
        "| classes | measurement | fp32 | bf16-mixed | bf16 / fp32 | fp32 GFLOP/s (% of peak) | "
        "bf16 GFLOP/s (% of peak) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        fp32, bf16 = row.values["32"], row.values["bf16-mixed"]
        shares = []
        for precision in PRECISIONS:
            if row.flops is None:
                shares.append("n/a")
                continue
            seconds = row.values[precision] / (1e3 if row.measure.endswith("(ms)") else 1)
            rate = row.flops / seconds / 1e9
            shares.append(f"{rate:.0f} ({100 * rate / peaks[precision]:.0f}%)")
        lines.append(
            f"| {row.classes} | {row.measure} | {fmt(fp32)} | {fmt(bf16)} | {bf16 / fp32:.2f} | {' | '.join(shares)} |"
        )
    return lines
