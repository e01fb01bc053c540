"""Frozen CLIP plus optional text and visual prompt learners: logits, image features, text features.

One class serves every method: zero-shot CLIP (no prompts), CoOp (text), VPT (visual), CoOp+VPT and DAPT
(both; DAPT only differs in its losses).
"""

from __future__ import annotations

from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.model.compilation import CompileMode, check_compile_mode, compile_module, may_use_cuda_graphs
from dapt_lightning.model.prompts import TextPromptLearner, VisualPromptLearner
from dapt_lightning.model.text_fastpath import SharedPrefixTextEncoder, resolve_text_encoding
from dapt_lightning.model.towers import ImageTower, TextTower

TextEncoding = Literal["full", "truncated", "shared_prefix", "auto"]


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
        text_encoding: ``full`` runs all 77 tokens (the official computation); ``truncated`` cuts after the
            longest EOT (exact, the causal mask makes later tokens irrelevant); ``shared_prefix`` computes the
            class-shared SOT + context once and only each class's own tokens per class (exact, see
            ``model/text_fastpath.py``); ``auto`` picks ``shared_prefix`` when possible, else ``truncated``.
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
        template: str = "a photo of a {}.",
        text_encoding: TextEncoding = "auto",
        text_checkpointing: bool = False,
        compile: CompileMode = "off",
    ) -> None:
        super().__init__()
        check_compile_mode(compile)
        if not classnames:
            raise ValueError("PromptedCLIP needs at least one class name")
        self.clip = clip
        self.image_tower = ImageTower(clip)
        self.text_tower = TextTower(clip)
        self.classnames = list(classnames)
        self.template = template
        self.text_encoding = text_encoding
        self.text_checkpointing = text_checkpointing
        self.compile_mode = compile
        # CUDA-graph replays reuse their output memory: features that outlive the call are cloned (they are small).
        self._clone_outputs = may_use_cuda_graphs(compile)
        # open_clip's own flag checkpoints the full and truncated paths; the shared-prefix encoder has its own.
        self.text_tower.transformer.grad_checkpointing = text_checkpointing
        self._shared_prefix_encoder: SharedPrefixTextEncoder | None = None
        self._resolved_encodings: dict[str, str] = {}
        self.text_prompt = (
            TextPromptLearner(self.text_tower, classnames, text_tokens, text_init, class_specific_context)
            if text_prompts
            else None
        )
        self.visual_prompt = (
            VisualPromptLearner(self.image_tower, visual_tokens, visual_dropout) if visual_prompts else None
        )
        # The views are compiled, not the CLIP: zero-shot calls on `clip` itself stay eager.
        compile_module(self.image_tower, compile)
        compile_module(self.text_tower, compile)
        if self.text_prompt is None:
            tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=self.text_tower.context_length)
            texts = [template.format(name.replace("_", " ")) for name in classnames]
            self.register_buffer("template_tokens", tokenizer(texts), persistent=False)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def encode_text(self, mode: TextEncoding | None = None) -> torch.Tensor:
        """L2-normalised class text features ``[C, D]`` (with gradient to the text context)."""
        requested = mode or self.text_encoding
        if requested not in self._resolved_encodings:  # resolved once: the check reads the mask (a GPU sync)
            self._resolved_encodings[requested] = resolve_text_encoding(requested, self.text_tower, self.text_prompt)
        mode = self._resolved_encodings[requested]
        if mode == "shared_prefix":
            if self._shared_prefix_encoder is None:
                self._shared_prefix_encoder = SharedPrefixTextEncoder(
                    self.text_tower, self.text_checkpointing, compile_mode=self.compile_mode
                )
            features = self._shared_prefix_encoder.encode_prompts(self.text_prompt)
        elif self.text_prompt is None:
            tokens = self.template_tokens
            length = tokens.shape[1] if mode == "full" else int(tokens.argmax(-1).max()) + 1
            embeddings = self.text_tower.embed_tokens(tokens[:, :length])
            features = self.text_tower(embeddings, tokens.argmax(-1))
        else:
            eot = self.text_prompt.eot_positions
            length = None if mode == "full" else int(eot.max()) + 1
            features = self.text_tower(self.text_prompt(length), eot)
        if self._clone_outputs:
            features = features.clone()
        return F.normalize(features, dim=-1)

    def encode_image(self, images: torch.Tensor, use_prompts: bool = True) -> torch.Tensor:
        """L2-normalised image features ``[B, D]``; ``use_prompts=False`` gives zero-shot CLIP features."""
        prompts = self.visual_prompt() if (use_prompts and self.visual_prompt is not None) else None
        features = self.image_tower(images, prompts)
        if self._clone_outputs:
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
