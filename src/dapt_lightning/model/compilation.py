"""Optional ``torch.compile`` of the frozen towers, to cut the per-step Python and kernel-launch overhead.

A DAPT step at batch 32 runs a few thousand small kernels (12 image and 12 text blocks, forward and backward); on a
fast GPU the host cannot issue them as fast as the GPU runs them. Compiling fuses the element-wise work into fewer
kernels, and the ``reduce-overhead`` / ``max-autotune`` modes also replay the kernels from CUDA graphs. Only the
tower computations are compiled: prompt learners, losses and metrics stay eager, so a graph break cannot change
what is logged, and the compiled functions see the same weights (no copies, unchanged ``state_dict`` keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar, get_args

import torch

CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
# torch.compile modes that replay CUDA graphs on CUDA devices (their outputs live in memory the next replay reuses).
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

F = TypeVar("F", bound=Callable)


def check_compile_mode(mode: str) -> None:
    """Raise a clear error for an unknown ``--model.compile`` value."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"--model.compile must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")


def _torch_mode(mode: CompileMode) -> str | None:
    """torch.compile's ``mode`` argument for one of ours (its default mode is spelled None)."""
    return None if mode == "default" else mode


def compile_function(function: F, mode: CompileMode) -> F:
    """``function`` compiled with ``torch.compile`` in ``mode``, or unchanged when ``mode`` is ``off``."""
    check_compile_mode(mode)
    if mode == "off":
        return function
    return torch.compile(function, mode=_torch_mode(mode))


def compile_module(module: torch.nn.Module, mode: CompileMode) -> None:
    """Compile ``module``'s forward in place (``nn.Module.compile``: same parameters, same ``state_dict`` keys)."""
    check_compile_mode(mode)
    if mode != "off":
        module.compile(mode=_torch_mode(mode))


def may_use_cuda_graphs(mode: str) -> bool:
    """Whether outputs of functions compiled in ``mode`` may be overwritten by the next call (CUDA graph replay).

    Callers clone such outputs before keeping them (evaluation caches the class text features across batches).
    """
    return mode in _CUDA_GRAPH_MODES and torch.cuda.is_available()
