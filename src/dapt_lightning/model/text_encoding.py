"""How the class texts are encoded: one strategy, chosen once when the model is built.

Every strategy returns the same unnormalised class text features ``[C, D]`` (up to float rounding):

* ``full``: every prompt at the tower's whole context length (77 tokens), the official computation;
* ``truncated``: every prompt cut after the longest end-of-text token (exact: the mask is causal, so later tokens
  cannot reach an end-of-text row); only for causal towers that pool at the end of text;
* ``shared_prefix``: the class-shared SOT + context computed once, then each class's own tokens
  (``model/shared_prefix.py``); needs a learned, class-shared context;
* ``auto``: ``shared_prefix`` where possible, else ``truncated``, else ``full`` (bidirectional towers such as
  SigLIP's, or pooling at a fixed position: every token can change the pooled one).

A strategy owns what makes it fast and what that costs: its compilation, its activation checkpointing, and cloning
its outputs where compiled code replays CUDA graphs. Callers only call it.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

import torch
from torch import nn

from dapt_lightning.model.compilation import CompileMode, compile_module, may_use_cuda_graphs
from dapt_lightning.model.prompts import TextPromptLearner
from dapt_lightning.model.shared_prefix import SharedPrefixLayout, SharedPrefixTextEncoder, shared_prefix_unsupported
from dapt_lightning.model.towers import TextTower

log = logging.getLogger(__name__)

TextEncoding = Literal["full", "truncated", "shared_prefix", "auto"]
TEXT_ENCODINGS: tuple[str, ...] = ("full", "truncated", "shared_prefix", "auto")


class TextEncoder(Protocol):
    """A text-encoding strategy: ``encoder()`` gives the unnormalised class text features ``[C, D]``."""

    name: str

    def __call__(self) -> torch.Tensor: ...


class FixedTextPrompts(nn.Module):
    """Hand-crafted class prompts (a template such as ``"a photo of a {}."``): token ids only, nothing learned.

    Args:
        text_tower: the tower whose tokenizer and token embedding serve these prompts.
        classnames: one name per label (``_`` becomes a space).
        template: the prompt, ``{}`` standing for the class name.
    """

    def __init__(self, text_tower: TextTower, classnames: list[str], template: str) -> None:
        super().__init__()
        texts = [template.format(name.replace("_", " ")) for name in classnames]
        tokens = text_tower.tokenize(texts)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("pool_positions", text_tower.pool_positions(tokens), persistent=False)
        self._embed = text_tower.embed_tokens  # a bound method: not registered, so no state_dict entries

    def forward(self, length: int | None = None) -> torch.Tensor:
        """Token embeddings ``[C, length, width]`` of the prompts (None: the whole context)."""
        return self._embed(self.tokens if length is None else self.tokens[:, :length])


ClassPrompts = TextPromptLearner | FixedTextPrompts


class TokenTextEncoder:
    """The ``full`` and ``truncated`` strategies: every class's prompt through the tower, at a fixed length.

    Args:
        text_tower: the frozen text tower (compiled in place when ``compile_mode`` asks).
        prompts: learned or fixed class prompts.
        truncate: cut every prompt after the longest end-of-text token; False: the whole context.
        checkpointing: recompute text activations in the backward pass.
        compile_mode: ``torch.compile`` mode for the tower (``off``: eager).
    """

    def __init__(
        self,
        text_tower: TextTower,
        prompts: ClassPrompts,
        truncate: bool,
        checkpointing: bool = False,
        compile_mode: CompileMode = "off",
    ) -> None:
        self.name = "truncated" if truncate else "full"
        self.tower = text_tower
        self.prompts = prompts
        # Fixed by the token ids, known now: reading them later would synchronise a GPU at every call.
        self.length = int(prompts.pool_positions.max()) + 1 if truncate else None
        self.checkpointing = checkpointing
        compile_module(text_tower, compile_mode)
        # CUDA-graph replays reuse their output memory: features that outlive the call are cloned (they are small).
        self._clone_outputs = may_use_cuda_graphs(compile_mode)

    def __call__(self) -> torch.Tensor:
        prompts = self.prompts
        layers = prompts.layer_prompts() if hasattr(prompts, "layer_prompts") else ()  # deep prompts
        start = getattr(prompts, "context_start", 1)
        features = self.tower(prompts(self.length), prompts.pool_positions, self.checkpointing, layers, start)
        return features.clone() if self._clone_outputs else features


def resolve_text_encoding(mode: str, text_tower: TextTower, prompts: ClassPrompts) -> str:
    """Turn ``auto`` into the fastest exact strategy and check that an explicit ``shared_prefix`` is possible."""
    if mode not in TEXT_ENCODINGS:
        raise ValueError(f"--model.text_encoding must be one of {', '.join(TEXT_ENCODINGS)}; got {mode!r}")
    if mode == "full":
        return mode
    if not text_tower.pools_at_end_of_text:
        if mode == "auto":
            _announce_full_path(text_tower)
            return "full"
        raise ValueError(
            f"--model.text_encoding {mode} is not possible: {_why_full(text_tower)}. Use 'auto' or 'full'."
        )
    if mode == "truncated":
        return mode
    reason = shared_prefix_unsupported(text_tower, prompts)
    if reason is None:
        return "shared_prefix"
    if mode == "auto":
        return "truncated"
    raise ValueError(f"--model.text_encoding shared_prefix is not possible: {reason}. Use 'auto' or 'truncated'.")


def _why_full(text_tower: TextTower) -> str:
    if not text_tower.causal:
        return "this CLIP's text tower is bidirectional, so every token reaches the pooled one"
    return f"this CLIP's text tower pools at a fixed position ({text_tower.pool_type!r}), after every token"


_announced: set[str] = set()


def _announce_full_path(text_tower: TextTower) -> None:
    """Say once per process why the text features take the full path (a choice the user did not make)."""
    reason = _why_full(text_tower)
    if reason not in _announced:
        _announced.add(reason)
        log.info("text features: the full %d-token path (%s)", text_tower.context_length, reason)


def build_text_encoder(
    mode: TextEncoding,
    text_tower: TextTower,
    prompts: ClassPrompts,
    layout: SharedPrefixLayout | int = "auto",
    checkpointing: bool = False,
    compile_mode: CompileMode = "off",
) -> TextEncoder:
    """The strategy ``mode`` (``auto`` resolved here, once) encoding ``prompts`` with ``text_tower``.

    Args:
        mode: ``full``, ``truncated``, ``shared_prefix`` or ``auto``.
        text_tower: the frozen text tower.
        prompts: a ``TextPromptLearner`` or ``FixedTextPrompts``.
        layout: how the shared-prefix strategy packs class suffixes (see ``SharedPrefixTextEncoder``).
        checkpointing: recompute text activations in the backward pass (less memory, more time).
        compile_mode: ``torch.compile`` mode (``off``: eager).
    """
    resolved = resolve_text_encoding(mode, text_tower, prompts)
    if resolved == "shared_prefix":
        assert isinstance(prompts, TextPromptLearner)
        return SharedPrefixTextEncoder(text_tower, prompts, layout, checkpointing, compile_mode)
    return TokenTextEncoder(text_tower, prompts, resolved == "truncated", checkpointing, compile_mode)
