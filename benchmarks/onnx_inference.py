"""A tuned model's inference, eager PyTorch against onnxruntime: the image -> logits graph that ``dapt export``
writes (``ImageToLogits``: the image tower with the learned visual prompts, class text features fixed)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.workload import build_model


@dataclass(frozen=True)
class InferenceResult:
    """Images per second of each runtime on the same graph and inputs, and how far their logits differ."""

    classes: int
    batch: int
    eager: float
    onnxruntime: float
    max_abs_difference: float
    threads: int


def _images_per_second(run, batch: int, repeats: int) -> float:  # noqa: ANN001 - any callable on the batch
    run()  # warm-up: allocations, onnxruntime's first-run optimisations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return batch / float(np.median(times))


def measure_inference(clip: torch.nn.Module, classes: int, batch: int, repeats: int) -> InferenceResult:
    """Time ``batch`` images through the exported graph of a CoOp+VPT model over ``classes`` classes, on the CPU."""
    import onnxruntime

    from dapt_lightning.inference.classifier import ImageToLogits
    from dapt_lightning.inference.export import export_graph

    model = build_model(clip.cpu(), classes)
    with torch.no_grad():
        graph = ImageToLogits(model, model.encode_text()).eval()
    size = model.image_tower.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    exported = export_graph(graph, size)
    session = onnxruntime.InferenceSession(exported.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"images": pixels.numpy()}
    with torch.no_grad():
        reference = graph(pixels).numpy()
        eager = _images_per_second(lambda: graph(pixels), batch, repeats)
    onnx = _images_per_second(lambda: session.run(None, feed), batch, repeats)
    difference = float(np.abs(session.run(None, feed)[0] - reference).max())
    return InferenceResult(classes, batch, eager, onnx, difference, threads)


def inference_table(result: InferenceResult) -> list[str]:
    """The Markdown lines of the eager / onnxruntime comparison."""
    ratio = result.onnxruntime / result.eager
    return [
        "",
        "Inference of a tuned model on the CPU: `dapt export`'s image -> logits graph (visual prompts, "
        f"{result.classes} class text features fixed), batch {result.batch}, random images, {result.threads} "
        "threads, fp32; median of the timed repeats after one warm-up; the two runtimes' logits differ by at most "
        f"{result.max_abs_difference:.1e}:",
        "",
        "| runtime | images/s | vs eager |",
        "|---|---:|---:|",
        f"| eager PyTorch (`torch.no_grad`) | {result.eager:.1f} | 1.00 |",
        f"| onnxruntime (CPUExecutionProvider) | {result.onnxruntime:.1f} | {ratio:.2f} |",
    ]
