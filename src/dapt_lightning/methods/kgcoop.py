"""KgCoOp: CoOp's learned context, kept close to what the hand-crafted prompt says about each class."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dapt_lightning.methods.coop import CoOp

COSINE_EPS = 1e-7
"""The ``eps`` of the official ``torch.nn.CosineSimilarity(dim=1, eps=1e-07)``."""


class KgCoOp(CoOp):
    """KgCoOp (Yao, Zhang & Xu, CVPR 2023): ``L = CE + kg_weight * (1 - mean_c cos(w_c, w_c^clip))``, where ``w_c``
    is class ``c``'s text feature with the learned context and ``w_c^clip`` the frozen CLIP's feature of the
    hand-crafted prompt (the dataset's template), both L2-normalised.

    The official defaults (htyao89/KgCoOp, ViT-B/16): the context initialised from "a photo of a" (4 tokens),
    ``kg_weight`` 8.0 (the scripts' value; ``train.py`` defaults to 1.0), SGD 2e-3, batch 128, 100 epochs
    (``configs/methods/kgcoop.yaml``).

    Args:
        kg_weight: weight of the knowledge-guided term (``TRAINER.COOP.W``).
        template: the hand-crafted prompt of the guiding text features (``{}``: the class name); None: the
            dataset's CoOp template.
    """

    name = "kgcoop"
    title = "KgCoOp"

    def __init__(
        self,
        kg_weight: float = 8.0,
        template: str | None = None,
        text_tokens: int = 4,
        text_init: str | None = "a photo of a",
        **kwargs: Any,
    ) -> None:
        if kg_weight < 0:
            raise ValueError(f"--model.kg_weight must be >= 0, got {kg_weight}")
        super().__init__(text_tokens=text_tokens, text_init=text_init, **kwargs)

    def build_state(self, num_classes: int, dim: int) -> None:
        # Computed from the frozen CLIP whenever the model is built, so never stored in a checkpoint.
        self.register_buffer("handcrafted_text", self.model.encode_template(self.template()), persistent=False)

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(logits, labels)
        guide = F.normalize(self.handcrafted_text.to(text_features.dtype), dim=-1)
        knowledge = 1.0 - F.cosine_similarity(text_features, guide, dim=1, eps=COSINE_EPS).mean()
        return {"total": ce + self.hparams.kg_weight * knowledge, "ce": ce, "kg": knowledge}
