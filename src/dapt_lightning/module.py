"""The LightningModule: a PromptedCLIP, DAPT's losses, the official optimiser and schedule. Steps compute and log."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from dapt_lightning.losses import LossTerms, dapt_loss
from dapt_lightning.methods import Method, method_spec
from dapt_lightning.model.clip import ClipIdentity, load_clip
from dapt_lightning.model.compilation import CompileMode
from dapt_lightning.model.dapt import PromptedCLIP, TextEncoding
from dapt_lightning.schedule import warmup_cosine
from dapt_lightning.templates import GENERIC_TEMPLATE

CHECKPOINT_FORMAT = 1
"""Version of the prompt-only checkpoint layout (``checkpoint["dapt_checkpoint_format"]``)."""


class ClipMismatchError(ValueError):
    """A checkpoint's prompts were trained on a different CLIP than the one this run loaded."""


class DAPTModule(L.LightningModule):
    """Prompt tuning of a frozen CLIP: zero-shot, CoOp, VPT, CoOp+VPT or DAPT.

    Args:
        classnames: class names by label (linked from the DataModule by the CLI).
        method: ``zeroshot``, ``coop``, ``vpt``, ``coop_vpt`` or ``dapt``.
        clip_name: open_clip architecture (``ViT-B-16``; ``dapt-tiny`` for tests and the demo).
        pretrained: pretrained tag (``openai``), a local weights file, ``tiny-synthetic``, or None (random).
        quick_gelu: force QuickGELU on/off; None picks it for OpenAI weights.
        cache_dir: where pretrained weights are cached.
        lr: SGD learning rate after warm-up. momentum, weight_decay: SGD settings.
        warmup_epochs: epochs at the constant ``warmup_lr`` before the cosine schedule.
        beta_v: weight of the intra-dispersion (prototype) loss. beta_t: weight of the inter-dispersion loss.
        rbf_t: ``t`` in the inter-dispersion kernel ``exp(-t * d^2)``.
        text_tokens, text_init, class_specific_context: CoOp context settings.
        visual_tokens, visual_dropout: VPT settings.
        template: the hand-crafted prompt for methods without text prompts; None: ``"a photo of a {}."`` (the
            CLI picks the dataset's CoOp template for ``zeroshot``, see ``templates.py``).
        text_encoding: ``auto`` (fastest exact path), ``truncated``, ``shared_prefix`` or ``full`` (official).
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
        beta_v: float = 10.0,
        beta_t: float = 0.01,
        rbf_t: float = 2.0,
        text_tokens: int = 16,
        text_init: str | None = None,
        class_specific_context: bool = False,
        visual_tokens: int = 16,
        visual_dropout: float = 0.0,
        template: str | None = None,
        text_encoding: TextEncoding = "auto",
        text_checkpointing: bool = False,
        compile: CompileMode = "off",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        spec = method_spec(method)
        # Only DAPT uses the dispersion losses; the baselines train with cross-entropy alone.
        self.beta_v = beta_v if spec.dispersion_losses else 0.0
        self.beta_t = beta_t if spec.dispersion_losses else 0.0
        clip, identity = load_clip(clip_name, pretrained, quick_gelu, cache_dir)
        self.clip_identity: ClipIdentity = identity
        self.model = PromptedCLIP(
            clip,
            classnames,
            text_prompts=spec.text_prompts,
            visual_prompts=spec.visual_prompts,
            text_tokens=text_tokens,
            text_init=text_init,
            class_specific_context=class_specific_context,
            visual_tokens=visual_tokens,
            visual_dropout=visual_dropout,
            template=template or GENERIC_TEMPLATE,
            text_encoding=text_encoding,
            text_checkpointing=text_checkpointing,
            compile=compile,
        )
        embed_dim = _embed_dim(clip)
        # Class prototypes (DAPT's intra-dispersion targets) are saved with the checkpoint.
        self.register_buffer("prototypes", torch.zeros(len(classnames), embed_dim))
        self.register_buffer("prototypes_ready", torch.tensor(False))
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

    @property
    def image_size(self) -> int:
        return self.model.image_tower.image_size

    @property
    def needs_prototypes(self) -> bool:
        return self.beta_v != 0

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "image_size", 0) is None:
            datamodule.image_size = self.image_size
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of images."""
        return self.model(images)[0]

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        """The loss terms and the logits of one training batch."""
        logits, image_features, text_features = self.model(images)
        prototypes = self.prototypes if self.needs_prototypes else None
        if prototypes is not None and not bool(self.prototypes_ready):
            raise RuntimeError(
                "DAPT needs class prototypes before training: add the PrototypeCallback "
                "(the `dapt` CLI adds it) or set --model.beta_v 0"
            )
        terms = dapt_loss(
            logits, labels, image_features, text_features, prototypes, self.beta_v, self.beta_t, self.hparams.rbf_t
        )
        return terms, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        terms, logits = self.compute_losses(images, labels)
        self._stop_on_non_finite(terms)
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

    def _stop_on_non_finite(self, terms: LossTerms) -> None:
        """Stop with a message naming the step, the term and the usual causes; the last good checkpoint stays."""
        names = ("ce", "inter", "intra", "total")  # the terms first: they say where it came from
        # One device-to-host sync per step (reading a GPU bool waits for the step's kernels), not one per term.
        if bool(torch.isfinite(torch.stack([getattr(terms, name).detach().float() for name in names])).all()):
            return
        for name in names:
            value = getattr(terms, name)
            if not torch.isfinite(value).all():
                precision = self.trainer.precision if self._trainer is not None else "32"
                raise FloatingPointError(
                    f"loss term {name!r} became {value.item()} at global step {self.global_step} "
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
        optimizer = torch.optim.SGD(
            params, lr=self.hparams.lr, momentum=self.hparams.momentum, weight_decay=self.hparams.weight_decay
        )
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = warmup_cosine(optimizer, max_epochs, self.hparams.warmup_epochs, self.hparams.warmup_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # Prompt-only checkpoints: the frozen CLIP is rebuilt from its identity (hyperparameters), never stored.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The tower views register CLIP's modules under their own names too, so filter by storage, not by prefix.
        frozen = {t.data_ptr() for t in self.model.clip.state_dict().values() if t.numel()}
        state = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if not k.startswith("model.clip.") and not (v.numel() and v.data_ptr() in frozen)
        }
        if not bool(self.prototypes_ready):
            state.pop("prototypes", None)  # zeros for methods without prototypes: C x D bytes of nothing
        checkpoint["state_dict"] = state
        checkpoint["dapt_checkpoint_format"] = CHECKPOINT_FORMAT
        checkpoint["clip_identity"] = self.clip_identity.to_dict()
        checkpoint["classnames"] = list(self.model.classnames)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_clip_identity(checkpoint.get("clip_identity") or {})
        state = checkpoint["state_dict"]
        saved_classes = checkpoint.get("classnames")
        if saved_classes is not None and list(saved_classes) != list(self.model.classnames):
            state = self._transferable_state(state, list(saved_classes), checkpoint)
        own = self.state_dict()
        for key, value in state.items():
            if key in own and tuple(value.shape) != tuple(own[key].shape):
                raise ClipMismatchError(
                    f"checkpoint tensor {key!r} has shape {tuple(value.shape)} but this model's is "
                    f"{tuple(own[key].shape)}: the checkpoint was made with other prompt settings or another CLIP "
                    "architecture. Use the training run's --model.* settings."
                )
        # Re-insert the frozen CLIP (and anything not stored, such as unset prototypes) so that Lightning's
        # strict load sees a complete state dict.
        for key, value in own.items():
            state.setdefault(key, value)
        checkpoint["state_dict"] = state

    def _check_clip_identity(self, saved: dict[str, Any]) -> None:
        ours = self.clip_identity
        if not saved:
            return
        same_name = saved.get("name") == ours.name
        same_weights = saved.get("weights_sha256") is None or saved.get("weights_sha256") == ours.weights_sha256
        # The activation is no weight: the same weights with GELU instead of QuickGELU give other features.
        same_activation = saved.get("quick_gelu") is None or saved.get("quick_gelu") == ours.quick_gelu
        if not (same_name and same_weights and same_activation):
            raise ClipMismatchError(
                f"checkpoint was trained on CLIP {saved.get('name')!r} ({saved.get('pretrained')}, weights sha256 "
                f"{str(saved.get('weights_sha256'))[:12]}..., quick_gelu={saved.get('quick_gelu')}) but this run "
                f"loaded {ours.name!r} ({ours.pretrained}, {str(ours.weights_sha256)[:12]}..., "
                f"quick_gelu={ours.quick_gelu}). "
                "Use the same --model.clip_name/--model.pretrained/--model.quick_gelu as the training run."
            )

    def _transferable_state(
        self, state: dict[str, torch.Tensor], saved_classes: list[str], checkpoint: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The class-agnostic part of ``state`` (generic text context, visual prompts) for other classes."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            raise ValueError(
                f"--ckpt_path: the checkpoint was trained on {len(saved_classes)} other classes than this run's "
                f"{len(self.model.classnames)}; resuming training needs the same dataset, shots and subsample "
                "settings. To evaluate those prompts on these classes use `dapt test`; to start anew, drop --ckpt_path."
            )
        if self.hparams.class_specific_context or (
            "model.text_prompt.txt_ctx" in state and state["model.text_prompt.txt_ctx"].dim() == 3
        ):
            raise ValueError(
                "the checkpoint's text context is class-specific (--model.class_specific_context true): it cannot "
                f"be used for other classes ({len(saved_classes)} in the checkpoint, {len(self.model.classnames)} "
                "here). Evaluate on the training classes, or train a generic context."
            )
        class_specific = ("prototypes", "prototypes_ready")
        dropped = sorted(k for k in state if k in class_specific)
        kept = {k: v for k, v in state.items() if k not in class_specific}
        source = (checkpoint.get("datamodule_hyper_parameters") or {}).get("dataset", "another dataset")
        loaded = [
            k.removeprefix("model.") for k in kept if k.startswith(("model.text_prompt.", "model.visual_prompt."))
        ]
        rank_zero_info(
            f"Cross-dataset checkpoint: prompts trained on {len(saved_classes)} classes of {source!r}, evaluated on "
            f"{len(self.model.classnames)} classes here. Loaded: {', '.join(loaded) or 'nothing'}; not loaded "
            f"(class-specific): {', '.join(dropped) or 'nothing'}. This run's class names are kept."
        )
        return kept


def _embed_dim(clip: torch.nn.Module) -> int:
    visual = clip.visual
    if getattr(visual, "proj", None) is not None:
        return visual.proj.shape[1]
    return visual.output_dim
