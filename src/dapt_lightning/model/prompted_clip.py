"""Frozen CLIP plus optional text and visual prompt learners: logits, image features, text features.

One class serves every method: zero-shot CLIP (no prompts), CoOp (text), VPT (visual), CoOp+VPT and DAPT
(both; DAPT only differs in its losses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.model.compilation import CompileMode, check_compile_mode, compile_module, may_use_cuda_graphs
from dapt_lightning.model.prompts import TextPromptLearner, VisualPromptLearner
from dapt_lightning.model.shared_prefix import SharedPrefixLayout
from dapt_lightning.model.text_encoding import FixedTextPrompts, TextEncoding, build_text_encoder
from dapt_lightning.model.towers import ImageTower, TextTower, Tokenizer

GENERIC_TEMPLATE = "a photo of a {}."


class PromptedCLIP(nn.Module):
    """A frozen CLIP whose text and/or image inputs carry learnable prompts.

    Args:
        clip: an open_clip CLIP model (frozen here).
        classnames: one name per label.
        text_prompts: learn a CoOp context; otherwise classes use the fixed ``template``.
        visual_prompts: learn VPT-shallow prompt tokens.
        text_tokens: CoOp context length. text_init: phrase to initialise the context from.
        class_specific_context: one context per class (CoOp CSC).
        visual_tokens: number of VPT tokens. visual_dropout: dropout on them.
        template: hand-crafted prompt used when ``text_prompts`` is off (``{}`` is the class name).
        tokenizer: the CLIP's own tokenizer (``open_clip.get_tokenizer(name)``); None: CLIP's BPE tokenizer.
        text_encoding: how class texts are encoded (``model/text_encoding.py``): ``full`` (the official 77 tokens),
            ``truncated``, ``shared_prefix`` or ``auto`` (the fastest exact one). Chosen once, here.
        text_layout: how the shared-prefix encoding packs class suffixes (``model/shared_prefix.py``).
        text_checkpointing: recompute the text transformer's activations in the backward pass (less memory,
            more compute).
        compile: ``torch.compile`` mode for the image tower and the text encoder (``off``: eager; see
            ``model/compilation.py``). The same numbers up to float rounding order; the first steps compile.
    """

    def __init__(
        self,
        clip: nn.Module,
        classnames: list[str],
        text_prompts: bool = True,
        visual_prompts: bool = True,
        text_tokens: int = 16,
        text_init: str | None = None,
        class_specific_context: bool = False,
        visual_tokens: int = 16,
        visual_dropout: float = 0.0,
        template: str = GENERIC_TEMPLATE,
        tokenizer: Tokenizer | None = None,
        text_encoding: TextEncoding = "auto",
        text_layout: SharedPrefixLayout | int = "auto",
        text_checkpointing: bool = False,
        compile: CompileMode = "off",
    ) -> None:
        super().__init__()
        check_compile_mode(compile)
        if not classnames:
            raise ValueError("PromptedCLIP needs at least one class name")
        self.clip = clip
        self.image_tower = ImageTower(clip)
        self.text_tower = TextTower(clip, tokenizer)
        if visual_prompts and self.image_tower.prompt_refusal is not None:
            raise ValueError(f"visual prompts are not possible: in this CLIP {self.image_tower.prompt_refusal}")
        self.classnames = list(classnames)
        self.template = template
        self.compile_mode = compile
        self.text_prompt = (
            TextPromptLearner(self.text_tower, classnames, text_tokens, text_init, class_specific_context)
            if text_prompts
            else None
        )
        self.visual_prompt = (
            VisualPromptLearner(self.image_tower, visual_tokens, visual_dropout) if visual_prompts else None
        )
        self.fixed_prompts = None if text_prompts else FixedTextPrompts(self.text_tower, classnames, template)
        self.text_encoder = build_text_encoder(
            text_encoding,
            self.text_tower,
            self.text_prompt if self.text_prompt is not None else self.fixed_prompts,
            layout=text_layout,
            checkpointing=text_checkpointing,
            compile_mode=compile,
        )
        # The tower view is compiled, not the CLIP: zero-shot calls on `clip` itself stay eager.
        compile_module(self.image_tower, compile)
        # CUDA-graph replays reuse their output memory: features that outlive the call are cloned (they are small).
        self._clone_image_features = may_use_cuda_graphs(compile)

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
        prompts = FixedTextPrompts(self.text_tower, self.classnames, template or self.template)
        prompts.to(self.text_tower.ln_final.weight.device)
        features = build_text_encoder("auto", self.text_tower, prompts)()
        return F.normalize(features.float(), dim=-1)

    def encode_image(self, images: torch.Tensor, use_prompts: bool = True) -> torch.Tensor:
        """L2-normalised image features ``[B, D]``; ``use_prompts=False`` gives zero-shot CLIP features."""
        size = self.image_tower.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} pixels, but this CLIP takes {size} x {size}: set "
                f"--data.image_size {size} (the `dapt` CLI sets it from the CLIP)"
            )
        prompts = self.visual_prompt() if (use_prompts and self.visual_prompt is not None) else None
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

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """Only the learned prompt tensors (what a prompt-only checkpoint stores)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("text_prompt.", "visual_prompt."))}
