"""A frozen CLIP with the prompts a method learns around it: logits, image features, text features.

The parts are built by the method (``methods/``): the towers over the frozen CLIP, the learned text context and
visual tokens it uses (or none), and the text-encoding strategy. This module only runs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.model.prompts import TextPromptLearner, VisualPromptLearner
from dapt_lightning.model.text_encoding import FixedTextPrompts, TextEncoder, build_text_encoder
from dapt_lightning.model.towers import ImageTower, TextTower

GENERIC_TEMPLATE = "a photo of a {}."


class PromptedCLIP(nn.Module):
    """A frozen CLIP whose text and/or image inputs carry learnable prompts.

    Args:
        clip: the frozen open_clip model (never saved in checkpoints: ``checkpoint.py``).
        text_tower, image_tower: the views onto ``clip`` that take prompts (``model/towers.py``).
        classnames: one name per label.
        text_encoder: the strategy that turns the class prompts into text features (``model/text_encoding.py``).
        text_prompt: the learned text context, or None when the class prompts are the fixed ``fixed_prompts``.
        fixed_prompts: the hand-crafted class prompts of a method without a learned text context.
        visual_prompt: the learned visual tokens (a module giving one tensor, or deep prompts giving one per
            prompted block: ``model/deep_prompts.py``), or None.
        template: the hand-crafted prompt ``encode_template`` uses by default (``{}`` is the class name).
        clone_image_features: copy image features out of the tower's output (compiled towers that replay CUDA
            graphs reuse their output memory).
    """

    def __init__(
        self,
        clip: nn.Module,
        text_tower: TextTower,
        image_tower: ImageTower,
        classnames: list[str],
        text_encoder: TextEncoder,
        text_prompt: TextPromptLearner | None = None,
        fixed_prompts: FixedTextPrompts | None = None,
        visual_prompt: VisualPromptLearner | nn.Module | None = None,
        template: str = GENERIC_TEMPLATE,
        clone_image_features: bool = False,
    ) -> None:
        super().__init__()
        if not classnames:
            raise ValueError("PromptedCLIP needs at least one class name")
        if (text_prompt is None) == (fixed_prompts is None):
            raise ValueError("PromptedCLIP takes either a learned text prompt or fixed prompts, not both or neither")
        self.clip = clip
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.classnames = list(classnames)
        self.template = template
        self.text_prompt = text_prompt
        self.fixed_prompts = fixed_prompts
        self.visual_prompt = visual_prompt
        self.text_encoder = text_encoder
        self._clone_image_features = clone_image_features

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def encode_text(self) -> torch.Tensor:
        """L2-normalised class text features ``[C, D]`` (with gradient to the text context)."""
        return F.normalize(self.text_encoder(), dim=-1)

    @torch.no_grad()
    def encode_template(self, template: str | None = None) -> torch.Tensor:
        """L2-normalised class text features ``[C, D]`` of a hand-crafted prompt: zero-shot CLIP's classifier.

        Args:
            template: the prompt (``{}``: class name); None: this model's ``template``.
        """
        return F.normalize(self.template_features(template or self.template), dim=-1)

    @torch.no_grad()
    def template_features(self, template: str) -> torch.Tensor:
        """The frozen CLIP's unnormalised fp32 class text features ``[C, D]`` of a hand-crafted prompt (``{}``:
        the class name), without any learned prompt."""
        prompts = FixedTextPrompts(self.text_tower, self.classnames, template)
        prompts.to(self.text_tower.ln_final.weight.device)
        return build_text_encoder("auto", self.text_tower, prompts)().float()

    def encode_image(self, images: torch.Tensor, use_prompts: bool = True) -> torch.Tensor:
        """L2-normalised image features ``[B, D]``; ``use_prompts=False`` gives zero-shot CLIP features."""
        size = self.image_tower.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} pixels, but this CLIP takes {size} x {size}: set "
                f"--data.image_size {size} (or leave it unset: the DataModule then takes the model's)"
            )
        prompts = self.visual_prompt() if (use_prompts and self.visual_prompt is not None) else None
        if isinstance(prompts, list):  # deep prompts, one set per prompted block (model/deep_prompts.py)
            features = self.image_tower(images, layer_prompts=prompts)
        else:
            features = self.image_tower(images, prompts)
        if self._clone_image_features:
            features = features.clone()
        return F.normalize(features, dim=-1)

    def forward(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, image_features, text_features)``; pass cached ``text_features`` to skip the text tower."""
        image_features = self.encode_image(images)
        if text_features is None:
            text_features = self.encode_text()
        logits = self.logit_scale * image_features @ text_features.t()
        return logits, image_features, text_features
