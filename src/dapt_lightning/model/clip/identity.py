"""What identifies a frozen CLIP: its name, tag or file, activation and a hash of its weights."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

WeightsSource = Literal["random", "pretrained-tag", "openai-torchscript", "openai-state-dict", "open_clip-state-dict"]
"""Where a CLIP's weights came from (``ClipIdentity.source``): no weights, an open_clip pretrained tag, OpenAI's
TorchScript archive, a state dict or safetensors file in OpenAI's layout (architecture and QuickGELU from OpenAI's
rules), or one in open_clip's layout (architecture and activation from ``--model.clip_name``'s config)."""


@dataclass(frozen=True)
class ClipIdentity:
    """What a checkpoint records to rebuild (and check) the frozen CLIP it was trained on.

    Two identities are equal when name, tag or file, activation and weights are; ``source`` (what the weights were
    read from, see :data:`WeightsSource`) is recorded but not compared: one set of weights read from two formats is
    one CLIP.
    """

    name: str
    pretrained: str | None
    quick_gelu: bool
    weights_sha256: str | None
    source: WeightsSource = field(compare=False)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def state_dict_sha256(module: nn.Module) -> str:
    """Hex SHA-256 of a module's parameters and buffers (names, shapes and fp32 values), order-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
