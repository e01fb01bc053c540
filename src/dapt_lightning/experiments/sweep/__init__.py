"""Sweeps: ``plan`` (what a sweep file runs), ``status`` (each run's status), ``launch`` (running
runs here, in local workers or on Slurm), ``command`` (``dapt sweep``); ``results`` (what the runs measured),
``tables``, ``figures`` and ``summary`` (``dapt sweep summarize``)."""

from dapt_lightning.experiments.sweep.command import sweep_main
from dapt_lightning.experiments.sweep.launch import execute_run, launch_slurm, run_local
from dapt_lightning.experiments.sweep.plan import Run, Step, load_sweep, plan
from dapt_lightning.experiments.sweep.results import collect
from dapt_lightning.experiments.sweep.status import Status, run_status
from dapt_lightning.experiments.sweep.summary import summarize, summarize_main
from dapt_lightning.experiments.sweep.tables import Table

__all__ = [
    "Run",
    "Status",
    "Step",
    "Table",
    "collect",
    "execute_run",
    "launch_slurm",
    "load_sweep",
    "plan",
    "run_local",
    "run_status",
    "summarize",
    "summarize_main",
    "sweep_main",
]
