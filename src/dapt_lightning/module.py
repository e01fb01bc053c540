"""The LightningModule: a PromptedCLIP, DAPT's losses, the official optimiser and schedule. Steps compute and log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from dapt_lightning.checkpoint import (
    CHECKPOINT_FORMAT,
    check_clip_identity,
    check_shapes,
    prompt_only_state,
    transferable_state,
)
from dapt_lightning.losses import LossTerms, dapt_loss
from dapt_lightning.methods import Method, MethodSpec, method_spec
from dapt_lightning.model.clip import ClipIdentity, clip_tokenizer, load_clip
from dapt_lightning.model.compilation import CompileMode
from dapt_lightning.model.families import config_method_refusal, method_refusal
from dapt_lightning.model.prompted_clip import PromptedCLIP
from dapt_lightning.model.shared_prefix import SharedPrefixLayout
from dapt_lightning.model.text_encoding import TextEncoding
from dapt_lightning.schedule import warmup_cosine

DAPT_BETA_V = 10.0
"""DAPT's intra-dispersion weight when none is given (OxfordPets' and most datasets' official value)."""
DAPT_BETA_T = 0.01
"""DAPT's inter-dispersion weight when none is given."""


@dataclass(frozen=True)
class ClipSettings:
    """Which frozen CLIP: open_clip architecture, pretrained tag or file, activation, download cache."""

    name: str
    pretrained: str | None
    quick_gelu: bool | None
    cache_dir: str | None


@dataclass(frozen=True)
class PromptSettings:
    """The learned prompts (CoOp text context, VPT tokens) and the fixed template of methods without text prompts."""

    text_tokens: int
    text_init: str | None
    class_specific_context: bool
    visual_tokens: int
    visual_dropout: float
    template: str | None


@dataclass(frozen=True)
class LossSettings:
    """The weights of DAPT's dispersion losses (0 for methods that train with cross-entropy alone)."""

    beta_v: float
    beta_t: float
    rbf_t: float

    @classmethod
    def for_method(cls, method: str, spec: MethodSpec, beta_v: float | None, beta_t: float | None, rbf_t: float):
        """DAPT's weights (defaults for those not given); zeros for the baselines, reporting any weight given."""
        if spec.dispersion_losses:
            return cls(DAPT_BETA_V if beta_v is None else beta_v, DAPT_BETA_T if beta_t is None else beta_t, rbf_t)
        ignored = [f"--model.{name} {value}" for name, value in (("beta_v", beta_v), ("beta_t", beta_t)) if value]
        if ignored:
            rank_zero_warn(
                f"--model.method {method} trains with cross-entropy alone: {' and '.join(ignored)} "
                "(DAPT's dispersion weights) are not used."
            )
        return cls(0.0, 0.0, rbf_t)


@dataclass(frozen=True)
class OptimisationSettings:
    """SGD with momentum and weight decay; a constant warm-up, then cosine, stepped once per epoch."""

    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    warmup_lr: float


@dataclass(frozen=True)
class ExecutionSettings:
    """How the same numbers are computed: text encoding strategy and layout, checkpointing, compilation."""

    text_encoding: TextEncoding
    text_layout: SharedPrefixLayout | int
    text_checkpointing: bool
    compile: CompileMode


class DAPTModule(L.LightningModule):
    """Prompt tuning of a frozen CLIP: zero-shot, CoOp, VPT, CoOp+VPT or DAPT.

    The flat arguments are the ``--model.*`` flags; the module groups them (``clip``, ``prompts``, ``losses``,
    ``optimisation``, ``execution`` settings).

    Args:
        classnames: class names by label (linked from the DataModule by the CLI).
        method: ``zeroshot``, ``coop``, ``vpt``, ``coop_vpt`` or ``dapt``.

        clip_name: open_clip architecture (``ViT-B-16``; ``dapt-tiny`` for tests and the demo).
        pretrained: pretrained tag (``openai``), a local weights file, ``tiny-synthetic``, or None (random).
        quick_gelu: force QuickGELU on/off; None picks it for OpenAI weights.
        cache_dir: where pretrained weights are cached.

        text_tokens, text_init, class_specific_context: CoOp context settings.
        visual_tokens, visual_dropout: VPT settings.
        template: the hand-crafted prompt for methods without text prompts; None: ``"a photo of a {}."`` (the
            CLI picks the dataset's CoOp template for ``zeroshot``).

        beta_v: weight of the intra-dispersion (prototype) loss; None: 10. beta_t: weight of the inter-dispersion
            loss; None: 0.01. DAPT only: the baselines train with cross-entropy alone, and a weight given to them
            is reported as unused.
        rbf_t: ``t`` in the inter-dispersion kernel ``exp(-t * d^2)``.

        lr: SGD learning rate after warm-up. momentum, weight_decay: SGD settings.
        warmup_epochs: epochs at the constant ``warmup_lr`` before the cosine schedule.

        text_encoding: ``auto`` (fastest exact path), ``truncated``, ``shared_prefix`` or ``full`` (official).
        text_layout: how the shared-prefix path packs class suffixes: ``auto``, ``per_length``,
            ``single_attention`` or ``two_buckets``.
        text_checkpointing: recompute text-tower activations in the backward pass (less memory, more time).
        compile: ``torch.compile`` the image tower and text encoder: ``off`` (eager), ``default``,
            ``reduce-overhead`` (CUDA graphs on GPUs), ``max-autotune`` or ``max-autotune-no-cudagraphs``.
    """

    def __init__(
        self,
        classnames: list[str],
        method: Method = "dapt",
        clip_name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        quick_gelu: bool | None = None,
        cache_dir: str | None = None,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        beta_v: float | None = None,
        beta_t: float | None = None,
        rbf_t: float = 2.0,
        text_tokens: int = 16,
        text_init: str | None = None,
        class_specific_context: bool = False,
        visual_tokens: int = 16,
        visual_dropout: float = 0.0,
        template: str | None = None,
        text_encoding: TextEncoding = "auto",
        text_layout: SharedPrefixLayout | int = "auto",
        text_checkpointing: bool = False,
        compile: CompileMode = "off",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        spec = method_spec(method)
        self.clip_settings = ClipSettings(clip_name, pretrained, quick_gelu, cache_dir)
        self.prompt_settings = PromptSettings(
            text_tokens, text_init, class_specific_context, visual_tokens, visual_dropout, template
        )
        self.loss_settings = LossSettings.for_method(method, spec, beta_v, beta_t, rbf_t)
        self.optimisation = OptimisationSettings(lr, momentum, weight_decay, warmup_epochs, warmup_lr)
        self.execution = ExecutionSettings(text_encoding, text_layout, text_checkpointing, compile)
        self.model, self.clip_identity = build_model(
            classnames, method, self.clip_settings, self.prompt_settings, self.execution
        )
        # Class prototypes (DAPT's intra-dispersion targets) are saved with the checkpoint.
        self.register_buffer("prototypes", torch.zeros(len(classnames), self.model.text_tower.output_dim))
        self.register_buffer("prototypes_ready", torch.tensor(False))
        # The same fact on the host, so that no step reads the buffer (which would synchronise a GPU).
        self.has_prototypes = False
        self.register_load_state_dict_post_hook(_read_prototypes_ready)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(len(classnames), average="micro"),
                "macro_f1": MulticlassF1Score(len(classnames), average="macro"),
            }
        )
        self.train_f1 = MulticlassF1Score(len(classnames), average="macro")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._eval_text_features: torch.Tensor | None = None
        self._non_finite: NonFiniteWatch | None = None

    @property
    def beta_v(self) -> float:
        return self.loss_settings.beta_v

    @property
    def beta_t(self) -> float:
        return self.loss_settings.beta_t

    @property
    def image_size(self) -> int:
        return self.model.image_tower.image_size

    @property
    def needs_prototypes(self) -> bool:
        return self.beta_v != 0

    def setup(self, stage: str) -> None:
        if stage == "fit" and not any(p.requires_grad for p in self.parameters()):
            raise ValueError(
                f"--model.method {self.hparams.method!r} has no prompts to train; evaluate it with `dapt test` instead"
            )

    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Install class prototypes ``[C, D]`` (computed by the PrototypeCallback)."""
        if prototypes.shape != self.prototypes.shape:
            raise ValueError(
                f"prototypes must have shape {tuple(self.prototypes.shape)}, got {tuple(prototypes.shape)}"
            )
        self.prototypes.copy_(prototypes.to(self.prototypes))
        self.prototypes_ready.fill_(True)
        self.has_prototypes = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of images."""
        return self.model(images)[0]

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        """The loss terms and the logits of one training batch."""
        logits, image_features, text_features = self.model(images)
        prototypes = self.prototypes if self.needs_prototypes else None
        if prototypes is not None and not self.has_prototypes:
            raise RuntimeError(
                "DAPT needs class prototypes before training: add the PrototypeCallback "
                "(the `dapt` CLI adds it) or set --model.beta_v 0"
            )
        losses = self.loss_settings
        terms = dapt_loss(
            logits, labels, image_features, text_features, prototypes, losses.beta_v, losses.beta_t, losses.rbf_t
        )
        return terms, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        terms, logits = self.compute_losses(images, labels)
        self._watch_for_non_finite(terms)
        batch_size = labels.shape[0]
        self.log_dict(
            {
                "train/loss": terms.total,
                "train/loss_ce": terms.ce,
                "train/loss_inter": terms.inter,
                "train/loss_intra": terms.intra,
                "train/acc": (logits.argmax(-1) == labels).float().mean(),
            },
            on_step=True,
            on_epoch=True,
            prog_bar=False,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.train_f1(logits.detach(), labels)
        self.log("train/macro_f1", self.train_f1, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log(
            "train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=batch_size
        )
        self.log("loss", terms.total, prog_bar=True, logger=False, batch_size=batch_size)
        return terms.total

    def _watch_for_non_finite(self, terms: LossTerms) -> None:
        if self._non_finite is None:
            self._non_finite = NonFiniteWatch(terms.total.device, self.global_step)
        self._non_finite.update(terms)

    def on_train_epoch_end(self) -> None:
        # Before the last checkpoint is written: checkpoint callbacks run after the module's epoch-end hook.
        watch, self._non_finite = self._non_finite, None
        found = watch.first() if watch is not None else None  # the epoch's one host read
        if found is None:
            return
        step, terms = found
        precision = self.trainer.precision if self._trainer is not None else "32"
        raise FloatingPointError(
            f"loss term {terms[0]!r} became non-finite (terms: {', '.join(terms)}) at global step {step} "
            f"(epoch {self.current_epoch}) with --model.lr {self.hparams.lr}, "
            f"--model.beta_v {self.beta_v}, --model.beta_t {self.beta_t}, --trainer.precision {precision}. "
            "Usual causes: a large learning rate (e.g. LR 20 of the official configs) in 16-mixed "
            "precision (use bf16-mixed or 32), or corrupt inputs. The last good checkpoint (last.ckpt) "
            "is kept: change the settings and resume from it with --ckpt_path."
        )

    # Evaluation: prompts are fixed, so the class text features are encoded once per evaluation, not per batch.
    def _start_evaluation(self) -> None:
        with torch.no_grad():
            self._eval_text_features = self.model.encode_text()

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], metrics: MetricCollection
    ) -> dict[str, torch.Tensor]:
        images, labels, _ = batch
        logits, image_features, _ = self.model(images, text_features=self._eval_text_features)
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

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, self.val_metrics)

    def test_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, self.test_metrics)

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        images, labels, indices = batch
        logits, _, _ = self.model(images, text_features=self._eval_text_features)
        return {"index": indices, "label": labels, "prediction": logits.argmax(-1), "probabilities": logits.softmax(-1)}

    def on_validation_epoch_end(self) -> None:
        self._eval_text_features = None

    def on_test_epoch_end(self) -> None:
        self._eval_text_features = None

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        settings = self.optimisation
        optimizer = torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = warmup_cosine(optimizer, max_epochs, settings.warmup_epochs, settings.warmup_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # Prompt-only checkpoints (``checkpoint.py``): the frozen CLIP is rebuilt from its identity, never stored.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = prompt_only_state(checkpoint["state_dict"], self.model.clip, self.has_prototypes)
        checkpoint["dapt_checkpoint_format"] = CHECKPOINT_FORMAT
        checkpoint["clip_identity"] = self.clip_identity.to_dict()
        checkpoint["classnames"] = list(self.model.classnames)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_clip_identity(checkpoint.get("clip_identity") or {}, self.clip_identity)
        state = checkpoint["state_dict"]
        saved_classes = checkpoint.get("classnames")
        if saved_classes is not None and list(saved_classes) != list(self.model.classnames):
            source = (checkpoint.get("datamodule_hyper_parameters") or {}).get("dataset", "another dataset")
            state, message = transferable_state(
                state,
                list(saved_classes),
                list(self.model.classnames),
                source,
                fitting=self._trainer is not None and self.trainer.state.fn == "fit",
                class_specific_context=self.prompt_settings.class_specific_context,
            )
            rank_zero_info(message)
        own = self.state_dict()
        check_shapes(state, own)
        # Re-insert the frozen CLIP (and anything not stored, such as unset prototypes) so that Lightning's
        # strict load sees a complete state dict.
        for key, value in own.items():
            state.setdefault(key, value)
        checkpoint["state_dict"] = state


class NonFiniteWatch:
    """Remembers, on the device, the first training batch of an epoch with a non-finite loss term.

    Reading a loss on the host would wait for the step's kernels, so nothing is read until ``first()``, once an
    epoch. Every tensor is made on the device (a tensor built from Python numbers would be a synchronous copy).
    """

    TERMS = ("ce", "inter", "intra", "total")

    def __init__(self, device: torch.device, first_step: int) -> None:
        self.first_step = first_step
        self.batches = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms = torch.zeros(len(self.TERMS), dtype=torch.bool, device=device)

    def update(self, terms: LossTerms) -> None:
        """Note this batch's terms (no host synchronisation)."""
        bad = ~torch.isfinite(torch.stack([getattr(terms, name).detach().float() for name in self.TERMS]))
        first = (self.first_bad < 0) & bad.any()
        self.first_bad = torch.where(first, self.batches, self.first_bad)
        self.bad_terms = torch.where(first, bad, self.bad_terms)
        self.batches += 1

    def first(self) -> tuple[int, list[str]] | None:
        """The global step and the names of the non-finite terms of the first bad batch, or None."""
        index = int(self.first_bad)
        if index < 0:
            return None
        return self.first_step + index, [
            name for name, bad in zip(self.TERMS, self.bad_terms.tolist(), strict=True) if bad
        ]


def build_model(
    classnames: list[str], method: str, clip: ClipSettings, prompts: PromptSettings, execution: ExecutionSettings
) -> tuple[PromptedCLIP, ClipIdentity]:
    """The frozen CLIP (with its own tokenizer) and the method's prompts around it; a method the CLIP's towers
    cannot serve is refused in one line (``model/families.py``)."""
    spec = method_spec(method)
    refusal = config_method_refusal(clip.name, method)
    if refusal is not None:  # before any weights are read
        raise ValueError(refusal)
    model, identity = load_clip(clip.name, clip.pretrained, clip.quick_gelu, clip.cache_dir)
    refusal = method_refusal(model, clip.name, method)
    if refusal is not None:  # an architecture read from a weights file
        raise ValueError(refusal)
    tokenizer = clip_tokenizer(clip.name, _context_length(model))
    template = {} if prompts.template is None else {"template": prompts.template}
    prompted = PromptedCLIP(
        model,
        classnames,
        text_prompts=spec.text_prompts,
        visual_prompts=spec.visual_prompts,
        text_tokens=prompts.text_tokens,
        text_init=prompts.text_init,
        class_specific_context=prompts.class_specific_context,
        visual_tokens=prompts.visual_tokens,
        visual_dropout=prompts.visual_dropout,
        tokenizer=tokenizer,
        text_encoding=execution.text_encoding,
        text_layout=execution.text_layout,
        text_checkpointing=execution.text_checkpointing,
        compile=execution.compile,
        **template,
    )
    return prompted, identity


def _read_prototypes_ready(module: DAPTModule, incompatible_keys: Any) -> None:
    # Once per load, not per step: the loaded buffer says whether the checkpoint held prototypes.
    module.has_prototypes = bool(module.prototypes_ready)


def _context_length(clip: torch.nn.Module) -> int:
    text = getattr(clip, "text", clip)
    return int(text.positional_embedding.shape[0])
