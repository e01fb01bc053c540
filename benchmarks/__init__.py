"""Benchmark the exact fast paths against the official computation: ``python -m benchmarks``.

For each class count it times, on the same random weights in the same process:

* a training step (forward, every DAPT loss term, backward, SGD step): naive = all 77 text tokens
  (``text_encoding="full"``, the official computation), fast = ``"auto"`` (the shared-prefix path);
* a full evaluation pass over N test images: naive = the text re-encoded for every test batch at 77 tokens
  under ``no_grad`` (as the official code does), fast = the text encoded once, then only the image tower,
  under ``inference_mode``;
* the peak memory of one training step (CPU: peak RSS of a fresh subprocess per configuration; CUDA: the
  caching allocator's peak).

With ``--compile MODE`` it also times the fast path with ``--model.compile MODE`` (``torch.compile`` of the towers).
With ``--throughput`` (default on CUDA) it also measures images/s of the fast path (compiled, if asked), model-only
and end to end with a DataLoader over in-memory decoded images, and the achieved fraction of the card's peak
matmul rate.
The CLIP is open_clip's ViT-B-16 with random weights and ``--depth`` layers in both towers. The package
``dapt_lightning`` never imports this one.

Modules: ``workload`` (models, inputs, steps, timing), ``memory``, ``throughput``, ``profiling`` (kernels and
operators per step), ``report`` (formatting, BENCHMARKS.md sections) and ``runner`` (arguments, the run, the report).
"""

from benchmarks.memory import ProbeConfig, probe_train_memory
from benchmarks.profiling import OperatorCounter
from benchmarks.report import section_marker
from benchmarks.runner import BenchmarkReport, main
from benchmarks.workload import (
    build_clip,
    build_model,
    eval_fast,
    load_classnames,
    make_inputs,
    make_train_step,
)

__all__ = [
    "BenchmarkReport",
    "OperatorCounter",
    "ProbeConfig",
    "build_clip",
    "build_model",
    "eval_fast",
    "load_classnames",
    "main",
    "make_inputs",
    "make_train_step",
    "probe_train_memory",
    "section_marker",
]
