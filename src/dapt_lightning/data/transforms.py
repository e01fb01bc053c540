"""The CoOp/Dassl transforms (SPEC.md), not open_clip's ``preprocess_train`` (which crops and flips differently)."""

from __future__ import annotations

from typing import Literal

from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TransformName = Literal["train", "test"]


def build_transform(
    name: TransformName, image_size: int = 224, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> T.Compose:
    """``train``: RandomResizedCrop(``crop_scale``, bicubic) + flip; ``test``: short-side resize + centre crop."""
    bicubic = T.InterpolationMode.BICUBIC
    if name == "train":
        crop = T.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=bicubic)
        steps = [crop, T.RandomHorizontalFlip()]
    elif name == "test":
        steps = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    else:
        raise ValueError(f"transform must be 'train' or 'test', got {name!r}")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
