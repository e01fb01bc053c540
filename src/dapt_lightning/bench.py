"""Benchmark the exact fast paths against the official computation: ``python -m dapt_lightning.bench``.

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
The CLIP is open_clip's ViT-B-16 with random weights and ``--depth`` layers in both towers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dapt_lightning.model.compilation import COMPILE_MODES

ASSET_DIR = Path(__file__).resolve().parent / "assets"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BETA_V, BETA_T = 10.0, 0.1  # any non-zero weights: every loss term must be computed and differentiated


def section_marker(device: str) -> str:
    """The HTML comment that opens this device's section in BENCHMARKS.md."""
    return f"<!-- dapt_lightning.bench:{device} -->"


def _section_end(device: str) -> str:
    return f"<!-- /dapt_lightning.bench:{device} -->"


def load_classnames(count: int) -> list[str]:
    """``count`` real ImageNet class names spread evenly over the 1000 (so their lengths are representative)."""
    names = (ASSET_DIR / "imagenet_classnames.txt").read_text().splitlines()
    if not 1 <= count <= len(names):
        raise ValueError(f"--classes: each count must be in 1..{len(names)}, got {count}")
    return [names[(i * len(names)) // count] for i in range(count)]


def build_clip(model: str, depth: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A frozen random-weight open_clip model with ``depth`` layers in both towers."""
    import open_clip

    from dapt_lightning.model.clip import MODEL_CONFIG_DIR

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    config = open_clip.get_model_config(model)
    if config is None:
        raise ValueError(f"--model: unknown open_clip model {model!r}")
    vision_cfg = {**config["vision_cfg"], "layers": depth}
    text_cfg = {**config["text_cfg"], "layers": depth}
    torch.manual_seed(seed)
    clip = open_clip.create_model(model, pretrained=None, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)
    clip = clip.float().eval().to(device)
    clip.requires_grad_(False)
    return clip


def build_model(
    clip: torch.nn.Module, classes: int, checkpointing: bool = False, seed: int = 0, compile_mode: str = "off"
):
    """A DAPT ``PromptedCLIP`` (class-shared text context + visual prompts) over ``classes`` real class names;
    the same ``seed`` gives the same prompts whatever the other settings."""
    from dapt_lightning.model.dapt import PromptedCLIP

    torch.manual_seed(seed)
    device = next(clip.parameters()).device
    # The prompt learner embeds its CPU token ids when built: build on the CPU, then move (shared) CLIP back.
    model = PromptedCLIP(
        clip.cpu(), load_classnames(classes), text_checkpointing=checkpointing, compile=compile_mode
    ).to(device)
    model.clip.eval()
    return model


def _autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepInputs:
    images: torch.Tensor
    labels: torch.Tensor
    prototypes: torch.Tensor


def make_inputs(model, batch: int, device: torch.device, seed: int = 0) -> StepInputs:
    generator = torch.Generator().manual_seed(seed)
    size = model.image_tower.image_size
    classes = len(model.classnames)
    dim = model.clip.text_projection.shape[1]
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    # Prototypes are means of unit vectors: norm below one, like the real ones.
    prototypes = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=-1) * 0.7
    return StepInputs(images.to(device), labels.to(device), prototypes.to(device))


def make_train_step(model, mode: str, autocast: Callable) -> Callable[[StepInputs], torch.Tensor]:
    """One DAPT training step: forward, every loss term, backward, SGD step on the prompts."""
    from dapt_lightning.losses import dapt_loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step(inputs: StepInputs) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            image_features = model.encode_image(inputs.images)
            text_features = model.encode_text(mode)
            logits = model.logit_scale * image_features @ text_features.t()
            terms = dapt_loss(logits, inputs.labels, image_features, text_features, inputs.prototypes, BETA_V, BETA_T)
        terms.total.backward()
        optimizer.step()
        return terms.total.detach()

    return step


def eval_naive(model, batches: list[torch.Tensor], autocast: Callable) -> torch.Tensor:
    """The official evaluation: every test batch runs the whole prompted model, text at 77 tokens."""
    predictions = []
    with torch.no_grad(), autocast():
        for images in batches:
            image_features = model.encode_image(images)
            text_features = model.encode_text("full")
            predictions.append((model.logit_scale * image_features @ text_features.t()).argmax(-1))
    return torch.cat(predictions)


def eval_fast(model, batches: Iterator[torch.Tensor] | list[torch.Tensor], autocast: Callable) -> torch.Tensor:
    """The prompts do not change during evaluation: encode the class texts once, then only images."""
    predictions = []
    with torch.inference_mode(), autocast():
        text_features = model.encode_text("auto")
        for images in batches:
            image_features = model.encode_image(images)
            predictions.append((model.logit_scale * image_features @ text_features.t()).argmax(-1))
    return torch.cat(predictions)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median seconds of each callable, after a warm-up of each (``warmups``, default the callable itself),
    alternating them so that load from other processes hits both alike."""
    for name, fn in fns.items():
        (warmups or {}).get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


# ----------------------------------------------------------------------------------------------- memory


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


def _run_probe(config: ProbeConfig, device: torch.device, clip: torch.nn.Module | None = None) -> float:
    """Peak memory (MiB) of one training step above what was in use just before it."""
    clip = build_clip(config.model, config.depth, device) if clip is None else clip
    model = build_model(clip, config.classes, config.checkpointing)
    step = make_train_step(model, config.mode, _autocast(device, config.precision))
    inputs = make_inputs(model, config.batch, device)
    if device.type == "cuda":
        step(inputs)  # the allocator's pools and the optimizer state exist from the second step on
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(inputs)
        torch.cuda.synchronize(device)
        model.text_tower.transformer.grad_checkpointing = False  # the flag lives on the (shared) CLIP
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # A fresh process, so the RSS high-water mark is this step's alone (reset just before it).
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    step(inputs)
    return (_rss_kib("VmHWM") - base) / 1024


def probe_train_memory(config: ProbeConfig, device: str, clip: torch.nn.Module | None = None) -> float:
    """Peak training-step memory in MiB: in this process on CUDA (re-using ``clip``), in a fresh subprocess on CPU."""
    if device == "cuda":
        return _run_probe(config, torch.device("cuda"), clip)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "dapt_lightning.bench", "--_probe", json.dumps(asdict(config))]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    match = re.search(r"PEAK_MIB=([0-9.]+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"memory probe {config} failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


# ------------------------------------------------------------------------------------------- throughput


def text_flops(model, mode: str) -> float:
    """Forward matmul FLOPs of the text tower for all classes (attention counted over the computed rectangles)."""
    transformer = model.text_tower.transformer
    width, layers = model.text_tower.width, len(transformer.resblocks)
    mlp = transformer.resblocks[0].mlp.c_fc.out_features
    per_token = 2 * (4 * width * width + 2 * width * mlp)  # q, k, v, out projections and the MLP
    eot = model.text_prompt.eot_positions.tolist()
    if mode == "full":
        length = model.text_tower.context_length
        tokens, attention = len(eot) * length, len(eot) * 4 * length * length * width
    else:  # shared prefix: the prefix once, each class's own tokens against prefix + themselves
        prefix = 1 + model.text_prompt.num_tokens
        suffixes = [e - prefix + 1 for e in eot]
        tokens = prefix + sum(suffixes)
        attention = 4 * prefix * prefix * width + sum(4 * s * (prefix + s) * width for s in suffixes)
    projection = 2 * width * model.clip.text_projection.shape[1] * len(eot)
    return layers * (tokens * per_token + attention) + projection


def image_flops(model) -> tuple[float, float]:
    """Per-image forward FLOPs of the prompted ViT: (transformer + projection, patch embedding)."""
    visual = model.image_tower.visual
    width = model.image_tower.width
    layers = len(visual.transformer.resblocks)
    mlp = visual.transformer.resblocks[0].mlp.c_fc.out_features
    patch_h, patch_w = model.image_tower.patch_size
    patches = (model.image_tower.image_size // patch_h) * (model.image_tower.image_size // patch_w)
    prompts = model.visual_prompt.vis_ctx.shape[0] if model.visual_prompt is not None else 0
    n = 1 + patches + prompts
    blocks = layers * (2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width)
    projection = 2 * width * visual.proj.shape[1]
    patch_embed = 2 * patches * 3 * patch_h * patch_w * width
    return blocks + projection, patch_embed


def train_step_flops(model, batch: int, mode: str) -> float:
    """Forward + backward FLOPs of a training step; the CLIP is frozen, so backward computes only activation
    gradients (about one forward's worth), and nothing flows back through the patch embedding."""
    blocks, patch_embed = image_flops(model)
    return batch * (2 * blocks + patch_embed) + 2 * text_flops(model, mode)


class _SyntheticImages(torch.utils.data.Dataset):
    """Decoded uint8 images held in memory, transformed on the fly (what a DataLoader over JPEGs hands on)."""

    def __init__(self, count: int, height: int, width: int, classes: int, transform: Callable) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, classes, (count,), generator=generator)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def _transforms(size: int, train: bool) -> Callable:
    from torchvision.transforms import InterpolationMode, v2

    bicubic = InterpolationMode.BICUBIC
    if train:
        head = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=bicubic), v2.RandomHorizontalFlip()]
    else:
        head = [v2.Resize(size, interpolation=bicubic), v2.CenterCrop(size)]
    return v2.Compose([*head, v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)])


def _loader(model, batch: int, steps: int, train: bool, workers: int, device: torch.device):
    size = model.image_tower.image_size
    # Non-square and larger than the crop, like decoded photos, so the resize does real work.
    dataset = _SyntheticImages(max(4 * batch, 64), size * 9 // 7, size * 11 // 7, len(model.classnames), None)
    dataset.transform = _transforms(size, train)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * steps)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )


def _time_steady_loader(loader: Iterable, consume: Callable, device: torch.device, per_batch: bool = True) -> float:
    """Seconds to consume all but the first batch of ``loader``: starting the workers and filling their queues is a
    one-off cost per epoch, not the pipeline's rate. ``consume`` takes one batch, or (``per_batch=False``) an
    iterator over the rest."""
    batches = iter(loader)
    first = next(batches)
    if per_batch:
        consume(first)
    else:
        consume(iter([first]))
    _sync(device)
    start = time.perf_counter()
    if per_batch:
        for batch in batches:
            consume(batch)
    else:
        consume(batches)
    _sync(device)
    return time.perf_counter() - start


def throughput(model, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s of the fast path (model-only and end to end) and the achieved TFLOP/s of the model-only runs."""
    autocast = _autocast(device, args.precision)
    steps = args.throughput_steps
    step = make_train_step(model, "auto", autocast)
    inputs = make_inputs(model, args.batch, device)
    step(inputs)
    train_s = _time(lambda: [step(inputs) for _ in range(steps)], device)
    eval_inputs = make_inputs(model, args.test_batch, device, seed=1).images
    eval_fast(model, [eval_inputs], autocast)
    eval_s = _time(lambda: eval_fast(model, [eval_inputs] * steps, autocast), device)

    def train_batch(batch: list[torch.Tensor]) -> None:
        images, labels = (tensor.to(device, non_blocking=True) for tensor in batch)
        step(StepInputs(images, labels, inputs.prototypes))

    train_loader = _loader(model, args.batch, steps + 1, True, args.workers, device)
    train_e2e_s = _time_steady_loader(train_loader, train_batch, device)
    eval_loader = _loader(model, args.test_batch, steps + 1, False, args.workers, device)
    eval_e2e_s = _time_steady_loader(
        eval_loader,
        lambda batches: eval_fast(model, (images.to(device, non_blocking=True) for images, _ in batches), autocast),
        device,
        per_batch=False,
    )
    blocks, patch_embed = image_flops(model)
    train_flops = steps * train_step_flops(model, args.batch, "auto")
    eval_flops = steps * args.test_batch * (blocks + patch_embed) + text_flops(model, "auto")
    return {
        "train_model": steps * args.batch / train_s,
        "train_e2e": steps * args.batch / train_e2e_s,
        "eval_model": steps * args.test_batch / eval_s,
        "eval_e2e": steps * args.test_batch / eval_e2e_s,
        "train_tflops": train_flops / train_s / 1e12,
        "eval_tflops": eval_flops / eval_s / 1e12,
    }


# ------------------------------------------------------------------------------------------------- profile


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
    _sync(device)
    operators = None
    if count_operators:
        with OperatorCounter() as counter:
            step(inputs)
        _sync(device)
        operators = counter.count
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(inputs)
        _sync(device)
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


# -------------------------------------------------------------------------------------------------- report


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


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def _fmt(value: float | None, digits: int = 3) -> str:
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dapt_lightning.bench", description=__doc__.split("\n")[0])
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
        return _time(fn, device), None
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
        f"[bench] {classes} classes, {measure}: naive {_fmt(naive)}, fast {_fmt(fast)}, compiled {_fmt(compiled)}",
        file=sys.stderr,
        flush=True,
    )


def _measure_class_count(
    clip: torch.nn.Module, classes: int, args: argparse.Namespace, device: torch.device, compile_mode: str
) -> ClassCountResult:
    """Naive-vs-fast rows (train step, evaluation pass, peak memory), the throughput and, at the largest class
    count with ``--profile``, the profiles of the fast training steps (eager and compiled) of one class count.
    ``compile_mode`` ``off`` skips the compiled column (also after a failed compile)."""
    autocast = _autocast(device, args.precision)
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
    timed = _interleaved_medians({name: (lambda s=s: s(inputs)) for name, s in steps.items()}, args.repeats, device)
    rows = result.rows
    rows.append((classes, "train step (ms)", *(_ms(timed.get(name)) for name in ("naive", "fast", "compiled"))))
    _progress(rows[-1])
    if args.text_layouts:
        result.layouts = _time_text_layouts(model, steps["fast"], inputs, args.repeats, device)
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
    timed = _interleaved_medians(
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


# Shared-prefix layouts (``SharedPrefixTextEncoder.max_buckets``) compared by --text-layouts.
TEXT_LAYOUTS = {"one attention": 0, "two buckets": 2, "per-length buckets": None}


def _time_text_layouts(model, step: Callable, inputs: StepInputs, repeats: int, device: torch.device) -> dict:
    """The eager fast training step (ms) with each shared-prefix layout, to check what ``auto`` picks here."""
    from dapt_lightning.model.text_fastpath import SharedPrefixTextEncoder

    original = model._shared_prefix_encoder  # built by the fast step's warm-up
    # One encoder per layout, each keeping its own packing plan and masks (rebuilding them would be timed too).
    encoders = {
        name: SharedPrefixTextEncoder(model.text_tower, model.text_checkpointing, max_buckets=max_buckets)
        for name, max_buckets in TEXT_LAYOUTS.items()
    }
    fns = {}
    for name, encoder in encoders.items():

        def run(encoder=encoder) -> None:
            model._shared_prefix_encoder = encoder
            step(inputs)

        fns[name] = run
    try:
        timed = _interleaved_medians(fns, repeats, device)
    finally:
        model._shared_prefix_encoder = original
    return {name: seconds * 1e3 for name, seconds in timed.items()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _eval_repeats(args: argparse.Namespace) -> int:
    return max(1, (args.repeats + 1) // 2)  # evaluation passes are long: about half as many as steps


def _command(argv: list[str] | None) -> str:
    shown = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "dapt_lightning.bench", *shown])


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the Markdown report and return it (and write it with ``--output``)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args._probe:
        config = ProbeConfig(**json.loads(args._probe))
        print(f"PEAK_MIB={_run_probe(config, device):.1f}")
        return ""
    load_before = os.getloadavg()[0]
    clip = build_clip(args.model, args.depth, device)
    autocast = _autocast(device, args.precision)
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
        timed = _interleaved_medians({"fast": lambda: step(inputs)}, args.repeats, device)
        for mode, label in (("auto", "fast + text checkpointing"), ("full", "naive + text checkpointing")):
            peak = None
            if args.memory == "on":
                config = ProbeConfig(args.model, args.depth, classes, args.batch, mode, True, args.precision)
                peak = probe_train_memory(config, args.device, clip)
            checkpoint_rows.append((label, timed["fast"] * 1e3 if mode == "auto" else None, peak))
        model.text_tower.transformer.grad_checkpointing = False  # the flag lives on the shared CLIP
        del model

    load_after = os.getloadavg()[0]
    compiled_header = f" fast, compile {args.compile} | compiled / naive |" if args.compile != "off" else ""
    lines = [
        "| classes | measurement | naive | fast | fast / naive |" + compiled_header,
        "|---:|---|---:|---:|---:|" + ("---:|---:|" if compiled_header else ""),
    ]
    for classes, measure, naive, fast, compiled in rows:
        line = f"| {classes} | {measure} | {_fmt(naive)} | {_fmt(fast)} | {_fmt(_ratio(fast, naive), 2)} |"
        if compiled_header:
            line += f" {_fmt(compiled)} | {_fmt(_ratio(compiled, naive), 2)} |"
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
        lines += [f"| {label} | {_fmt(ms)} | {_fmt(peak)} |" for label, ms, peak in checkpoint_rows]
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
                f"| {classes} | {path} | {_fmt(m['train_model'])} | {_fmt(m['train_e2e'])} | {_fmt(m['eval_model'])} | "
                f"{_fmt(m['eval_e2e'])} | {m['train_tflops']:.3g} ({train_pct:.1f}%) | "
                f"{m['eval_tflops']:.3g} ({eval_pct:.1f}%) |"
            )
    if layouts:
        from dapt_lightning.model.text_fastpath import SINGLE_ATTENTION_MAX_TOKENS

        lines += [
            "",
            "Shared-prefix text layouts, eager fast training step (ms); `auto` picks per-length buckets on the CPU "
            f"and, on a GPU, one attention up to {SINGLE_ATTENTION_MAX_TOKENS} packed tokens, two buckets beyond:",
            "",
            "| classes | " + " | ".join(TEXT_LAYOUTS) + " |",
            "|---:|" + "---:|" * len(TEXT_LAYOUTS),
        ]
        lines += [
            f"| {classes} | " + " | ".join(_fmt(timed.get(name)) for name in TEXT_LAYOUTS) + " |"
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
            f"| {label} | {_fmt(p.wall_ms)} | {_fmt(p.kernel_ms)} | {_fmt(p.kernels)} | "
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
    return body


if __name__ == "__main__":
    main()
