"""Callbacks: anything that computes before fitting or writes files, figures or media."""

from dapt_lightning.callbacks.prototypes import PrototypeCallback

__all__ = ["PrototypeCallback"]
