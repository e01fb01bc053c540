"""The methods, one class each, on one base (:class:`CLIPMethod`); select one with ``--model NAME`` or YAML's
``model: {class_path: ..., init_args: ...}``, or subclass one (``README.md``, "Add a method")."""

from dapt_lightning.methods.base import CLIPMethod
from dapt_lightning.methods.clip_lora import CLIPLoRA
from dapt_lightning.methods.cocoop import CoCoOp
from dapt_lightning.methods.coop import CoOp
from dapt_lightning.methods.coop_vpt import CoOpVPT
from dapt_lightning.methods.dapt import DAPT
from dapt_lightning.methods.deep_prompting import IVLP, MaPLe
from dapt_lightning.methods.kgcoop import KgCoOp
from dapt_lightning.methods.linear_probe import LinearProbe
from dapt_lightning.methods.promptsrc import PromptSRC
from dapt_lightning.methods.registry import list_methods, method_class, register_method, registered_methods
from dapt_lightning.methods.tip_adapter import TipAdapterF
from dapt_lightning.methods.tuning import PromptTuning, TrainedMethod
from dapt_lightning.methods.vpt import VPT
from dapt_lightning.methods.zeroshot import ZeroShotCLIP

# The order of result tables and listings; a user's method registers itself with @register_method.
for _method in (
    ZeroShotCLIP,
    LinearProbe,
    CoOp,
    CoCoOp,
    KgCoOp,
    TipAdapterF,
    CLIPLoRA,
    VPT,
    CoOpVPT,
    IVLP,
    MaPLe,
    PromptSRC,
    DAPT,
):
    register_method(_method)

__all__ = [
    "DAPT",
    "IVLP",
    "VPT",
    "CLIPLoRA",
    "CLIPMethod",
    "CoCoOp",
    "CoOp",
    "CoOpVPT",
    "KgCoOp",
    "LinearProbe",
    "MaPLe",
    "PromptSRC",
    "PromptTuning",
    "TipAdapterF",
    "TrainedMethod",
    "ZeroShotCLIP",
    "list_methods",
    "method_class",
    "register_method",
    "registered_methods",
]
