"""dapt_lightning: Distribution-Aware Prompt Tuning (DAPT) and its baselines for CLIP, in PyTorch Lightning.

What a Lightning user imports: the methods (one LightningModule class each), the few-shot DataModule and the
callbacks that keep a run's files::

    from dapt_lightning import DAPT, FewShotDataModule
    trainer = lightning.Trainer(max_epochs=10)
    trainer.fit(DAPT(clip_name="ViT-B-16", pretrained="openai"), datamodule=FewShotDataModule("oxford_pets"))

and a trained checkpoint, to classify images::

    clf = dapt_lightning.load("runs/.../checkpoints/last.ckpt")
    clf.predict(["cat.jpg", "dog.jpg"]).labels
"""

from dapt_lightning.callbacks.gpa import GaussianPromptAggregation
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_files import ClosingSummary, MetricsFile, RunLog
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.inference import Classifier, Predictions, load
from dapt_lightning.methods import (
    DAPT,
    IVLP,
    VPT,
    CLIPLoRA,
    CLIPMethod,
    CoCoOp,
    CoOp,
    CoOpVPT,
    KgCoOp,
    LinearProbe,
    MaPLe,
    PromptSRC,
    PromptTuning,
    TipAdapterF,
    TrainedMethod,
    ZeroShotCLIP,
    list_methods,
    method_class,
    register_method,
)

__version__ = "0.2.0"

__all__ = [
    "DAPT",
    "IVLP",
    "VPT",
    "CLIPLoRA",
    "CLIPMethod",
    "Classifier",
    "CoCoOp",
    "ClosingSummary",
    "CoOp",
    "CoOpVPT",
    "FewShotDataModule",
    "GaussianPromptAggregation",
    "KgCoOp",
    "LinearProbe",
    "MaPLe",
    "MetricsFile",
    "PromptSRC",
    "PromptTuning",
    "Predictions",
    "PrototypeCallback",
    "RunLog",
    "TipAdapterF",
    "TrainedMethod",
    "ZeroShotCLIP",
    "list_methods",
    "load",
    "method_class",
    "register_method",
]
