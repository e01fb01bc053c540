"""CLIPs of every tower family, built from open_clip's own configs with random weights and reduced depth."""

from __future__ import annotations

import copy
import json
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from tempfile import mkdtemp

import open_clip
import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """One architecture under test: its open_clip name, a pretrained tag whose preprocessing it takes, the activation
    those weights use, and whether its tokenizer is a Hugging Face one (replaced here by a stand-in)."""

    name: str
    tag: str | None
    quick_gelu: bool
    hf_tokenizer: bool = False

    @property
    def reduced_name(self) -> str:
        return f"{self.name}-reduced-for-tests"


ARCHITECTURES = {
    "vit-b-32-openai": Architecture("ViT-B-32", "openai", quick_gelu=True),
    "vit-l-14-openai": Architecture("ViT-L-14", "openai", quick_gelu=True),
    "vit-b-32-laion": Architecture("ViT-B-32", "laion2b_s34b_b79k", quick_gelu=False),
    "vit-l-14-clipa": Architecture("ViT-L-14-CLIPA", "datacomp1b", quick_gelu=False, hf_tokenizer=True),
    "siglip": Architecture("ViT-B-16-SigLIP", "webli", quick_gelu=False, hf_tokenizer=True),
    "eva02": Architecture("EVA02-B-16", "merged2b_s8b_b131k", quick_gelu=False),
    "rn50": Architecture("RN50", "openai", quick_gelu=True),
    "convnext": Architecture("convnext_base", "laion400m_s13b_b51k", quick_gelu=False),
}
"""A ViT per source of weights (OpenAI with QuickGELU, LAION with GELU), CLIPA (average-pooled ViT, bidirectional text
pooled last), SigLIP (timm ViT with attention pooling and no class token, bidirectional text), EVA-02 (timm, rotary),
RN50 (convolutional ModifiedResNet) and ConvNeXt (timm, convolutional)."""

_CONFIG_DIR = Path(mkdtemp(prefix="dapt-reduced-configs-"))


def _register_reduced(arch: Architecture) -> None:
    """Register ``arch``'s open_clip config with 2 text layers and 2 transformer layers (or one block per ResNet
    stage) under :attr:`Architecture.reduced_name`. timm towers keep their config and are cut after building."""
    config = copy.deepcopy(open_clip.get_model_config(arch.name))
    config["text_cfg"]["layers"] = 2
    vision = config["vision_cfg"]
    if isinstance(vision.get("layers"), list | tuple):
        vision["layers"] = [1, 1, 1, 1]
    elif "layers" in vision:
        vision["layers"] = 2
    path = _CONFIG_DIR / f"{arch.reduced_name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


@cache
def reduced_clip(key: str) -> nn.Module:
    """The frozen fp32 CLIP of ``ARCHITECTURES[key]`` with random weights (seeded) and reduced depth."""
    arch = ARCHITECTURES[key]
    _register_reduced(arch)
    torch.manual_seed(0)
    model = open_clip.create_model(arch.reduced_name, pretrained=None, quick_gelu=arch.quick_gelu)
    trunk = getattr(model.visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):
        trunk.blocks = trunk.blocks[:2]
    if trunk is not None and hasattr(trunk, "stages"):
        for stage in trunk.stages:
            stage.blocks = stage.blocks[:1]
    model = model.float().eval()
    model.requires_grad_(False)
    return model


class StandInTokenizer:
    """A deterministic word-level tokenizer with the shape of SigLIP's and CLIPA's Hugging Face tokenizers, which
    cannot be downloaded here: no start token, an end-of-sequence id after the words, padding to the context length.

    Args:
        context_length: the text tower's sequence length.
        vocab_size: ids stay below it.
        eos_id: the end-of-sequence id (1 for SigLIP's SentencePiece tokenizer).
        pad_id: the padding id.
    """

    def __init__(self, context_length: int, vocab_size: int, eos_id: int = 1, pad_id: int = 0) -> None:
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.pad_id = pad_id

    def _word_id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode()) % (self.vocab_size - 2)

    def __call__(self, texts: list[str] | str, context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        rows = []
        for text in texts:
            words = text.lower().replace(".", " .").split()
            ids = [self._word_id(word) for word in words][: length - 1] + [self.eos_id]
            rows.append(ids + [self.pad_id] * (length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


def tokenizer_for(key: str, model: nn.Module):
    """``ARCHITECTURES[key]``'s tokenizer: open_clip's own, or the stand-in for a Hugging Face one."""
    arch = ARCHITECTURES[key]
    text = getattr(model, "text", model)
    context_length = text.positional_embedding.shape[0]
    if arch.hf_tokenizer:
        return StandInTokenizer(context_length, text.token_embedding.num_embeddings)
    return open_clip.get_tokenizer(arch.reduced_name, context_length=context_length)
