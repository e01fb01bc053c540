"""The base of every method: a frozen CLIP, the prompts a method learns around it, evaluation and checkpoints.

A method is a subclass with its own typed hyperparameters. It says what it learns through two hooks,
:meth:`CLIPMethod.text_prompt` and :meth:`CLIPMethod.visual_prompt` (None: the fixed ``template`` text, no visual
tokens), and how it trains (``methods/tuning.py``). The model is built when the class names are known: at
construction when they are given, otherwise from the Trainer's DataModule (``configure_model``), so a plain
``Trainer().fit(method, datamodule=...)`` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from dapt_lightning.checkpoint import (
    CHECKPOINT_FORMAT,
    check_clip_identity,
    check_shapes,
    load_checkpoint_file,
    prompt_only_state,
    transferable_state,
)
from dapt_lightning.data.classnames import read_classnames
from dapt_lightning.methods.compatibility import method_refusal
from dapt_lightning.methods.registry import class_path, method_reference
from dapt_lightning.model.clip import ClipIdentity, clip_preprocessing, clip_tokenizer, load_clip
from dapt_lightning.model.compilation import CompileMode, check_compile_mode, compile_module, may_use_cuda_graphs
from dapt_lightning.model.prompted_clip import GENERIC_TEMPLATE, PromptedCLIP
from dapt_lightning.model.prompts import TextPromptLearner, VisualPromptLearner
from dapt_lightning.model.text_encoding import FixedTextPrompts, TextEncoding, build_text_encoder
from dapt_lightning.model.towers import ImageTower, TextTower, Tokenizer

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(images, labels, indices)`` as the DataModule's loaders yield them."""


class CLIPMethod(L.LightningModule):
    """A frozen CLIP classifying images by the similarity of image and class-text features.

    Args:
        classnames: class names by label (a list, ``"cat,dog"`` or a text file with one per line); None takes the
            Trainer's DataModule's when the run starts. Given with a dataset of as many classes, they name its
            labels in the class texts (a learned context works with any class name).
        clip_name: open_clip architecture (``ViT-B-16``; ``dapt-tiny`` for tests and the demo).
        pretrained: pretrained tag (``openai``), a local weights file, ``tiny-synthetic``, or None (random).
        quick_gelu: force QuickGELU on or off; None picks it for OpenAI weights.
        cache_dir: where pretrained weights are cached.
        text_encoding: how class texts are encoded: ``auto`` (the fastest exact path), ``truncated``,
            ``shared_prefix`` or ``full`` (the official 77 tokens).
        compile: ``torch.compile`` the image tower and text encoder: ``off`` (eager), ``default``,
            ``reduce-overhead`` (CUDA graphs on GPUs), ``max-autotune`` or ``max-autotune-no-cudagraphs``.
    """

    name: ClassVar[str] = ""
    """Short name: run folders, result tables and W&B names (``dapt``); a user's class defaults to its class name."""
    title: ClassVar[str] = ""
    """How tables and reports print the method (``DAPT``)."""
    uses_text_prompts: ClassVar[bool] = False
    """Whether the class texts carry a learned context (the ablation table's "text prompts")."""
    conditions_text_on_image: ClassVar[bool] = False
    """Whether the class texts are encoded anew for each image (CoCoOp): no fixed class text features exist."""
    uses_visual_prompts: ClassVar[bool] = False
    """Whether :meth:`visual_prompt` gives tokens: the image tower must take them (``methods/compatibility.py``
    refuses towers that cannot, before anything is built)."""
    deep_visual_prompts: ClassVar[bool] = False
    """Whether its visual prompts replace tokens between the image tower's blocks (IVLP, MaPLe, PromptSRC): only
    open_clip's own VisionTransformer takes them (``methods/compatibility.py``)."""
    adapts_attention: ClassVar[bool] = False
    """Whether it adapts the attention blocks' q/k/v projections (CLIP-LoRA): both towers must be open_clip's plain
    attention blocks (``methods/compatibility.py``)."""
    names_new_classes: ClassVar[bool] = True
    """Whether what it learned applies to classes it was not trained on (base-to-new, cross-dataset); False for a
    classifier of the training classes (linear probe, Tip-Adapter's cache)."""

    def __init__(
        self,
        classnames: list[str] | str | None = None,
        clip_name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        quick_gelu: bool | None = None,
        cache_dir: str | None = None,
        text_encoding: TextEncoding = "auto",
        compile: CompileMode = "off",
    ) -> None:
        super().__init__()
        check_compile_mode(compile)
        self.save_hyperparameters()
        self.model: PromptedCLIP | None = None
        self.clip_identity: ClipIdentity | None = None
        self.image_preprocessing: dict[str, Any] | None = None
        """The CLIP's own preprocessing (``model.clip.clip_preprocessing``), which the DataModule follows."""
        self._dataset_template: str | None = None
        self._eval_text_features: torch.Tensor | None = None
        if classnames is not None:
            self._build(read_classnames(classnames))

    # ------------------------------------------------------------------------------------------------------------
    # What a method learns: override these.

    def text_prompt(self, text_tower: TextTower, classnames: list[str]) -> TextPromptLearner | None:
        """The learned text context; None: the classes are described by :meth:`template`."""
        return None

    def visual_prompt(self, image_tower: ImageTower) -> VisualPromptLearner | None:
        """The learned visual tokens; None: images go through the tower as they are."""
        return None

    def template(self) -> str:
        """The hand-crafted class prompt of a method without a learned text context (``{}`` is the class name):
        the ``template`` setting when the method has one, else the dataset's, else ``"a photo of a {}."``."""
        return self.hparams.get("template") or self._dataset_template or GENERIC_TEMPLATE

    def text_encoding_options(self) -> dict[str, Any]:
        """How the text-encoding strategy packs and checkpoints its work (``build_text_encoder``'s ``layout`` and
        ``checkpointing``); a learned context's settings (CoOp's), nothing for fixed prompts."""
        return {}

    def build_state(self, num_classes: int, dim: int) -> None:
        """Register what the method keeps besides its prompts (buffers such as DAPT's prototypes)."""

    # ------------------------------------------------------------------------------------------------------------
    # Building the model.

    def configure_model(self) -> None:
        """Build the model for the Trainer's DataModule's class names, unless it is built already."""
        if self.model is not None:
            return
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        classnames = getattr(datamodule, "classnames", None)
        if not classnames:
            raise ValueError(
                f"{type(self).__name__} needs class names: give --model.classnames (a,b,c or a file, one per line; "
                "classnames=[...] in Python), or run it with a DataModule that has them (--data.dataset NAME)"
            )
        self._dataset_template = getattr(datamodule, "template", None)
        self._build(list(classnames))

    def _build(self, classnames: list[str]) -> None:
        settings = self.hparams
        refusal = method_refusal(type(self), settings.clip_name)
        if refusal is not None:  # before any weights are read
            raise ValueError(refusal)
        clip, identity = load_clip(settings.clip_name, settings.pretrained, settings.quick_gelu, settings.cache_dir)
        refusal = method_refusal(type(self), settings.clip_name, clip)
        if refusal is not None:  # an architecture read from a weights file
            raise ValueError(refusal)
        tokenizer = clip_tokenizer(settings.clip_name, _context_length(clip))
        self.model = self.build_model(clip, classnames, tokenizer)
        self.clip_identity = identity
        if settings.pretrained and Path(settings.pretrained).expanduser().is_file():
            # Recorded absolute: a checkpoint tested from another working directory finds its weights.
            self.hparams["pretrained"] = str(Path(settings.pretrained).expanduser().resolve())
        self.image_preprocessing = clip_preprocessing(
            settings.clip_name, settings.pretrained, image_size=self.model.image_tower.image_size
        )
        self.hparams["classnames"] = list(classnames)  # what load_from_checkpoint rebuilds
        if self._dataset_template is not None and "template" in self.hparams and self.hparams.template is None:
            self.hparams["template"] = self._dataset_template
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(len(classnames), average="micro"),
                "macro_f1": MulticlassF1Score(len(classnames), average="macro"),
            }
        )
        self.train_f1 = MulticlassF1Score(len(classnames), average="macro")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.build_state(len(classnames), self.model.text_tower.output_dim)

    def build_model(self, clip: nn.Module, classnames: list[str], tokenizer: Tokenizer | None = None) -> PromptedCLIP:
        """This method's prompts around ``clip`` (frozen), with the text encoding and compilation it asks for.

        Args:
            clip: a frozen open_clip CLIP.
            classnames: one name per label.
            tokenizer: the CLIP's own tokenizer; None: CLIP's BPE tokenizer.
        """
        settings = self.hparams
        text_tower, image_tower = TextTower(clip, tokenizer), ImageTower(clip)
        if self.uses_visual_prompts and image_tower.prompt_refusal is not None:
            raise ValueError(f"visual prompts are not possible: in this CLIP {image_tower.prompt_refusal}")
        if self.deep_visual_prompts and image_tower.deep_prompt_refusal is not None:
            raise ValueError(f"deep visual prompts are not possible: in this CLIP {image_tower.deep_prompt_refusal}")
        text_prompt = self.text_prompt(text_tower, classnames)
        visual_prompt = self.visual_prompt(image_tower)
        template = self.template()
        fixed = None if text_prompt is not None else FixedTextPrompts(text_tower, classnames, template)
        encoder = build_text_encoder(
            settings.text_encoding,
            text_tower,
            text_prompt if text_prompt is not None else fixed,
            compile_mode=settings.compile,
            **self.text_encoding_options(),
        )
        # The tower view is compiled, not the CLIP: zero-shot calls on `clip` itself stay eager.
        compile_module(image_tower, settings.compile)
        return PromptedCLIP(
            clip,
            text_tower,
            image_tower,
            classnames,
            encoder,
            text_prompt=text_prompt,
            fixed_prompts=fixed,
            visual_prompt=visual_prompt,
            template=template,
            # CUDA-graph replays reuse their output memory: features that outlive the call are cloned (small).
            clone_image_features=may_use_cuda_graphs(settings.compile),
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        theirs = getattr(datamodule, "classnames", None)
        if self.model is None or not theirs or list(theirs) == self.model.classnames:
            return
        if len(theirs) != len(self.model.classnames):
            raise ValueError(
                f"this {type(self).__name__} was built for {len(self.model.classnames)} classes, but the DataModule "
                f"has {len(theirs)}. Name its classes with as many names (--model.classnames), or build the method "
                "without classnames to take the DataModule's: trainer.test(method, datamodule=..., ckpt_path=PATH)"
            )
        renamed = [f"{old!r} as {new!r}" for old, new in zip(theirs, self.model.classnames, strict=True) if old != new]
        rank_zero_info(
            f"The class texts name {len(renamed)} of the dataset's {len(theirs)} classes by the class names given: "
            + ", ".join(renamed[:3])
            + (", ..." if len(renamed) > 3 else "")
        )

    @property
    def classnames(self) -> list[str]:
        """The class names the model was built for (empty before it is built)."""
        return list(self.model.classnames) if self.model is not None else []

    @property
    def image_size(self) -> int:
        return self.model.image_tower.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of images."""
        return self.forward_features(images)[0]

    def forward_features(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None, model: PromptedCLIP | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, image_features, text_features)`` of a batch; cached class ``text_features`` skip the text
        tower. A method whose class texts depend on each image (CoCoOp) overrides this.

        Args:
            images: the batch.
            text_features: the class text features, when they are fixed and already encoded.
            model: the model to run (another class list's, :meth:`retargeted`); None: this method's.
        """
        return (model or self.model)(images, text_features=text_features)

    def retargeted(self, classnames: list[str]) -> PromptedCLIP:
        """This method's model for other class names: the same frozen CLIP and learned class-agnostic prompts (text
        context, visual tokens), with the class texts of ``classnames``."""
        if list(classnames) != self.model.classnames:
            self.refuse_other_classes(len(self.model.classnames))
        model = self.model
        other = self.build_model(model.clip, list(classnames), model.text_tower.tokenizer)
        state = {f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("clip.")}
        kept, _ = transferable_state(state, model.classnames, list(classnames), "these prompts", fitting=False)
        learned = {k.removeprefix("model."): v for k, v in kept.items()}
        _, unexpected = other.load_state_dict(learned, strict=False)  # the frozen CLIP is shared, not loaded
        if unexpected:
            raise RuntimeError(f"{type(self).__name__}.retargeted: unexpected state {unexpected[:3]}")
        return other.to(self.device).eval()

    def refuse_other_classes(self, trained: int) -> None:
        """Raise, in one line, when this method cannot classify other classes than the ``trained`` ones."""
        if not self.names_new_classes:
            raise ValueError(
                f"{type(self).__name__} classifies only the {trained} classes it was trained on (it learned a "
                f"classifier of them, not prompts), so it cannot name these {len(self.model.classnames)}: evaluate it "
                "on its training classes (no base-to-new or cross-dataset test, no renamed classes)"
            )

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation: prompts are fixed, so the class text features are encoded once per evaluation, not per batch.

    def _start_evaluation(self) -> None:
        with torch.no_grad():
            self._eval_text_features = self.model.encode_text()

    def _end_evaluation(self) -> None:
        self._eval_text_features = None

    def _evaluate(self, batch: Batch, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        images, labels, _ = batch
        logits, image_features, _ = self.forward_features(images, self._eval_text_features)
        metrics.update(logits, labels)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=labels.shape[0])
        # Returned for callbacks (per-class accuracy, dispersion measures), so they need no second forward pass.
        return {"labels": labels, "predictions": logits.argmax(-1), "image_features": image_features.detach()}

    @property
    def eval_text_features(self) -> torch.Tensor | None:
        """The class text features of the evaluation in progress (None outside one)."""
        return self._eval_text_features

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def on_predict_epoch_start(self) -> None:
        self._start_evaluation()

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation()

    def on_test_epoch_end(self) -> None:
        self._end_evaluation()

    def on_predict_epoch_end(self) -> None:
        self._end_evaluation()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels, indices = batch
        logits, _, _ = self.forward_features(images, self._eval_text_features)
        return {"index": indices, "label": labels, "prediction": logits.argmax(-1), "probabilities": logits.softmax(-1)}

    # ------------------------------------------------------------------------------------------------------------
    # Prompt-only checkpoints (``checkpoint.py``): the frozen CLIP is rebuilt from its identity, never stored.

    def kept_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What of the state dict a checkpoint keeps: everything but the frozen CLIP."""
        return prompt_only_state(state, self.model.clip)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.kept_state(checkpoint["state_dict"])
        checkpoint["dapt_checkpoint_format"] = CHECKPOINT_FORMAT
        checkpoint["method"] = {"name": self.name, "class_path": class_path(type(self))}
        checkpoint["clip_identity"] = self.clip_identity.to_dict()
        checkpoint["classnames"] = list(self.model.classnames)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_clip_identity(checkpoint.get("clip_identity") or {}, self.clip_identity)
        own = self.state_dict()
        # A checkpoint of the single-module era holds DAPT's prototype buffers for every method.
        state = {k: v for k, v in checkpoint["state_dict"].items() if k in own or not k.startswith("prototypes")}
        saved_classes = checkpoint.get("classnames")
        if saved_classes is not None and list(saved_classes) != list(self.model.classnames):
            self.refuse_other_classes(len(saved_classes))
            source = (checkpoint.get("datamodule_hyper_parameters") or {}).get("dataset", "another dataset")
            state, message = transferable_state(
                state,
                list(saved_classes),
                list(self.model.classnames),
                source,
                fitting=self._trainer is not None and self.trainer.state.fn == "fit",
            )
            rank_zero_info(message)
        check_shapes(state, own)
        # Re-insert the frozen CLIP (and anything not stored, such as unset prototypes) so that Lightning's
        # strict load sees a complete state dict.
        for key, value in own.items():
            state.setdefault(key, value)
        checkpoint["state_dict"] = state

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, strict: bool | None = None, **kwargs: Any
    ) -> CLIPMethod:
        """Rebuild a trained method from a checkpoint: its class (a subclass of this one), settings, CLIP and prompts.

        The file is read with ``torch.load(weights_only=True)``; checkpoints written before methods were classes
        load as the method they recorded. Keyword arguments override recorded settings (``pretrained=PATH`` for
        weights that moved).
        """
        checkpoint = load_checkpoint_file(checkpoint_path, map_location or "cpu")
        method, settings = method_reference(checkpoint, checkpoint_path)
        if not issubclass(method, cls):
            raise ValueError(
                f"{checkpoint_path} holds a {method.__name__} checkpoint, not a {cls.__name__}: load it with "
                f"{method.__name__}.load_from_checkpoint (or CLIPMethod.load_from_checkpoint, which takes any)"
            )
        recorded = settings.get("pretrained")
        if "pretrained" not in kwargs and recorded and Path(recorded).is_absolute() and not Path(recorded).is_file():
            raise FileNotFoundError(
                f"{checkpoint_path} was trained on the CLIP weights file {recorded}, which is not there any more: "
                "pass its new place (pretrained=PATH)"
            )
        model = method(**{**settings, **kwargs})
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
        if isinstance(map_location, str | torch.device):
            model.to(map_location)
        return model


def _context_length(clip: nn.Module) -> int:
    text = getattr(clip, "text", clip)
    return int(text.positional_embedding.shape[0])
