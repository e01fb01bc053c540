"""CoCoOp: CoOp's context shifted, for each image, by a small network reading that image's feature."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.methods.coop import CoOp
from dapt_lightning.model.prompted_clip import PromptedCLIP


class CoCoOp(CoOp):
    """CoCoOp (Zhou et al., CVPR 2022): a meta-net (``d -> d/16 -> ReLU -> context width``) reads the L2-normalised
    image feature and adds one shift to every context token, so each image has its own class texts; trained with
    cross-entropy.

    The official code (KaiyangZhou/CoOp ``trainers/cocoop.py``, ViT-B/16) encodes the texts image by image at batch
    1; here the images of a batch are encoded together (one text-tower call for all of their class texts), which
    gives the same numbers. Official settings: 4 tokens from "a photo of a", batch 1, 10 epochs, SGD 2e-3
    (``configs/methods/cocoop.yaml``).

    Args:
        meta_reduction: the meta-net's hidden width is the image feature width divided by this (16).
    """

    name = "cocoop"
    title = "CoCoOp"
    conditions_text_on_image = True

    def __init__(
        self,
        meta_reduction: int = 16,
        text_tokens: int = 4,
        text_init: str | None = "a photo of a",
        **kwargs: Any,
    ) -> None:
        if meta_reduction < 1:
            raise ValueError(f"--model.meta_reduction must be >= 1, got {meta_reduction}")
        if kwargs.get("class_specific_context"):
            raise ValueError("--model.class_specific_context: CoCoOp's context is shared by every class")
        super().__init__(text_tokens=text_tokens, text_init=text_init, **kwargs)

    def build_state(self, num_classes: int, dim: int) -> None:
        width = self.model.text_prompt.txt_ctx.shape[-1]
        hidden = dim // self.hparams.meta_reduction
        layers = [("linear1", nn.Linear(dim, hidden)), ("relu", nn.ReLU()), ("linear2", nn.Linear(hidden, width))]
        self.meta_net = nn.Sequential(OrderedDict(layers))

    def forward_features(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None, model: PromptedCLIP | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, C], image_features [B, D], text_features [B, C, D])``: each image's own class texts (the
        fixed ``text_features`` of an evaluation do not apply and are ignored)."""
        model = model or self.model
        image_features = model.encode_image(images)
        shift = self.meta_net(image_features.to(self.meta_net[0].weight.dtype))  # [B, width]
        text_features = F.normalize(conditioned_text(model, shift), dim=-1)  # [B, C, D]
        logits = model.logit_scale * torch.einsum("bd,bcd->bc", image_features, text_features.to(image_features))
        return logits, image_features, text_features


def conditioned_text(model: PromptedCLIP, shift: torch.Tensor) -> torch.Tensor:
    """Unnormalised class text features ``[B, C, D]`` with the context shifted by ``shift[b]`` for image ``b``.

    Every image's C prompts go through the text tower in one call; on a causal tower that pools at the end of text,
    each prompt is cut after the longest end-of-text token (exact: later tokens cannot reach it).
    """
    prompt, tower = model.text_prompt, model.text_tower
    batch, classes = shift.shape[0], prompt.token_prefix.shape[0]
    length = int(prompt.pool_positions.max()) + 1 if tower.pools_at_end_of_text else None
    kept = None if length is None else length - prompt.context_start - prompt.num_tokens
    context = (prompt.txt_ctx.unsqueeze(0) + shift.unsqueeze(1).to(prompt.txt_ctx)).unsqueeze(1)  # [B, 1, n, w]
    prefix = prompt.token_prefix.unsqueeze(0).expand(batch, -1, -1, -1)
    suffix = (prompt.token_suffix if kept is None else prompt.token_suffix[:, :kept]).unsqueeze(0)
    embeddings = torch.cat(
        [prefix.to(context), context.expand(-1, classes, -1, -1), suffix.expand(batch, -1, -1, -1).to(context)], dim=2
    )
    flat = embeddings.reshape(batch * classes, *embeddings.shape[2:])
    features = tower(flat, prompt.pool_positions.repeat(batch), False)
    return features.reshape(batch, classes, -1)
