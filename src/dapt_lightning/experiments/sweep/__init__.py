"""Sweeps: ``plan`` (what a sweep file runs), ``command`` (running it), ``tables`` (summarising the results)."""

from dapt_lightning.experiments.sweep.command import execute, sweep_main
from dapt_lightning.experiments.sweep.plan import Run, Step, load_sweep, plan
from dapt_lightning.experiments.sweep.tables import Tables, collect, summarize, summarize_main

__all__ = [
    "Run",
    "Step",
    "Tables",
    "collect",
    "execute",
    "load_sweep",
    "plan",
    "summarize",
    "summarize_main",
    "sweep_main",
]
