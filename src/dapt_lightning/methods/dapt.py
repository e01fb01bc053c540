"""DAPT: CoOp+VPT prompts trained with two dispersion losses, spreading the class text features apart and pulling
image features towards their class prototype (Cho, Kim & Kim, ICCV 2023; SPEC.md)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.losses import dapt_loss
from dapt_lightning.methods.coop_vpt import CoOpVPT


class DAPT(CoOpVPT):
    """Distribution-Aware Prompt Tuning: ``L = CE + beta_v * L_intra + beta_t * L_inter``.

    The intra-dispersion targets are class prototypes, the mean zero-shot image feature of each class's training
    images, computed before fitting by a :class:`PrototypeCallback` (the method adds one when the Trainer has none)
    and stored in the checkpoint.

    Args:
        beta_v: weight of the intra-dispersion (prototype) loss (10 for most official configs; 0 needs no
            prototypes).
        beta_t: weight of the inter-dispersion loss.
        rbf_t: ``t`` in the inter-dispersion kernel ``exp(-t * d^2)``.
    """

    name = "dapt"
    title = "DAPT"

    def __init__(self, beta_v: float = 10.0, beta_t: float = 0.01, rbf_t: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The same fact as the `prototypes_ready` buffer, on the host, so that no step reads the buffer (which
        # would synchronise a GPU).
        self.has_prototypes = False

    def build_state(self, num_classes: int, dim: int) -> None:
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("prototypes_ready", torch.tensor(False))
        self.register_load_state_dict_post_hook(_read_prototypes_ready)

    @property
    def needs_prototypes(self) -> bool:
        return self.hparams.beta_v != 0

    def configure_callbacks(self) -> list[L.Callback]:
        """A :class:`PrototypeCallback` with its defaults, unless the Trainer has one (e.g. ``--prototypes.*``)."""
        present = self._trainer is not None and any(isinstance(c, PrototypeCallback) for c in self.trainer.callbacks)
        return [] if present or not self.needs_prototypes else [PrototypeCallback()]

    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Install class prototypes ``[C, D]`` (computed by the PrototypeCallback)."""
        if prototypes.shape != self.prototypes.shape:
            raise ValueError(
                f"prototypes must have shape {tuple(self.prototypes.shape)}, got {tuple(prototypes.shape)}"
            )
        self.prototypes.copy_(prototypes.to(self.prototypes))
        self.prototypes_ready.fill_(True)
        self.has_prototypes = True

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        prototypes = None
        if self.needs_prototypes:
            if not self.has_prototypes:
                raise RuntimeError(
                    "DAPT needs class prototypes before training: a PrototypeCallback computes them (DAPT adds one; "
                    "it was removed?), or set --model.beta_v 0"
                )
            prototypes = self.prototypes
        settings = self.hparams
        terms = dapt_loss(
            logits, labels, image_features, text_features, prototypes, settings.beta_v, settings.beta_t, settings.rbf_t
        )
        return {"total": terms.total, "ce": terms.ce, "inter": terms.inter, "intra": terms.intra}

    def kept_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kept = super().kept_state(state)
        if not self.has_prototypes:
            kept.pop("prototypes", None)  # unset: C x D zeros of nothing
        return kept


def _read_prototypes_ready(module: DAPT, incompatible_keys: Any) -> None:
    # Once per load, not per step: the loaded buffer says whether the checkpoint held prototypes.
    module.has_prototypes = bool(module.prototypes_ready)
