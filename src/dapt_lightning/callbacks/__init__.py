"""Callbacks: anything that computes before fitting or writes files, figures or media."""

from dapt_lightning.callbacks.embeddings import EmbeddingPlots
from dapt_lightning.callbacks.evaluation import DispersionMonitor, PerClassAccuracy
from dapt_lightning.callbacks.gpa import GaussianPromptAggregation
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_info import LoggedSaveConfig, RunInfo

__all__ = [
    "DispersionMonitor",
    "EmbeddingPlots",
    "GaussianPromptAggregation",
    "LoggedSaveConfig",
    "PerClassAccuracy",
    "PrototypeCallback",
    "RunInfo",
]
