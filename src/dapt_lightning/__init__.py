"""dapt_lightning: Distribution-Aware Prompt Tuning (DAPT) for CLIP, in PyTorch Lightning."""

__version__ = "0.1.0"
