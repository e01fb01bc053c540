"""The benchmark (``python -m benchmarks``): what it measures comes back as data; the Markdown is written once."""

from __future__ import annotations

import re
import time

import pytest
import torch

import benchmarks as bench
from benchmarks.report import fmt
from benchmarks.throughput import time_steady_loader


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: graphs compiled by an earlier test would hide a broken compiler."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


TINY = "--model dapt-tiny --depth 1 --classes 3,5 --batch 2 --test-batch 2 --eval-images 4 --repeats 1 --workers 0"


def test_tiny_benchmark_measures_every_path(tmp_path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nkept text\n")
    argv = TINY.split() + [
        "--memory",
        "off",
        "--throughput",
        "--throughput-steps",
        "2",
        "--compile",
        "default",
        "--profile",
    ]
    argv += ["--text-layouts", "--output", str(output)]
    report = bench.main(argv)

    for classes in (3, 5):
        for measurement in ("train step (ms)", "eval pass, 4 images (s)"):
            _, _, naive, fast, compiled = report.row(classes, measurement)
            assert naive > 0 and fast > 0 and compiled > 0, (classes, measurement)
        path, rates = report.throughput[classes]
        assert path == "fast, compile default"
        assert all(rates[key] > 0 for key in ("train_model", "train_e2e", "eval_model", "eval_e2e"))
        assert set(report.layouts[classes]) == set(bench.runner.TEXT_LAYOUTS)
        assert all(ms > 0 for ms in report.layouts[classes].values())
    assert set(report.profiles) == {"fast", "fast, compile default"}
    eager, compiled = report.profiles["fast"], report.profiles["fast, compile default"]
    assert eager.wall_ms > 0 and compiled.wall_ms > 0
    assert eager.operators > 100 and compiled.operators is None  # operators are counted for the eager step only
    assert any(note.startswith("3 classes: training step") for note in report.compile_notes)
    # The exported graph, eager and in onnxruntime: both run, and give the same logits.
    inference = report.inference
    assert inference.classes == 5 and inference.eager > 0 and inference.onnxruntime > 0
    assert inference.max_abs_difference < 1e-4

    written = output.read_text()
    assert "kept text" in written and written.count(bench.section_marker("cpu")) == 1
    assert written.count(bench.section_marker("cpu-inference")) == 1  # the inference table: its own section
    assert "| onnxruntime (CPUExecutionProvider) |" in written
    bench.main(argv)  # a second run replaces its section instead of appending another
    assert output.read_text().count(bench.section_marker("cpu")) == 1

    # --onnx only: the inference section alone, the CPU section left as it was.
    before = output.read_text().split(bench.section_marker("cpu-inference"))[0]
    only = bench.main(TINY.split() + ["--onnx", "only", "--output", str(output)])
    assert only.rows == [] and only.inference.onnxruntime > 0
    assert output.read_text().split(bench.section_marker("cpu-inference"))[0] == before


def test_a_failed_compile_is_reported_and_the_other_measurements_go_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A lent GPU run must not lose its eager numbers because the compiler is missing or breaks."""
    import torch._inductor.compile_fx

    calls = []

    def broken_backend(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no working C++ compiler (simulated)")

    # The real failure point: inductor's entry, which the "inductor" backend looks up on every compile.
    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken_backend)
    argv = TINY.split() + [
        "--memory",
        "off",
        "--checkpointing",
        "off",
        "--throughput",
        "--throughput-steps",
        "1",
        "--compile",
        "default",
    ]
    report = bench.main(argv)
    assert len(calls) == 1  # after the failure, the second class count is not compiled again
    (note,) = report.compile_notes
    assert note.startswith("3 classes: **failed** (training step: ") and "no working C++ compiler (simulated)" in note
    for classes in (3, 5):
        _, _, naive, fast, compiled = report.row(classes, "train step (ms)")
        assert naive > 0 and fast > 0 and compiled is None
        assert report.throughput[classes][0] == "fast"  # measured on the eager fast path, and labelled so
    # Each row was also printed when measured, for runs that a timeout cuts short.
    assert "[bench] 5 classes, train step (ms): naive " in capsys.readouterr().err


def test_end_to_end_timing_leaves_out_the_worker_start() -> None:
    """The first batch of a DataLoader waits for its workers to start: a one-off cost, not the pipeline's rate."""

    def batches():
        time.sleep(1.0)  # the workers starting
        yield from range(5)

    consumed = []
    seconds = time_steady_loader(batches(), consumed.extend, torch.device("cpu"))
    assert consumed == [0, 1, 2, 3, 4] and seconds < 0.5


def test_memory_probe_runs_in_a_subprocess() -> None:
    config = bench.ProbeConfig(
        model="dapt-tiny", depth=1, classes=3, batch=2, mode="auto", checkpointing=False, precision="32"
    )
    assert bench.probe_train_memory(config, device="cpu") > 0


def test_every_method_is_timed_and_cocoops_batching_is_measured(tmp_path) -> None:
    from dapt_lightning.methods import list_methods

    output = tmp_path / "BENCHMARKS.md"
    report = bench.main(TINY.split() + ["--methods", "only", "--output", str(output)])
    timed = {timing.method: timing for timing in report.methods}
    assert list(timed) == list_methods()
    assert timed["zeroshot"].train_ms is None and timed["linear_probe"].train_ms is None  # nothing stepped
    assert all(t.train_ms > 0 for name, t in timed.items() if name not in ("zeroshot", "linear_probe"))
    assert all(t.eval_s > 0 for t in timed.values())
    written = output.read_text()
    assert written.count(bench.section_marker("cpu-methods")) == 1 and "| cocoop |" in written
    assert "image by image (the official loop at batch 1)" in written
    for name in ("ivlp", "maple", "promptsrc"):  # each deep-prompt method on the official and the fast text path
        row = next(line for line in written.splitlines() if line.startswith(f"| {name} |") and line.count("|") == 5)
        official, fast = (float(cell) for cell in row.split("|")[2:4])
        assert official > 0 and fast > 0
    assert "Text tower forward + backward: shared prefix" in written


def test_fp32_and_bf16_are_timed_side_by_side_with_their_matmul_peaks(tmp_path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    report = bench.main(TINY.split() + ["--precisions", "only", "--memory", "off", "--output", str(output)])
    measures = [(row.classes, row.measure) for row in report.precisions]
    assert measures == [(c, m) for c in (3, 5) for m in ("train step (ms)", "eval pass, 4 images (s)")]
    assert all(row.values["32"] > 0 and row.values["bf16-mixed"] > 0 and row.flops > 0 for row in report.precisions)
    written = output.read_text()
    assert written.count(bench.section_marker("cpu-bf16")) == 1
    peaks = re.search(r"fp32 (\d+) GFLOP/s, bf16 (\d+) GFLOP/s", written)
    assert peaks and int(peaks.group(1)) > 0 and int(peaks.group(2)) > 0
    first = report.precisions[0]
    ratio = first.values["bf16-mixed"] / first.values["32"]
    assert (
        f"| 3 | train step (ms) | {fmt(first.values['32'])} | {fmt(first.values['bf16-mixed'])} | "
        f"{ratio:.2f} |" in written
    )
