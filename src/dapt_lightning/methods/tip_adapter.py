"""Tip-Adapter-F: zero-shot CLIP plus a cache model of the few-shot images' features, whose keys are fine-tuned."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from dapt_lightning.callbacks.feature_cache import frozen_features
from dapt_lightning.methods.tuning import TrainedMethod
from dapt_lightning.model.prompted_clip import PromptedCLIP

CLIP_LOGIT_SCALE = 100.0
"""The official code's constant logit scale (``100. * features @ clip_weights``), not the CLIP's learned one."""

OFFICIAL_EPOCHS = {"eurosat": 100}
"""Training epochs where the official config differs from its 20 (``train_epoch``)."""
OFFICIAL_SETTINGS: dict[str, tuple[float, tuple[float, float]]] = {
    # dataset: (init_alpha, search_scale (beta, alpha)), from gaopengcuhk/Tip-Adapter configs/*.yaml (init_beta is 1
    # and search_step [200, 20] everywhere).
    "caltech101": (3.0, (12.0, 5.0)),
    "dtd": (2.0, (13.0, 13.0)),
    "eurosat": (2.0, (12.0, 10.0)),
    "fgvc_aircraft": (5.0, (30.0, 30.0)),
    "food101": (1.17, (10.0, 10.0)),
    "imagenet": (1.17, (7.0, 3.0)),
    "oxford_flowers": (10.0, (50.0, 50.0)),
    "oxford_pets": (1.17, (7.0, 3.0)),
    "stanford_cars": (3.0, (20.0, 10.0)),
    "sun397": (1.17, (12.0, 10.0)),
    "ucf101": (3.0, (7.0, 3.0)),
}
FALLBACK_SETTINGS = OFFICIAL_SETTINGS["imagenet"]
"""For a dataset without official settings (the synthetic demo, a user's folder)."""


class TipAdapterF(TrainedMethod):
    """Tip-Adapter-F (Zhang et al., ECCV 2022): ``logits = 100 f W^T + alpha * exp(-beta (1 - f K^T)) V``, where ``f``
    is the normalised image feature, ``W`` zero-shot CLIP's class text features, ``K`` the cache keys (the mean over
    ``augment_views`` augmented views of each few-shot training image's feature, normalised: the learned weights)
    and ``V`` their one-hot labels. Trained with cross-entropy, AdamW and a cosine schedule stepped every batch.

    After training, the adapter of the epoch with the best validation accuracy is kept and ``alpha``, ``beta`` are
    searched on the validation split over the official grid. The official code selects both on the *test* set
    (acknowledged upstream); here the test set is never looked at before the test.

    Args:
        epochs: training epochs, after which training stops (the Trainer's ``max_epochs`` may stop it first); None:
            the dataset's official count (20; EuroSAT 100).
        init_alpha: the residual ratio while training; None: the dataset's official value (1.17 for pets).
        init_beta: the sharpness while training (1 in every official config).
        search_scale: the largest ``(beta, alpha)`` of the search grid; None: the dataset's official values.
        search_steps: the number of ``(beta, alpha)`` values searched: ``i * (scale - 0.1) / steps + 0.1``.
        augment_views: augmented views of each training image averaged into its cache key.
        lr: AdamW learning rate.
        eps: AdamW epsilon (the official 1e-4).
        weight_decay: AdamW weight decay (PyTorch's default, as the official code).
        template: the zero-shot prompt (``{}``: the class name), or a list of prompts whose normalised features are
            averaged (the official ImageNet ensemble); None: the dataset's.
        selection: ``validation`` (the best epoch and alpha/beta chosen on the validation split), or ``official``:
            upstream's, which keeps the epoch of the best *test* accuracy (and on ImageNet searches alpha/beta on the
            test set), to reproduce its published numbers; it reads the test split while training.
    """

    name = "tip_adapter"
    title = "Tip-Adapter-F"
    names_new_classes: ClassVar[bool] = False

    def __init__(
        self,
        epochs: int | None = None,
        init_alpha: float | None = None,
        init_beta: float = 1.0,
        search_scale: tuple[float, float] | None = None,
        search_steps: tuple[int, int] = (200, 20),
        augment_views: int = 10,
        lr: float = 0.001,
        eps: float = 1e-4,
        weight_decay: float = 0.01,
        template: str | list[str] | None = None,
        selection: Literal["validation", "official"] = "validation",
        **kwargs: Any,
    ) -> None:
        if selection not in ("validation", "official"):
            raise ValueError(f"--model.selection must be validation or official, got {selection!r}")
        if augment_views < 1 or (epochs is not None and epochs < 1):
            raise ValueError(f"--model.augment_views and --model.epochs must be >= 1, got {augment_views}, {epochs}")
        if not lr > 0:
            raise ValueError(f"--model.lr must be > 0, got {lr}")
        if min(search_steps) < 1:
            raise ValueError(f"--model.search_steps must be two counts >= 1, got {list(search_steps)}")
        super().__init__(**kwargs)

    def template(self) -> str:
        templates = self.templates()
        return templates[0]

    def templates(self) -> list[str]:
        """The zero-shot prompts whose features are averaged into the class text features."""
        chosen = self.hparams.get("template") or self._dataset_template or super().template()
        return [chosen] if isinstance(chosen, str) else list(chosen)

    def build_state(self, num_classes: int, dim: int) -> None:
        self.register_buffer("zero_shot_text", ensemble_text_features(self.model, self.templates()), persistent=False)
        # The cache is sized by the training set, known when fitting starts (or read from a checkpoint).
        self.cache_keys = nn.Parameter(torch.zeros(0, dim))  # the official `adapter` Linear's weight
        self.register_buffer("cache_values", torch.zeros(0, num_classes))
        self.register_buffer("alpha", torch.tensor(1.0))
        self.register_buffer("beta", torch.tensor(1.0))
        self._best: tuple[float, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------------------------
    # The computation.

    def forward_features(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None, model: PromptedCLIP | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cache_values.shape[0] == 0:
            raise RuntimeError(
                "Tip-Adapter-F has no cache yet: fit it (dapt fit), or load a trained checkpoint (--ckpt_path)"
            )
        image_features = (model or self.model).encode_image(images)
        return self.tip_logits(image_features, self.alpha, self.beta), image_features, self.zero_shot_text

    def tip_logits(
        self, features: torch.Tensor, alpha: torch.Tensor | float, beta: torch.Tensor | float
    ) -> torch.Tensor:
        """Logits ``[B, C]`` of normalised image features ``[B, D]`` for a residual ratio and sharpness."""
        clip_logits, cache_logits = self.logit_parts(features, beta)
        return clip_logits + cache_logits * alpha

    def logit_parts(self, features: torch.Tensor, beta: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot CLIP's logits and the cache model's, ``[B, C]`` each."""
        affinity = F.linear(features.to(self.cache_keys.dtype), self.cache_keys)
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ self.cache_values.to(affinity.dtype)
        clip_logits = CLIP_LOGIT_SCALE * features @ self.zero_shot_text.to(features.dtype).t()
        return clip_logits, cache_logits

    # ------------------------------------------------------------------------------------------------------------
    # Training: the cache is built before the optimiser exists (its size is the parameter's), the best epoch kept.

    def configure_model(self) -> None:
        super().configure_model()
        if self.trainer.state.fn != "fit" or self.cache_values.shape[0] > 0:
            return
        datamodule = self.trainer.datamodule
        init_alpha, _ = self.official_settings(datamodule.dataset_name)
        self.to(self.trainer.strategy.root_device)  # encode where the run computes (the strategy moves it there anyway)
        keys, labels = self.build_cache(datamodule)
        with torch.no_grad():
            self.cache_keys = nn.Parameter(keys)
            self.cache_values = F.one_hot(labels, len(self.classnames)).to(keys.dtype)
            self.alpha.fill_(init_alpha)
            self.beta.fill_(self.hparams.init_beta)
        official = "" if datamodule.dataset_name in OFFICIAL_SETTINGS else " (ImageNet's: no official values here)"
        rank_zero_info(
            f"Tip-Adapter-F: a cache of {keys.shape[0]} keys ({self.hparams.augment_views} augmented views each), "
            f"alpha {init_alpha}, beta {self.hparams.init_beta} while training{official}"
        )

    def build_cache(self, datamodule: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache keys ``[N, D]`` (the mean of each training image's raw features over its augmented views,
        normalised) and their labels ``[N]``."""
        views = [frozen_features(self, datamodule, "train", view=view) for view in range(self.hparams.augment_views)]
        keys = torch.stack([features for features, _ in views]).mean(dim=0)
        return F.normalize(keys, dim=-1), views[0][1]

    def official_settings(self, dataset: str) -> tuple[float, tuple[float, float]]:
        """``(init_alpha, search_scale)``: those given, else the dataset's official ones."""
        official_alpha, official_scale = OFFICIAL_SETTINGS.get(dataset, FALLBACK_SETTINGS)
        alpha, scale = self.hparams.init_alpha, self.hparams.search_scale
        return (official_alpha if alpha is None else alpha), tuple(official_scale if scale is None else scale)

    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.hparams
        optimizer = torch.optim.AdamW(
            [self.cache_keys], lr=settings.lr, eps=settings.eps, weight_decay=settings.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_epochs(self) -> int:
        """The epochs that train: ``epochs`` (or the dataset's official count), fewer if the Trainer stops first."""
        epochs = self.hparams.epochs or OFFICIAL_EPOCHS.get(self.trainer.datamodule.dataset_name, 20)
        limit = self.trainer.max_epochs
        return epochs if limit is None or limit < 0 else min(epochs, limit)

    def total_steps(self) -> int:
        """The cosine schedule's length: every step of :meth:`training_epochs` (the official ``train_epoch *
        len(train_loader_F)``)."""
        return max(1, self.training_epochs() * self.steps_per_epoch())

    def steps_per_epoch(self) -> int:
        """Training batches per epoch (this process's; the DataModule shards the data itself)."""
        return len(self.trainer.datamodule.train_dataloader())

    def on_train_start(self) -> None:
        rank_zero_info(f"Tip-Adapter-F: {self.training_epochs()} epochs of {self.steps_per_epoch()} steps")

    def on_validation_epoch_end(self) -> None:
        fitting = self._trainer is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        if fitting and self.hparams.selection == "validation":
            self.keep_if_best(float(self.val_metrics["acc"].compute()))
        super().on_validation_epoch_end()

    def keep_if_best(self, accuracy: float) -> None:
        """Keep this epoch's adapter if its accuracy beats every earlier epoch's (the first of equals)."""
        if self._best is None or accuracy > self._best[0]:
            self._best = (accuracy, self.cache_keys.detach().clone())

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.hparams.selection == "official":  # upstream scores every epoch on the test set
            features, labels = frozen_features(self, self.trainer.datamodule, "test")
            with torch.no_grad():
                logits = self.tip_logits(F.normalize(features, dim=-1), self.alpha, self.beta)
            self.keep_if_best(float((logits.argmax(dim=-1) == labels).float().mean()))
        if self.current_epoch + 1 >= self.training_epochs():
            self.finish_training()  # before the last checkpoint is written (checkpoint callbacks run after this)
            self.trainer.should_stop = True

    def finish_training(self) -> None:
        """Keep the adapter of the best epoch, then search ``alpha`` and ``beta`` on the validation split (with
        ``selection official`` on ImageNet: on the test set, as upstream's ``main_imagenet.py``)."""
        if self._best is not None:
            with torch.no_grad():
                self.cache_keys.copy_(self._best[1])
        datamodule = self.trainer.datamodule
        official_imagenet = self.hparams.selection == "official" and datamodule.dataset_name == "imagenet"
        features, labels = frozen_features(self, datamodule, "test" if official_imagenet else "val")
        _, scale = self.official_settings(datamodule.dataset_name)
        with torch.no_grad():
            beta, alpha, accuracy = self.search(F.normalize(features, dim=-1), labels, scale)
            self.alpha.fill_(alpha)
            self.beta.fill_(beta)
        scored = "validation" if self.hparams.selection == "validation" else "test"
        epoch = "" if self._best is None else f" (the adapter of {scored} accuracy {self._best[0]:.4f})"
        rank_zero_info(f"Tip-Adapter-F: alpha {alpha:.4f}, beta {beta:.4f}, validation accuracy {accuracy:.4f}{epoch}")

    def search(
        self, features: torch.Tensor, labels: torch.Tensor, scale: tuple[float, float]
    ) -> tuple[float, float, float]:
        """``(beta, alpha, accuracy)`` of the official grid search over normalised features: beta the outer loop,
        alpha the inner, the first strict improvement over accuracy 0 kept (all wrong: 0 and 0, as upstream)."""
        betas = search_grid(scale[0], self.hparams.search_steps[0])
        alphas = search_grid(scale[1], self.hparams.search_steps[1])
        alpha_column = torch.tensor(alphas, device=features.device, dtype=features.dtype)[:, None, None]
        correct = []
        for beta in betas:
            clip_logits, cache_logits = self.logit_parts(features, beta)
            predictions = (clip_logits + cache_logits * alpha_column).argmax(dim=-1)  # [alphas, N]
            correct.append((predictions == labels).sum(dim=-1))
        counts = torch.stack(correct).flatten()  # beta-major, as the official loops
        best = int(counts.argmax())  # the first of the maxima
        if int(counts[best]) == 0:
            return 0.0, 0.0, 0.0
        return betas[best // len(alphas)], alphas[best % len(alphas)], int(counts[best]) / len(labels)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints hold the cache (keys are the learned weights), sized as the checkpoint says.

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        keys = state.get("cache_keys")
        if keys is not None and keys.shape != self.cache_keys.shape:
            self.cache_keys = nn.Parameter(torch.empty_like(keys, device=self.cache_keys.device))
            self.cache_values = torch.empty_like(state["cache_values"], device=self.cache_values.device)
        super().on_load_checkpoint(checkpoint)


def search_grid(scale: float, steps: int) -> list[float]:
    """The official search values ``i * (scale - 0.1) / steps + 0.1`` for ``i < steps``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def ensemble_text_features(model: PromptedCLIP, templates: list[str]) -> torch.Tensor:
    """Zero-shot class text features ``[C, D]``: each prompt's normalised features, averaged, normalised."""
    features = torch.stack([model.encode_template(template) for template in templates]).mean(dim=0)
    return F.normalize(features, dim=-1)
