"""The benchmark run: arguments, the measurements of each class count, and the Markdown report."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.memory import ProbeConfig, probe_train_memory, run_probe
from benchmarks.methods import (
    MethodTiming,
    cocoop_batched_speedup,
    deep_prompt_cost,
    deep_prompt_lines,
    methods_table,
    time_methods,
)
from benchmarks.onnx_inference import InferenceResult, inference_table, measure_inference
from benchmarks.precision import PrecisionRow, matmul_peaks, measure_precisions, precision_table
from benchmarks.profiling import StepProfile, profile_train_step
from benchmarks.report import fmt, machine_description, ratio, write_section
from benchmarks.throughput import throughput
from benchmarks.workload import (
    StepInputs,
    autocast_context,
    build_clip,
    build_model,
    eval_fast,
    eval_naive,
    interleaved_medians,
    make_inputs,
    make_train_step,
    time_call,
)
from dapt_lightning.model.compilation import COMPILE_MODES
from dapt_lightning.model.shared_prefix import SINGLE_ATTENTION_MAX_TOKENS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the exact fast paths against the official computation (see BENCHMARKS.md).",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture (widths); random weights")
    parser.add_argument("--depth", type=int, help="layers of both towers (default: 2 on CPU, 12 on CUDA)")
    parser.add_argument("--classes", default="37,397,1000", help="comma-separated class counts")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--test-batch", type=int, default=100, help="evaluation batch size")
    parser.add_argument("--eval-images", type=int, help="test images per evaluation pass (default 200 CPU, 5000 CUDA)")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    parser.add_argument("--repeats", type=int, help="timed repeats, median reported (default 3 CPU, 10 CUDA)")
    parser.add_argument("--memory", choices=["on", "off"], default="on", help="measure peak training-step memory")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="also time the fast path with --model.compile MODE (and measure its throughput)",
    )
    parser.add_argument(
        "--checkpointing",
        choices=["on", "off"],
        default="on",
        help="also measure text-tower activation checkpointing at the largest class count",
    )
    parser.add_argument(
        "--throughput",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="images/s (model-only and with a DataLoader) and peak fraction (default: on CUDA only)",
    )
    parser.add_argument("--throughput-steps", type=int, default=20, help="steps per throughput measurement")
    parser.add_argument(
        "--text-layouts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the eager fast step with each shared-prefix layout (one attention, two buckets, per-length "
        "buckets) to check the auto choice (default: on CUDA only)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile fast training steps at the largest class count: wall vs GPU kernel time, kernels per step",
    )
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: min(8, CPUs - 1))")
    own_sections = {
        "methods": (
            "off",
            "time every registered method's training step and evaluation pass at the smallest class count (CPU)",
        ),
        "precisions": (
            "off",
            "time the fast path in fp32 and bf16-mixed side by side at every class count (CPU), "
            "with this machine's matmul peak in each dtype",
        ),
        "onnx": ("on", "time a tuned model's exported image -> logits graph, eager PyTorch vs onnxruntime (CPU only)"),
    }
    for name, (default, what) in own_sections.items():
        parser.add_argument(
            f"--{name}",
            choices=["on", "off", "only"],
            default=default,
            help=f"{what}, in a section of its own; only: nothing else",
        )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense peak for the precision (default 989 for bf16 and 67 for fp32: H100 SXM)",
    )
    parser.add_argument("--output", type=Path, help="write or replace this device's section of this Markdown file")
    parser.add_argument("--note", default="", help="free text added to the written section (e.g. machine load)")
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.depth = args.depth or (12 if cuda else 2)
    args.eval_images = args.eval_images or (5000 if cuda else 200)
    args.repeats = args.repeats or (10 if cuda else 3)
    args.throughput = cuda if args.throughput is None else args.throughput
    args.text_layouts = cuda if args.text_layouts is None else args.text_layouts
    args.workers = min(8, max((os.cpu_count() or 1) - 1, 0)) if args.workers is None else args.workers
    args.peak_tflops = args.peak_tflops or (989.0 if args.precision == "bf16-mixed" else 67.0)
    args.class_counts = [int(c) for c in args.classes.split(",") if c.strip()]
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


Row = tuple[int, str, float | None, float | None, float | None]  # classes, measure, naive, fast, fast compiled


@dataclass
class BenchmarkReport:
    """What a benchmark run measured, and the Markdown section written from it."""

    rows: list[Row]  # (classes, measurement, naive, fast, fast compiled)
    checkpointing: list[tuple[str, float | None, float | None]]  # (path, train step ms, peak MiB)
    throughput: dict[int, tuple[str, dict[str, float]]]  # classes -> (path, images/s and TFLOP/s)
    layouts: dict[int, dict[str, float]]  # classes -> train step ms per shared-prefix layout
    profiles: dict[str, StepProfile]  # path -> profile of the fast step
    compile_notes: list[str]  # first-call times, or why compiling failed
    markdown: str
    inference: InferenceResult | None = None  # eager PyTorch vs onnxruntime on the exported graph
    methods: list[MethodTiming] | None = None  # every method's training step and evaluation pass
    precisions: list[PrecisionRow] | None = None  # fp32 and bf16-mixed side by side

    def row(self, classes: int, measurement: str) -> Row:
        """The table row of ``measurement`` at ``classes``."""
        return next(r for r in self.rows if r[0] == classes and r[1] == measurement)


@dataclass
class ClassCountResult:
    """What one class count measured: table rows, throughput, profiles, and how compiling went."""

    rows: list[Row]
    throughput: dict[str, float] | None = None
    throughput_path: str = "fast"
    profiles: dict[str, StepProfile] = field(default_factory=dict)
    compile_seconds: dict[str, float] = field(default_factory=dict)  # first call (compiling) per compiled use
    compile_error: str | None = None
    layouts: dict[str, float] = field(default_factory=dict)  # eager fast train step (ms) per text layout


def _first_call(fn: Callable[[], object], device: torch.device) -> tuple[float | None, str | None]:
    """Seconds of the first call of ``fn`` (which compiles), or None and the error that stopped it.

    A benchmark run on a lent GPU is scarce: a failed compile is reported in the table instead of losing every
    other measurement of the run.
    """
    try:
        return time_call(fn, device), None
    except Exception as error:  # noqa: BLE001 - reported in the written section, see the docstring
        return None, _describe(error)


def _describe(error: BaseException) -> str:
    """One line naming an error and its root cause (torch.compile wraps the compiler's own error)."""

    def line(e: BaseException) -> str:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"

    root = error
    for _ in range(10):  # a bounded walk: cause chains are short, but nothing forbids a cycle
        inner = root.__cause__ or getattr(root, "inner_exception", None)
        if inner is None:
            break
        root = inner
    return line(error) if root is error else f"{line(error)} caused by {line(root)}"


def _progress(row: Row) -> None:
    """One measured row on stderr as soon as it exists, so that an interrupted run still shows what it measured."""
    classes, measure, naive, fast, compiled = row
    print(
        f"[bench] {classes} classes, {measure}: naive {fmt(naive)}, fast {fmt(fast)}, compiled {fmt(compiled)}",
        file=sys.stderr,
        flush=True,
    )


def _measure_class_count(
    clip: torch.nn.Module, classes: int, args: argparse.Namespace, device: torch.device, compile_mode: str
) -> ClassCountResult:
    """Naive-vs-fast rows (train step, evaluation pass, peak memory), the throughput and, at the largest class
    count with ``--profile``, the profiles of the fast training steps (eager and compiled) of one class count.
    ``compile_mode`` ``off`` skips the compiled column (also after a failed compile)."""
    autocast = autocast_context(device, args.precision)
    model = build_model(clip, classes)
    result = ClassCountResult(rows=[])
    inputs = make_inputs(model, args.batch, device)
    steps = {"naive": make_train_step(model, "full", autocast), "fast": make_train_step(model, "auto", autocast)}
    # Same seed, same prompts; only its towers are compiled (the naive and fast paths stay eager).
    compiled = build_model(clip, classes, compile_mode=compile_mode) if compile_mode != "off" else None
    if compiled is not None:
        compiled_step = make_train_step(compiled, "auto", autocast)
        seconds, error = _first_call(lambda: compiled_step(inputs), device)
        if error is None:
            steps["compiled"] = compiled_step
            result.compile_seconds["training step"] = seconds
        else:
            result.compile_error, compiled = f"training step: {error}", None
    timed = interleaved_medians({name: (lambda s=s: s(inputs)) for name, s in steps.items()}, args.repeats, device)
    rows = result.rows
    rows.append((classes, "train step (ms)", *(_ms(timed.get(name)) for name in ("naive", "fast", "compiled"))))
    _progress(rows[-1])
    if args.text_layouts:
        result.layouts = _time_text_layouts(model, inputs, args.repeats, device, autocast)
        print(f"[bench] {classes} classes, text layouts (ms): {result.layouts}", file=sys.stderr, flush=True)
    if args.profile and classes == max(args.class_counts):
        labels = {"fast": "fast", "compiled": f"fast, compile {compile_mode}"}
        for name in ("fast", "compiled") if compiled is not None else ("fast",):
            result.profiles[labels[name]] = profile_train_step(
                steps[name], inputs, device, count_operators=name == "fast"
            )
            print(f"Top operators, {labels[name]}, {classes} classes:\n{result.profiles[labels[name]].top_ops}")
    batches = [
        make_inputs(model, args.test_batch, device, seed=1 + i).images
        for i in range(-(-args.eval_images // args.test_batch))
    ]
    model.eval()
    passes = {
        "naive": lambda batches: eval_naive(model, batches, autocast),
        "fast": lambda batches: eval_fast(model, batches, autocast),
    }
    if compiled is not None:
        compiled.eval()
        seconds, error = _first_call(lambda: eval_fast(compiled, batches[:1], autocast), device)
        if error is None:
            passes["compiled"] = lambda batches: eval_fast(compiled, batches, autocast)
            result.compile_seconds["evaluation batch"] = seconds
        else:
            result.compile_error, compiled = f"evaluation: {error}", None
    timed = interleaved_medians(
        {name: (lambda run=run: run(batches)) for name, run in passes.items()},
        _eval_repeats(args),
        device,
        # One batch warms up every kernel of a pass; a whole pass would double the (long) CPU run.
        warmups={name: (lambda run=run: run(batches[:1])) for name, run in passes.items()},
    )
    rows.append(
        (classes, f"eval pass, {args.eval_images} images (s)", timed["naive"], timed["fast"], timed.get("compiled"))
    )
    _progress(rows[-1])
    if args.memory == "on":
        peaks = []
        for mode in ("full", "auto"):
            config = ProbeConfig(args.model, args.depth, classes, args.batch, mode, False, args.precision)
            peaks.append(probe_train_memory(config, args.device, clip))
        rows.append((classes, "train step peak memory (MiB)", *peaks, None))
        _progress(rows[-1])
    if args.throughput:
        measured_model = compiled if compiled is not None else model
        result.throughput_path = f"fast, compile {compile_mode}" if compiled is not None else "fast"
        measured_model.train()
        measured_model.clip.eval()
        result.throughput = throughput(measured_model, args, device)
        print(f"[bench] {classes} classes, throughput ({result.throughput_path}): {result.throughput}", file=sys.stderr)
    return result


# Shared-prefix layouts (``--model.text_layout``) compared by --text-layouts.
TEXT_LAYOUTS = {"one attention": "single_attention", "two buckets": "two_buckets", "per-length buckets": "per_length"}


def _time_text_layouts(model, inputs: StepInputs, repeats: int, device: torch.device, autocast: Callable) -> dict:
    """The eager fast training step (ms) with each shared-prefix layout, to check what ``auto`` picks here."""
    # One encoder per layout, each keeping its own packing plan and masks (rebuilding them would be timed too).
    steps = {
        name: make_train_step(model, "shared_prefix", autocast, layout=layout) for name, layout in TEXT_LAYOUTS.items()
    }
    timed = interleaved_medians(
        {name: (lambda step=step: step(inputs)) for name, step in steps.items()}, repeats, device
    )
    return {name: _ms(seconds) for name, seconds in timed.items()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _eval_repeats(args: argparse.Namespace) -> int:
    return max(1, (args.repeats + 1) // 2)  # evaluation passes are long: about half as many as steps


def _command(argv: list[str] | None) -> str:
    shown = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "benchmarks", *shown])


def _methods_section(
    clip: torch.nn.Module, args: argparse.Namespace, argv: list[str] | None, load_before: float
) -> tuple[list[MethodTiming], str]:
    """Time every registered method (and CoCoOp image by image vs batched); print and write its own section."""
    classes = min(args.class_counts)
    timings = time_methods(clip, classes, args.batch, args.eval_images, args.test_batch, args.repeats)
    cocoop = cocoop_batched_speedup(clip, classes, args.batch, args.repeats)
    deep = deep_prompt_cost(clip, classes, args.batch, args.repeats)
    title = f"CPU, every method: ViT-B/16 widths, {args.depth} layers per tower, precision 32"
    how = f"- Medians of {args.repeats} repeats after one warm-up, the methods built on the same random CLIP."
    lines = [how, *methods_table(timings, cocoop, classes, args.batch)]
    lines += deep_prompt_lines(deep, classes, args.batch, args.depth)
    return timings, _own_section("cpu-methods", title, lines, args, argv, load_before)


def _precisions_section(
    clip: torch.nn.Module, args: argparse.Namespace, argv: list[str] | None, load_before: float
) -> tuple[list[PrecisionRow], str]:
    """fp32 and bf16-mixed side by side at every class count, with the matmul peaks; print and write its section."""
    rows: list[PrecisionRow] = []
    for classes in args.class_counts:
        rows += measure_precisions(
            clip,
            classes,
            args.batch,
            args.test_batch,
            args.eval_images,
            args.repeats,
            args.memory == "on",
            args.model,
            args.depth,
        )
        print(f"[bench] {classes} classes, fp32 vs bf16-mixed: {rows[-1]}", file=sys.stderr, flush=True)
    peaks = matmul_peaks(build_model(clip, min(args.class_counts)), args.batch)
    title = f"CPU, fp32 against bf16-mixed: ViT-B/16 widths, {args.depth} layers per tower, fast path"
    lines = [
        f"- Batch {args.batch}, test batch {args.test_batch}; medians of {args.repeats} training steps and "
        f"{max(1, (args.repeats + 1) // 2)} evaluation passes, after a warm-up of each, fp32 and bf16-mixed "
        "alternating on the same model in the same process. Memory: peak RSS of one step in a fresh subprocess.",
        "- Matmul peak of this machine in each dtype (the fastest of the image tower's four products, each the "
        "fastest of 10): "
        + ", ".join(f"{'fp32' if p == '32' else 'bf16'} {peak:.0f} GFLOP/s" for p, peak in peaks.items())
        + f" (bf16 / fp32 {peaks['bf16-mixed'] / peaks['32']:.2f}x). A path's GFLOP/s counts its matrix products "
        "(forward, and backward through the frozen towers to the prompts) over its time.",
        *precision_table(rows, peaks),
    ]
    return rows, _own_section("cpu-bf16", title, lines, args, argv, load_before)


def _inference_section(
    clip: torch.nn.Module, args: argparse.Namespace, argv: list[str] | None, load_before: float
) -> tuple[InferenceResult, str]:
    """Measure eager PyTorch against onnxruntime on the exported graph; print and write its own section."""
    inference = measure_inference(clip, max(args.class_counts), args.test_batch, args.repeats)
    title = f"CPU inference of a tuned model: ViT-B/16 widths, {args.depth} layers per tower"
    return inference, _own_section("cpu-inference", title, inference_table(inference), args, argv, load_before)


def _own_section(
    marker: str, title: str, lines: list[str], args: argparse.Namespace, argv: list[str] | None, load_before: float
) -> str:
    """A CPU section with its date, machine, load and command, then ``lines``: printed, and written to
    ``--output`` between its own markers."""
    body = "\n".join(
        [
            f"## {title}",
            "",
            f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- Machine: {machine_description(torch.device('cpu'))}",
            f"- Load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}",
            f"- Command: `{_command(argv)}`",
            *([f"- Note: {args.note}"] if args.note else []),
            *lines,
        ]
    )
    print(body)
    if args.output is not None:
        write_section(args.output, marker, body)
    return body


def main(argv: list[str] | None = None) -> BenchmarkReport | None:
    """Run the benchmark, print the Markdown report, write it with ``--output`` and return what was measured."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args._probe:
        config = ProbeConfig(**json.loads(args._probe))
        print(f"PEAK_MIB={run_probe(config, device):.1f}")
        return None
    load_before = os.getloadavg()[0]
    clip = build_clip(args.model, args.depth, device)
    if args.methods == "only":
        timed = _methods_section(clip, args, argv, load_before)
        return BenchmarkReport([], [], {}, {}, {}, [], timed[1], None, timed[0])
    if args.precisions == "only":
        precisions = _precisions_section(clip, args, argv, load_before)
        return BenchmarkReport([], [], {}, {}, {}, [], precisions[1], precisions=precisions[0])
    if args.onnx == "only":
        inference = _inference_section(clip, args, argv, load_before)
        return BenchmarkReport([], [], {}, {}, {}, [], inference[1], inference[0])
    autocast = autocast_context(device, args.precision)
    rows: list[Row] = []
    extra: dict[int, tuple[str, dict[str, float]]] = {}
    profiles: dict[str, StepProfile] = {}
    compile_notes: list[str] = []
    layouts: dict[int, dict[str, float]] = {}
    compile_mode = args.compile
    for classes in args.class_counts:
        result = _measure_class_count(clip, classes, args, device, compile_mode)
        rows += result.rows
        profiles.update(result.profiles)
        if result.throughput is not None:
            extra[classes] = (result.throughput_path, result.throughput)
        if result.layouts:
            layouts[classes] = result.layouts
        if result.compile_seconds:
            firsts = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in result.compile_seconds.items())
            compile_notes.append(f"{classes} classes: {firsts}")
        if result.compile_error is not None:
            compile_notes.append(f"{classes} classes: **failed** ({result.compile_error}); not compiled from here on")
            compile_mode = "off"  # the same failure would repeat: spend the time on the other measurements
        if device.type == "cuda":
            torch.cuda.empty_cache()

    checkpoint_rows: list[tuple[str, float | None, float | None]] = []
    if args.checkpointing == "on":
        classes = max(args.class_counts)
        plain = next(r for r in rows if r[0] == classes and r[1] == "train step (ms)")
        peak_row = next((r for r in rows if r[0] == classes and r[1].startswith("train step peak")), None)
        checkpoint_rows.append(("fast", plain[3], peak_row[3] if peak_row else None))
        model = build_model(clip, classes, checkpointing=True)
        inputs = make_inputs(model, args.batch, device)
        step = make_train_step(model, "auto", autocast)
        timed = interleaved_medians({"fast": lambda: step(inputs)}, args.repeats, device)
        for mode, label in (("auto", "fast + text checkpointing"), ("full", "naive + text checkpointing")):
            peak = None
            if args.memory == "on":
                config = ProbeConfig(args.model, args.depth, classes, args.batch, mode, True, args.precision)
                peak = probe_train_memory(config, args.device, clip)
            checkpoint_rows.append((label, timed["fast"] * 1e3 if mode == "auto" else None, peak))
        del model

    if args.methods == "on" and device.type == "cpu":
        methods = _methods_section(clip, args, argv, os.getloadavg()[0])[0]
    else:
        methods = None
    inference = None
    if args.onnx == "on" and device.type == "cpu":
        inference = _inference_section(clip, args, argv, os.getloadavg()[0])[0]
    precisions = None
    if args.precisions == "on" and device.type == "cpu":
        precisions = _precisions_section(clip, args, argv, os.getloadavg()[0])[0]

    load_after = os.getloadavg()[0]
    compiled_header = f" fast, compile {args.compile} | compiled / naive |" if args.compile != "off" else ""
    lines = [
        "| classes | measurement | naive | fast | fast / naive |" + compiled_header,
        "|---:|---|---:|---:|---:|" + ("---:|---:|" if compiled_header else ""),
    ]
    for classes, measure, naive, fast, compiled in rows:
        line = f"| {classes} | {measure} | {fmt(naive)} | {fmt(fast)} | {fmt(ratio(fast, naive), 2)} |"
        if compiled_header:
            line += f" {fmt(compiled)} | {fmt(ratio(compiled, naive), 2)} |"
        lines.append(line)
    if checkpoint_rows:
        classes = max(args.class_counts)
        lines += [
            "",
            f"Text-tower activation checkpointing, {classes} classes:",
            "",
            "| path | train step (ms) | train step peak memory (MiB) |",
            "|---|---:|---:|",
        ]
        lines += [f"| {label} | {fmt(ms)} | {fmt(peak)} |" for label, ms, peak in checkpoint_rows]
    if extra:
        lines += [
            "",
            f"Throughput (batch {args.batch}, test batch {args.test_batch}, "
            f"{args.workers} DataLoader workers, end to end timed after the first batch, which starts the workers; "
            f"% of a {args.peak_tflops:g} TFLOP/s peak):",
            "",
            "| classes | path | train img/s (model) | train img/s (end to end) | eval img/s (model) | "
            "eval img/s (end to end) | train TFLOP/s (% peak) | eval TFLOP/s (% peak) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for classes, (path, m) in extra.items():
            train_pct = 100 * m["train_tflops"] / args.peak_tflops
            eval_pct = 100 * m["eval_tflops"] / args.peak_tflops
            lines.append(
                f"| {classes} | {path} | {fmt(m['train_model'])} | {fmt(m['train_e2e'])} | {fmt(m['eval_model'])} | "
                f"{fmt(m['eval_e2e'])} | {m['train_tflops']:.3g} ({train_pct:.1f}%) | "
                f"{m['eval_tflops']:.3g} ({eval_pct:.1f}%) |"
            )
    if layouts:
        lines += [
            "",
            "Shared-prefix text layouts, eager fast training step (ms); `auto` picks per-length buckets on the CPU "
            f"and, on a GPU, one attention up to {SINGLE_ATTENTION_MAX_TOKENS} packed tokens, two buckets beyond:",
            "",
            "| classes | " + " | ".join(TEXT_LAYOUTS) + " |",
            "|---:|" + "---:|" * len(TEXT_LAYOUTS),
        ]
        lines += [
            f"| {classes} | " + " | ".join(fmt(timed.get(name)) for name in TEXT_LAYOUTS) + " |"
            for classes, timed in layouts.items()
        ]
    if profiles:
        lines += [
            "",
            f"Profile of 3 fast training steps, {max(args.class_counts)} classes (under the profiler, so wall times "
            "are inflated; GPU kernels include copies and memsets; kernel time far below wall time means the step is "
            "host-bound):",
            "",
            "| path | wall ms/step | GPU kernel ms/step | kernels/step | aten operators/step |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {label} | {fmt(p.wall_ms)} | {fmt(p.kernel_ms)} | {fmt(p.kernels)} | "
            f"{p.operators if p.operators is not None else 'n/a'} |"
            for label, p in profiles.items()
        ]
    table = "\n".join(lines)
    memory_how = (
        "peak of the CUDA caching allocator during one step (after a warm-up step), above what was allocated before"
        if device.type == "cuda"
        else "peak RSS of one step in a fresh subprocess per configuration, above the RSS just before it"
    )
    title = "GPU" if device.type == "cuda" else "CPU"
    body = "\n".join(
        [
            f"## {title}: ViT-B/16 widths, {args.depth} layers per tower, precision {args.precision}",
            "",
            f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- Machine: {machine_description(device)}",
            f"- Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}",
            f"- Command: `{_command(argv)}`",
            f"- Batch {args.batch}, test batch {args.test_batch}; times are medians of {args.repeats} training "
            f"steps (after one warm-up step) and {_eval_repeats(args)} evaluation passes (after a one-batch "
            "warm-up), the paths alternating, same random weights in the same process.",
            "- naive: 77-token text (`text_encoding=full`, the official computation), re-encoded per test batch "
            "at evaluation; fast: `text_encoding=auto` (shared prefix), text encoded once per evaluation"
            + (
                f"; compiled: the fast path with `--model.compile {args.compile}` (warm-up includes compiling)."
                if args.compile != "off"
                else "."
            ),
            f"- Memory: {memory_how}.",
            *(
                [
                    f"- Compiling (`--compile {args.compile}`), first calls (shorter when inductor's on-disk cache "
                    "already holds the graphs): " + "; ".join(compile_notes) + "."
                ]
                if compile_notes
                else []
            ),
            *([f"- Note: {args.note}"] if args.note else []),
            "",
            table,
        ]
    )
    print(body)
    if args.output is not None:
        write_section(args.output, args.device, body)
    return BenchmarkReport(
        rows, checkpoint_rows, extra, layouts, profiles, compile_notes, body, inference, methods, precisions
    )
